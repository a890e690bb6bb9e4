"""Training on several processes: ``torchrun`` starts ``htr train`` once per rank; DistributedDataParallel.

``htr train`` detects torchrun from the environment it sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``). Without it the run is the plain single-process one: :class:`Context` is then a
no-op (``shard`` returns everything, ``gather`` its own part, ``any`` its own flag) and nothing here talks to a
process group. Under torchrun:

- backend NCCL on GPU (rank ``r`` uses ``cuda:LOCAL_RANK``), gloo on CPU;
- ``--batch-size`` and ``--lr`` are global: each rank takes ``batch / world`` samples a step and DDP averages
  the gradients, so with equal sample weights a step is the step one process takes on the whole batch
  (BatchNorm statistics, per rank, are the one difference: SyncBatchNorm is GPU-only);
- the training set is split by :class:`~torch.utils.data.DistributedSampler` (one shuffled permutation per epoch,
  rank ``r`` takes every ``world``-th index: the ranks' batches of a step are the slices of one global batch);
  validation and pseudo-labelling are split as ``items[rank::world]`` and gathered back in dataset order, so
  every rank ends the epoch with the same validation result and the same pseudo-labelled set;
- rank 0 alone writes checkpoints and history, serves metrics and shows progress;
- torch threads per rank: the cores this process may use / the ranks on this machine.

A rank that raises ends the job: its peers' next collective fails (gloo sees the closed connection) and the
torchrun agent stops the rest; a rank that hangs is given up after ``--dist-timeout`` seconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .threads import thread_plan


@dataclass(frozen=True)
class Context:
    """Where this process stands among the ranks; ``backend is None`` for a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None
    device: str = "cpu"  # where collectives' tensors live (NCCL needs them on the GPU)

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def threads(self) -> int:
        """torch intra-op threads for this rank: the thread plan's training threads (the cores this process may
        use) shared out among the ranks on this machine; all of them for a plain single-process run."""
        return max(1, thread_plan().train_threads // self.local_world)

    def rank_batch(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise SystemExit(f"error: --batch-size {global_batch} is the global batch and must divide evenly over "
                             f"{self.world} processes (each rank takes batch-size / WORLD_SIZE)")
        return global_batch // self.world

    def shard(self, items: list) -> list:
        """This rank's part of ``items``: every ``world``-th, from ``rank`` on (:meth:`gather_strided` undoes it)."""
        return items[self.rank :: self.world]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_strided(self, part: list) -> list:
        """The parts :meth:`shard` handed out, back in the original order, on every rank."""
        parts = self.gather(part)
        return [p[i] for i in range(max(map(len, parts))) for p in parts if i < len(p)]

    def gather_sorted(self, part: list, key) -> list:
        """Every rank's ``part`` in one list sorted by ``key`` (``part`` itself for a plain run)."""
        return sorted((x for p in self.gather(part) for x in p), key=key) if self.distributed else part

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop request must stop all ranks at the same step)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([int(bool(flag))], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def on_main(self, fn):
        """``fn()`` run on rank 0; its result, or the error it raised, on every rank (e.g. reading OUT/last.pt,
        which need not exist on the other nodes)."""
        if not self.distributed:
            return fn()
        box = [None]
        if self.is_main:
            try:
                box[0] = (True, fn())
            except (Exception, SystemExit) as e:  # noqa: BLE001  (re-raised on every rank just below)
                box[0] = (False, e)
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def sampler(self, dataset, seed: int, epoch: int):
        """The epoch's shard of a shuffled ``dataset`` (``None`` for a plain run: the DataLoader shuffles).

        ``drop_last``: the last ``len % world`` indices of the permutation (fewer than ``world``) are left out so
        the shards stay disjoint; a one-process run of the same global batch drops them too (its last, partial
        batch).
        """
        if not self.distributed:
            return None
        from torch.utils.data.distributed import DistributedSampler

        s = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed,
                               drop_last=True)
        s.set_epoch(epoch)
        return s

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around ``model`` (which stays the module to validate, label with and save)."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(self.device).index] if self.backend == "nccl" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's BatchNorm running statistics on every rank (each rank's last forward updated its own)."""
        if self.distributed:
            for b in model.buffers():
                dist.broadcast(b, src=0)

    def describe(self, global_batch: int, lr: float) -> str:
        return (f"distributed: rank {self.rank} of {self.world} ({self.backend}, {self.local_world} on this node, "
                f"{torch.get_num_threads()} torch threads each); --batch-size {global_batch} is the global batch = "
                f"{self.world} x {global_batch // self.world} per rank; --lr {lr:g} is for that global batch, as for "
                f"one process (same flags, same optimisation)")


def init(device: torch.device, timeout_s: float, environ=os.environ) -> tuple[Context, torch.device]:
    """Join the process group when torchrun started this process; else a plain :class:`Context`.

    Returns the context and the device this rank trains on (``cuda:LOCAL_RANK`` on GPU).
    """
    if "WORLD_SIZE" not in environ:
        return Context(), device
    try:
        rank, world, local_rank = int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"])
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: WORLD_SIZE is set but the torchrun environment is incomplete ({e}): start "
                         "distributed runs with torchrun, or unset WORLD_SIZE for a single process") from None
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Context(rank, world, local_rank, local_world, backend, str(device)), device


def launch(fn, args, device: torch.device, timeout_s: float):
    """``fn(args, ctx, device)``: plainly for one process; as a torchrun worker, with its error recorded for the
    agent's summary (``record``) and the process group left after a clean end."""
    ctx, device = init(device, timeout_s)
    if not ctx.distributed:
        return fn(args, ctx, device)
    from torch.distributed.elastic.multiprocessing.errors import record

    result = record(fn)(args, ctx, device)
    dist.barrier()  # no rank closes its connections while a peer still talks to it
    dist.destroy_process_group()
    return result
