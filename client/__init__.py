"""``htr.client``: recognise handwriting with the model served by Triton (``htr serve``).

    from htr.client import HTRClient

    with HTRClient("127.0.0.1:8001") as client:                  # gRPC (HTTP: protocol="http", port 8000)
        for p in client.recognize(["name.jpg", png_bytes, bgr_array, pil_image]):
            print(p.text, p.confidence, p.error)                  # error: None, or why that image failed

Modules:

- :mod:`~htr.client.client`    :class:`HTRClient` (sync; gRPC or HTTP; ``recognize``, ``recognize_many``)
- :mod:`~htr.client.aio`       :class:`AsyncHTRClient` (asyncio, gRPC)
- :mod:`~htr.client.pipeline`  :class:`Prediction`; server-side vs client-side preprocessing
- :mod:`~htr.client.errors`    the typed errors and the retry policy
- :mod:`~htr.client.shm`       system shared memory regions (client on the server's host)
- :mod:`~htr.client.inputs`    accepted image kinds; folder expansion
- :mod:`~htr.client.cli`       ``htr recognize``

Names are imported on first use, so ``import htr.client`` (and ``htr --help``) stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "HTRClient": "client",
    "AsyncHTRClient": "aio",
    "Prediction": "pipeline",
    "HTRClientError": "errors",
    "ServerUnreachableError": "errors",
    "ModelNotReadyError": "errors",
    "InferenceTimeoutError": "errors",
    "ConfigMismatchError": "errors",
    "InferenceError": "errors",
    "RetryPolicy": "errors",
    "image_files": "inputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
