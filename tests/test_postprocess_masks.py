"""Packing post-processing's masks where they are (:func:`rtseg.postprocess.pack_masks`,
:func:`rtseg.postprocess.to_numpy_instances`): the same windows and bytes as
:meth:`rtseg.structures.CompactMasks.from_dense` (the wire format's ``bitpacked-window``),
from the NumPy path (CPU tensors), the torch-op path (CUDA under ``--postprocess torch``, run
here on the CPU) and, on a GPU, the CUDA kernel."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rtseg.postprocess import TORCH_OPS, PostprocessOps, mask_windows_torch, pack_masks, pack_masks_torch, to_numpy_instances
from rtseg.structures import CompactMasks, Instances, dense_windows
from mask_cases import random_masks


def check_same_bytes(masks: np.ndarray, what: str) -> None:
    reference = CompactMasks.from_dense(masks)
    for packed in (pack_masks(torch.from_numpy(masks)), pack_masks_torch(torch.from_numpy(masks))):
        assert np.array_equal(packed.windows, reference.windows), what
        assert np.array_equal(packed.offsets, reference.offsets), what
        assert packed.blob.tobytes() == reference.blob.tobytes(), what
        np.testing.assert_array_equal(packed.dense(), masks, err_msg=what)
    assert np.array_equal(mask_windows_torch(torch.from_numpy(masks)).numpy(), dense_windows(masks)), what


def test_torch_and_numpy_packing_give_the_wire_bytes():
    rng = np.random.default_rng(1701)
    for case in range(200):
        n = int(rng.integers(0, 6))
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        check_same_bytes(random_masks(rng, n, h, w), f"case {case}")


@pytest.mark.parametrize("shape", [(0, 5, 5), (1, 1, 1), (3, 1, 9), (2, 9, 1), (1, 3, 8)])
def test_packing_crafted(shape):
    """Empty input, single pixels, single rows / columns, all set, window bits a multiple of 8."""
    for fill in (False, True):
        check_same_bytes(np.full(shape, fill), f"{shape} fill {fill}")


def test_packing_720p():
    check_same_bytes(random_masks(np.random.default_rng(1702), 6, 720, 1280), "720p")


def result(masks: np.ndarray, mask_scores: bool = False) -> SimpleNamespace:
    n = masks.shape[0]
    out = SimpleNamespace(boxes=torch.rand(n, 4), scores=torch.rand(n), class_ids=torch.arange(n),
                          masks=torch.from_numpy(masks))
    if mask_scores:
        out.mask_scores = torch.rand(n)
    return out


def test_to_numpy_instances_holds_compact_masks_and_leaves_the_result_alone():
    masks = random_masks(np.random.default_rng(1703), 5, 30, 40)
    res = result(masks, mask_scores=True)
    before = res.masks.clone()
    inst = to_numpy_instances(res, (30, 40))
    assert isinstance(inst, Instances) and isinstance(inst.masks, CompactMasks) and inst.masks.is_contiguous
    assert inst.masks == CompactMasks.from_dense(masks) and inst.mask_scores.shape == (5,)
    assert torch.equal(res.masks, before)
    with pytest.raises(ValueError, match=r"masks must have shape \(N, 31, 40\) for image_size \(31, 40\), got \(5, 30, 40\)"):
        to_numpy_instances(res, (31, 40))


def test_encode_masks_op_is_used_only_for_cuda_tensors():
    """``ops.encode_masks`` (the CUDA kernel under --postprocess cuda) takes CUDA masks; CPU
    masks keep the NumPy packing, so a CUDA op set on a CPU result cannot fail."""
    def refuse(masks):
        raise AssertionError("encode_masks must not see CPU tensors")

    masks = random_masks(np.random.default_rng(1704), 3, 10, 12)
    res = result(masks)
    inst = to_numpy_instances(res, (10, 12), PostprocessOps(encode_masks=refuse))
    assert inst.masks == CompactMasks.from_dense(masks)
    assert to_numpy_instances(res, (10, 12), TORCH_OPS) == inst


def _cuda_or_skip() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


@pytest.mark.gpu
def test_gpu_packing_cuda_kernel_and_torch_ops_match_numpy():
    from rtseg.postprocess import cuda_ops

    dev = _cuda_or_skip()
    rng = np.random.default_rng(1705)
    for case in range(50):
        n = int(rng.integers(0, 8))
        h, w = (720, 1280) if case < 2 else (int(v) for v in rng.integers(1, 200, 2))
        masks = random_masks(rng, n, h, w)
        reference = CompactMasks.from_dense(masks)
        on_gpu = torch.from_numpy(masks).to(dev)
        packed = pack_masks(on_gpu)
        assert packed.windows.tolist() == reference.windows.tolist() and packed.blob.tobytes() == reference.blob.tobytes()
        if n:
            res = SimpleNamespace(boxes=torch.zeros(n, 4, device=dev), scores=torch.ones(n, device=dev),
                                  class_ids=torch.zeros(n, dtype=torch.int64, device=dev), masks=on_gpu)
            inst = to_numpy_instances(res, (h, w), cuda_ops())
            assert inst.masks.windows.tolist() == reference.windows.tolist(), f"case {case}"
            assert inst.masks.blob.tobytes() == reference.blob.tobytes(), f"case {case}"
