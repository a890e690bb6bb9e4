"""Typed client errors, each saying what to do, and the retry policy that decides which failures are retried.

What is retried (with exponential backoff, ``RetryPolicy``):

- the server cannot be reached: connection refused or reset, gRPC ``UNAVAILABLE``, HTTP 502/503/504, or
  it dropped the call (gRPC ``CANCELLED``: this client never cancels, so it is the server shutting down);
- a call ran past its timeout: gRPC ``DEADLINE_EXCEEDED``, an HTTP socket timeout. Inference here is
  idempotent (the same images give the same text, nothing is stored server-side), so sending a request
  again after a timeout is safe; it only costs the server the work twice;
- a model instance whose python-backend process died ("Stub process '<instance>' is not healthy"): Triton
  2.51 answers so until the model is reloaded (``htr serve --heal-stubs`` does it within seconds), and the
  next attempt may also reach another, healthy instance. Give such a server enough retries to cover a
  reload (bench/faults.py measures it).

What is never retried: anything the server answered with a refusal, i.e. an invalid argument (gRPC
``INVALID_ARGUMENT``, HTTP 400: wrong shape, batch too large, ...), an unknown model (``NOT_FOUND``,
HTTP 404), or any other error status: sending the same request again would get the same answer.
"""
from __future__ import annotations

import random
import socket
from dataclasses import dataclass

UNREACHABLE, TIMEOUT, NO_MODEL, REFUSED = "unreachable", "timeout", "no model", "refused"
UNHEALTHY = "unhealthy instance"
RETRYABLE = frozenset({UNREACHABLE, TIMEOUT, UNHEALTHY})
DEAD_STUB = ("Stub process", "is not healthy")  # python_backend's error for a request that reached a dead stub

_GRPC_KINDS = {"StatusCode.UNAVAILABLE": UNREACHABLE, "StatusCode.CANCELLED": UNREACHABLE,
               "StatusCode.DEADLINE_EXCEEDED": TIMEOUT,
               "StatusCode.NOT_FOUND": NO_MODEL}
_HTTP_KINDS = {"502": UNREACHABLE, "503": UNREACHABLE, "504": TIMEOUT, "404": NO_MODEL}


class HTRClientError(Exception):
    """Base class of every error raised by ``htr.client``."""


class ServerUnreachableError(HTRClientError):
    """No answer from the server at ``url`` (nothing listening, connection dropped, wrong port)."""

    def __init__(self, url: str, protocol: str, detail: str = "", attempts: int = 1):
        self.url, self.protocol, self.detail, self.attempts = url, protocol, detail, attempts
        port_hint = "gRPC listens on 8001 and HTTP on 8000 by default" if protocol in ("grpc", "http") else ""
        super().__init__(
            f"cannot reach the Triton server at {url} ({protocol}) after {attempts} attempt(s)"
            f"{': ' + detail if detail else ''}. Is `htr serve` running? Check the URL and the protocol "
            f"({port_hint}).")


class ModelNotReadyError(HTRClientError):
    """The server answers but the model is missing or not loaded. ``available``: name -> state on the server."""

    def __init__(self, model: str, url: str, available: dict[str, str] | None = None, reason: str = ""):
        self.model, self.url, self.available, self.reason = model, url, dict(available or {}), reason
        if available is None:
            listing = "the server's model list could not be read"
        elif not available:
            listing = "the server has no models at all"
        else:
            listing = "the server has: " + ", ".join(f"{n} ({s})" for n, s in sorted(available.items()))
        state = available.get(model) if available else None
        why = reason or (f"its state is {state}" if state else "it is not in the model repository")
        super().__init__(
            f"model {model!r} is not ready on {url}: {why}; {listing}. Check the model name, or the server log "
            "and the model repository (python export/build_engine.py writes it).")


class InferenceTimeoutError(HTRClientError):
    """A request ran past ``timeout_s`` on every attempt."""

    def __init__(self, model: str, url: str, timeout_s: float, attempts: int, detail: str = ""):
        self.model, self.url, self.timeout_s, self.attempts = model, url, timeout_s, attempts
        super().__init__(
            f"{model!r} on {url} did not answer within {timeout_s:g} s ({attempts} attempt(s))"
            f"{': ' + detail if detail else ''}; "
            "raise the timeout (timeout_s / --timeout), send smaller batches (batch_size), or check the server's load.")


class ConfigMismatchError(HTRClientError):
    """The served model is not the one this client expects (alphabet, version, or not an htr-triton model)."""

    def __init__(self, model: str, url: str, field: str, expected, actual, detail: str = ""):
        self.model, self.url, self.field, self.expected, self.actual = model, url, field, expected, actual
        super().__init__(
            f"{model!r} on {url} does not match this client: {field} expected {expected!r}, the server has "
            f"{actual!r}{'; ' + detail if detail else ''}. Point the client at the right server or model, or "
            "drop the expectation (expected_alphabet / model_version).")


class InferenceError(HTRClientError):
    """The server refused a request (never retried). Raised by single calls; ``recognize`` puts it on the
    ``Prediction.error`` of the images of that request instead, so the other requests still count."""


def classify(exc: BaseException) -> str | None:
    """UNREACHABLE, TIMEOUT, UNHEALTHY, NO_MODEL or REFUSED for a failure of a tritonclient call; None for
    anything else (a bug in the caller, re-raised unchanged)."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        kind = _GRPC_KINDS.get(status) or _HTTP_KINDS.get(status)
        if kind:
            return kind
        msg = exc.message() or ""
        if all(m in msg for m in DEAD_STUB):
            return UNHEALTHY
        if any(m in msg for m in ("unknown model", "is not found", "no available versions", "is not ready")):
            return NO_MODEL
        if status in ("", "None") and ("connect" in msg.lower() or "socket" in msg.lower()):
            return UNREACHABLE
        return REFUSED
    if isinstance(exc, (TimeoutError, socket.timeout)):  # HTTP: geventhttpclient's network timeout
        return TIMEOUT
    if isinstance(exc, (ConnectionError, socket.gaierror, EOFError)):  # refused, reset, aborted, no such host
        return UNREACHABLE
    if isinstance(exc, OSError) and exc.errno is not None:
        return UNREACHABLE  # e.g. EHOSTUNREACH, ENETUNREACH
    return None


def describe(exc: BaseException) -> str:
    """The server's (or transport's) message for a failed call, never empty: tritonclient's exceptions can
    print as an empty string, so their message, else their status, else the type name."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        return exc.message() or str(exc) or exc.status() or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first for UNREACHABLE and TIMEOUT failures, waiting
    ``backoff_s * 2**k`` (k = 0, 1, ...; capped at ``max_backoff_s``) with full jitter in [50 %, 100 %]."""

    retries: int = 2
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def __post_init__(self):
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"retries and backoff must be >= 0, got {self}")

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
