"""Build for htr-triton: one distribution, one import namespace ``htr``.

The repository keeps its top-level folders by role (``preprocess/``, ``export/``, ``client/``) while the
code imports as one namespace. ``package_dir`` maps each folder onto a sub-package:

    htr/          -> htr            (model, data, training, CLI)
    preprocess/   -> htr.preprocess (Cython kernels + NumPy/OpenCV reference)
    export/       -> htr.export     (engines + Triton model repository)
    client/       -> htr.client     (tritonclient wrapper + CLI)
    loadtest/     -> htr.loadtest   (Locust load tests + `htr loadtest`)

Two distributions come from this one file:

- ``htr-triton`` (default): everything above, with the ``htr`` command.
- ``htr-triton-runtime`` (``HTR_DIST=runtime pip install .``): the serving runtime set, what a Triton
  python-backend stage imports and nothing more: ``htr.config``, ``htr.ctc_decoder``, ``htr.preprocess`` (the
  kernels) and ``htr.runtime`` (contract, stage helper, Prometheus metrics). Torch-free; its third-party
  needs are ``requirements-runtime.txt``. The Triton image installs exactly this, and
  ``tests/test_runtime.py`` serves the stages from a clean virtual environment holding only it.

Every ``preprocess/_*.pyx`` is compiled to ``htr.preprocess._*`` with -O3 and OpenMP (prange);
they are built for the CPU they are built on (``-march=native``: AVX2/AVX-512 where present), since this
project builds its kernels where it runs them (the venv, the Triton image, CI). ``HTR_PORTABLE=1`` builds
for any x86-64 server CPU since ~2009 instead (``-march=x86-64-v2``), for a wheel shipped to other machines.
Extra C flags can be given in ``HTR_CFLAGS``. Results do not depend on the target: ``-ffp-contract=off`` and
no ``-ffast-math`` keep every float operation in source order, so kernels and the NumPy reference agree to
the bit either way (tests/test_preprocess.py, tests/test_ctc.py).
"""
import os
import platform
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent

# folder on disk -> import name
PACKAGE_ROOTS = {"htr": "htr", "preprocess": "htr.preprocess", "runtime": "htr.runtime", "export": "htr.export",
                 "serve": "htr.serve", "client": "htr.client", "loadtest": "htr.loadtest", "testing": "htr.testing"}


# The serving runtime set (HTR_DIST=runtime): these packages, and of the top-level ``htr`` package only these
# modules. Anything a served stage imports must be listed here; tests/test_runtime.py fails otherwise.
RUNTIME_PACKAGES = ("htr", "htr.preprocess", "htr.runtime")
RUNTIME_HTR_MODULES = ("__init__", "config", "ctc_decoder")
RUNTIME = os.environ.get("HTR_DIST", "").strip() == "runtime"


class RuntimeBuildPy(build_py):
    """build_py that keeps only ``RUNTIME_HTR_MODULES`` of the ``htr`` package for the runtime distribution."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if RUNTIME and package == "htr":
            modules = [m for m in modules if m[1] in RUNTIME_HTR_MODULES]
        return modules


def _packages():
    package_dir, packages = {}, []
    for folder, name in PACKAGE_ROOTS.items():
        if RUNTIME and name not in RUNTIME_PACKAGES:
            continue
        if not (HERE / folder / "__init__.py").exists():
            continue
        package_dir[name] = folder
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(folder)]
    return package_dir, packages


def _extensions():
    # -ffp-contract=off: no fused multiply-add, so kernels and the NumPy reference round alike.
    # -march: the CPU this is built on (native), or x86-64-v2 (SSSE3/SSE4.2) for a portable wheel.
    flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if platform.machine() in ("x86_64", "AMD64"):
        portable = os.environ.get("HTR_PORTABLE", "").strip() not in ("", "0")
        flags.append("-march=x86-64-v2" if portable else "-march=native")
    flags += os.environ.get("HTR_CFLAGS", "").split()
    exts = [
        Extension(
            f"htr.preprocess.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            extra_compile_args=flags,
            extra_link_args=["-fopenmp"],
        )
        for pyx in sorted((HERE / "preprocess").glob("_*.pyx"))
    ]
    # .pxd helpers are cimported by their bare name (``from _imgmath cimport ...``): Cython looks up
    # relative cimports by the dotted module name, which does not match the folder on disk here.
    return cythonize(
        exts,
        include_path=[str(HERE / "preprocess")],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


package_dir, packages = _packages()
if RUNTIME:  # the reference implementation is part of htr.preprocess (HTR_PURE_PYTHON=1 selects it)
    packages = [p for p in packages if p.split(".")[:2] == ["htr", "preprocess"] or p in RUNTIME_PACKAGES]

setup(
    name="htr-triton-runtime" if RUNTIME else "htr-triton",
    version="0.1.0",
    description=("Serving runtime of htr-triton: the Triton python-backend stages' imports" if RUNTIME
                 else "Handwriting recognition (CRNN + CTC) served by NVIDIA Triton"),
    python_requires=">=3.10",
    package_dir=package_dir,
    packages=packages,
    package_data={"htr.preprocess": ["*.pxd", "*.pyx"]},
    ext_modules=_extensions(),
    entry_points={} if RUNTIME else {"console_scripts": ["htr = htr.cli:main"]},
    cmdclass={"build_py": RuntimeBuildPy},
    zip_safe=False,
)
