"""YOLACT post-processing as pure torch functions (CPU or CUDA, no Python loop
over instances on the hot path).

Each function documents its shapes and coordinate frames; none modifies its inputs.
Upstream references are dbolya/yolact
``layers/box_utils.py`` (``decode``, ``jaccard``, ``crop``, ``sanitize_coordinates``),
``layers/functions/detection.py`` (``Detect.fast_nms``) and ``layers/output_utils.py``
(``postprocess``). Loop-based reference twins live in ``tests/reference_ops.py``; the preprocessing is in
:mod:`rtseg.families.yolact.preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rtseg.families.base import Stage2
from rtseg.families.yolact.network import YolactConfig
from rtseg.postprocess import TORCH_OPS, PostprocessOps

#: SSD box-regression variances (``box_utils.decode``)
VARIANCES = (0.1, 0.2)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD decoding: ``loc float32[P, 4]`` offsets + ``priors float32[P, 4]`` (cx, cy, w, h)
    -> ``float32[P, 4]`` boxes ``x1, y1, x2, y2`` relative to the input (0..1, may exceed)."""
    centers = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    return torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a float32[..., N, 4]`` and ``b float32[..., M, 4]`` (xyxy, any frame)
    -> ``float32[..., N, M]``; batched over leading dims as ``box_utils.jaccard``."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]))[..., :, None]
    area_b = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))[..., None, :]
    return inter / (area_a + area_b - inter)


@dataclass(frozen=True)
class Detections:
    """Output of :func:`fast_nms`: indices into the candidate set plus class and score.

    ``index int64[K]`` (rows of the boxes / coefficients given to :func:`fast_nms`),
    ``class_ids int64[K]`` (0-based foreground class), ``scores float32[K]`` sorted descending.
    """

    index: torch.Tensor
    class_ids: torch.Tensor
    scores: torch.Tensor


