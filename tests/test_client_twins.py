"""The sync and async clients are twins, as tritonclient's own pair is: same public methods, same parameters.

A method added to one of :class:`~htr.client.HTRClient` and :class:`~htr.client.AsyncHTRClient` and not the
other, or a parameter that differs, fails here. Two differences are by design: the async client speaks gRPC
only (no ``protocol``), and it cannot connect inside ``__init__`` (a grpc.aio channel belongs to the running
loop), so it has no ``connect=`` switch: ``await client.connect()`` or ``async with`` does it.
"""
from __future__ import annotations

import inspect

from htr.client import AsyncHTRClient, HTRClient

SYNC_ONLY_PARAMETERS = {"protocol", "connect"}  # see the module docstring


def _public(cls) -> dict[str, object]:
    return {name: member for name, member in inspect.getmembers(cls)
            if not name.startswith("_") or name in ("__init__",)}


def _parameters(fn) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name not in SYNC_ONLY_PARAMETERS]


def test_same_public_methods():
    sync, aio = _public(HTRClient), _public(AsyncHTRClient)
    assert sorted(sync) == sorted(aio)


def test_same_parameters_and_defaults():
    sync, aio = _public(HTRClient), _public(AsyncHTRClient)
    for name, member in sync.items():
        if callable(member):
            assert _parameters(member) == _parameters(aio[name]), name


def test_async_methods_are_coroutines_where_the_sync_ones_do_io():
    for name in ("connect", "is_ready", "recognize", "recognize_many", "close"):
        assert inspect.iscoroutinefunction(getattr(AsyncHTRClient, name)), name
        assert not inspect.iscoroutinefunction(getattr(HTRClient, name)), name


def test_both_are_context_managers():
    assert hasattr(HTRClient, "__enter__") and hasattr(HTRClient, "__exit__")
    assert hasattr(AsyncHTRClient, "__aenter__") and hasattr(AsyncHTRClient, "__aexit__")
