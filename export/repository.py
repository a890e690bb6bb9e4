"""Write the Triton model repository: ``preprocess`` -> ``crnn`` -> ``ctc_decode``, wired by the ensemble ``htr``.

Both variants come from this one generator:

- ``target="cpu"``: ``crnn`` is a python-backend model on CPU (what the bundled ``tritonserver`` of
  nvidia-pytriton can serve: it has the python backend only), running the ONNX file in ONNX Runtime
  (``cpu_engine="onnxruntime"``, FP32 or static INT8) or the TorchScript file (``cpu_engine="torchscript"``);
- ``target="gpu"``: ``crnn`` uses the official image's ``tensorrt_plan`` (default), ``onnxruntime_onnx``
  or ``pytorch_libtorch`` backend on the GPU.

Configs are built as ``ModelConfig`` protobufs (``tritonclient.grpc.model_config_pb2``) and written in
text format, so they are valid by construction. The alphabet and shapes come from the checkpoint's
``HTRConfig``, embedded in every config as the ``htr_config`` parameter; nothing is typed twice.

Size limits (``RepositoryOptions``; ``export/build_engine.py --max-bytes/--max-pixels/--max-request-bytes/
--max-width``) are checked inside the models: ``preprocess`` refuses an image over ``max_bytes`` encoded
bytes or ``max_pixels`` pixels (from its header, before decoding) and a request whose images add up to
over ``max_request_bytes``; the CPU ``crnn`` refuses ``PIXELS`` wider than ``shapes.max_width``. Each refusal
is a clear error for that item or request; the server keeps serving. These checks run after Triton has
received the request, though: Triton 2.51 has no limit on the size of an HTTP body (and gRPC messages may
reach 2 GB), so a server reachable by untrusted clients needs a reverse proxy in front that caps the body
size (e.g. nginx ``client_max_body_size 64m;``, Envoy ``max_request_bytes``).
"""
from __future__ import annotations

import importlib.util
import py_compile
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from htr.config import HTRConfig
from htr.ctc_decoder import NAME_MODEL_FILE
from htr.preprocess import NameModel
from htr.runtime.contract import (
    CONFIDENCE, CONFIG_KEY, CRNN, CTC_DECODE, ENSEMBLE, ERROR, IMAGE_BYTES, INPUT_ERROR, LOGPROBS, MAX_BYTES, MAX_PIXELS,
    MAX_REQUEST_BYTES, PIXELS, PREPROCESS, SITE_PACKAGES_ENV, TEXT,
)

from htr.threads import thread_plan

from .engines import Shapes

TEMPLATES = Path(__file__).resolve().parent / "triton_models"
GPU_BACKENDS = {
    # engine -> (platform or backend, default file, input name, output name)
    "tensorrt": ("tensorrt_plan", "model.plan", PIXELS, LOGPROBS),
    "onnxruntime": ("onnxruntime_onnx", "model.onnx", PIXELS, LOGPROBS),
    "libtorch": ("pytorch_libtorch", "model.pt", f"{PIXELS}__0", f"{LOGPROBS}__0"),  # libtorch naming rule
}
DECODE = CTC_DECODE
CPU_ENGINES = {
    # cpu_engine -> (model.py template, served file)
    "onnxruntime": ("crnn_onnxruntime.py", "model.onnx"),
    "torchscript": ("crnn_torchscript.py", "model.pt"),
}
_PLAN = thread_plan()  # this machine's default (htr.threads): instances and threads of each stage

# The first lines of every python-backend model.py, prepended by install_model_py: the stub embeds the
# system libpython and ignores PYTHONPATH (os.environ does reach it), so the server passes the site-packages
# holding the runtime set in $HTR_SITE_PACKAGES and this adds them (.pth files included, hence an editable
# install) before the model imports numpy and htr. Empty or unset: the stub's own Python path (the image).
MODEL_PY_HEADER = f"""\
# -- added by htr.export.repository: the serving runtime's site-packages (see MODEL_PY_HEADER) --
import os
import site

for _path in os.environ.get("{SITE_PACKAGES_ENV}", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)
# -- end of header --
"""


