"""Faults under load against the real tritonserver (issue 7): a killed python-backend stub, SIGTERM, a new
model version dropped in. No mocks: each test starts its own server (on free loopback ports, from a copy of
the CPU repository, since the runs write into it) and drives it with ``htr.client`` threads sending real
labelled images; the scenarios are those of ``htr.testing.faults``, which ``bench/faults.py`` runs too.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from htr.client.errors import RETRYABLE, UNHEALTHY, UNREACHABLE, classify
from htr.serve import STUB_EXECUTABLE, ServerOptions, TritonServer
from htr.testing import faults
from htr.testing.load import Load, error_types, load_blobs
from htr.testing.server import copy_repository, free_ports

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def blobs(kaggle_dir) -> list[bytes]:
    return load_blobs(kaggle_dir, limit=64)


@pytest.fixture
def repository(cpu_repository, tmp_path) -> Path:
    """A private copy of the session's CPU repository: these tests add versions and touch model files."""
    return copy_repository(cpu_repository, tmp_path)


# --- the retry decision for a dead stub ------------------------------------------------------------------


def test_dead_stub_and_dropped_calls_are_retried_refusals_are_not():
    dead = InferenceServerException("in ensemble 'htr', Stub process 'crnn_0_0' is not healthy.",
                                    status="StatusCode.INTERNAL")
    assert classify(dead) == UNHEALTHY and UNHEALTHY in RETRYABLE
    assert classify(InferenceServerException("Locally cancelled", status="StatusCode.CANCELLED")) == UNREACHABLE
    refused = InferenceServerException("unexpected shape for input 'IMAGE_BYTES'", status="StatusCode.INVALID_ARGUMENT")
    assert classify(refused) not in RETRYABLE


def test_heal_stubs_needs_a_model_control_that_can_reload(repository):
    with pytest.raises(ValueError, match="explicit"):
        TritonServer(repository, ServerOptions(model_control="none", heal_stubs=True))


# --- a python-backend stub killed with SIGKILL under load ----------------------------------------------


def test_killed_stub_is_not_restarted_by_triton_alone(repository, blobs, tmp_path):
    """Why the watchdog exists: without it the crnn stub stays dead and every request through it fails."""
    r = faults.kill_stub(repository, blobs, tmp_path, threads=2, warmup_s=1.0, max_s=6.0, retries=0, heal=False,
                         exit_timeout=2)
    assert r["stub_after"] == {}, "Triton restarted the stub by itself: the watchdog may no longer be needed"
    assert r["recovery_s"] is None and r["probe"]["failed"] == r["probe"]["sent_after_kill"] > 0
    assert r["after_kill"]["lost"] > 0
    assert all("Stub process 'crnn_0_0'" in e for e in r["after_kill"]["errors"]), r["after_kill"]["errors"]


def test_killed_stub_is_reloaded_and_client_retries_lose_nothing(repository, blobs, tmp_path):
    r = faults.kill_stub(repository, blobs, tmp_path, model="crnn", threads=3, warmup_s=2.0, settle_s=1.0,
                         max_s=45.0, retries=8, backoff_s=0.25, exit_timeout=5)
    assert r["healed"], r
    event = r["heal_events"][0]
    assert event["ok"] and event["instances"] == ["crnn_0_0"] and event["pids"] == [r["killed"]["pid"]]
    assert set(r["stub_after"]) == {"crnn_0_0"} and r["stub_after"]["crnn_0_0"] != r["killed"]["pid"]
    assert r["lost"] == 0, r["errors"]
    assert r["ok_after_retry"] >= 1, "no request met the dead stub: the fault was not exercised"
    assert 0 < r["recovery_s"] < 45.0
    assert r["ok_first_attempt"] + r["ok_after_retry"] == r["sent"]
    # Triton 2.51 never releases an instance whose stub died with requests in it, so the stop that follows
    # waits out the exit timeout (in-flight requests are still drained first): bounded, not clean
    assert r["server_stop_s"] < 5 + 15


# --- SIGTERM under load, through `htr serve` ------------------------------------------------------------


