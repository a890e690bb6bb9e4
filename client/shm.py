"""System shared memory for a client on the same host as the server: tensors go through ``/dev/shm``
instead of the socket.

A :class:`Slot` holds the regions one in-flight request needs, by role: ``pixels`` (input) and
``logprobs`` (output) for the ``crnn`` path, ``bytes`` (input) for the ensemble path, whose string outputs
stay on the socket because their size is only known afterwards. A region is created and registered with
the server the first time its role is needed and then reused by every later request of that slot; a
``bytes`` region too small for a request is replaced by one twice as large. :class:`SlotPool` hands out
one slot per concurrent request and, on close, the client unregisters every region and destroys it.

The server must see the same ``/dev/shm``: same host (or container sharing the IPC namespace, e.g.
``docker run --ipc=host``) and permission to open the files.
"""
from __future__ import annotations

import itertools
import os
import threading
import uuid
import weakref

import numpy as np

MIN_BYTES_REGION = 1 << 20  # 1 MiB, grown by doubling


class Region:
    """One registered system shared memory region: Triton name ``name``, POSIX key ``key``."""

    def __init__(self, name: str, key: str, size: int):
        from tritonclient.utils import shared_memory as shm

        self.name, self.key, self.size = name, key, int(size)
        self.handle = shm.create_shared_memory_region(name, key, self.size, create_only=True)

    def write(self, data: np.ndarray | bytes) -> int:
        """Copy ``data`` to the start of the region; returns the bytes written."""
        buf = self.handle._mpsm_handle.buf  # tritonclient copies through numpy too; bytes go in directly
        if isinstance(data, np.ndarray):
            view = np.ndarray(data.shape, data.dtype, buffer=buf)
            view[...] = data
            return data.nbytes
        buf[: len(data)] = data
        return len(data)

    def read(self, dtype, shape) -> np.ndarray:
        """A copy of the region's start as an array (the region is overwritten by the next request)."""
        count = int(np.prod(shape))
        return np.frombuffer(self.handle._mpsm_handle.buf, dtype=dtype, count=count).reshape(shape).copy()

    def destroy(self) -> None:
        from tritonclient.utils import shared_memory as shm

        if self.handle is not None:
            handle, self.handle = self.handle, None
            shm.destroy_shared_memory_region(handle)


class Slot:
    """The regions of one in-flight request, by role."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.regions: dict[str, Region] = {}

    def missing(self, sizes: dict[str, int]) -> list[tuple[str, int]]:
        """``(role, size)`` for each role without a region of at least the size asked (to create)."""
        out = []
        for role, size in sizes.items():
            have = self.regions.get(role)
            if have is None or have.size < size:
                if role == "bytes":
                    size = max(MIN_BYTES_REGION, 1 << (int(size) - 1).bit_length(), 2 * (have.size if have else 0))
                out.append((role, int(size)))
        return out

    def create(self, role: str, size: int, generation: int) -> Region:
        region = Region(f"{self.prefix}-{role}-{generation}", f"/{self.prefix}-{role}-{generation}", size)
        self.regions[role] = region
        return region


class SlotPool:
    """Slots shared by the threads (or tasks) of one client; a slot is used by one request at a time."""

    def __init__(self):
        self.prefix = f"htr-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._free: list[Slot] = []
        self._all: list[Slot] = []
        self._lock = threading.Lock()
        self._generation = itertools.count()
        # the /dev/shm files must not outlive the process even if close() is never called
        self._finalizer = weakref.finalize(self, _destroy_slots, self._all)

    def acquire(self) -> Slot:
        with self._lock:
            if self._free:
                return self._free.pop()
            slot = Slot(f"{self.prefix}-{len(self._all)}")
            self._all.append(slot)
            return slot

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._free.append(slot)

    def next_generation(self) -> int:
        with self._lock:
            return next(self._generation)

    def regions(self) -> list[Region]:
        with self._lock:
            return [r for s in self._all for r in s.regions.values()]

    def clear(self) -> None:
        """Destroy every local region (after the client unregistered them from the server)."""
        with self._lock:
            _destroy_slots(self._all)
            self._all.clear()
            self._free.clear()


def _destroy_slots(slots: list[Slot]) -> None:
    for slot in slots:
        for region in slot.regions.values():
            try:
                region.destroy()
            except Exception:  # noqa: BLE001  (already gone: nothing left to free)
                pass
        slot.regions.clear()