@dataclass
class RepositoryOptions:
    target: str = "cpu"  # cpu | gpu
    gpu_engine: str = "tensorrt"  # tensorrt | onnxruntime | libtorch (target gpu)
    cpu_engine: str = "onnxruntime"  # onnxruntime | torchscript (target cpu)
    precision: str = "fp32"  # of the served ONNX file (cpu onnxruntime): fp32 | int8, as export/build.py chose
    shapes: Shapes = field(default_factory=Shapes)
    # the thread plan (htr.threads): never more compute threads than cores, by default
    preprocess_instances: int = _PLAN.preprocess_instances
    crnn_instances: int = _PLAN.crnn_instances
    decode_instances: int = _PLAN.decode_instances
    preprocess_threads: int = _PLAN.preprocess_threads
    crnn_threads: int = _PLAN.crnn_threads  # intra-op threads of each CPU crnn instance (either engine)
    # dynamic batching: 0 = no waiting; under load the queue fills while the stage is busy, so batches form
    # anyway ("batching by backpressure"), and a lone request is never held back for company
    queue_delay_us: int = 0  # preprocess and ctc_decode
    crnn_queue_delay_us: int = 0
    dynamic_batching: bool = True  # off only to measure what it buys (bench/serving_bench.py)
    decoder: str | None = None  # greedy | beam; None: the checkpoint's own decoding (resolved by htr.export.build)
    beam_width: int = 10
    lexicon: list[str] | None = None
    name_model: NameModel | None = None  # beam search guided by this name model (written beside model.py)
    lm_weight: float = 0.0
    insertion_bonus: float = 0.0
    max_pixels: int = MAX_PIXELS  # per image, from its header, before decoding
    max_bytes: int = MAX_BYTES  # per encoded image
    max_request_bytes: int = MAX_REQUEST_BYTES  # all encoded images of one request together
    version: int = 1

    def __post_init__(self) -> None:
        if self.cpu_engine not in CPU_ENGINES:
            raise ValueError(f"cpu_engine must be one of {sorted(CPU_ENGINES)}, got {self.cpu_engine!r}")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', got {self.precision!r}")
        if self.precision == "int8" and self.cpu_engine != "onnxruntime":
            raise ValueError("precision 'int8' is served by cpu_engine 'onnxruntime' only")


def _base(name: str, cfg: HTRConfig, opts: RepositoryOptions, kind: int, count: int, delay_us: int) -> mc.ModelConfig:
    c = mc.ModelConfig(name=name, max_batch_size=opts.shapes.max_batch)
    c.version_policy.latest.num_versions = 1
    c.instance_group.add(kind=kind, count=count)
    if opts.dynamic_batching:
        # no preferred sizes: the batcher takes what is queued (up to max_batch_size) as soon as an instance
        # is free, waiting at most delay_us for more; preferred sizes would hold a lone request back
        c.dynamic_batching.SetInParent()  # present even when every field keeps its default
        c.dynamic_batching.max_queue_delay_microseconds = delay_us
    c.parameters[CONFIG_KEY].string_value = cfg.to_json()
    return c


def _tensor(container, name: str, dtype: int, dims: list[int], optional: bool = False):
    t = container.add(name=name, data_type=dtype, dims=dims)
    if optional:
        t.optional = True
    return t


def preprocess_config(cfg: HTRConfig, opts: RepositoryOptions) -> mc.ModelConfig:
    c = _base(PREPROCESS, cfg, opts, mc.ModelInstanceGroup.KIND_CPU, opts.preprocess_instances, opts.queue_delay_us)
    c.backend = "python"
    _tensor(c.input, IMAGE_BYTES, mc.TYPE_STRING, [1])
    _tensor(c.output, PIXELS, mc.TYPE_FP32, [1, cfg.input.height, cfg.input.width])
    _tensor(c.output, ERROR, mc.TYPE_STRING, [1])
    c.parameters["threads"].string_value = str(opts.preprocess_threads)
    c.parameters["max_pixels"].string_value = str(opts.max_pixels)
    c.parameters["max_bytes"].string_value = str(opts.max_bytes)
    c.parameters["max_request_bytes"].string_value = str(opts.max_request_bytes)
    w = c.model_warmup.add(name="one_png", batch_size=1)
    w.inputs[IMAGE_BYTES].data_type = mc.TYPE_STRING
    w.inputs[IMAGE_BYTES].dims.extend([1])
    w.inputs[IMAGE_BYTES].input_data_file = "sample.bin"
    return c


