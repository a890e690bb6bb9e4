"""The one exception every part of :mod:`htr.serve` raises when the server cannot run as asked."""
from __future__ import annotations


class ServerError(RuntimeError):
    """tritonserver could not be started, did not become ready, or its set-up is incomplete."""