def fast_nms_candidates(boxes: torch.Tensor, scores: torch.Tensor,
                        top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each class's ``K = min(top_k, N)`` best candidates by stable descending score, as Fast NMS
    (and its CUDA twin, :func:`rtseg.kernels.nms.fast_nms`) reads them: ``class_boxes
    float32[C, K, 4]``, ``sorted_scores float32[C, K]`` (non-increasing), ``index int64[C, K]``
    into ``boxes``. ``boxes float32[N, 4]``, ``scores float32[C, N]``."""
    c = scores.shape[0]
    sorted_scores, idx = scores.sort(dim=1, descending=True, stable=True)
    idx = idx[:, :top_k]
    sorted_scores = sorted_scores[:, :top_k]
    class_boxes = boxes[idx.reshape(-1)].view(c, idx.shape[1], 4)
    return class_boxes, sorted_scores, idx


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5, top_k: int = 200,
             max_detections: int = 100) -> Detections:
    """Per-class Fast NMS (YOLACT paper Sec. 3.4; ``Detect.fast_nms``).

    Args:
        boxes: ``float32[N, 4]`` candidate boxes (xyxy).
        scores: ``float32[C, N]`` per-class scores of each candidate (background excluded).
        iou_threshold: a candidate is suppressed when its IoU with a higher-scoring box of
            the same class is **greater than** this (IoU exactly at the threshold is kept).
        top_k: candidates kept per class before NMS.
        max_detections: kept detections across all classes, by score.

    For each class, sort by score, compute the ``K x K`` IoU matrix, zero the lower triangle
    and diagonal, take each column's max (the largest IoU with any higher-scoring box, already
    suppressed or not: the paper's relaxation of greedy NMS) and keep columns ``<= threshold``.
    Ties in score are broken by candidate index (stable sort). No per-class score threshold is
    applied after NMS, as upstream (``second_threshold=False``).
    """
    c, n = scores.shape
    if n == 0 or c == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
        return Detections(empty, empty.clone(), torch.zeros(0, dtype=scores.dtype, device=scores.device))
    class_boxes, sorted_scores, idx = fast_nms_candidates(boxes, scores, top_k)
    k = idx.shape[1]
    iou = box_iou(class_boxes, class_boxes).triu(diagonal=1)
    iou_max = iou.max(dim=1).values
    keep = iou_max <= iou_threshold
    class_ids = torch.arange(c, device=boxes.device)[:, None].expand(c, k)[keep]
    kept_index = idx[keep]
    kept_scores = sorted_scores[keep]
    # flattening is class-major, so a stable sort keeps (class, rank) order among equal scores
    final_scores, order = kept_scores.sort(descending=True, stable=True)
    order = order[:max_detections]
    return Detections(kept_index[order], class_ids[order], final_scores[:max_detections])


def sanitize_coordinates(x1: torch.Tensor, x2: torch.Tensor, size: int, padding: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative ``x1, x2`` -> absolute, ordered, padded and clamped to ``[0, size]``."""
    x1 = x1 * size
    x2 = x2 * size
    lo = torch.minimum(x1, x2)
    hi = torch.maximum(x1, x2)
    return (lo - padding).clamp(min=0), (hi + padding).clamp(max=size)


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Zero every mask outside its box (``box_utils.crop``).

    ``masks float32[N, h, w]``; ``boxes float32[N, 4]`` relative xyxy. A pixel (column ``c``,
    row ``r``) is kept when ``x1 <= c < x2`` and ``y1 <= r < y2`` after
    :func:`sanitize_coordinates` with ``padding`` pixels at mask resolution.
    """
    n, h, w = masks.shape
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype).view(1, 1, w)
    rows = torch.arange(h, device=masks.device, dtype=y1.dtype).view(1, h, 1)
    keep_c = (cols >= x1.view(n, 1, 1)) & (cols < x2.view(n, 1, 1))
    keep_r = (rows >= y1.view(n, 1, 1)) & (rows < y2.view(n, 1, 1))
    return masks * (keep_c & keep_r).to(masks.dtype)


def assemble_masks(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Soft instance masks at prototype resolution: ``crop(sigmoid(P @ C^T), box)``.

    ``proto float32[h, w, k]``, ``coef float32[N, k]``, ``boxes float32[N, 4]`` relative xyxy
    -> ``float32[N, h, w]`` in ``[0, 1]``.
    """
    h, w, k = proto.shape
    masks = torch.sigmoid(proto.reshape(h * w, k) @ coef.t()).t().reshape(-1, h, w)
    return crop_masks(masks, boxes)


def masks_to_image(masks: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """``float32[N, h, w]`` soft masks -> ``bool[N, H, W]``: bilinear resize (``align_corners=False``)
    to the image size, then ``> threshold`` (``output_utils.postprocess``)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, *image_size), dtype=torch.bool, device=masks.device)
    # assemble_masks returns a transposed view; upstream makes it contiguous before the resize
    # too (output_utils.postprocess), and on the CPU a channels-last-strided input makes
    # interpolate about 3x slower (benchmarks/postprocess.py)
    up = F.interpolate(masks.contiguous()[None], image_size, mode="bilinear", align_corners=False)[0]
    return up > threshold


@dataclass(frozen=True)
class YolactResult:
    """Post-processed detections of one image, still as tensors on the compute device.

    ``boxes float32[N, 4]`` xyxy image pixels; ``scores float32[N]`` (box scores, descending);
    ``class_ids int64[N]`` (0-based foreground); ``masks bool[N, H, W]``; ``mask_scores
    float32[N]`` = ``scores * maskiou`` for YOLACT++ (``None`` without mask re-scoring).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    masks: torch.Tensor
    mask_scores: torch.Tensor | None = None


def postprocess(outputs: dict[str, torch.Tensor], priors: torch.Tensor, cfg: YolactConfig,
                image_size: tuple[int, int], *, score_threshold: float = 0.0, batch_index: int = 0,
                stage2: Stage2 | None = None,
                ops: PostprocessOps = TORCH_OPS) -> YolactResult:
    """Head outputs of one image -> final detections (``Detect`` + ``output_utils.postprocess``).

    Args:
        outputs: the network's named outputs (``loc``, ``conf``, ``coef``, ``proto``), batched.
        priors: ``float32[P, 4]`` from :func:`rtseg.families.yolact.network.make_priors`.
        image_size: ``(H, W)`` of the original image; boxes and masks are returned in it.
        score_threshold: detections with score ``<=`` this are dropped before mask assembly
            (``score_threshold`` of upstream's ``postprocess``; 0 keeps all).
        stage2: YOLACT++'s second stage, the mask re-scoring net
            (``{"masks": float32[N, 1, h, w], "class_ids": int64[N]} -> {"maskiou": float32[N]}``,
            :class:`rtseg.families.yolact.stage2.YolactStage2` or a backend's run of it);
            when given and ``cfg.rescore_mask``, ``mask_scores = scores * maskiou`` (upstream
            ``postprocess`` with ``rescore_mask``: ``[scores, scores * maskiou]``, the second
            what its mask AP ranks by); order and ``scores`` stay the box scores'. As upstream,
            ``score_threshold`` applies to the box score, before re-scoring; the official demo
            (``prep_display``) instead ranks and thresholds the re-scored score:
            :meth:`rtseg.structures.Instances.ranked_by_mask_score` (``Segmenter(rank_by="mask_score")``).
        ops: replacements for Fast NMS and the mask assembly (:class:`PostprocessOps`).
    """
    loc = outputs["loc"][batch_index]
    conf = outputs["conf"][batch_index]
    coef = outputs["coef"][batch_index]
    proto = outputs["proto"][batch_index]
    h, w = image_size

    boxes = decode_boxes(loc, priors)
    cls_scores = conf[:, 1:]
    candidates = cls_scores.max(dim=1).values > cfg.nms_conf_thresh
    cand_index = torch.nonzero(candidates).squeeze(1)
    dets = (ops.fast_nms or fast_nms)(boxes[cand_index], cls_scores[cand_index].t(), cfg.nms_thresh, cfg.nms_top_k,
                    cfg.max_num_detections)
    index = cand_index[dets.index]
    scores, class_ids = dets.scores, dets.class_ids
    if score_threshold > 0:
        keep = scores > score_threshold
        index, scores, class_ids = index[keep], scores[keep], class_ids[keep]

    det_boxes, det_coef = boxes[index], coef[index]
    rescore = stage2 is not None and cfg.rescore_mask
    mask_scores = None
    if ops.yolact_masks is not None and not rescore:
        masks = ops.yolact_masks(proto, det_coef, det_boxes, (h, w))  # fused: no soft masks kept
    else:
        soft = assemble_masks(proto, det_coef, det_boxes)
        if rescore:
            if index.shape[0] > 0:
                mask_scores = scores * stage2({"masks": soft[:, None], "class_ids": class_ids})["maskiou"]
            else:
                mask_scores = scores.clone()
        masks = masks_to_image(soft, (h, w))

    x1, x2 = sanitize_coordinates(det_boxes[:, 0], det_boxes[:, 2], w)
    y1, y2 = sanitize_coordinates(det_boxes[:, 1], det_boxes[:, 3], h)
    pixel_boxes = torch.stack([x1, y1, x2, y2], dim=1)
    return YolactResult(pixel_boxes, scores, class_ids, masks, mask_scores)

