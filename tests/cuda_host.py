"""Build ``cuda/*.cu`` for the host, so the tests run the kernels' own arithmetic on the CPU.

Every kernel in ``cuda/`` keeps its per-element work in ``__host__ __device__`` functions.
Under ``-DRTSEG_HOST_BUILD`` each ``.cu`` file also defines ``extern "C" int host_<op>(...)``
drivers that call those same functions for every index a launch would cover, one index
at a time. ``build_host_library`` compiles a file that way with nvcc (its host compiler is
g++) into a shared library and opens it with ctypes; no GPU is needed to build or call it.

Libraries are cached under ``$RTSEG_CUDA_HOST_CACHE`` (default: a folder in the system temp
directory) by a hash of the sources, so each file is compiled once per change.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parent.parent / "cuda"


def nvcc_path() -> str | None:
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


def _sources_hash(cu: Path) -> str:
    h = hashlib.sha256()
    # headers shared between .cu files can change a build too
    for path in sorted([cu, *CUDA_DIR.glob("*.cuh")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_host_library(name: str) -> ctypes.CDLL:
    """Compile ``cuda/<name>.cu`` for the host and load it; skip the test if nvcc is absent."""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA kernels' host build needs the CUDA toolkit")
    cu = CUDA_DIR / f"{name}.cu"
    if not cu.is_file():
        raise FileNotFoundError(f"expected a kernel source {cu}, found none")
    cache = Path(os.environ.get("RTSEG_CUDA_HOST_CACHE",
                                Path(tempfile.gettempdir()) / "rtseg-cuda-host"))
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"{name}-{_sources_hash(cu)}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [nvcc, "-std=c++17", "-O2", "-Xcompiler", "-fPIC", "-shared", "-DRTSEG_HOST_BUILD",
               "-I", str(CUDA_DIR), "-o", str(tmp), str(cu)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"host build of {cu.name} failed:\n{done.stderr}")
        tmp.replace(lib)  # atomic: parallel test processes never load a half-written file
    return ctypes.CDLL(str(lib))
