"""The shared shape of every python-backend ``model.py``: read the config once, gather, run, scatter.

Each served stage (``preprocess``, ``ctc_decode``, the CPU ``crnn``) is a ``TritonPythonModel`` in the shape of
python_backend's ``add_sub`` example: ``initialize`` calls :func:`stage_config` and builds every heavy object
once; ``execute`` is one call of :func:`execute_batched`, which

1. gathers each request's input tensors (a missing required input fails that request only),
2. runs an optional per-request ``check`` (a :class:`RequestError` fails that request only),
3. concatenates the requests whose inputs share a shape (or another ``group_by`` key) along the batch axis and
   calls ``run`` once per group,
4. splits ``run``'s outputs back to the requests, in order, one response per request.

A :class:`RequestError` raised by ``run`` fails the requests of that group with its message; any other
exception is logged and fails that group with the exception's text, so the stub and the other groups go on.
Torch-free: part of the serving runtime set.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from htr.config import HTRConfig

from .contract import CONFIG_KEY


class RequestError(ValueError):
    """This request (or group of requests) fails with this message; the rest of the batch goes on."""


@dataclass(frozen=True)
class StageConfig:
    """What ``initialize`` needs from Triton's ``args``: the model's name and version, its ``config.pbtxt``
    parameters (strings), the :class:`HTRConfig` stored under ``CONFIG_KEY`` and the version folder."""

    name: str
    version: str
    params: dict[str, str]
    cfg: HTRConfig
    version_dir: Path

    def int_param(self, key: str, default: int) -> int:
        return int(self.params.get(key, default))


def stage_config(args: dict) -> StageConfig:
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return StageConfig(name=args["model_name"], version=str(args["model_version"]), params=params,
                       cfg=HTRConfig.from_json(params[CONFIG_KEY]),
                       version_dir=Path(args["model_repository"]) / str(args["model_version"]))


def object_column(values, n: int | None = None) -> np.ndarray:
    """A ``(N, 1)`` BYTES tensor from strings or bytes (strings are UTF-8 encoded)."""
    items = [v.encode() if isinstance(v, str) else v for v in values]
    return np.array(items, dtype=np.object_).reshape(len(items) if n is None else n, 1)


def execute_batched(pb_utils, requests, inputs: tuple[str, ...], run: Callable[[dict], dict], *,
                    optional: dict[str, Callable[[int], np.ndarray]] | None = None,
                    group_by: Callable[[dict], object] | None = None,
                    check: Callable[[dict], None] | None = None) -> list:
    """One response per request, in order (see the module docstring).

    ``inputs``: tensor names to gather; the first one's leading axis counts the request's items.
    ``optional``: inputs that may be absent, each with a filler ``n -> array`` used instead.
    ``group_by``: key of a request's arrays; requests with equal keys are concatenated and run together
    (default: the first input's shape without the batch axis, so ``np.concatenate`` always works).
    ``run``: ``{name: (N, ...) array} -> {output name: (N, ...) array}`` for one group.
    """
    optional = optional or {}
    group_by = group_by or (lambda arrays: arrays[inputs[0]].shape[1:])
    results: list = [None] * len(requests)
    gathered: list[dict | None] = []
    for i, request in enumerate(requests):
        arrays = {}
        try:
            for name in inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None and name not in optional:
                    raise RequestError(f"missing input {name}")
                arrays[name] = None if tensor is None else tensor.as_numpy()
            n = arrays[inputs[0]].shape[0]
            for name, fill in optional.items():
                if arrays.get(name) is None:
                    arrays[name] = fill(n)
            if check is not None:
                check(arrays)
        except RequestError as e:
            results[i], arrays = e, None
        gathered.append(arrays)

    groups: dict[object, list[int]] = {}
    for i, arrays in enumerate(gathered):
        if arrays is not None:
            groups.setdefault(group_by(arrays), []).append(i)
    for idx in groups.values():
        batch = {name: np.concatenate([gathered[i][name] for i in idx]) for name in inputs}
        try:
            outputs = run(batch)
        except RequestError as e:
            for i in idx:
                results[i] = e
            continue
        except Exception as e:  # noqa: BLE001 - fail these requests, keep the stub serving the others
            pb_utils.Logger.log_error(f"{type(e).__name__} while running a batch: {e}")
            for i in idx:
                results[i] = e
            continue
        start = 0
        for i in idx:
            n = gathered[i][inputs[0]].shape[0]
            results[i] = {name: out[start : start + n] for name, out in outputs.items()}
            start += n

    return [
        pb_utils.InferenceResponse(error=pb_utils.TritonError(str(r))) if isinstance(r, Exception)
        else pb_utils.InferenceResponse([pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in r.items()])
        for r in results
    ]


def check_width(pixels: np.ndarray, max_width: int) -> None:
    """The CPU crnn's guard before the network runs: ``PIXELS`` at least 4 wide (one CTC frame) and at most
    ``max_width`` (0: no limit). The CNN's activations grow with the width, so a huge width is refused here."""
    width = pixels.shape[-1]
    if width < 4:
        raise RequestError(f"PIXELS width {width} is below the minimum of 4")
    if max_width and width > max_width:
        raise RequestError(f"PIXELS width {width} is over the limit of {max_width} (crnn parameter max_width; "
                           "raise it with export/build_engine.py --max-width)")
