"""Our CUDA C kernels (the sources our RawKernels compile) on the CPU, for tests.

No GPU is lent to most sessions and none to CI, so a kernel's arithmetic is
checked here: the same source string is compiled by g++ behind a small shim
(``__global__`` dropped, one block of one thread, so each grid-stride loop
walks every work item in turn; no fused multiply-adds, as the device compiles
them: ``kernels.backend.RAW_KERNEL_OPTIONS``) and called through ctypes with
NumPy arrays, to be held to the NumPy path by the tests. :func:`nvcc_ptx`
compiles the source for a Hopper GPU with NVIDIA's compiler where one is
installed, which catches what g++ accepts and CUDA does not.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

SHIM = r"""
#include <math.h>
struct farm_dim3 { unsigned int x, y, z; };
static const farm_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__ static inline
#define __forceinline__
#define __restrict__
"""

_BUILD = os.path.join(tempfile.gettempdir(), "farm-cuda-host")


def compiler() -> str | None:
    return shutil.which("g++")


def load(source: str) -> ctypes.CDLL:
    """``source`` compiled for the host (cached by content) as a shared library."""
    os.makedirs(_BUILD, exist_ok=True)
    key = hashlib.sha256((SHIM + source).encode()).hexdigest()[:16]
    lib = os.path.join(_BUILD, f"k{key}.so")
    if not os.path.exists(lib):
        src = os.path.join(_BUILD, f"k{key}.cpp")
        with open(src, "w", encoding="utf-8") as f:
            f.write(SHIM + source)
        tmp = f"{lib}.{os.getpid()}"
        subprocess.run([compiler(), "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-o", tmp,
                        src], check=True, capture_output=True, text=True)
        os.replace(tmp, lib)
    return ctypes.CDLL(lib)


# C types of kernel parameters and the NumPy dtypes CuPy packs as them
C_TYPES = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}
_CTYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.float32: ctypes.c_float,
           np.float64: ctypes.c_double}


def signature(source: str, name: str) -> list[tuple[str, bool]]:
    """``[(C type, is a pointer)]`` of kernel ``name``'s parameters in ``source``."""
    m = re.search(r'extern "C" __global__ void ' + re.escape(name) + r"\((.*?)\)\s*\{", source, re.S)
    assert m, f"no kernel {name} in the source"
    params = []
    for p in m.group(1).split(","):
        words = [w for w in p.replace("*", " * ").split() if w not in ("const", "__restrict__")]
        params.append((" ".join(w for w in words[:-1] if w != "*"), "*" in words))
    return params


def check_args(source: str, name: str, args: tuple) -> None:
    """The arguments as CuPy would pack them for the kernel's C signature: one per
    parameter, arrays of the pointer's element type where it takes a pointer, and
    NumPy scalars of exactly the parameter's width elsewhere (on the host a wrong
    width can pass unnoticed through the calling convention; on a device it would
    shift every later argument)."""
    params = signature(source, name)
    assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters"
    for i, ((ctype, pointer), v) in enumerate(zip(params, args)):
        want = C_TYPES[ctype]
        if pointer:
            assert isinstance(v, np.ndarray) and v.dtype == want, f"{name} argument {i}: {ctype}* needs a {want} array"
        else:
            assert type(v) is want, f"{name} argument {i}: {ctype} needs a numpy {want.__name__}, got {type(v)}"


def run(source: str, name: str, args: tuple) -> None:
    """Call kernel ``name`` of ``source`` once on the host: every work item, in order
    (after :func:`check_args`)."""
    check_args(source, name, args)
    fn = getattr(load(source), name)
    fn(*(ctypes.c_void_p(v.ctypes.data) if isinstance(v, np.ndarray) else _CTYPES[type(v)](v) for v in args))


def nvcc_ptx(source: str, arch: str = "sm_90") -> subprocess.CompletedProcess:
    """nvcc's compile of ``source`` to PTX for ``arch`` with the RawKernels' options."""
    from kernels.backend import RAW_KERNEL_OPTIONS

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.cu")
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        return subprocess.run(["nvcc", f"-arch={arch}", "-ptx", *RAW_KERNEL_OPTIONS, "-o", os.path.join(d, "k.ptx"),
                               src], capture_output=True, text=True)
