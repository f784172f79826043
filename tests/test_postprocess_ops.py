"""The swappable pre/post-processing ops (``--postprocess torch|cuda``).

On the CPU the CUDA kernels cannot run, so these tests check the plumbing with the torch
twins themselves: every family calls the op it is given, the fused YOLACT mask op is used in
place of assembly + resize, results do not change, and ``--postprocess cuda`` without a
CUDA device is one clear line. The kernels themselves are compared with the twins in
``tests/test_kernels_*.py`` (host builds) and, on a GPU, by the ``gpu`` test at the end.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from rtseg.errors import ConfigError
from rtseg.families import FAMILIES
from rtseg.families.centermask import postprocess as centermask
from rtseg.families.solov2 import postprocess as solov2
from rtseg.families.yolact import postprocess as yolact
from rtseg.postprocess import TORCH_OPS, PostprocessOps
from rtseg.segmenter import Segmenter
from rtseg.synthetic import render_scene

SMALL = {
    "yolact": "yolact_resnet18_half_384",
    "solov2": "solov2_light_resnet18_half_384",
    "centermask": "centermask_lite_vovnet19_quarter_384",
}


def _frame() -> np.ndarray:
    return render_scene(np.random.default_rng(3)).image


def _recording(calls: list[str], name: str, fn):
    def op(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)
    return op


def _twin_ops(calls: list[str]) -> PostprocessOps:
    def yolact_masks(proto, coef, boxes, image_size):
        return yolact.masks_to_image(yolact.assemble_masks(proto, coef, boxes), image_size)

    def preprocess(images, cfg):
        return FAMILIES[cfg.family].preprocess(images, cfg)  # the torch twin (default ops)

    return PostprocessOps(
        preprocess=_recording(calls, "preprocess", preprocess),
        fast_nms=_recording(calls, "fast_nms", yolact.fast_nms),
        matrix_nms=_recording(calls, "matrix_nms", solov2.matrix_nms),
        class_aware_nms=_recording(calls, "class_aware_nms", centermask.class_aware_nms),
        yolact_masks=_recording(calls, "yolact_masks", yolact_masks),
        paste_masks=_recording(calls, "paste_masks", centermask.paste_masks),
    )


EXPECTED_CALLS = {
    "yolact": {"preprocess", "fast_nms", "yolact_masks"},
    "solov2": {"preprocess", "matrix_nms"},
    "centermask": {"preprocess", "class_aware_nms", "paste_masks"},
}


@pytest.mark.parametrize("family", sorted(SMALL))
def test_each_family_uses_the_ops_it_is_given_and_results_do_not_change(family):
    seg = Segmenter(SMALL[family], score_threshold=0.0)
    assert seg.ops is TORCH_OPS
    frame = _frame()
    reference = seg(frame)
    calls: list[str] = []
    seg.ops = _twin_ops(calls)
    swapped = seg(frame)
    assert set(calls) == EXPECTED_CALLS[family]
    assert len(swapped) == len(reference)
    np.testing.assert_array_equal(swapped.class_ids, reference.class_ids)
    np.testing.assert_array_equal(swapped.scores, reference.scores)
    np.testing.assert_array_equal(swapped.boxes, reference.boxes)
    assert swapped.masks == reference.masks


def test_builtin_yolact_finds_objects_so_the_fused_mask_path_is_exercised():
    seg = Segmenter(SMALL["yolact"], score_threshold=0.3)
    assert len(seg(_frame())) > 0


def test_yolact_mask_rescoring_keeps_the_soft_mask_path():
    # YOLACT++ re-scores with the soft masks, so a fused op (bool masks only) must not be used
    proto = torch.rand(8, 8, 4)
    outputs = {"loc": torch.zeros(1, 3, 4), "conf": torch.tensor([[[0.1, 0.9], [0.2, 0.8], [0.5, 0.5]]]),
               "coef": torch.rand(1, 3, 4), "proto": proto[None]}
    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]])
    cfg = type("Cfg", (), {"nms_conf_thresh": 0.05, "nms_thresh": 0.5, "nms_top_k": 200,
                           "max_num_detections": 100, "rescore_mask": True})()
    calls: list[str] = []
    ops = PostprocessOps(yolact_masks=_recording(calls, "yolact_masks", None))
    result = yolact.postprocess(outputs, priors, cfg, (16, 16),
                                stage2=lambda inputs: {"maskiou": torch.ones(inputs["masks"].shape[0])}, ops=ops)
    assert calls == [] and result.masks.shape[1:] == (16, 16) and result.masks.shape[0] > 0


def test_postprocess_cuda_without_a_cuda_device_is_one_line():
    with pytest.raises(ConfigError, match="needs --device cuda"):
        Segmenter(SMALL["yolact"], postprocess="cuda", device="cpu")
    with pytest.raises(ConfigError, match="expected torch or cuda"):
        Segmenter(SMALL["yolact"], postprocess="triton")


def test_cli_postprocess_cuda_on_cpu_fails_with_one_line():
    done = subprocess.run([sys.executable, "-m", "rtseg", "run", "--source", "synthetic", "--max-frames", "1",
                           "--postprocess", "cuda"], capture_output=True, text=True, timeout=120)
    assert done.returncode == ConfigError.exit_code
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--postprocess cuda" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(SMALL))
def test_cuda_kernels_give_the_torch_results_on_a_gpu(family):
    from rtseg import kernels

    if not torch.cuda.is_available() or not kernels.kernels_available("cuda"):
        pytest.skip("needs a CUDA GPU, pycuda or CuPy, and nvcc or NVRTC")
    frame = _frame()
    torch_seg = Segmenter(SMALL[family], score_threshold=0.0, device="cuda")
    cuda_seg = Segmenter(SMALL[family], score_threshold=0.0, device="cuda", postprocess="cuda")
    a, b = torch_seg(frame), cuda_seg(frame)
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    # masks: identical except pixels whose soft value sits within float noise of the threshold
    assert (a.masks_dense() != b.masks_dense()).mean() < 1e-4
