"""``AsyncHTRClient``: the asyncio client (``tritonclient.grpc.aio``), for services that already run an event
loop and for many requests in flight from one thread.

    async with AsyncHTRClient("127.0.0.1:8001") as client:          # connects and checks on entry
        preds = await client.recognize(images)
        preds = await client.recognize_many(paths, concurrency=8, progress=bar.update)

Same arguments, checks, errors, retries and results as :class:`htr.client.HTRClient` (gRPC only). Reading,
decoding and preprocessing images run in worker threads (``asyncio.to_thread``), so the loop stays free.
"""
from __future__ import annotations

import asyncio
import warnings

from htr.runtime.contract import CRNN, CTC_DECODE, ENSEMBLE

from .client import IN_USE, SHM_REFUSED, UNREGISTER_ATTEMPTS, UNREGISTER_WAIT_S, _as_list, _ClientBase
from .errors import NO_MODEL, RETRYABLE, HTRClientError, InferenceError, classify, describe
from .pipeline import Batch, Prediction, assemble


class AsyncHTRClient(_ClientBase):
    """See :class:`htr.client.HTRClient` for the arguments; ``protocol`` is always gRPC here."""

    def __init__(self, url: str | None = None, model: str = ENSEMBLE, *, pixels_model: str = CRNN,
                 preprocess: str = "server", timeout_s: float = 60.0, connect_timeout_s: float = 5.0,
                 retries: int = 2, backoff_s: float = 0.2, shared_memory: bool = False,
                 batch_size: int | None = None, expected_alphabet: str | None = None, model_version: str = "",
                 decoder: str = "greedy", beam_width: int = 10, lexicon=None, preprocess_threads: int = 1,
                 headers: dict[str, str] | None = None, name_model=None):
        super().__init__(url, "grpc", model, pixels_model, preprocess, timeout_s, connect_timeout_s, retries,
                         backoff_s, shared_memory, batch_size, expected_alphabet, model_version, decoder,
                         beam_width, lexicon, preprocess_threads, headers, name_model)
        import tritonclient.grpc as mod

        self._mod = mod
        self._client = None  # created in connect(): a grpc.aio channel belongs to the loop that uses it
        self._registered: set[str] = set()

    async def _call(self, fn, model: str | None = None):
        if self._client is None:
            raise HTRClientError(f"{self!r} is not connected: `await client.connect()` or `async with client`")
        for attempt in range(self.retry.attempts):
            try:
                return await fn(self._client)
            except Exception as e:  # noqa: BLE001  (classified; unknown ones re-raised as they are)
                kind = classify(e)
                if kind is None:
                    raise
                if kind in RETRYABLE and attempt + 1 < self.retry.attempts:
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
                index = None
                if kind == NO_MODEL:
                    try:
                        index = await self._client.get_model_repository_index(**self._json_kw())
                    except Exception:  # noqa: BLE001  (only enriches the message)
                        pass
                raise self._typed(e, kind, attempt + 1, model, index) from e

    async def connect(self) -> "AsyncHTRClient":
        import tritonclient.grpc.aio as aio

        if self._client is None:
            self._client = aio.InferenceServerClient(self.url)
        name, version, kw = self.model_name, self.model_version, self._grpc_kw()
        try:
            await self._call(lambda c: c.is_server_live(**kw))
            if not await self._call(lambda c: c.is_model_ready(name, version, **kw)):
                try:  # only enriches the error; `htr serve` restricts the repository API (admin key)
                    index = await self._client.get_model_repository_index(**self._json_kw())
                except Exception:  # noqa: BLE001
                    index = None
                raise self._not_ready_error(index)
            raw = await self._call(lambda c: c.get_model_config(name, version, **self._json_kw()))
            decode_raw = await self._call(lambda c: c.get_model_config(CTC_DECODE, "", **self._json_kw())) \
                if self._decodes_as_served else None
            self._on_config(raw, decode_raw)
        except BaseException:
            await self.close()
            raise
        return self

    async def is_ready(self) -> bool:
        if self._client is None:
            return False
        try:
            kw = self._grpc_kw()
            return bool(await self._client.is_server_ready(**kw)
                        and await self._client.is_model_ready(self.model_name, self.model_version, **kw))
        except Exception:  # noqa: BLE001
            return False

    async def _unregister(self, name: str) -> None:
        for attempt in range(UNREGISTER_ATTEMPTS):
            try:
                return await self._client.unregister_system_shared_memory(name, **self._grpc_kw())
            except Exception as e:  # noqa: BLE001
                if IN_USE not in describe(e) or attempt + 1 == UNREGISTER_ATTEMPTS:
                    raise
                await asyncio.sleep(UNREGISTER_WAIT_S)

    async def _prepare_slot(self, batch: Batch):
        slot = self.slots.acquire()
        kw = self._grpc_kw()
        try:
            for role, size in slot.missing(self.codec.shm_sizes(batch)):
                old = slot.regions.get(role)
                if old is not None:
                    await self._call(lambda c: self._unregister(old.name))
                    self._registered.discard(old.name)
                    old.destroy()
                new = slot.create(role, size, self.slots.next_generation())
                try:
                    await self._call(lambda c: c.register_system_shared_memory(new.name, new.key, new.size, **kw))
                except InferenceError as e:
                    raise HTRClientError(SHM_REFUSED.format(url=self.url, error=e)) from e
                self._registered.add(new.name)
        except BaseException:
            self.slots.release(slot)
            raise
        return slot

    async def _run_batch(self, items) -> list[Prediction]:
        batch = await asyncio.to_thread(self.codec.batch, items)
        if not batch.sent:
            return assemble(batch, [])
        slot = await self._prepare_slot(batch) if self.slots is not None else None
        try:
            inputs, outputs = self.codec.request(self._mod, batch, slot)
            result = await self._call(lambda c: c.infer(self.model_name, inputs, model_version=self.model_version,
                                                        outputs=outputs, **self._grpc_kw(infer=True)),
                                      model=self.model_name)
            return assemble(batch, await asyncio.to_thread(self.codec.parse, result, batch, slot))
        except InferenceError as e:
            return assemble(batch, None, refused=str(e))
        finally:
            if slot is not None:
                self.slots.release(slot)

    async def recognize(self, images, batch_size: int | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image, in order; requests sent one after another."""
        images = _as_list(images)
        n = self._chunk_size(batch_size)
        out: list[Prediction] = []
        for start in range(0, len(images), n):
            out += await self._run_batch(images[start : start + n])
        return out

    async def recognize_many(self, items, concurrency: int = 8, batch_size: int | None = None,
                             progress=None) -> list[Prediction]:
        """Up to ``concurrency`` requests in flight; ``progress(n)`` after each request's ``n`` images.
        The first server-level error cancels the other requests and is raised."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        items = _as_list(items)
        n = self._chunk_size(batch_size)
        chunks = iter(range(0, len(items), n))
        results: list[Prediction | None] = [None] * len(items)

        async def worker():
            for start in chunks:  # one shared iterator: each chunk is taken by exactly one worker
                chunk = items[start : start + n]
                results[start : start + len(chunk)] = await self._run_batch(chunk)
                if progress is not None:
                    progress(len(chunk))

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, -(-len(items) // n)))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return results

    async def close(self) -> None:
        """Unregister and free the shared memory regions, close the channel. Safe to call twice."""
        if self.slots is not None:
            if self._client is not None:
                for region in self.slots.regions():
                    if region.name in self._registered:
                        try:
                            await self._unregister(region.name)
                        except Exception as e:  # noqa: BLE001  (the server may be gone: nothing to unregister)
                            warnings.warn(f"could not unregister shared memory region {region.name} from "
                                          f"{self.url}: {describe(e)}", RuntimeWarning, stacklevel=2)
            self._registered.clear()
            self.slots.clear()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> "AsyncHTRClient":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()
