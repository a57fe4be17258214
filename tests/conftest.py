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


@pytest.fixture
def cpu_device_dispatch(monkeypatch):
    """NumPy arrays take the device's dispatch, with our RawKernels compiled for the CPU
    (tests/cuda_host.py: g++, one thread walking each grid-stride loop, every argument
    checked against the kernel's C signature). Returns the names launched, in order.

    Besides the RawKernels (``backend.raw_kernels``), NumPy then takes the device's
    parallel scans (``scan.HOST_SEQUENTIAL`` off) and the device's chunked K-weighting
    (``loudness._k_chunk`` as for a device), the two dispatch choices that hide kernels
    from NumPy. What stays NumPy's is only what CuPy itself does (its FFTs, reductions
    and elementwise operations)."""
    cuda_host = pytest.importorskip("cuda_host")
    if cuda_host.compiler() is None:
        pytest.skip("no g++ to compile the kernel sources for the host")
    from kernels import loudness, scan

    names: list[str] = []

    def launch(source, name, work_items, args):
        names.append(name)
        cuda_host.run(source, name, args)

    device_k_chunk = loudness._k_chunk
    monkeypatch.setattr(backend, "raw_kernels", lambda xp: True)
    monkeypatch.setattr(backend, "launch", launch)
    monkeypatch.setattr(scan, "HOST_SEQUENTIAL", False)
    # any module but NumPy gets the device's chunking
    monkeypatch.setattr(loudness, "_k_chunk", lambda xp, n, rate, chunk_s: device_k_chunk(None, n, rate, chunk_s))
    return names
