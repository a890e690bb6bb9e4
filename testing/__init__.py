"""Pass/fail harnesses, shared by the tests and the thin command lines in ``bench/`` (imported as ``htr.testing``).

- :mod:`~htr.testing.load`          client load (closed and open loop), each request's outcome, counts and
                                    latency percentiles
- :mod:`~htr.testing.server`        a tritonserver for a harness: free ports, start-up, a private repository
                                    copy, the memory of its processes
- :mod:`~htr.testing.repository`    the CPU model repository a harness serves
- :mod:`~htr.testing.bad_inputs`    bad and odd images and wrong tensors, with the answer each must get
- :mod:`~htr.testing.faults`        fault scenarios under load: kill-stub, sigterm, hot-load
- :mod:`~htr.testing.soak`          a long run at a share of the maximum throughput
- :mod:`~htr.testing.serving_fuzz`  thousands of mixed good and bad requests to the served pipeline
- :mod:`~htr.testing.fuzz_targets`  coverage-guided (atheris) fuzz targets for the native kernels

Nothing is imported here. ``bad_inputs`` and ``fuzz_targets`` need neither torch nor a server; the others
need tritonclient and the bundled tritonserver, and import torch only to build a repository or read images
offline.
"""
