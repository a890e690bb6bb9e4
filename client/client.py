"""``HTRClient``: recognise images with the served model, over gRPC or HTTP.

    with HTRClient("127.0.0.1:8001") as client:               # gRPC; HTTP: ("127.0.0.1:8000", protocol="http")
        for p in client.recognize(["a.jpg", png_bytes, array, pil_image]):
            print(p.text, p.confidence, p.error)
        preds = client.recognize_many(paths, concurrency=8, progress=bar.update)   # large folders

Connecting reads the model's config from the server (alphabet, input size, ``max_batch_size``), checks it
against ``expected_alphabet`` / ``model_version`` and fails with a typed error that says what to do
(:mod:`htr.client.errors`). Requests hold at most ``max_batch_size`` images; longer lists are split.
Failures of single images are returned on their ``Prediction.error``; failures of the server raise.
Retries follow :class:`htr.client.errors.RetryPolicy`: only unreachable server, timeouts and dead model
instances (a python-backend stub that died), with backoff.
"""
from __future__ import annotations

import os
import threading
import time
import warnings

import numpy as np

from htr.runtime.contract import CRNN, CTC_DECODE, ENSEMBLE

from .errors import (NO_MODEL, RETRYABLE, TIMEOUT, UNHEALTHY, UNREACHABLE, ConfigMismatchError, HTRClientError,
                     InferenceError, InferenceTimeoutError, ModelNotReadyError, RetryPolicy, ServerUnreachableError,
                     classify, describe)
from .pipeline import Batch, ClientPreprocess, Prediction, ServedModel, ServerPreprocess, assemble, served_decoding
from .shm import SlotPool

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
PROTOCOLS = ("grpc", "http")
PREPROCESS = ("server", "client")
# Triton >= 2.50 refuses to unregister a region a request still holds ("... it is currently in use"); the
# server may release it a moment after the response reached us, so unregistering waits up to 2 s for it.
IN_USE, UNREGISTER_ATTEMPTS, UNREGISTER_WAIT_S = "currently in use", 40, 0.05
SHM_REFUSED = ("{url} could not map this client's shared memory ({error}); shared_memory=True needs the client "
               "on the server's host, sharing its /dev/shm (docker: --ipc=host). Use shared_memory=False otherwise.")


def _as_list(images) -> list:
    one = (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray)
    if isinstance(images, one) or type(images).__module__.startswith("PIL."):
        raise TypeError(f"pass a list of images, not one {type(images).__name__}: recognize([image])")
    return list(images)


def _states(index) -> tuple[dict[str, str], dict[str, list[str]], dict[str, str]]:
    """Repository index (gRPC ``{"models": [...]}`` or HTTP ``[...]``) -> name -> state, READY versions, reason."""
    entries = index.get("models", []) if isinstance(index, dict) else (index or [])
    states, ready, reasons = {}, {}, {}
    for e in entries:
        name, state = e.get("name", "?"), e.get("state") or "NOT LOADED"  # no state: in the repository only
        if state == "READY":
            ready.setdefault(name, []).append(str(e.get("version", "")))
        if states.get(name) != "READY":
            states[name] = state
        if e.get("reason"):
            reasons[name] = e["reason"]
    return states, ready, reasons


