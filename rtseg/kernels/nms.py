"""CUDA twins of the three NMS variants: torch tensors in, torch tensors out, on one CUDA device.

=================  ====================================================  =======================
function           torch twin (same signature, same result)              kernel source
=================  ====================================================  =======================
``fast_nms``       ``rtseg.postprocess.yolact.fast_nms``                  ``cuda/fast_nms.cu``
``matrix_nms``     ``rtseg.postprocess.solov2.matrix_nms``                ``cuda/matrix_nms.cu``
``greedy_nms``     ``rtseg.postprocess.centermask.class_aware_nms``       ``cuda/greedy_nms.cu``
=================  ====================================================  =======================

Each op is *prepare* (torch ops: the stable sorts the twins do too), *launch* (the kernels, on
torch's current stream) and *finish* (torch indexing). ``prepare_*`` are public so the tests run the
same preparation before the host build of the kernels (``tests/test_kernels_nms.py``).

Indices are identical to the twins' and scores agree to 1e-5 (Matrix NMS's ``exp`` differs in the
last bits between libraries). Device->host copies are deliberate and visible: ``fast_nms`` and
``greedy_nms`` copy one integer (how many detections survived) to size their outputs, as the twins'
boolean indexing does (a wait for the current stream, never a device-wide synchronize; why it
cannot be avoided is said where it happens); ``matrix_nms`` copies nothing. Everything else here
(argument checks, sizes of the launches) is decided from shapes the host already knows.
Inputs must be finite and scores not NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rtseg import kernels
from rtseg.postprocess.yolact import Detections, fast_nms_candidates

_THREADS = 256
#: greedy NMS: the reduce kernel keeps one removed-bit per candidate in 48 KiB of shared memory
#: ((ceil(N / 64) + 64) words of 8 bytes), and the bitmask takes N * ceil(N / 64) * 8 bytes
GREEDY_NMS_MAX_CANDIDATES = 65_536
_GAUSSIAN, _LINEAR = 0, 1


def _cuda_device_of(name: str, t: object) -> torch.device:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{name} must be on a CUDA device for the CUDA kernels, got {t.device} "
                         f"(use the torch twin in rtseg.postprocess on the CPU)")
    return t.device


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _blocks(n: int, threads: int = _THREADS) -> int:
    return (n + threads - 1) // threads


# -- Fast NMS ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FastNmsInputs:
    """What the Fast NMS kernels read: each class's ``K = min(top_k, N)`` best candidates.

    ``class_boxes float32[C, K, 4]``, ``sorted_scores float32[C, K]`` (non-increasing),
    ``sorted_index int64[C, K]``; all contiguous.
    """

    class_boxes: torch.Tensor
    sorted_scores: torch.Tensor
    sorted_index: torch.Tensor


def prepare_fast_nms(boxes: torch.Tensor, scores: torch.Tensor, top_k: int) -> FastNmsInputs | None:
    """The twin's per-class stable sort and top-k (any device); ``None`` when there are no
    candidates or no classes."""
    c, n = scores.shape
    if n == 0 or c == 0:
        return None
    class_boxes, sorted_scores, idx = fast_nms_candidates(boxes, scores, top_k)
    return FastNmsInputs(class_boxes.contiguous(), sorted_scores.contiguous(), idx.contiguous())


def _empty_detections(boxes: torch.Tensor, scores: torch.Tensor) -> Detections:
    empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
    return Detections(empty, empty.clone(), torch.zeros(0, dtype=scores.dtype, device=scores.device))


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5, top_k: int = 200,
             max_detections: int = 100) -> Detections:
    """Per-class Fast NMS on the GPU; same arguments and result as
    :func:`rtseg.postprocess.yolact.fast_nms` (``boxes float32[N, 4]`` xyxy, ``scores float32[C, N]``).

    The threshold is compared in float32 (``iou <= float32(iou_threshold)`` keeps), as the twin's
    tensor comparison does.
    """
    dev = _cuda_device_of("boxes", boxes)
    kernels.check_tensor("boxes", boxes, dtype=torch.float32, shape=(None, 4), device=dev, contiguous=False)
    kernels.check_tensor("scores", scores, dtype=torch.float32, shape=(None, boxes.shape[0]), device=dev,
                         contiguous=False)
    top_k = _check_int("top_k", top_k, 1)
    max_detections = _check_int("max_detections", max_detections, 0)
    prep = prepare_fast_nms(boxes, scores, top_k)
    if prep is None or max_detections == 0:
        return _empty_detections(boxes, scores)
    c, k = prep.sorted_index.shape
    mod = kernels.module("fast_nms", dev)
    keep = torch.empty((c, k), dtype=torch.uint8, device=dev)
    kept_count = torch.empty(c, dtype=torch.int32, device=dev)
    kept_scores = torch.empty((c, k), dtype=torch.float32, device=dev)
    kept_index = torch.empty((c, k), dtype=torch.int64, device=dev)
    kernels.function(mod, "fast_nms_keep_kernel").launch(
        (c,), (_THREADS,), (prep.class_boxes, prep.sorted_scores, prep.sorted_index, np.int32(c), np.int32(k),
                            np.float32(iou_threshold), keep, kept_count, kept_scores, kept_index))
    # The one device->host copy, and a wait for this stream (not the device). Unavoidable: the
    # number of survivors is the length of every tensor from here on (Detections has exact
    # lengths, as the twin's boolean indexing gives; each family's post-processing indexes its
    # masks and boxes by it), so the host must know it before it can size the next launches.
    # Padding to max_detections would only move this read into every caller.
    m = min(int(kept_count.sum().item()), max_detections)
    out_index = torch.empty(m, dtype=torch.int64, device=dev)
    out_class = torch.empty(m, dtype=torch.int64, device=dev)
    out_score = torch.empty(m, dtype=torch.float32, device=dev)
    if m:
        kernels.function(mod, "fast_nms_rank_kernel").launch(
            (_blocks(c * k),), (_THREADS,), (kept_scores, kept_index, kept_count, np.int32(c), np.int32(k),
                                             np.int64(max_detections), out_index, out_class, out_score))
    return Detections(out_index, out_class, out_score)


# -- Matrix NMS -------------------------------------------------------------------------------------

def matrix_nms_kernel_id(kernel: str) -> int:
    """``"gaussian"`` -> 0, ``"linear"`` -> 1 (the ``kernel`` argument of ``cuda/matrix_nms.cu``)."""
    if kernel == "gaussian":
        return _GAUSSIAN
    if kernel == "linear":
        return _LINEAR
    raise ValueError(f"Matrix NMS kernel must be 'gaussian' or 'linear', got {kernel!r}")


def prepare_matrix_nms(masks: torch.Tensor) -> torch.Tensor:
    """``bool[N, h, w]`` -> ``uint8[N, h * w]`` (the same bytes, contiguous) as the kernels read them."""
    return masks.flatten(1).contiguous().view(torch.uint8)


def matrix_nms(masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, *, kernel: str = "gaussian",
               sigma: float = 2.0, areas: torch.Tensor | None = None) -> torch.Tensor:
    """Matrix NMS on the GPU; same arguments and result as :func:`rtseg.postprocess.solov2.matrix_nms`
    (``masks bool[N, h, w]`` sorted by score, ``labels int64[N]``, ``scores float32[N]``,
    optional ``areas float32[N]``) -> decayed ``float32[N]``. Memory: an ``N x N`` float32 matrix."""
    dev = _cuda_device_of("masks", masks)
    kernels.check_tensor("masks", masks, dtype=torch.bool, shape=(None, None, None), device=dev, contiguous=False)
    n = masks.shape[0]
    kernels.check_tensor("labels", labels, dtype=torch.int64, shape=(n,), device=dev, contiguous=False)
    kernels.check_tensor("scores", scores, dtype=torch.float32, shape=(n,), device=dev, contiguous=False)
    if areas is not None:
        kernels.check_tensor("areas", areas, dtype=torch.float32, shape=(n,), device=dev, contiguous=False)
    kernel_id = matrix_nms_kernel_id(kernel)
    if n == 0:
        return scores.new_zeros(0)
    flat = prepare_matrix_nms(masks)
    p = flat.shape[1]
    words = (p + 31) // 32
    mod = kernels.module("matrix_nms", dev)
    bits = torch.empty((n, words), dtype=torch.int32, device=dev)  # uint32 words; int32 is the same bytes
    kernels.function(mod, "matrix_nms_pack_kernel").launch(
        (_blocks(n * words),), (_THREADS,), (flat, np.int64(n), np.int64(p), bits))
    if areas is None:
        areas = torch.empty(n, dtype=torch.float32, device=dev)
        kernels.function(mod, "matrix_nms_area_kernel").launch(
            (n,), (_THREADS,), (bits, np.int64(n), np.int64(words), areas))
    else:
        areas = areas.contiguous()
    decay = torch.empty((n, n), dtype=torch.float32, device=dev)
    kernels.function(mod, "matrix_nms_iou_kernel").launch(
        (_blocks(n * n * 32),), (_THREADS,), (bits, areas, labels.contiguous(), np.int64(n), np.int64(words), decay))
    comp = torch.empty(n, dtype=torch.float32, device=dev)
    kernels.function(mod, "matrix_nms_comp_kernel").launch((_blocks(n),), (_THREADS,), (decay, np.int64(n), comp))
    out = torch.empty(n, dtype=torch.float32, device=dev)
    kernels.function(mod, "matrix_nms_decay_kernel").launch(
        (_blocks(n),), (_THREADS,), (decay, comp, scores.contiguous(), np.int64(n), np.int32(kernel_id),
                                     np.float32(-sigma), out))
    return out


# -- greedy NMS -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GreedyNmsInputs:
    """Candidates in the order the greedy kernels visit them: ``order int64[M]`` (stable
    descending score), ``boxes float32[M, 4]`` and ``class_ids int64[M]`` in that order."""

    order: torch.Tensor
    boxes: torch.Tensor
    class_ids: torch.Tensor


def prepare_greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, class_ids: torch.Tensor) -> GreedyNmsInputs:
    """The twin's stable sort by score (any device)."""
    order = scores.argsort(descending=True, stable=True)
    return GreedyNmsInputs(order, boxes[order].to(torch.float32).contiguous(),
                           class_ids[order].to(torch.int64).contiguous())


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, class_ids: torch.Tensor, iou_threshold: float,
               top_k: int) -> torch.Tensor:
    """Class-aware greedy NMS on the GPU; same arguments and result as
    :func:`rtseg.postprocess.centermask.class_aware_nms` (``boxes float[M, 4]`` xyxy, ``scores
    float[M]``, ``class_ids int[M]``) -> ``int64[<= top_k]`` indices by decreasing score.

    Suppression is ``IoU > iou_threshold`` with the IoU rounded to float32 and compared in double,
    as torchvision's CPU kernel. Differences from ``torchvision.ops.batched_nms``: classes are kept
    apart exactly (torchvision offsets boxes by ``class * (max coordinate + 1)``, which rounds
    non-integer coordinates and lets boxes with negative coordinates reach into another class), and
    torchvision's CUDA kernel compares in float32.
    """
    dev = _cuda_device_of("boxes", boxes)
    kernels.check_tensor("boxes", boxes, dtype=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
                         shape=(None, 4), device=dev, contiguous=False)
    m = boxes.shape[0]
    kernels.check_tensor("scores", scores, dtype=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
                         shape=(m,), device=dev, contiguous=False)
    kernels.check_tensor("class_ids", class_ids, dtype=(torch.int32, torch.int64), shape=(m,), device=dev,
                         contiguous=False)
    top_k = _check_int("top_k", top_k, 0)
    if m > GREEDY_NMS_MAX_CANDIDATES:
        raise ValueError(f"greedy_nms takes at most {GREEDY_NMS_MAX_CANDIDATES} candidates (shared-memory "
                         f"bitmask), got {m}; use rtseg.postprocess.centermask.class_aware_nms")
    if m == 0 or top_k == 0:
        return torch.zeros(0, dtype=torch.int64, device=dev)
    prep = prepare_greedy_nms(boxes, scores, class_ids)
    col_blocks = (m + 63) // 64
    mod = kernels.module("greedy_nms", dev)
    mask = torch.empty((m, col_blocks), dtype=torch.int64, device=dev)  # uint64 words
    kernels.function(mod, "greedy_nms_mask_kernel").launch(
        (col_blocks, col_blocks), (64,), (prep.boxes, prep.class_ids, np.int32(m), np.float64(iou_threshold), mask))
    keep = torch.empty(min(top_k, m), dtype=torch.int64, device=dev)
    count = torch.empty(1, dtype=torch.int32, device=dev)
    kernels.function(mod, "greedy_nms_reduce_kernel").launch(
        (1,), (_THREADS,), (mask, np.int32(m), np.int32(min(top_k, m)), keep, count),
        shared_mem=(col_blocks + 64) * 8)
    # The one device->host copy (a wait for this stream, not the device). Unavoidable: the
    # number kept is the length of the result, which the callers index boxes, scores and the
    # RoI heads' inputs with; the twin's torchvision NMS reads it the same way.
    return prep.order[keep[: int(count.item())]]
