"""Coverage-guided fuzzing (atheris) of the native entry points against the NumPy reference, briefly.

Each target of ``htr.testing.fuzz_targets`` runs for ``SECONDS`` in its own subprocess (atheris instruments
imports and libFuzzer installs signal handlers: neither may leak into pytest), from a fixed seed. A crash, an
exception other than the documented ValueError, or a result that differs from ``htr.preprocess.reference``
ends the run with libFuzzer's report and the failing input written to ``tmp_path``; the test shows both.
``bench/fuzz_native.py`` runs the same targets for longer, keeping a corpus.
"""
from __future__ import annotations

import pytest

from htr.testing.fuzz_targets import TARGETS, run_target

pytestmark = pytest.mark.slow

SECONDS = 8  # per target: about 45 s for the five (bench/fuzz_native.py runs them for longer)


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzzing_finds_no_crash_and_no_difference_from_the_reference(target, tmp_path):
    run = run_target(target, SECONDS, tmp_path, seed=1)
    if not run.ok or run.failing_inputs:
        pytest.fail(f"fuzz target {target} failed (exit status {run.returncode}); input(s) {run.failing_inputs}; "
                    f"replay: python -m htr.testing.fuzz_targets {target} <input>\n{run.output[-6000:]}",
                    pytrace=False)
    assert run.runs > 100, f"{target} ran only {run.runs} inputs in {SECONDS} s:\n{run.output[-3000:]}"
