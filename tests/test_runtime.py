"""The serving runtime set, built and served alone: what the Triton image installs is all the stages need.

``test_gpu_stages_serve_from_a_clean_runtime_environment`` builds the ``htr-triton-runtime`` wheel from a copy
of the checkout exactly as ``docker/Dockerfile.triton`` does (``HTR_DIST=runtime``), installs it with
``requirements-runtime.txt`` into a new virtual environment that holds nothing else (no torch, no training or
export code), writes the **GPU** variant of the model repository, replaces its ``crnn`` (a TensorRT plan, which
needs a GPU) by a python-backend stand-in, and serves it with the bundled tritonserver whose stubs see only that
environment: real image bytes in, text out. A module a stage imports that the runtime set leaves out makes a
stage fail to load, and this test fail.
"""
from __future__ import annotations

import ast
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from htr.runtime.contract import (
    CONFIDENCE, CRNN, ENSEMBLE, ERROR, IMAGE_BYTES, LOGPROBS, PIXELS, SITE_PACKAGES_ENV, TEXT,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "export" / "triton_models"
STAND_IN_TEXT = "HTR"

# The stand-in for the GPU crnn: torch-free, it checks that it runs inside the clean runtime environment and
# that preprocess handed it a real network input, then emits log-probabilities that spell STAND_IN_TEXT.
STAND_IN_MODEL_PY = f'''
import importlib.util
import os

import numpy as np
import triton_python_backend_utils as pb_utils

import htr
from htr.runtime.contract import LOGPROBS, PIXELS
from htr.runtime.stage import RequestError, execute_batched, stage_config


class TritonPythonModel:
    def initialize(self, args):
        self.cfg = stage_config(args).cfg
        roots = [p for p in os.environ.get("{SITE_PACKAGES_ENV}", "").split(os.pathsep) if p]
        if not any(htr.__file__.startswith(r) for r in roots):
            raise pb_utils.TritonModelException(f"htr imported from {{htr.__file__}}, not the runtime env {{roots}}")
        for extra in ("torch", "htr.export", "htr.serve", "htr.model"):
            if importlib.util.find_spec(extra) is not None:
                raise pb_utils.TritonModelException(f"{{extra}} is importable: the environment is not clean")

    def execute(self, requests):
        return execute_batched(pb_utils, requests, (PIXELS,), self._run)

    def _run(self, batch):
        pixels = batch[PIXELS]
        n, _, h, w = pixels.shape
        if h != self.cfg.input.height or not (0.0 <= pixels.min() and pixels.max() <= 1.0):
            raise RequestError(f"unexpected PIXELS {{pixels.shape}} in [{{pixels.min()}}, {{pixels.max()}}]")
        frames, blank = w // 4, self.cfg.blank
        out = np.full((n, frames, self.cfg.num_classes), -30.0, np.float32)
        out[:, :, blank] = 0.0
        for k, c in enumerate(self.cfg.encode("{STAND_IN_TEXT}")):  # one frame per character, blanks between
            out[:, 2 * k + 1, blank] = -30.0
            out[:, 2 * k + 1, c] = 0.0
        return {{LOGPROBS: out}}
'''


def _runtime_modules() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(RUNTIME_PACKAGES, RUNTIME_HTR_MODULES) as setup.py states them (read, not retyped)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("RUNTIME_PACKAGES", "RUNTIME_HTR_MODULES"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["RUNTIME_PACKAGES"], found["RUNTIME_HTR_MODULES"]


def _in_runtime_set(module: str) -> bool:
    packages, htr_modules = _runtime_modules()
    parts = module.split(".")
    if parts[0] != "htr":
        return True  # third-party: requirements-runtime.txt's business
    if len(parts) == 1:
        return True
    if ".".join(parts[:2]) in packages:
        return True
    return len(parts) == 2 and parts[1] in htr_modules


def _htr_imports(path: Path) -> set[str]:
    imports = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.add(node.module)
        elif isinstance(node, ast.Import):
            imports.update(a.name for a in node.names)
    return {m for m in imports if m.split(".")[0] == "htr"}


@pytest.mark.parametrize("template", sorted(TEMPLATES.glob("*.py")), ids=lambda p: p.stem)
def test_every_stage_imports_only_the_runtime_set(template):
    """The CPU repository's stages (the same model.py files the GPU image serves) import only the runtime set."""
    outside = sorted(m for m in _htr_imports(template) if not _in_runtime_set(m))
    assert not outside, f"{template.name} imports {outside}, which the runtime set (setup.py) leaves out"


def test_runtime_modules_import_only_the_runtime_set():
    """Closure: what the runtime set's own modules import is in the set too."""
    packages, htr_modules = _runtime_modules()
    files = [ROOT / "htr" / f"{m}.py" for m in htr_modules]
    for folder in ("preprocess", "runtime"):
        files += sorted((ROOT / folder).rglob("*.py"))
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _htr_imports(f) if not _in_runtime_set(m)) for f in files}
    assert not {k: v for k, v in bad.items() if v}


