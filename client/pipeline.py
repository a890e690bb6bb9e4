"""The protocol-free half of the client: what a request carries and what its answer means.

Two ways to recognise a batch, chosen by ``preprocess``:

- ``"server"`` (:class:`ServerPreprocess`): encoded images go to the ensemble ``htr``
  (``IMAGE_BYTES`` ``[N, 1]`` BYTES), which answers ``TEXT``, ``CONFIDENCE`` and ``ERROR`` per image;
- ``"client"`` (:class:`ClientPreprocess`): images are decoded and preprocessed here with
  :mod:`htr.preprocess` (input size and binarisation from the served model's ``htr_config``), only the
  network runs on the server (``crnn``: ``PIXELS`` ``[N, 1, H, W]`` -> ``LOGPROBS`` ``[N, T, C]``), and the
  CTC decoding runs here (greedy, beam search with an optional lexicon, or ``decoder="served"``: the served
  ``ctc_decode``'s own decoding, read from its config, with the name model file it names checked by
  fingerprint, so the client reads the text the ensemble would).

Both read the same ``htr_config`` the server's models were built with, so a client never carries its own
copy of the alphabet or the input geometry. The sync and async clients share everything here; they only
differ in how they send the request.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from htr.config import HTRConfig
from htr.runtime.contract import CONFIDENCE, CONFIG_KEY, ERROR, IMAGE_BYTES, TEXT

from .errors import ConfigMismatchError
from .inputs import Loaded, load_decoded, load_encoded



@dataclass
class Prediction:
    """One image's result. ``error`` is None when the image was read; otherwise ``text`` is "", ``confidence``
    0 and ``error`` says why (unreadable file, corrupt image, request refused by the server, ...).
    ``source`` is the path for images given as paths, else None."""

    text: str
    confidence: float
    error: str | None = None
    source: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def served_decoding(raw: dict, url: str, name_model) -> dict:
    """``ClientPreprocess`` keywords that decode as the served ``ctc_decode`` does (``raw``: its
    ``get_model_config`` JSON). Its name model must be ``name_model`` (a path or ``NameModel``) with the
    fingerprint the export wrote; a served lexicon file cannot be read from the server: both are refused
    with a ConfigMismatchError that says what to pass."""
    from htr.ctc_decoder import DecodingSpec
    from htr.runtime.contract import CTC_DECODE

    raw = raw.get("config", raw)
    params = {k: v.get("string_value", "") for k, v in (raw.get("parameters") or {}).items()}
    spec = DecodingSpec.from_params(params)
    if params.get("lexicon_file"):
        raise ConfigMismatchError(CTC_DECODE, url, "decoding", "no lexicon file", params["lexicon_file"],
                                  "the served decoding is constrained to a lexicon the client cannot download: "
                                  "pass decoder='beam', lexicon=<the same file>")
    out = {"decoder": spec.decoder, "beam_width": spec.beam_width}
    if not params.get("name_model_file"):
        return out
    served_fp = params.get("name_model_fingerprint")
    if name_model is None:
        raise ConfigMismatchError(CTC_DECODE, url, "name model", "none", f"fingerprint {served_fp}",
                                  "the served decoding uses a name model: pass name_model=<its .npz> "
                                  "(make name-model builds models/names_lm.npz), or decode greedy")
    from htr.preprocess import NameModel

    model = name_model if isinstance(name_model, NameModel) else NameModel.load(name_model)
    if served_fp is None or model.fingerprint != served_fp:
        raise ConfigMismatchError(CTC_DECODE, url, "name model fingerprint", model.fingerprint, served_fp,
                                  "decoding with another name model would read other text: use the file the "
                                  "repository was exported with (its ctc_decode version folder holds it)"
                                  if served_fp else "the repository predates name model fingerprints: re-export it")
    return {**out, "name_model": model, "lm_weight": spec.lm_weight, "insertion_bonus": spec.insertion_bonus}


@dataclass(frozen=True)
class ServedModel:
    """What the server says about the model a client calls: read at connect time, never typed by hand."""

    name: str
    version: str  # "" = the server's latest
    config: HTRConfig
    max_batch_size: int
    inputs: dict = field(default_factory=dict)  # name -> Triton datatype ("FP32", "BYTES")
    outputs: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, version: str, url: str, raw: dict) -> "ServedModel":
        """Parse ``get_model_config`` JSON (gRPC ``as_json`` or HTTP; both carry the same fields)."""
        raw = raw.get("config", raw)
        text = raw.get("parameters", {}).get(CONFIG_KEY, {}).get("string_value")
        if not text:
            raise ConfigMismatchError(name, url, f"parameter {CONFIG_KEY!r}", "an HTRConfig JSON", None,
                                      "the model was not written by htr-triton's export/build_engine.py")
        try:
            cfg = HTRConfig.from_json(text)
        except (ValueError, TypeError) as e:
            raise ConfigMismatchError(name, url, f"parameter {CONFIG_KEY!r}", "a valid HTRConfig JSON", text[:80],
                                      str(e)) from None
        max_batch = int(raw.get("max_batch_size", 0) or 0)
        if max_batch < 1:
            raise ConfigMismatchError(name, url, "max_batch_size", ">= 1 (a batched model)", max_batch)

        def tensors(key):
            return {t["name"]: str(t.get("data_type", "")).removeprefix("TYPE_").replace("STRING", "BYTES")
                    for t in raw.get(key, [])}

        return cls(name, version, cfg, max_batch, tensors("input"), tensors("output"))

    def check(self, url: str, expected_alphabet: str | None) -> None:
        """ConfigMismatchError unless the alphabet is the one expected (None: anything goes)."""
        if expected_alphabet is None or expected_alphabet == self.config.alphabet:
            return
        have, want = self.config.alphabet, expected_alphabet
        lacks = "".join(c for c in want if c not in have)
        extra = "".join(c for c in have if c not in want)
        detail = ", ".join(filter(None, [f"server lacks {lacks!r}" if lacks else "",
                                         f"server adds {extra!r}" if extra else "",
                                         "same characters in another order (class indices differ)"
                                         if not lacks and not extra else ""]))
        raise ConfigMismatchError(self.name, url, "alphabet", want, have, detail)

    def require(self, url: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        missing = [n for n in inputs if n not in self.inputs] + [n for n in outputs if n not in self.outputs]
        if missing:
            raise ConfigMismatchError(self.name, url, "tensors", f"inputs {list(inputs)}, outputs {list(outputs)}",
                                      f"inputs {list(self.inputs)}, outputs {list(self.outputs)}",
                                      f"missing {missing}, so {self.name!r} is not the "
                                      f"{'ensemble' if 'TEXT' in outputs else 'crnn'} model")


@dataclass
class Batch:
    """One request's worth of images: ``loaded`` (every image, errors included), ``sent`` (indices into
    ``loaded`` of the images in the request) and ``data`` (the request tensor: BYTES objects or pixels)."""

    loaded: list[Loaded]
    sent: list[int]
    data: object = None


class ServerPreprocess:
    """Encoded bytes -> the ensemble -> (text, confidence, error)."""

    INPUT, OUTPUTS = IMAGE_BYTES, (TEXT, CONFIDENCE, ERROR)

    def __init__(self, served: ServedModel, url: str):
        served.require(url, (self.INPUT,), self.OUTPUTS)
        self.served = served

    def batch(self, items) -> Batch:
        loaded = [load_encoded(x) for x in items]
        sent = [k for k, item in enumerate(loaded) if item.error is None]
        data = np.empty((len(sent), 1), dtype=np.object_)  # np.array(list of bytes) would make a fixed-width S array
        for row, k in enumerate(sent):
            data[row, 0] = loaded[k].blob
        return Batch(loaded, sent, data)

    @staticmethod
    def _serialized(data: np.ndarray) -> bytes:
        """Triton's BYTES wire format: each element as a 4-byte little-endian length, then the bytes."""
        return b"".join(len(b).to_bytes(4, "little") + b for b in data.reshape(-1))

    def shm_sizes(self, batch: Batch) -> dict[str, int]:
        return {"bytes": sum(4 + len(b) for b in batch.data.reshape(-1))}

    def request(self, mod, batch: Batch, slot=None):
        inp = mod.InferInput(self.INPUT, list(batch.data.shape), "BYTES")
        if slot is None:
            inp.set_data_from_numpy(batch.data)
        else:
            region = slot.regions["bytes"]
            inp.set_shared_memory(region.name, region.write(self._serialized(batch.data)))
        return [inp], [mod.InferRequestedOutput(n) for n in self.OUTPUTS]

    def parse(self, result, batch: Batch, slot=None) -> list[tuple[str, float, str | None]]:
        texts, confs, errors = (result.as_numpy(n).reshape(-1) for n in self.OUTPUTS)
        return [(_text(t), float(c), _text(e) or None) for t, c, e in zip(texts, confs, errors)]


