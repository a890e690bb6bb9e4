"""The exceptions :mod:`htr.serve` raises: the server cannot run as asked, or a new version cannot be rolled out."""
from __future__ import annotations


class ServerError(RuntimeError):
    """tritonserver could not be started, did not become ready, or its set-up is incomplete."""


class PublishError(ServerError):
    """``htr publish`` could not switch the running server to another version; ``str(e)`` says why in one line,
    and the version served before still serves."""
