"""The serving runtime: what a Triton python-backend stage imports, and nothing more.

The runtime set is this package plus ``htr.config``, ``htr.ctc_decoder`` and ``htr.preprocess`` (the Cython
kernels): torch-free, installable on its own as the ``htr-triton-runtime`` distribution
(``HTR_DIST=runtime pip install .``, see ``setup.py``). The Triton image (``docker/Dockerfile.triton``)
installs exactly that, the CPU repository's stages import only that, and ``tests/test_runtime.py`` serves
the GPU variant's python stages from a clean virtual environment holding only it.

- :mod:`htr.runtime.contract`  model and tensor names, config keys, size limits (one default each)
- :mod:`htr.runtime.stage`     the shared shape of every ``model.py``: gather inputs, scatter outputs,
                               a per-request failure becomes that request's ``TritonError``
- :mod:`htr.runtime.prometheus` input-drift and prediction metrics published from inside the stages
"""
