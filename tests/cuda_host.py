"""Build ``cuda/*.cu`` for the host, so the tests run the kernels' own arithmetic on the CPU.

Every kernel in ``cuda/`` keeps its per-element work in ``__host__ __device__`` functions.
Under ``-DRTSEG_HOST_BUILD`` each ``.cu`` file also defines ``extern "C" int host_<op>(...)``
drivers that call those same functions for every index a launch would cover, one index
at a time. ``build_host_library`` compiles a file that way with nvcc (its host compiler is
g++) into a shared library and opens it with ctypes; no GPU is needed to build or call it.
It finds nvcc, the headers and the sources' hash the way the loader (:mod:`rtseg.kernels`)
does.

Libraries are cached under ``$RTSEG_CUDA_HOST_CACHE`` (default: a folder in the system temp
directory) by a hash of the sources, so each file is compiled once per change.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from rtseg import kernels

_HOST_FLAGS = ["-std=c++17", "-O2", "-Xcompiler", "-fPIC", "-shared", "-DRTSEG_HOST_BUILD"]


def build_host_library(name: str) -> ctypes.CDLL:
    """Compile ``cuda/<name>.cu`` for the host and load it; skip the test if nvcc is absent."""
    nvcc = kernels.nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA kernels' host build needs the CUDA toolkit")
    cu = kernels.CUDA_DIR / f"{name}.cu"
    if not cu.is_file():
        raise FileNotFoundError(f"expected a kernel source {cu}, found none")
    cache = Path(os.environ.get("RTSEG_CUDA_HOST_CACHE",
                                Path(tempfile.gettempdir()) / "rtseg-cuda-host"))
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"{name}-{kernels._sources_digest(cu, ' '.join(_HOST_FLAGS))}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [nvcc, *_HOST_FLAGS, *kernels._include_flags(cu), "-o", str(tmp), str(cu)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"host build of {cu.name} failed:\n{done.stderr}")
        tmp.replace(lib)  # atomic: parallel test processes never load a half-written file
    return ctypes.CDLL(str(lib))