class _ClientBase:
    """Arguments, the served model and the error mapping, shared by the sync and async clients."""

    def __init__(self, url, protocol, model, pixels_model, preprocess, timeout_s, connect_timeout_s, retries,
                 backoff_s, shared_memory, batch_size, expected_alphabet, model_version, decoder, beam_width,
                 lexicon, preprocess_threads, headers=None, name_model=None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
        if decoder not in ("greedy", "beam", "served"):
            raise ValueError(f"decoder must be 'greedy', 'beam' or 'served', got {decoder!r}")
        if decoder == "served" and lexicon is not None:
            raise ValueError("decoder='served' reads the served ctc_decode's own decoding; a lexicon is "
                             "decoder='beam'")
        if name_model is not None and decoder != "served":
            raise ValueError("name_model is for decoder='served' (the client decodes as the server's ctc_decode, "
                             "with the same name model and weights)")
        if preprocess == "server" and (decoder != "greedy" or lexicon is not None or name_model is not None):
            raise ValueError("decoder/lexicon choose the client-side decoding of preprocess='client'; with "
                             "preprocess='server' the served ctc_decode model decides (build_engine --decoder/--lexicon)")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be > 0 seconds")
        url = url or DEFAULT_URLS[protocol]
        for scheme in ("http://", "https://", "grpc://"):
            url = url.removeprefix(scheme)
        self.url, self.protocol, self.preprocess = url.rstrip("/"), protocol, preprocess
        self.model_name = model if preprocess == "server" else pixels_model
        self.model_version = str(model_version or "")
        self.timeout_s, self.connect_timeout_s = float(timeout_s), float(connect_timeout_s)
        self.retry = RetryPolicy(retries, backoff_s)
        self.expected_alphabet = expected_alphabet
        self._batch_size = batch_size
        self._codec_args = {"decoder": decoder, "beam_width": beam_width, "lexicon": lexicon,
                            "threads": preprocess_threads}
        self._name_model = name_model
        self.served: ServedModel | None = None
        self.codec: ServerPreprocess | ClientPreprocess | None = None
        self.slots = SlotPool() if shared_memory else None
        self.headers = dict(headers) if headers else None

    @property
    def shared_memory(self) -> bool:
        return self.slots is not None

    @property
    def config(self):
        """The served :class:`htr.config.HTRConfig` (alphabet, blank, input size)."""
        return self._served().config

    @property
    def max_batch_size(self) -> int:
        return self._served().max_batch_size

    @property
    def batch_size(self) -> int:
        """Images per request: ``batch_size`` if given (capped at the server's ``max_batch_size``), else the max."""
        m = self.max_batch_size
        return min(self._batch_size, m) if self._batch_size else m

    def _served(self) -> ServedModel:
        if self.served is None:
            raise HTRClientError("not connected: call connect() first (or construct with connect=True)")
        return self.served

    def _chunk_size(self, batch_size: int | None) -> int:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return min(batch_size, self.max_batch_size) if batch_size else self.batch_size

    # -- connect-time decisions
    def _not_ready_error(self, index) -> HTRClientError:
        states, ready, reasons = _states(index)
        name, version = self.model_name, self.model_version
        if version and ready.get(name):
            return ConfigMismatchError(name, self.url, "model version", version, sorted(ready[name]),
                                       "the server has other versions of this model ready")
        reason = ""
        if name in reasons:
            reason = f"{states.get(name, '?')}: {reasons[name]}"
        elif version and name in states:
            reason = f"version {version} is not loaded"
        return ModelNotReadyError(name, self.url, states, reason)

    @property
    def _decodes_as_served(self) -> bool:
        return self.preprocess == "client" and self._codec_args["decoder"] == "served"

    def _on_config(self, raw: dict, decode_raw: dict | None = None) -> None:
        served = ServedModel.from_config(self.model_name, self.model_version, self.url, raw)
        served.check(self.url, self.expected_alphabet)
        if self.preprocess == "server":
            codec = ServerPreprocess(served, self.url)
        elif self._decodes_as_served:
            decoding = served_decoding(decode_raw or {}, self.url, self._name_model)
            codec = ClientPreprocess(served, self.url, threads=self._codec_args["threads"], **decoding)
        else:
            codec = ClientPreprocess(served, self.url, **self._codec_args)
        self.served, self.codec = served, codec

    # -- error mapping
    def _typed(self, exc: BaseException, kind: str, attempts: int, model: str | None, index=None) -> HTRClientError:
        detail = describe(exc)
        if kind == UNREACHABLE:
            return ServerUnreachableError(self.url, self.protocol, detail, attempts)
        if kind == TIMEOUT:
            timeout = self.timeout_s if model else self.connect_timeout_s
            return InferenceTimeoutError(model or "the server", self.url, timeout, attempts, detail)
        if kind == NO_MODEL:
            states = _states(index)[0] if index is not None else None
            return ModelNotReadyError(model or self.model_name, self.url, states, detail)
        if kind == UNHEALTHY:
            return InferenceError(f"{model or 'the server'} on {self.url} failed the request {attempts} time(s), "
                                  f"a model instance's process is dead: {detail}")
        return InferenceError(f"{model or 'the server'} on {self.url} refused the request: {detail}")

    def _grpc_kw(self, infer: bool = False) -> dict:
        """Per-call keywords: gRPC takes a timeout per call (HTTP's are set on the connection) ..."""
        kw = {"client_timeout": self.timeout_s if infer else self.connect_timeout_s} if self.protocol == "grpc" else {}
        return {**kw, "headers": self.headers} if self.headers else kw

    def _json_kw(self) -> dict:
        """... and answers metadata calls in protobuf unless asked for JSON (HTTP always answers JSON)."""
        return {"as_json": True, **self._grpc_kw()} if self.protocol == "grpc" else self._grpc_kw()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.url!r}, protocol={self.protocol!r}, model={self.model_name!r}, "
                f"preprocess={self.preprocess!r}, shared_memory={self.shared_memory})")