def _docker_context() -> list[str]:
    """The checkout's files as ``COPY . src/`` in docker/Dockerfile.triton sees them: tracked and new files
    (git's view) less what .dockerignore leaves out."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        for p in patterns:
            p = p.removeprefix("**/")
            if any(fnmatch.fnmatch("/".join(parts[: k + 1]), p) or fnmatch.fnmatch(parts[k], p)
                   for k in range(len(parts))):
                return True
        return False

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    return [f for f in files if (ROOT / f).is_file() and not ignored(f)]


def test_dockerfile_installs_the_runtime_set_this_test_builds():
    """The image builds the runtime wheel from the same context the clean-environment test copies."""
    steps = " ".join((ROOT / "docker" / "Dockerfile.triton").read_text().replace("\\\n", " ").split())
    assert "COPY . src/" in steps
    assert "pip install --no-cache-dir -r src/requirements-runtime.txt" in steps
    assert "HTR_DIST=runtime pip install --no-cache-dir --no-build-isolation --no-deps ./src" in steps
    context = _docker_context()
    assert "setup.py" in context and "requirements-runtime.txt" in context and "runtime/stage.py" in context
    assert not [f for f in context if f.startswith((".venv/", "model_repository/")) or f.endswith(".so")]


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def runtime_env(tmp_path_factory):
    """A new virtual environment holding only requirements-runtime.txt and the htr-triton-runtime wheel."""
    root = tmp_path_factory.mktemp("runtime")
    src = root / "src"
    for rel in _docker_context():  # the build context of docker/Dockerfile.triton
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    wheels = root / "wheels"
    env = {**os.environ, "HTR_DIST": "runtime"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src], env=env)
    (wheel,) = wheels.glob("htr_triton_runtime-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "-q", "-r", ROOT / "requirements-runtime.txt", wheel])
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    return py, Path(site), wheel


@pytest.mark.slow
def test_runtime_wheel_holds_the_runtime_set_only(runtime_env):
    import zipfile

    _, _, wheel = runtime_env
    names = zipfile.ZipFile(wheel).namelist()
    packages, htr_modules = _runtime_modules()
    modules = {n[: -len(".py")].replace("/", ".") for n in names if n.endswith(".py")}
    assert {f"htr.{m}" for m in htr_modules if m != "__init__"} <= modules
    assert {"htr.runtime.contract", "htr.runtime.stage", "htr.runtime.prometheus", "htr.preprocess.ctc"} <= modules
    assert any(n.startswith("htr/preprocess/_ctc.") and n.endswith(".so") for n in names)
    assert not [m for m in modules if not _in_runtime_set(m)], "modules outside the runtime set in the wheel"


@pytest.mark.slow
def test_runtime_env_has_no_torch_and_imports_the_stages_modules(runtime_env):
    py, site, _ = runtime_env
    code = ("import importlib.util as u, htr.ctc_decoder, htr.runtime.stage, htr.runtime.prometheus, htr.preprocess;"
            "print([m for m in ('torch', 'htr.export', 'htr.serve', 'htr.client', 'tritonclient') if u.find_spec(m)])")
    assert _run([py, "-c", code], cwd=site.parent).stdout.strip() == "[]"  # cwd: not the checkout


@pytest.mark.slow
def test_gpu_stages_serve_from_a_clean_runtime_environment(runtime_env, tmp_path, checkpoint):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from htr.export.repository import GPU_BACKENDS, RepositoryOptions, install_model_py, read_config, write_repository
    from htr.model import load_model
    from htr.serve import ServerOptions, TritonServer

    _, site, _ = runtime_env
    _, cfg, _ = load_model(checkpoint)
    repo = tmp_path / "repository"
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"a TensorRT plan needs a GPU; the stand-in replaces it")
    write_repository(repo, cfg, RepositoryOptions(target="gpu", gpu_engine="tensorrt"), plan)

    # the GPU crnn config, turned into a python-backend stand-in on the CPU with the same tensors
    gpu = read_config(repo / CRNN)
    assert gpu.platform == GPU_BACKENDS["tensorrt"][0]
    stand_in = mc.ModelConfig()
    stand_in.CopyFrom(gpu)
    stand_in.ClearField("platform")
    stand_in.ClearField("default_model_filename")
    stand_in.backend = "python"
    stand_in.instance_group[0].kind = mc.ModelInstanceGroup.KIND_CPU
    (repo / CRNN / "1" / "model.plan").unlink()
    (repo / CRNN / "config.pbtxt").write_text(text_format.MessageToString(stand_in))
    template = tmp_path / "stand_in.py"
    template.write_text(STAND_IN_MODEL_PY)
    install_model_py(template, repo / CRNN / "1")

    import tritonclient.grpc as grpcclient

    jpg = sorted((ROOT / "samples").glob("*.jpg"))[0].read_bytes()
    opts = ServerOptions.with_free_ports(env={SITE_PACKAGES_ENV: str(site)}, log_file=tmp_path / "server.log")
    with TritonServer(repo, opts) as server:
        client = grpcclient.InferenceServerClient(server.url_grpc)
        blobs = np.array([[jpg], [b"not an image"], [jpg]], dtype=np.object_)
        inp = grpcclient.InferInput(IMAGE_BYTES, list(blobs.shape), "BYTES")
        inp.set_data_from_numpy(blobs)
        outs = [grpcclient.InferRequestedOutput(n) for n in (TEXT, CONFIDENCE, ERROR)]
        result = client.infer(ENSEMBLE, [inp], outputs=outs)
    texts = [t.decode() for t in result.as_numpy(TEXT).reshape(-1)]
    errors = [e.decode() for e in result.as_numpy(ERROR).reshape(-1)]
    confidence = result.as_numpy(CONFIDENCE).reshape(-1)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert texts == [STAND_IN_TEXT, "", STAND_IN_TEXT], log[-3000:]
    assert errors[0] == errors[2] == "" and "not a decodable image" in errors[1]
    assert confidence[0] > 0.99 and confidence[1] == 0.0
    assert "Traceback" not in log