def crnn_config(cfg: HTRConfig, opts: RepositoryOptions) -> mc.ModelConfig:
    gpu = opts.target == "gpu"
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    c = _base(CRNN, cfg, opts, kind, opts.crnn_instances, opts.crnn_queue_delay_us)
    if gpu:
        platform, filename, in_name, out_name = GPU_BACKENDS[opts.gpu_engine]
        c.platform = platform
        c.default_model_filename = filename
    else:
        c.backend = "python"
        in_name, out_name = PIXELS, LOGPROBS
        c.parameters["engine"].string_value = opts.cpu_engine
        c.parameters["model_file"].string_value = CPU_ENGINES[opts.cpu_engine][1]
        if opts.cpu_engine == "onnxruntime":
            c.parameters["precision"].string_value = opts.precision
            c.parameters["intra_op_threads"].string_value = str(opts.crnn_threads)
        else:
            c.parameters["torch_threads"].string_value = str(opts.crnn_threads)
        c.parameters["max_width"].string_value = str(opts.shapes.max_width)
    _tensor(c.input, in_name, mc.TYPE_FP32, [1, cfg.input.height, -1])
    _tensor(c.output, out_name, mc.TYPE_FP32, [-1, cfg.num_classes])
    for batch in sorted({1, opts.shapes.opt_batch}):
        w = c.model_warmup.add(name=f"zeros_batch_{batch}", batch_size=batch)
        w.inputs[in_name].data_type = mc.TYPE_FP32
        w.inputs[in_name].dims.extend([1, cfg.input.height, cfg.input.width])
        w.inputs[in_name].zero_data = True
    return c