def test_sigterm_to_htr_serve_drains_in_flight_requests_and_refuses_new_ones(repository, blobs, tmp_path):
    ports = free_ports()
    out = tmp_path / "serve.out"
    cmd = [sys.executable, "-m", "htr.cli", "serve", "--repository", str(repository),
           "--http-port", str(ports["http_port"]), "--grpc-port", str(ports["grpc_port"]),
           "--metrics-port", str(ports["metrics_port"]), "--model-control", "explicit", "--heal-stubs",
           "--ready-timeout", "120",
           "--drain-timeout", "20", "--log-file", str(tmp_path / "tritonserver.log"), "--extra", "--load-model=*"]
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while "htr serve: ready in" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, f"htr serve not ready:\n{out.read_text()}"
            time.sleep(0.2)
        load = Load(f"127.0.0.1:{ports['grpc_port']}", blobs, 3, batch=8, retries=2, backoff_s=0.2).start()
        deadline = time.monotonic() + 30
        while len([o for o in load.outcomes if o.ok]) < 6:  # warmed up: requests complete
            assert time.monotonic() < deadline, "no request completed before the stop"
            time.sleep(0.05)
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, out.read_text()
        t_exit = time.monotonic()
        deadline = t_exit + 30
        while {o.thread for o in load.outcomes if o.start >= t_exit} != {0, 1, 2}:
            assert time.monotonic() < deadline, "load threads stopped issuing requests"
            time.sleep(0.05)
        load.stop(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert "stopped cleanly (status 0)" in text, text
    assert "died; reloading" not in text, "the stub watchdog took the shutdown for dead stubs"
    in_flight = [o for o in load.outcomes if o.start < t_term <= o.end]
    assert in_flight, "nothing was in flight at SIGTERM: the drain was not exercised"
    assert all(o.ok for o in in_flight), [o.error for o in in_flight if not o.ok]
    draining = [o for o in load.outcomes if t_term <= o.start < t_exit and not o.ok]
    assert set(error_types(draining)) <= {"ModelNotReadyError", "ServerUnreachableError"}, draining[:3]
    after = [o for o in load.outcomes if o.start >= t_exit]
    assert after and not any(o.ok for o in after)
    assert set(error_types(after)) == {"ServerUnreachableError"}, [o.error for o in after[:3]]
    assert max(o.seconds for o in after) < 10, "a request to the stopped server hung instead of failing"
    assert not _stubs_serving(repository), "backend stubs outlived the server"


def _stubs_serving(repository: Path) -> list[int]:
    """Live python-backend stubs whose model.py lies in ``repository``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if STUB_EXECUTABLE.encode() in argv and str(repository).encode() in argv:
            found.append(int(proc.name))
    return found


def test_sigterm_drain_through_triton_server(repository, blobs, tmp_path):
    """The same stop through the Python API (TritonServer.terminate), as ``bench/faults.py sigterm`` measures."""
    r = faults.sigterm(repository, blobs, tmp_path, threads=3, batch=8, warmup_s=2.0, drain_timeout=20)
    assert r["exit_status"] == 0 and not r["killed"]
    assert r["in_flight_at_sigterm"]["sent"] > 0 and r["in_flight_at_sigterm"]["lost"] == 0, r["in_flight_at_sigterm"]
    assert set(r["error_types_after_exit"]) == {"ServerUnreachableError"}, r["sent_after_exit"]
    assert r["max_s_to_refusal"] < 10


# --- poll mode: starting the server must not look like a repository change ----------------------------


def test_poll_mode_start_up_loads_each_model_once_and_writes_nothing(repository, tmp_path):
    """The stubs import each model.py; the bytecode the repository ships with (``install_model_py``) keeps them from
    writing ``__pycache__`` into it, which poll mode took for a change: every python model reloaded on the
    first poll, and a stub killed in those seconds was replaced by that reload instead of the watchdog."""
    before = {p: p.stat().st_mtime_ns for p in repository.rglob("*")}
    assert any(p.name.endswith(".pyc") for p in before), "the repository ships no bytecode"
    log = tmp_path / "poll.log"
    with TritonServer(repository, ServerOptions(**free_ports(), log_file=log, model_control="poll", poll_interval=1,
                                                heal_stubs=False)):
        time.sleep(4.0)  # about four polls
        text = log.read_text(errors="replace")
    after = {p: p.stat().st_mtime_ns for p in repository.rglob("*")}
    changed = sorted(str(p.relative_to(repository)) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, changed
    for model in ("preprocess", "crnn", "ctc_decode", "htr"):
        assert text.count(f'"loading: {model}:1"') == 1, (model, text[-3000:])


# --- a new model version dropped in under load ----------------------------------------------------------


@pytest.mark.parametrize("model_control", ["poll", "explicit"])
def test_new_version_goes_live_with_zero_failed_requests(repository, blobs, tmp_path, model_control):
    r = faults.hot_load(repository, blobs, tmp_path, model="crnn", model_control=model_control, poll_interval=1,
                        threads=3, warmup_s=2.0, after_s=3.0, max_s=60.0)
    assert r["live"], r["versions_after"]
    assert r["versions_after"] == {"1": "UNAVAILABLE", "2": "READY"}
    assert r["answering_version"] == "2"
    assert r["new_version_executions_after_swap"] > 0
    assert r["sent"] > 0 and r["failed_requests"] == 0 and r["lost"] == 0, r["errors"]
    assert r["around_the_swap"]["sent"] > 0  # requests were running while the versions changed
    assert r["watchdog_reloads"] == 0, "the stub watchdog mistook the version swap for a dead stub"
