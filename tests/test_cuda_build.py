"""Every ``cuda/*.cu`` builds with nvcc for sm_75, sm_86, sm_89 and sm_90 (the loader's own ahead-of-
time build), and through NVRTC (its run-time fallback); compiler errors name the real file and line;
the loader's argument checks and its refusals say what is expected.

No GPU is needed: compiling device code needs only the toolkit.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from rtseg import kernels

SOURCES = sorted(kernels.CUDA_DIR.glob("*.cu"))
#: built fatbins are kept by a hash of their sources, compiler and flags: a cached file is proof that
#: exactly this input built, and a repeated run only compiles what changed
BUILD_CACHE = Path(tempfile.gettempdir()) / "rtseg-cuda-build"


def _needs_nvcc() -> str:
    nvcc = kernels.nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): the kernel builds need the CUDA toolkit")
    return nvcc


def _needs_nvrtc() -> None:
    if kernels._nvrtc_library() is None:
        pytest.skip("the NVRTC library was found neither beside torch nor in the CUDA toolkit")


@pytest.fixture(scope="module")
def fatbin_builds() -> dict[Path, Path | Exception]:
    """All sources built at once, in parallel threads (nvcc runs as separate processes)."""
    _needs_nvcc()

    def build(src: Path) -> Path | Exception:
        try:
            return kernels.build_fatbin(src, kernels.ARCHS, cache=BUILD_CACHE)
        except kernels.KernelError as err:
            return err

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SOURCES, pool.map(build, SOURCES)))


def test_there_are_kernel_sources():
    names = {p.stem for p in SOURCES}
    assert {"fast_nms", "matrix_nms", "greedy_nms"} <= names, names


@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_nvcc_builds_for_every_architecture(fatbin_builds, src):
    result = fatbin_builds[src]
    if isinstance(result, Exception):
        pytest.fail(str(result), pytrace=False)
    expected = {f"sm_{a}" for a in kernels.ARCHS} | {f"compute_{max(kernels.ARCHS)}"}
    assert kernels.fatbin_targets(result) == expected


@pytest.fixture(scope="module")
def nvrtc_builds(tmp_path_factory) -> dict[Path, Path | Exception]:
    _needs_nvrtc()
    cache = tmp_path_factory.mktemp("nvrtc")

    def build(src: Path) -> Path | Exception:
        try:
            return kernels.compile_nvrtc(src, 86, cache=cache)
        except kernels.KernelError as err:
            return err

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SOURCES, pool.map(build, SOURCES)))


@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_nvrtc_builds_without_nvcc(nvrtc_builds, src):
    # the fallback on machines with a driver and torch but no toolkit: no standard headers there
    result = nvrtc_builds[src]
    if isinstance(result, Exception):
        pytest.fail(str(result), pytrace=False)
    assert result.stat().st_size > 0


BROKEN = """\
// a deliberately broken kernel: the error is on line 6
#include "box_math.cuh"
#include "broken_helper.cuh"
extern "C" __global__ void broken_kernel(float* out) {
  const float iou = box_iou(out, out + 4);
  out[0] = iou + not_declared_anywhere;
}
"""
BROKEN_HEADER = """\
#pragma once
__device__ inline float helper(float x) { return x; }
__device__ inline float helper_bad(float x) { return x +; }
"""


@pytest.fixture
def broken_sources(tmp_path):
    src = tmp_path / "broken.cu"
    src.write_text(BROKEN)
    (tmp_path / "broken_helper.cuh").write_text(BROKEN_HEADER)
    return src, tmp_path / "broken_helper.cuh"


def test_nvcc_error_names_file_and_line(broken_sources, tmp_path):
    _needs_nvcc()
    src, header = broken_sources
    with pytest.raises(kernels.KernelError) as info:
        kernels.build_fatbin(src, (75,), cache=tmp_path / "cache")
    message = str(info.value)
    assert f"{src}(6): error" in message and "not_declared_anywhere" in message
    assert f"{header}(3): error" in message  # errors inside included headers name the header


def test_nvrtc_error_names_file_and_line(broken_sources, tmp_path):
    _needs_nvrtc()
    src, header = broken_sources
    with pytest.raises(kernels.KernelError) as info:
        kernels.compile_nvrtc(src, 75, cache=tmp_path / "cache")
    message = str(info.value)
    assert f"{src}(6): error" in message and "not_declared_anywhere" in message
    assert f"{header}(3): error" in message


def test_build_is_cached_by_source(tmp_path):
    _needs_nvcc()
    src = tmp_path / "tiny.cu"
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = 1.0f; }\n')
    first = kernels.build_fatbin(src, (75,), cache=tmp_path)
    assert kernels.build_fatbin(src, (75,), cache=tmp_path) == first
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = 2.0f; }\n')
    assert kernels.build_fatbin(src, (75,), cache=tmp_path) != first


def test_each_gpu_gets_code_it_can_run(monkeypatch, tmp_path):
    # sm_86 machine code runs on 8.6 / 8.7 / 8.9 parts, compute_90 PTX on 9.0 and later; an A100
    # (8.0) can run neither, so it gets a build of its own
    _needs_nvcc()
    monkeypatch.setenv("RTSEG_CUDA_CACHE", str(tmp_path))
    common = {f"sm_{a}" for a in kernels.ARCHS} | {f"compute_{max(kernels.ARCHS)}"}
    for capability in ((7, 5), (8, 9), (9, 0), (12, 0)):
        assert kernels.fatbin_targets(kernels.binary_for("greedy_nms", capability)) == common
    assert kernels.fatbin_targets(kernels.binary_for("greedy_nms", (8, 0))) == {"sm_80", "compute_80"}


def test_missing_source_is_named():
    with pytest.raises(kernels.KernelError, match=r"cuda/no_such_op\.cu"):
        kernels.source_path("no_such_op")


# -- loader: argument checks and refusals ----------------------------------------------------------

def test_check_tensor_says_expected_and_found():
    t = torch.zeros(3, 5)
    assert kernels.check_tensor("boxes", t, dtype=torch.float32, shape=(None, 5)) is t
    with pytest.raises(TypeError, match="boxes must be a torch.Tensor, got list"):
        kernels.check_tensor("boxes", [[0, 0, 1, 1]])
    with pytest.raises(TypeError, match="boxes must have dtype torch.float32, got torch.float64"):
        kernels.check_tensor("boxes", t.double(), dtype=torch.float32)
    with pytest.raises(TypeError, match="torch.int32 or torch.int64, got torch.float32"):
        kernels.check_tensor("ids", t, dtype=(torch.int32, torch.int64))
    with pytest.raises(ValueError, match=r"boxes must have shape \(_, 4\), got \(3, 5\)"):
        kernels.check_tensor("boxes", t, shape=(None, 4))
    with pytest.raises(ValueError, match=r"scores must have shape \(3,\), got \(3, 5\)"):
        kernels.check_tensor("scores", t, shape=(3,))
    with pytest.raises(ValueError, match="must be contiguous"):
        kernels.check_tensor("boxes", t.t())
    with pytest.raises(ValueError, match="must be on cuda:0, got cpu"):
        kernels.check_tensor("boxes", t, device="cuda:0")


def test_kernels_are_not_available_on_the_cpu():
    assert kernels.kernels_available("cpu") is False
    assert kernels.kernels_available(torch.device("cpu")) is False


@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) for m in ("pycuda", "cupy")),
                    reason="a launcher is installed here")
def test_missing_launcher_names_the_gpu_extra():
    with pytest.raises(kernels.KernelError, match=r"rtseg\[gpu\]"):
        kernels.module("fast_nms", "cuda:0")


def test_launch_arguments_are_checked():
    # the width of a Python int on the kernel side would be a guess; checked before any GPU work
    dev = torch.device("cuda", 0)
    with pytest.raises(TypeError, match="argument 1 of k must be a torch.Tensor or a numpy scalar .* got int"):
        kernels.pack_arguments("k", (np.int32(1), 3), dev)
    with pytest.raises(ValueError, match="argument 0 of k must be on cuda:0, got cpu"):
        kernels.pack_arguments("k", (torch.zeros(2), np.float32(1)), dev)
    packed = kernels.pack_arguments("k", (np.int64(7), np.float32(0.5)), dev)
    assert [p.dtype for p in packed] == [np.int64, np.float32]


def test_import_has_no_side_effects():
    code = ("import sys, rtseg.kernels, rtseg.kernels.nms; "
            "assert not {'pycuda', 'cupy'} & set(sys.modules), sorted({'pycuda', 'cupy'} & set(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
