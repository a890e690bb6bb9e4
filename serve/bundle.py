"""The ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel, and what its Python backend needs to run.

The wheel ships the server, its shared libraries (``nvidia_pytriton.libs``) and one python-backend stub per
Python version, kept apart from the backend itself. :func:`prepare_backend_dir` assembles a
``--backend-directory`` for this interpreter's Python, :func:`stub_environment` is the environment the server
(and through it every stub) runs in, and :func:`check_stub` refuses early when the stub cannot load.

Python-backend models run in Triton's stub process, which embeds the *system* libpython (Debian package
``libpython3.X``) and ignores ``PYTHONPATH``. The server environment therefore carries
:data:`~htr.runtime.contract.SITE_PACKAGES_ENV` (this interpreter's site-packages, ``os.pathsep``-joined),
which every ``model.py`` adds before its imports, so that numpy and ``htr`` import inside the stub.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from htr.runtime.contract import SITE_PACKAGES_ENV

from .errors import ServerError

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "htr-triton"


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")  # locate without importing (its __init__ is heavy)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed in this environment (pip install nvidia-pytriton)")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundle() -> dict[str, Path]:
    base = _pytriton_dir()
    server = base / "tritonserver"
    return {
        "tritonserver": server / "bin" / "tritonserver",
        "libs": base.parent / "nvidia_pytriton.libs",
        "python_backend": server / "backends" / "python",
        "stubs": server / "python_backend_stubs",
    }


def default_tritonserver() -> Path:
    """The ``tritonserver`` executable shipped in the nvidia-pytriton wheel."""
    return _bundle()["tritonserver"]


def stub_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver needs: ``base`` (default ``os.environ``) plus

    - ``LD_LIBRARY_PATH`` starting with the wheel's ``nvidia_pytriton.libs``: the server and the stub
      find their shared libraries through it (the stub's RPATH is relative to its original folder,
      which a copied stub no longer sits in);
    - ``HTR_SITE_PACKAGES`` (:data:`~htr.runtime.contract.SITE_PACKAGES_ENV`): this interpreter's
      site-packages, which every ``model.py`` adds before its imports.
    """
    env = dict(os.environ if base is None else base)
    libs = str(_bundle()["libs"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    env[SITE_PACKAGES_ENV] = os.pathsep.join(p for p in site.getsitepackages() if os.path.isdir(p))
    return env


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _cache_dir() -> Path:
    try:
        tag = f"pytriton-{version('nvidia-pytriton')}"
    except PackageNotFoundError:
        tag = "pytriton-unknown"
    return CACHE_ROOT / tag


def prepare_backend_dir(cache_dir: Path | None = None) -> Path:
    """A ``--backend-directory`` whose ``python/`` holds the Python backend and the stub for this Python.

    The wheel keeps the stubs for every Python version apart from the backend, but the backend looks for
    ``triton_python_backend_stub`` beside ``libtriton_python.so``; the three files are copied once into
    ``cache_dir`` (default ``~/.cache/htr-triton/pytriton-<version>/backends``) and copied again when a
    source file's size or mtime changes. Each copy is written then renamed, so concurrent callers are safe.
    """
    bundle = _bundle()
    stub = bundle["stubs"] / _python_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in bundle["stubs"].iterdir()) if bundle["stubs"].is_dir() else []
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {_python_tag()} "
                          f"(it has: {', '.join(have) or 'none'})")
    sources = [bundle["python_backend"] / "libtriton_python.so",
               bundle["python_backend"] / "triton_python_backend_utils.py", stub]
    backends = (cache_dir or _cache_dir()) / "backends"
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in sources:
        dst = target / src.name
        s = src.stat()
        try:
            d = dst.stat()
            if (d.st_size, d.st_mtime_ns) == (s.st_size, s.st_mtime_ns):
                continue
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", dir=target)
        os.close(fd)
        try:
            shutil.copy2(src, tmp)  # keeps mode (the stub is executable) and mtime (the staleness check)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return backends


def check_stub(backend_dir: Path) -> None:
    """Fail clearly when the stub cannot load, above all when the system libpython is not installed."""
    stub = backend_dir / "python" / "triton_python_backend_stub"
    try:
        out = subprocess.run(["ldd", str(stub)], env=stub_environment(), capture_output=True, text=True,
                             timeout=30).stdout
    except FileNotFoundError:  # no ldd: fall back on the loader cache for the one library that matters
        out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
        wanted = f"libpython{_python_tag()}.so.1.0"
        out = "" if wanted in out else f"{wanted} => not found"
    missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
    libpython = [m for m in missing if m.startswith("libpython")]
    if libpython:
        raise ServerError(
            f"the Python backend stub embeds the system {libpython[0]}, which is not installed: install the "
            f"Debian package libpython{_python_tag()} (sudo apt-get install libpython{_python_tag()})")
    if missing:
        raise ServerError(f"the Python backend stub {stub} cannot find: {', '.join(missing)}")
