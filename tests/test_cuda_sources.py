"""Every CUDA C source our RawKernels compile (the ``*_CUDA`` strings in
``kernels/``) compiles with NVIDIA's nvcc for a Hopper GPU (sm_90, the
RawKernels' options), where nvcc is installed; each kernel's arithmetic is
tested on the CPU beside the NumPy path it replaces (tests/cuda_host.py)."""
from __future__ import annotations

import importlib
import pkgutil
import re
import shutil

import pytest

import kernels


def sources() -> dict[str, str]:
    found = {}
    for mod in pkgutil.iter_modules(kernels.__path__):
        m = importlib.import_module(f"kernels.{mod.name}")
        for name, value in vars(m).items():
            if name.endswith("_CUDA") and isinstance(value, str):
                found[f"{mod.name}.{name}"] = value
    return found


def test_the_kernel_sources_are_found():
    assert {"dither.SHAPING_CUDA", "limiter.CURVED_PAIR_CUDA"} <= set(sources())
    for name, src in sources().items():  # each defines the extern "C" kernel it is launched by
        assert re.search(r'extern "C" __global__ void farm_\w+\(', src), name


@pytest.mark.parametrize("name", sorted(sources()))
def test_kernel_source_compiles_for_hopper_with_nvcc(name):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed here")
    from cuda_host import nvcc_ptx

    r = nvcc_ptx(sources()[name])
    assert r.returncode == 0, r.stderr
