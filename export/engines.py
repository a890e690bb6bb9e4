"""Engines from a checkpoint: TorchScript (config in extra files), ONNX (named, dynamic batch and width,
config in metadata) and a TensorRT plan built from the ONNX (optimisation profile over batch and width).

The graphs return log-probabilities only; decoding stays outside. Inputs are named ``PIXELS``
``(N, 1, H, W)`` and outputs ``LOGPROBS`` ``(N, W/4, C)``.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from htr.config import HTRConfig
from htr.runtime.contract import CONFIG_KEY, LOGPROBS, MAX_WIDTH, PIXELS


@dataclass(frozen=True)
class Shapes:
    """Batch and width range every engine must accept (TensorRT builds its profile from these)."""

    max_batch: int = 64
    min_width: int = 32
    opt_width: int = 256
    max_width: int = MAX_WIDTH
    opt_batch: int = 32

    def __post_init__(self):
        if not (4 <= self.min_width <= self.opt_width <= self.max_width) or any(
            w % 4 for w in (self.min_width, self.opt_width, self.max_width)
        ):
            raise ValueError(f"need 4 <= min <= opt <= max width, all multiples of 4; got {self}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch <= max_batch; got {self}")


@contextlib.contextmanager
def _known_deprecations():
    """Silence the warnings torch 2.13 gives for the export paths this project uses on purpose.

    TorchScript (``torch.jit.script/save/load``) is the file format of Triton's ``pytorch_libtorch`` backend,
    and the legacy (TorchScript-based) ONNX exporter is what gives the BiLSTM a dynamic batch axis here; both
    are deprecated in favour of ``torch.export``, which neither Triton 2.51 nor this graph supports yet. The
    exporter's "LSTM with a batch size other than 1" caution does not apply: every build runs the ONNX file at
    batch 1 and batch 64 against PyTorch (export/parity.py) and fails on any difference.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size other than 1",
                                category=UserWarning)
        # nn.LSTM's own input-size checks, traced as constants: they are constant for a given model
        warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python boolean",
                                category=torch.jit.TracerWarning)
        yield


class EngineUnavailable(RuntimeError):
    """The machine cannot build this format (no CUDA, no TensorRT); the message says what is missing."""


def export_torchscript(model: torch.nn.Module, cfg: HTRConfig, path: Path) -> Path:
    with _known_deprecations():
        scripted = torch.jit.script(model.eval())
        torch.jit.save(scripted, str(path), _extra_files={f"{CONFIG_KEY}.json": cfg.to_json()})
    return path


def load_torchscript(path: Path, map_location="cpu") -> tuple[torch.jit.ScriptModule, HTRConfig]:
    extra = {f"{CONFIG_KEY}.json": ""}
    with _known_deprecations():
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    return module.eval(), HTRConfig.from_json(extra[f"{CONFIG_KEY}.json"])


def export_onnx(model: torch.nn.Module, cfg: HTRConfig, path: Path, opset: int = 17) -> Path:
    import onnx

    example = torch.zeros(2, 1, cfg.input.height, cfg.input.width)
    with _known_deprecations():
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=[PIXELS], output_names=[LOGPROBS],
            dynamic_axes={PIXELS: {0: "batch", 3: "width"}, LOGPROBS: {0: "batch", 1: "frames"}},
            opset_version=opset, dynamo=False,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, cfg.to_json()
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def onnx_config(path: Path) -> HTRConfig:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return HTRConfig.from_json(meta[CONFIG_KEY])


def tensorrt_available() -> str | None:
    """None when a TensorRT plan can be built here, else the reason it cannot."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install tensorrt; needs a CUDA GPU)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (TensorRT builds and runs plans on a GPU only)"
    return None


def build_tensorrt(onnx_path: Path, plan_path: Path, cfg: HTRConfig, shapes: Shapes, fp16: bool = False,
                   workspace_gb: float = 2.0) -> Path:
    """Build a serialized TensorRT plan from the ONNX with one optimisation profile over batch and width."""
    reason = tensorrt_available()
    if reason:
        raise EngineUnavailable(reason)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    h = cfg.input.height
    profile = builder.create_optimization_profile()
    profile.set_shape(PIXELS, (1, 1, h, shapes.min_width), (shapes.opt_batch, 1, h, shapes.opt_width),
                      (shapes.max_batch, 1, h, shapes.max_width))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan_path.write_bytes(bytes(plan))
    return plan_path


class TensorRTRunner:
    """Run a plan on the GPU through torch tensors (used by the parity check)."""

    def __init__(self, plan_path: Path):
        import tensorrt as trt

        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        self.context = self.engine.create_execution_context()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.contiguous().cuda()
        self.context.set_input_shape(PIXELS, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(LOGPROBS))
        y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(PIXELS, x.data_ptr())
        self.context.set_tensor_address(LOGPROBS, y.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return y.cpu()