def decode_config(cfg: HTRConfig, opts: RepositoryOptions) -> mc.ModelConfig:
    c = _base(DECODE, cfg, opts, mc.ModelInstanceGroup.KIND_CPU, opts.decode_instances, opts.queue_delay_us)
    c.backend = "python"
    _tensor(c.input, LOGPROBS, mc.TYPE_FP32, [-1, cfg.num_classes])
    _tensor(c.input, INPUT_ERROR, mc.TYPE_STRING, [1], optional=True)
    _tensor(c.output, TEXT, mc.TYPE_STRING, [1])
    _tensor(c.output, CONFIDENCE, mc.TYPE_FP32, [1])
    _tensor(c.output, ERROR, mc.TYPE_STRING, [1])
    c.parameters["decoder"].string_value = "beam" if opts.lexicon or opts.name_model else (opts.decoder or "greedy")
    c.parameters["beam_width"].string_value = str(opts.beam_width)
    if opts.name_model is not None:
        c.parameters["name_model_file"].string_value = NAME_MODEL_FILE
        c.parameters["name_model_fingerprint"].string_value = opts.name_model.fingerprint
        c.parameters["lm_weight"].string_value = repr(float(opts.lm_weight))
        c.parameters["insertion_bonus"].string_value = repr(float(opts.insertion_bonus))
    if opts.lexicon:
        c.parameters["lexicon_file"].string_value = "lexicon.txt"
    w = c.model_warmup.add(name="random_batch_1", batch_size=1)
    w.inputs[LOGPROBS].data_type = mc.TYPE_FP32
    w.inputs[LOGPROBS].dims.extend([cfg.input.width // 4, cfg.num_classes])
    w.inputs[LOGPROBS].random_data = True
    return c


def ensemble_config(cfg: HTRConfig, opts: RepositoryOptions) -> mc.ModelConfig:
    c = mc.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=opts.shapes.max_batch)
    c.parameters[CONFIG_KEY].string_value = cfg.to_json()
    _tensor(c.input, IMAGE_BYTES, mc.TYPE_STRING, [1])
    _tensor(c.output, TEXT, mc.TYPE_STRING, [1])
    _tensor(c.output, CONFIDENCE, mc.TYPE_FP32, [1])
    _tensor(c.output, ERROR, mc.TYPE_STRING, [1])
    in_name, out_name = (GPU_BACKENDS[opts.gpu_engine][2:] if opts.target == "gpu" else (PIXELS, LOGPROBS))
    steps = c.ensemble_scheduling.step
    s = steps.add(model_name=PREPROCESS, model_version=-1)
    s.input_map[IMAGE_BYTES] = IMAGE_BYTES
    s.output_map[PIXELS] = "pixels"
    s.output_map[ERROR] = "preprocess_error"
    s = steps.add(model_name=CRNN, model_version=-1)
    s.input_map[in_name] = "pixels"
    s.output_map[out_name] = "logprobs"
    s = steps.add(model_name=DECODE, model_version=-1)
    s.input_map[LOGPROBS] = "logprobs"
    s.input_map[INPUT_ERROR] = "preprocess_error"
    s.output_map[TEXT] = TEXT
    s.output_map[CONFIDENCE] = CONFIDENCE
    s.output_map[ERROR] = ERROR
    return c


def _warmup_png(cfg: HTRConfig) -> bytes:
    """A tiny encoded form-field image, serialised as Triton's raw BYTES input (4-byte length + data)."""
    import cv2

    img = np.full((cfg.input.height + 8, cfg.input.width), 255, np.uint8)
    cv2.putText(img, "HTR", (8, cfg.input.height), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 0, 2)
    ok, png = cv2.imencode(".png", img)
    data = png.tobytes()
    return len(data).to_bytes(4, "little") + data


def write_config(model_dir: Path, config: mc.ModelConfig) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def versions(model_dir: Path) -> list[int]:
    """The numbered version folders of one model, ascending (what Triton's version policy chooses from)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_options(root: Path) -> RepositoryOptions:
    """The serving settings a repository was written with, read back from its configs: target and engine, precision,
    instances and threads, batching, shapes the configs state, size limits, a lexicon, and ``version`` = its newest
    version. What rebuilds the repository from another checkpoint with the same settings (``htr publish``).

    Decoding is the checkpoint's to say (``decoder=None``, no name model): only a lexicon, which the operator
    chose at export, is read back. Shapes the configs do not hold (the TensorRT profile's widths) keep their
    defaults."""
    root = Path(root)
    pre, crnn, dec = read_config(root / PREPROCESS), read_config(root / CRNN), read_config(root / DECODE)

    def param(c: mc.ModelConfig, key: str, default=None):
        return c.parameters[key].string_value if key in c.parameters else default

    gpu = crnn.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU if crnn.instance_group else False
    o = RepositoryOptions(target="gpu" if gpu else "cpu")
    if gpu:
        platform = crnn.platform or crnn.backend
        o.gpu_engine = next(e for e, spec in GPU_BACKENDS.items() if spec[0] == platform)
    else:
        o.cpu_engine = param(crnn, "engine", o.cpu_engine)
        o.precision = param(crnn, "precision", "fp32") if o.cpu_engine == "onnxruntime" else "fp32"
        o.crnn_threads = int(param(crnn, "intra_op_threads" if o.cpu_engine == "onnxruntime" else "torch_threads",
                                   o.crnn_threads))
    warmup_batches = [w.batch_size for w in crnn.model_warmup] or [Shapes.opt_batch]
    max_width = int(param(crnn, "max_width", Shapes.max_width))
    o.shapes = Shapes(max_batch=crnn.max_batch_size, opt_batch=max(warmup_batches),
                      opt_width=min(Shapes.opt_width, max_width), max_width=max_width)
    o.preprocess_instances = pre.instance_group[0].count
    o.crnn_instances = crnn.instance_group[0].count
    o.decode_instances = dec.instance_group[0].count
    o.preprocess_threads = int(param(pre, "threads", o.preprocess_threads))
    o.dynamic_batching = crnn.HasField("dynamic_batching")
    o.queue_delay_us = pre.dynamic_batching.max_queue_delay_microseconds
    o.crnn_queue_delay_us = crnn.dynamic_batching.max_queue_delay_microseconds
    o.max_pixels = int(param(pre, "max_pixels", o.max_pixels))
    o.max_bytes = int(param(pre, "max_bytes", o.max_bytes))
    o.max_request_bytes = int(param(pre, "max_request_bytes", o.max_request_bytes))
    o.version = max((v for name in (ENSEMBLE, PREPROCESS, CRNN, DECODE) for v in versions(root / name)), default=1)
    lexicon_file = param(dec, "lexicon_file")
    if lexicon_file and versions(root / DECODE):
        path = root / DECODE / str(versions(root / DECODE)[-1]) / lexicon_file
        o.lexicon = path.read_text(encoding="utf-8").splitlines() if path.is_file() else None
    return o


def write_repository(root: Path, cfg: HTRConfig, opts: RepositoryOptions, crnn_artifact: Path) -> Path:
    """(Re)write the four models under ``root``; ``crnn_artifact`` is the file ``opts.cpu_engine`` serves (cpu:
    the ONNX file, FP32 or INT8, or the TorchScript file) or the engine file for ``opts.gpu_engine`` (gpu).
    Other content of ``root`` is left alone."""
    root = Path(root)
    v = str(opts.version)
    for name in (ENSEMBLE, PREPROCESS, CRNN, DECODE):
        if (root / name).exists():
            shutil.rmtree(root / name)

    d = root / PREPROCESS
    write_config(d, preprocess_config(cfg, opts))
    (d / v).mkdir(parents=True)
    install_model_py(TEMPLATES / "preprocess.py", d / v)
    (d / "warmup").mkdir()
    (d / "warmup" / "sample.bin").write_bytes(_warmup_png(cfg))

    d = root / CRNN
    write_config(d, crnn_config(cfg, opts))
    (d / v).mkdir(parents=True)
    if opts.target == "gpu":
        shutil.copy(crnn_artifact, d / v / GPU_BACKENDS[opts.gpu_engine][1])
    else:
        template, served_file = CPU_ENGINES[opts.cpu_engine]
        install_model_py(TEMPLATES / template, d / v)
        shutil.copy(crnn_artifact, d / v / served_file)

    d = root / DECODE
    write_config(d, decode_config(cfg, opts))
    (d / v).mkdir(parents=True)
    install_model_py(TEMPLATES / "ctc_decode.py", d / v)
    if opts.lexicon:
        (d / v / "lexicon.txt").write_text("\n".join(opts.lexicon) + "\n", encoding="utf-8")
    if opts.name_model is not None:
        opts.name_model.save(d / v / NAME_MODEL_FILE)

    d = root / ENSEMBLE
    write_config(d, ensemble_config(cfg, opts))
    (d / v).mkdir(parents=True)
    return root


def install_model_py(template: Path, version_dir: Path) -> Path:
    """Write ``template`` with :data:`MODEL_PY_HEADER` before it to ``version_dir/model.py``, with its bytecode, validated by the source's hash (not
    its mtime).

    A python-backend stub importing ``model.py`` otherwise writes ``__pycache__`` into the repository the
    first time, and in poll mode Triton takes that new file for a change and reloads every python model on
    its first poll after start-up (and the stub ignores ``PYTHONDONTWRITEBYTECODE``). The file is for this
    interpreter's Python version, the one ``htr serve`` runs the stub for; a server with another Python
    ignores it and writes its own once. An edited ``model.py`` fails the hash check and is recompiled as
    usual, so it still triggers its reload.
    """
    model_py = version_dir / "model.py"
    model_py.write_text(MODEL_PY_HEADER + template.read_text(encoding="utf-8"), encoding="utf-8")
    py_compile.compile(str(model_py), cfile=importlib.util.cache_from_source(str(model_py)), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    return model_py
