"""Build for htr-triton: one distribution, one import namespace ``htr``.

The repository keeps its top-level folders by role (``preprocess/``, ``export/``, ``client/``) while the
code imports as one namespace. ``package_dir`` maps each folder onto a sub-package:

    htr/          -> htr            (model, data, training, CLI)
    preprocess/   -> htr.preprocess (Cython kernels + NumPy/OpenCV reference)
    export/       -> htr.export     (engines + Triton model repository)
    client/       -> htr.client     (tritonclient wrapper + CLI)
    loadtest/     -> htr.loadtest   (Locust load tests + `htr loadtest`)

Every ``preprocess/_*.pyx`` is compiled to ``htr.preprocess._*`` with -O3 and OpenMP (prange);
extra C flags can be given in ``HTR_CFLAGS`` (e.g. ``-march=native`` for a machine-specific build).
"""
import os
import platform
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent

# folder on disk -> import name
PACKAGE_ROOTS = {"htr": "htr", "preprocess": "htr.preprocess", "export": "htr.export", "client": "htr.client",
                 "loadtest": "htr.loadtest"}


def _packages():
    package_dir, packages = {}, []
    for folder, name in PACKAGE_ROOTS.items():
        if not (HERE / folder / "__init__.py").exists():
            continue
        package_dir[name] = folder
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(folder)]
    return package_dir, packages


def _extensions():
    # -ffp-contract=off: no fused multiply-add, so kernels and the NumPy reference round alike.
    # x86-64-v2 (SSSE3/SSE4.2, every x86-64 server CPU since ~2009) lets GCC vectorise the BGR loads.
    flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=x86-64-v2")
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

setup(
    name="htr-triton",
    version="0.1.0",
    description="Handwriting recognition (CRNN + CTC) served by NVIDIA Triton",
    python_requires=">=3.10",
    package_dir=package_dir,
    packages=packages,
    package_data={"htr.preprocess": ["*.pxd", "*.pyx"]},
    ext_modules=_extensions(),
    entry_points={"console_scripts": ["htr = htr.cli:main"]},
    zip_safe=False,
)
