"""The thread plan: how many instances and intra-op threads each stage gets, from the cores this process may use.

The hazard it avoids: a 2-thread OpenMP / ONNX Runtime region whose workers *spin* while waiting runs 3-20x
slower when another process holds one of the cores (a spinning worker burns the time slice its partner needs).
So the plan keeps one spinning-free compute pool, sized to the cores, and makes everything else light:

- ``crnn``: 1 instance x ``cores`` ONNX Runtime intra-op threads, with spinning off
  (``session.intra_op.allow_spinning=0``): idle workers sleep, so the light stages get a core back the moment
  they need it. The network is ~90% of the work per image, and one instance with a wide batch uses the cores
  better than several with small batches.
- ``preprocess``: 1 instance x 1 kernel thread (no OpenMP team at 1 thread): decoding + resizing runs at
  ~8,000 images/s a thread, a few percent of the network's cost per image.
- ``ctc_decode``: 1 instance, single-threaded (greedy decoding is ~0.1% of the work).
- training (``htr train``): torch intra-op threads = ``cores`` (nothing else runs beside it).

Measured on the 2-core dev VM (BENCHMARKS.md, "perf_analyzer"): crnn with 2 threads serves 323 images/s where
1 thread (the strict "never more threads than cores, counting every stage" plan) serves 200; with a busy-loop
process running beside them both serve 181 (no collapse: nothing spins). ``compute_threads`` therefore counts the
spinning-free crnn pool plus the 1-thread preprocess kernel, and is ``cores + 1``; the stages never run more
than ``cores`` OpenMP/ONNX Runtime workers at once.

Cores are ``os.sched_getaffinity(0)`` (what a container's cpuset or ``taskset`` leaves), not ``os.cpu_count()``.
Every number can be overridden (``export/build_engine.py --crnn-threads``, ``--preprocess-threads``, ...); the
chosen plan is written into the generated ``config.pbtxt`` files and printed by the build.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    cores: int
    preprocess_instances: int
    preprocess_threads: int
    crnn_instances: int
    crnn_threads: int
    decode_instances: int
    train_threads: int

    @property
    def pool_threads(self) -> int:
        """Threads of the parallel (intra-op) pools: crnn's, and preprocess's when it has more than one."""
        pre = self.preprocess_instances * self.preprocess_threads
        return self.crnn_instances * self.crnn_threads + (pre if self.preprocess_threads > 1 else 0)

    @property
    def compute_threads(self) -> int:
        """Every compute thread of the serving stages (ctc_decode's, ~0.1% of the work, not counted)."""
        return self.preprocess_instances * self.preprocess_threads + self.crnn_instances * self.crnn_threads

    def describe(self) -> str:
        return (f"thread plan for {self.cores} core(s): crnn {self.crnn_instances} x {self.crnn_threads} "
                f"intra-op thread(s) (no spinning), preprocess {self.preprocess_instances} x "
                f"{self.preprocess_threads}, ctc_decode {self.decode_instances} x 1")


def thread_plan(cores: int | None = None) -> ThreadPlan:
    """The default plan for ``cores`` (default: :func:`available_cores`)."""
    cores = available_cores() if cores is None else max(1, int(cores))
    return ThreadPlan(cores=cores, preprocess_instances=1, preprocess_threads=1, crnn_instances=1,
                      crnn_threads=cores, decode_instances=1, train_threads=cores)
