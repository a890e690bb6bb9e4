"""The thread plan: how many instances and intra-op threads each stage gets, from the cores this process may use.

A 2-thread OpenMP / ONNX Runtime region runs 3-20x slower while another process holds the other core, so the
plan never gives the compute-heavy stages more threads in total than there are cores:

- ``preprocess``: 1 instance x 1 kernel thread (decoding + resizing runs at ~8,000 images/s a thread, about 3%
  of the network's cost per image, so one thread keeps up with any crnn below);
- ``crnn``: 1 instance x (cores - 1) intra-op threads (at least 1): the network is >95% of the work, and one
  instance with a wide batch uses the cores better than several instances with small batches;
- ``ctc_decode``: 1 instance, single-threaded (greedy decoding is ~0.1% of the work; it is not counted);
- training (``htr train``): torch intra-op threads = all cores (nothing else runs beside it).

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
    def compute_threads(self) -> int:
        """Threads of the compute-heavy serving stages together (never more than ``cores`` by default)."""
        return self.preprocess_instances * self.preprocess_threads + self.crnn_instances * self.crnn_threads

    def describe(self) -> str:
        return (f"thread plan for {self.cores} core(s): preprocess {self.preprocess_instances} x "
                f"{self.preprocess_threads} thread(s), crnn {self.crnn_instances} x {self.crnn_threads} "
                f"intra-op thread(s), ctc_decode {self.decode_instances} x 1")


def thread_plan(cores: int | None = None) -> ThreadPlan:
    """The default plan for ``cores`` (default: :func:`available_cores`)."""
    cores = available_cores() if cores is None else max(1, int(cores))
    return ThreadPlan(cores=cores, preprocess_instances=1, preprocess_threads=1, crnn_instances=1,
                      crnn_threads=max(1, cores - 1), decode_instances=1, train_threads=cores)