class HTRClient(_ClientBase):
    """Synchronous client (gRPC or HTTP). Thread-safe; ``recognize_many`` runs requests concurrently.

    Args:
        url: ``host:port`` (default 127.0.0.1:8001 for gRPC, :8000 for HTTP).
        protocol: ``"grpc"`` or ``"http"``.
        model: the ensemble called with ``preprocess="server"``; ``pixels_model``: the network called with
            ``preprocess="client"``.
        preprocess: ``"server"`` sends encoded images; ``"client"`` decodes, preprocesses and CTC-decodes
            here and sends pixels (less server CPU, more bytes on the wire; see bench/client_bench.py).
        timeout_s: per inference request; ``connect_timeout_s``: per health/metadata call.
        retries, backoff_s: see :class:`~htr.client.errors.RetryPolicy` (unreachable, timeouts, dead model instances).
        shared_memory: pass tensors through system shared memory (client on the server's host).
        batch_size: images per request (default and maximum: the model's ``max_batch_size``).
        expected_alphabet, model_version: checked at connect time (ConfigMismatchError when they differ).
        decoder, beam_width, lexicon: client-side CTC decoding (``preprocess="client"`` only; greedy by default).
            ``decoder="served"`` decodes as the server's ``ctc_decode`` does (its decoder, beam width, name-model
            weight and bonus, read from its config at connect time): the same text as the ensemble.
        name_model: with ``decoder="served"``, the served name model's ``.npz`` (e.g. ``models/names_lm.npz``
            from ``make name-model``); its fingerprint must equal the one the export wrote into ``ctc_decode``.
        preprocess_threads: OpenMP threads of the client-side preprocessing kernel.
        connect: connect (and check) now; otherwise call :meth:`connect` before recognising.
        headers: sent with every call: an authenticating proxy's token, or ``htr serve``'s admin key
            (``TritonServer.admin_headers``: ``htr-admin-key`` for HTTP, ``triton-grpc-protocol-htr-admin-key``
            for gRPC), which lets a not-ready error list the server's models and, on a server exposed
            beyond loopback, allows ``shared_memory``.
    """

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = ENSEMBLE, *,
                 pixels_model: str = CRNN, preprocess: str = "server", timeout_s: float = 60.0,
                 connect_timeout_s: float = 5.0, retries: int = 2, backoff_s: float = 0.2,
                 shared_memory: bool = False, batch_size: int | None = None, expected_alphabet: str | None = None,
                 model_version: str = "", decoder: str = "greedy", beam_width: int = 10, lexicon=None,
                 preprocess_threads: int = 1, connect: bool = True, headers: dict[str, str] | None = None,
                 name_model=None):
        super().__init__(url, protocol, model, pixels_model, preprocess, timeout_s, connect_timeout_s, retries,
                         backoff_s, shared_memory, batch_size, expected_alphabet, model_version, decoder,
                         beam_width, lexicon, preprocess_threads, headers, name_model)
        if protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        self._mod = mod
        self._client = self._new_client()
        self._registered: set[str] = set()
        self._lock = threading.Lock()
        if connect:
            try:
                self.connect()
            except BaseException:
                self.close()
                raise

    def _new_client(self):
        if self.protocol == "grpc":
            return self._mod.InferenceServerClient(self.url)
        return self._mod.InferenceServerClient(self.url, connection_timeout=self.connect_timeout_s,
                                               network_timeout=self.timeout_s)

    # -- calls with retries
    def _call(self, fn, model: str | None = None, client=None):
        """``fn(client)`` with the retry policy; tritonclient failures become typed errors. ``model`` names
        the model of an inference call (its timeout is ``timeout_s``); None for health/metadata calls."""
        client = client or self._client
        if client is None:
            raise HTRClientError(f"{self!r} is closed")
        for attempt in range(self.retry.attempts):
            try:
                return fn(client)
            except Exception as e:  # noqa: BLE001  (classified; unknown ones re-raised as they are)
                kind = classify(e)
                if kind is None:
                    raise
                if kind in RETRYABLE and attempt + 1 < self.retry.attempts:
                    time.sleep(self.retry.delay(attempt))
                    continue
                index = self._index_or_none(client) if kind == NO_MODEL else None
                raise self._typed(e, kind, attempt + 1, model, index) from e

    def _index_or_none(self, client):
        try:
            return client.get_model_repository_index(**self._json_kw())
        except Exception:  # noqa: BLE001  (only used to enrich an error message)
            return None

    def connect(self) -> "HTRClient":
        """Check the server is live and the model ready, read its config, check expectations."""
        name, version, kw = self.model_name, self.model_version, self._grpc_kw()
        self._call(lambda c: c.is_server_live(**kw))
        if not self._call(lambda c: c.is_model_ready(name, version, **kw)):
            # the index only enriches the error; `htr serve` restricts the repository API (admin key)
            raise self._not_ready_error(self._index_or_none(self._client))
        raw = self._call(lambda c: c.get_model_config(name, version, **self._json_kw()))
        decode_raw = self._call(lambda c: c.get_model_config(CTC_DECODE, "", **self._json_kw())) \
            if self._decodes_as_served else None
        self._on_config(raw, decode_raw)
        return self

    def is_ready(self) -> bool:
        """Server ready and the model ready; False (never an exception) when either is not or unreachable."""
        try:
            kw = self._grpc_kw()
            return bool(self._client.is_server_ready(**kw)
                        and self._client.is_model_ready(self.model_name, self.model_version, **kw))
        except Exception:  # noqa: BLE001
            return False

    # -- shared memory
    def _unregister(self, client, name: str) -> None:
        for attempt in range(UNREGISTER_ATTEMPTS):
            try:
                return client.unregister_system_shared_memory(name, **self._grpc_kw())
            except Exception as e:  # noqa: BLE001
                if IN_USE not in describe(e) or attempt + 1 == UNREGISTER_ATTEMPTS:
                    raise
                time.sleep(UNREGISTER_WAIT_S)

    def _prepare_slot(self, client, batch: Batch):
        """A slot whose regions fit ``batch``, registering new ones with the server (once each)."""
        slot = self.slots.acquire()
        try:
            for role, size in slot.missing(self.codec.shm_sizes(batch)):
                old = slot.regions.get(role)
                if old is not None:
                    self._call(lambda c: self._unregister(c, old.name), client=client)
                    self._registered.discard(old.name)
                    old.destroy()
                new = slot.create(role, size, self.slots.next_generation())
                try:
                    self._call(lambda c: c.register_system_shared_memory(new.name, new.key, new.size,
                                                                         **self._grpc_kw()), client=client)
                except InferenceError as e:
                    raise HTRClientError(SHM_REFUSED.format(url=self.url, error=e)) from e
                self._registered.add(new.name)
        except BaseException:
            self.slots.release(slot)
            raise
        return slot

    # -- recognition
    def _run_batch(self, client, items) -> list[Prediction]:
        batch = self.codec.batch(items)
        if not batch.sent:
            return assemble(batch, [])
        slot = self._prepare_slot(client, batch) if self.slots is not None else None
        try:
            inputs, outputs = self.codec.request(self._mod, batch, slot)
            result = self._call(lambda c: c.infer(self.model_name, inputs, model_version=self.model_version,
                                                  outputs=outputs, **self._grpc_kw(infer=True)),
                                model=self.model_name, client=client)
            return assemble(batch, self.codec.parse(result, batch, slot))
        except InferenceError as e:  # refused: this request's images fail, the others go on
            return assemble(batch, None, refused=str(e))
        finally:
            if slot is not None:
                self.slots.release(slot)

    def recognize(self, images, batch_size: int | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image, in order; requests of at most ``batch_size`` images, one at a time."""
        images = _as_list(images)
        n = self._chunk_size(batch_size)
        out: list[Prediction] = []
        for start in range(0, len(images), n):
            out += self._run_batch(self._client, images[start : start + n])
        return out

    def recognize_many(self, items, concurrency: int = 8, batch_size: int | None = None, progress=None) -> list[Prediction]:
        """As :meth:`recognize` for large inputs: up to ``concurrency`` requests in flight (threads), items
        read lazily one request at a time, ``progress(n)`` called as each request's ``n`` images finish
        (e.g. ``tqdm(...).update``). The first server-level error stops the others and is raised."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        items = _as_list(items)
        n = self._chunk_size(batch_size)
        chunks = iter([(s, items[s : s + n]) for s in range(0, len(items), n)])
        results: list[Prediction | None] = [None] * len(items)
        lock, failed = threading.Lock(), []

        def worker():
            # gRPC clients are thread-safe; the HTTP one (gevent) is not, so each thread gets its own
            client = self._client if self.protocol == "grpc" else self._new_client()
            try:
                while not failed:
                    with lock:
                        nxt = next(chunks, None)
                    if nxt is None:
                        return
                    start, chunk = nxt
                    results[start : start + len(chunk)] = self._run_batch(client, chunk)
                    if progress is not None:
                        with lock:
                            progress(len(chunk))
            except BaseException as e:  # noqa: BLE001  (handed to the caller's thread)
                with lock:
                    failed.append(e)
            finally:
                if client is not self._client:
                    client.close()

        threads = [threading.Thread(target=worker, name=f"htr-client-{i}", daemon=True)
                   for i in range(min(concurrency, -(-len(items) // n)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise failed[0]
        return results

    # -- lifecycle
    def close(self) -> None:
        """Unregister and free the shared memory regions, close the connection. Safe to call twice."""
        with self._lock:
            if self.slots is not None:
                for region in self.slots.regions():
                    if region.name in self._registered:
                        try:
                            self._unregister(self._client, region.name)
                        except Exception as e:  # noqa: BLE001  (the server may be gone: nothing to unregister)
                            warnings.warn(f"could not unregister shared memory region {region.name} from "
                                          f"{self.url}: {describe(e)}", RuntimeWarning, stacklevel=2)
                self._registered.clear()
                self.slots.clear()
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> "HTRClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
