"""Shared fixtures: every kernel test body runs on NumPy, and on CuPy where a GPU exists."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import backend


def _cupy():
    import cupy

    return cupy


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: numpy, or cupy (marked ``gpu``, skipped without one)."""
    if request.param == "gpu":
        if not backend.gpu_available():
            pytest.skip("CuPy sees no CUDA device")
        return _cupy()
    return np


def pytest_collection_modifyitems(config, items):
    if backend.gpu_available():
        return
    skip = pytest.mark.skip(reason="CuPy sees no CUDA device")
    for item in items:
        if "gpu" in item.keywords and "xp" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def tol(xp_or_dtype, f32: float = 1e-5, f64: float = 1e-10) -> float:
    """Tolerance by dtype: float32 ~1e-5 relative, float64 ~1e-10."""
    dt = np.dtype(getattr(xp_or_dtype, "dtype", xp_or_dtype))
    return f32 if dt == np.float32 else f64


@pytest.fixture
def launches(monkeypatch):
    """The names of the RawKernels launched through ``backend.launch`` during the test
    (a GPU test asserts its kernel ran, not an array path that a guard fell back to)."""
    names: list[str] = []
    real = backend.launch

    def spy(source, name, work_items, args):
        names.append(name)
        return real(source, name, work_items, args)

    monkeypatch.setattr(backend, "launch", spy)
    return names