class ClientPreprocess:
    """Images decoded and preprocessed here -> ``crnn`` -> log-probabilities decoded here."""

    def __init__(self, served: ServedModel, url: str, decoder: str = "greedy", beam_width: int = 10,
                 lexicon=None, threads: int = 1, name_model=None, lm_weight: float = 0.0,
                 insertion_bonus: float = 0.0):
        if len(served.inputs) != 1 or len(served.outputs) != 1:
            raise ConfigMismatchError(served.name, url, "tensors", "one input (PIXELS) and one output (LOGPROBS)",
                                      f"inputs {list(served.inputs)}, outputs {list(served.outputs)}",
                                      "preprocess='client' calls the crnn model, not the ensemble")
        self.served, self.cfg = served, served.config
        # names and dtype from the config: the libtorch GPU variant calls them PIXELS__0 / LOGPROBS__0
        (self.input, self.datatype), = served.inputs.items()
        (self.output, _), = served.outputs.items()
        from tritonclient.utils import triton_to_np_dtype

        self.dtype = np.dtype(triton_to_np_dtype(self.datatype))
        from htr.ctc_decoder import CTCDecoder

        self.codec = CTCDecoder(self.cfg, decoder, beam_width, lexicon, name_model=name_model, lm_weight=lm_weight,
                                insertion_bonus=insertion_bonus)
        self.threads = threads
        ic = self.cfg.input
        # T <= W for any CNN that only downsamples, so W frames bound the output of a full batch
        self.sizes = {"pixels": served.max_batch_size * ic.height * ic.width * self.dtype.itemsize,
                      "logprobs": served.max_batch_size * ic.width * self.cfg.num_classes * 4}

    def batch(self, items) -> Batch:
        from htr.preprocess import preprocess_batch

        loaded = [load_decoded(x) for x in items]
        sent = [k for k, item in enumerate(loaded) if item.error is None]
        ic = self.cfg.input

        def run(ks):
            return preprocess_batch([loaded[k].array for k in ks], ic.height, ic.width, ic.binarize, threads=self.threads)

        try:
            pixels = run(sent)  # (N, 1, H, W)
        except ValueError:  # one bad image: find it, keep the others
            ok = []
            for k in sent:
                try:
                    run([k])
                    ok.append(k)
                except ValueError as e:
                    loaded[k].error = f"preprocessing failed: {str(e).replace('image 0', 'image', 1)}"
            sent = ok
            pixels = run(sent)
        return Batch(loaded, sent, pixels.astype(self.dtype, copy=False))

    def shm_sizes(self, batch: Batch) -> dict[str, int]:
        return self.sizes

    def request(self, mod, batch: Batch, slot=None):
        inp = mod.InferInput(self.input, list(batch.data.shape), self.datatype)
        out = mod.InferRequestedOutput(self.output)
        if slot is None:
            inp.set_data_from_numpy(batch.data)
        else:
            inp.set_shared_memory(slot.regions["pixels"].name, slot.regions["pixels"].write(batch.data))
            out.set_shared_memory(slot.regions["logprobs"].name, slot.regions["logprobs"].size)
        return [inp], [out]

    def parse(self, result, batch: Batch, slot=None) -> list[tuple[str, float, str | None]]:
        if slot is None:
            logprobs = result.as_numpy(self.output)
        else:
            out = result.get_output(self.output)
            shape = out["shape"] if isinstance(out, dict) else list(out.shape)  # HTTP: JSON; gRPC: protobuf
            logprobs = slot.regions["logprobs"].read(np.float32, shape)
        return self.decode(np.asarray(logprobs, dtype=np.float32))  # (N, T, C)

    def decode(self, logprobs: np.ndarray) -> list[tuple[str, float, str | None]]:
        """As the server's ctc_decode (the same CTCDecoder): an item with NaN/inf log-probabilities fails alone."""
        return [(t, c, e or None) for t, c, e in self.codec.decode_items(logprobs)]


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def assemble(batch: Batch, rows, refused: str | None = None) -> list[Prediction]:
    """Predictions in input order: local errors, then the server's rows (or ``refused`` for all of them)."""
    preds = [Prediction("", 0.0, item.error, item.source) for item in batch.loaded]
    if refused is not None:
        for k in batch.sent:
            preds[k].error = refused
        return preds
    for k, (text, conf, err) in zip(batch.sent, rows):
        preds[k] = Prediction(text if not err else "", conf if not err else 0.0, err, batch.loaded[k].source)
    return preds
