"""CenterMask post-processing as pure torch functions (CPU or CUDA, no Python loop over
instances on the hot path; the loops that remain run over the 5 FCOS levels or the 3 RoI levels).

Each function documents its shapes, dtypes and coordinate frames; none modifies its inputs.
Upstream references (youngwanLEE/centermask2 and facebookresearch/detectron2, commits in
``tests/fixtures/official/CENTERMASK.md``):

- :func:`fcos_candidates`, :func:`class_aware_nms`: ``FCOSOutputs.forward_for_single_feature_map``
  and ``select_over_all_levels`` (``centermask/modeling/fcos/fcos_outputs.py``), ``ml_nms``.
- :func:`assign_roi_levels`: ``assign_boxes_to_levels_by_ratio`` (``centermask/modeling/centermask/pooler.py``),
  Eq. 2 of the CenterMask paper.
- :func:`pool_rois`: ``ROIPooler`` with ``ROIAlignV2`` (``aligned=True``).
- :func:`paste_masks`: detectron2 ``layers/mask_ops.py`` ``_do_paste_mask`` (``grid_sample``,
  ``align_corners=False``) and ``paste_masks_in_image`` (``>= threshold``), computed for all
  instances at once.
- :func:`postprocess`: ``CenterROIHeads.forward_with_given_boxes`` (``mask_rcnn_inference``,
  ``mask_iou_inference``) and detectron2 ``detector_postprocess``.

Loop-based reference twins live in ``tests/reference_ops_centermask.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from rtseg.families.base import Stage2, TorchStage2
from rtseg.families.centermask.network import CenterMaskConfig
from rtseg.families.centermask.stage2 import CenterMaskStage2
from rtseg.families.centermask.preprocess import input_geometry
from rtseg.postprocess import TORCH_OPS, PostprocessOps
from rtseg.postprocess.resize import InputGeometry

#: FPN levels the RoI heads pool from (``ROI_HEADS.IN_FEATURES = ["p3", "p4", "p5"]``)
ROI_LEVELS = (3, 4, 5)


# -- FCOS decoding --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidates:
    """FCOS detections before NMS, in network-input pixels.

    ``boxes float32[M, 4]`` xyxy (not clipped); ``scores float32[M]`` = ``sigmoid(cls) *
    sigmoid(ctrness)``; ``class_ids int64[M]`` 0-based; ``location_index int64[M]`` into P.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    location_index: torch.Tensor


def level_ranges(level_sizes: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """``[start, end)`` of each level in the flattened location axis."""
    out, start = [], 0
    for h, w in level_sizes:
        out.append((start, start + h * w))
        start += h * w
    return out


def decode_ltrb(locations: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """``locations float32[M, 2]`` (x, y) + ``distances float32[M, 4]`` (l, t, r, b), same frame
    -> ``float32[M, 4]`` boxes ``(x - l, y - t, x + r, y + b)``."""
    return torch.cat([locations - distances[:, :2], locations + distances[:, 2:]], dim=1)


def fcos_candidates(cls_logits: torch.Tensor, bbox_reg: torch.Tensor, ctrness_logits: torch.Tensor,
                    locations: torch.Tensor, strides: torch.Tensor, level_sizes: tuple[tuple[int, int], ...],
                    score_thresh: float, pre_nms_topk: int) -> Candidates:
    """Per-level candidate selection of one image (``forward_for_single_feature_map``).

    Args:
        cls_logits: ``float32[P, K]``; bbox_reg: ``float32[P, 4]`` distances in stride units;
        ctrness_logits: ``float32[P]``; locations: ``float32[P, 2]``; strides: ``float32[P]``;
        level_sizes: ``(H, W)`` per level, P3 first, summing to P.
        score_thresh: a (location, class) pair is a candidate when ``sigmoid(cls) >`` this
            (``THRESH_WITH_CTR=False``: the threshold ignores centre-ness).
        pre_nms_topk: per level, at most this many candidates, the highest by
            ``sigmoid(cls) * sigmoid(ctr)``; ties keep the earlier (location-major, then class) pair.

    Returns candidates level by level, within a level by decreasing score (upstream leaves the
    order unspecified; NMS re-sorts anyway).
    """
    probs = torch.sigmoid(cls_logits)
    ctr = torch.sigmoid(ctrness_logits)
    num_classes = probs.shape[1]
    picked = []
    for start, end in level_ranges(level_sizes):
        flat = (probs[start:end] > score_thresh).reshape(-1).nonzero().squeeze(1)
        loc = flat // num_classes + start
        cls = flat % num_classes
        score = probs[loc, cls] * ctr[loc]
        order = score.argsort(descending=True, stable=True)[:pre_nms_topk]
        loc, cls, score = loc[order], cls[order], score[order]
        picked.append((loc, cls, score))
    loc = torch.cat([p[0] for p in picked])
    cls = torch.cat([p[1] for p in picked])
    score = torch.cat([p[2] for p in picked])
    boxes = decode_ltrb(locations[loc], bbox_reg[loc] * strides[loc, None])
    return Candidates(boxes=boxes, scores=score, class_ids=cls, location_index=loc)


def class_aware_nms(boxes: torch.Tensor, scores: torch.Tensor, class_ids: torch.Tensor, iou_threshold: float,
                    top_k: int) -> torch.Tensor:
    """Greedy NMS per class (``ml_nms`` -> ``batched_nms``), then the ``top_k`` best overall.

    ``boxes float32[M, 4]`` xyxy, ``scores float32[M]``, ``class_ids int64[M]`` -> ``int64[<=top_k]``
    indices into the inputs, by decreasing score. A box is suppressed when its IoU with a kept,
    higher-scoring box of its class is **greater than** ``iou_threshold`` (IoU exactly at the
    threshold is kept). Candidates are stably sorted by score first, so on the CPU (whose
    torchvision kernel sorts stably) tied scores keep input order. Upstream keeps every
    detection scoring ``>=`` the ``top_k``-th score (``kthvalue``), i.e. more than ``top_k`` on an
    exact tie at the boundary; this keeps exactly ``top_k``.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order].float()
    # batched_nms keeps classes apart by shifting class c by c * (max coordinate + 1), which
    # only separates them when no coordinate is negative; FCOS boxes are not clipped before
    # NMS and can be. Moving the set to non-negative coordinates first keeps the classes apart
    # (and changes nothing when they already are non-negative).
    lowest = boxes.min()
    if lowest < 0:
        boxes = boxes - lowest
    keep = batched_nms(boxes, scores[order], class_ids[order], iou_threshold)
    return order[keep[:top_k]]


# -- RoI heads --------------------------------------------------------------------------------------

def assign_roi_levels(boxes: torch.Tensor, image_area: float, min_level: int = 3, max_level: int = 5) -> torch.Tensor:
    """CenterMask's adaptive RoI assignment (paper Eq. 2; ``assign_boxes_to_levels_by_ratio``).

    ``boxes float32[N, 4]`` xyxy in input pixels; ``image_area`` = ``h * w`` of the resized image
    content (detectron2's ``Instances.image_size``, before padding). Returns ``int64[N]``
    offsets from ``min_level``: ``clamp(ceil(max_level - log2(image_area / box_area)),
    min_level, max_level) - min_level``, computed in float32 as upstream. With levels 3-5: boxes
    larger than half the image go to P5, larger than a quarter (up to half, inclusive) to P4,
    the rest to P3; zero-area boxes to P3.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ratio = torch.full_like(area, float(image_area)) / area
    level = torch.ceil(max_level - torch.log2(ratio + 2.220446049250313e-16))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


def pool_rois(features: list[torch.Tensor], boxes: torch.Tensor, batch_index: torch.Tensor, levels: torch.Tensor,
              output_size: int, sampling_ratio: int = 0, strides: tuple[int, ...] = (8, 16, 32)) -> torch.Tensor:
    """Multi-level RoIAlign (``ROIPooler`` with ``ROIAlignV2``: ``aligned=True``).

    Args:
        features: per level ``float32[B, C, H_l, W_l]`` (P3, P4, P5).
        boxes: ``float32[N, 4]`` xyxy in input pixels; batch_index: ``int64[N]`` image of each box;
        levels: ``int64[N]`` index into ``features`` (:func:`assign_roi_levels`).

    Returns ``float32[N, C, output_size, output_size]``. One RoIAlign call per level.
    """
    n, c = boxes.shape[0], features[0].shape[1]
    out = features[0].new_zeros((n, c, output_size, output_size))
    if n == 0:
        return out
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes], dim=1)
    for level, (feat, stride) in enumerate(zip(features, strides)):
        idx = (levels == level).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = roi_align(feat, rois[idx].to(feat.dtype), (output_size, output_size), 1.0 / stride,
                                 sampling_ratio, aligned=True)
    return out


def _support(lo: torch.Tensor, hi: torch.Tensor, m: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last pixel, per box, whose centre can get a nonzero tent weight.

    The weight of pixel ``c`` is nonzero only for ``-1 < u < m``, i.e. for a centre ``c + 0.5``
    within half a mask cell (``extent / 2m``) of the box. One pixel of slack on each side keeps
    rounding from cutting off a pixel; the extra ones get zero weights. Empty for degenerate (or
    NaN) boxes.
    """
    extent = hi - lo
    valid = extent > 0  # False for NaN too: no NaN reaches the integer conversion
    half = extent / (2 * m)
    first = torch.where(valid, (torch.floor(lo - half - 0.5) - 1).clamp(0, size), 0.0)
    stop = torch.where(valid, (torch.ceil(hi + half - 0.5) + 1).clamp(0, size), 0.0)
    return first.to(torch.int64), stop.to(torch.int64)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                threshold: float = 0.5) -> torch.Tensor:
    """Paste ``M x M`` RoI masks into the image, all instances in one batched computation.

    ``masks float32[N, M, M]`` probabilities; ``boxes float32[N, 4]`` xyxy in image pixels;
    -> ``bool[N, H, W]``, pixel ``(r, c)`` set when the sampled value is ``>= threshold``
    (``0 < threshold``).

    Same values as detectron2's ``_do_paste_mask``: pixel centre ``c + 0.5`` maps to mask
    coordinate ``u = (c + 0.5 - x0) / (x1 - x0) * M - 0.5``, bilinearly sampled with zeros outside
    (``grid_sample``, ``align_corners=False``). Bilinear sampling on a grid that is separable in
    x and y is a product of two interpolation matrices, so the image is ``Wy @ mask @ Wx^T`` with
    ``Wy`` / ``Wx`` holding the tent weights ``max(0, 1 - |u - m|)``: one batched matmul instead
    of torchvision's per-instance loop, and no ``[N, H, W, 2]`` sampling grid (detectron2's GPU
    path needs one; its CPU path loops over instances). Only the rows and columns around each box
    are computed (``Wy[N, h, M]`` / ``Wx[N, w, M]``, ``h x w`` the largest box's extent, as
    detectron2's CPU path pastes within the box), then scattered into the frame: outside them every
    weight is zero, so the value is 0 and below the threshold. Boxes of zero width or height give
    empty masks.
    """
    if not threshold > 0:
        raise ValueError(f"paste threshold must be > 0, got {threshold}")
    n, m = masks.shape[0], masks.shape[-1]
    h, w = int(image_size[0]), int(image_size[1])
    out = torch.zeros((n, h, w), dtype=torch.bool, device=masks.device)
    if n == 0:
        return out
    boxes = boxes.to(torch.float32)
    r0, r1 = _support(boxes[:, 1], boxes[:, 3], m, h)
    c0, c1 = _support(boxes[:, 0], boxes[:, 2], m, w)
    span_h, span_w = int((r1 - r0).max()), int((c1 - c0).max())
    if span_h == 0 or span_w == 0:
        return out
    rows = r0[:, None] + torch.arange(span_h, device=masks.device)  # [N, span_h] image rows
    cols = c0[:, None] + torch.arange(span_w, device=masks.device)
    taps = torch.arange(m, device=masks.device, dtype=torch.float32)

    def weights(lo: torch.Tensor, hi: torch.Tensor, pixels: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
        centres = pixels.to(torch.float32) + 0.5
        extent = hi - lo
        valid = extent > 0
        u = (centres - lo[:, None]) / torch.where(valid, extent, 1.0)[:, None] * m - 0.5
        tent = (1.0 - (u[:, :, None] - taps).abs()).clamp(min=0.0)
        # pixels past this box's support (padding to the largest box) or past the image: no weight
        return tent * (valid[:, None] & (pixels < stop[:, None]))[:, :, None]

    wy = weights(boxes[:, 1], boxes[:, 3], rows, r1)
    wx = weights(boxes[:, 0], boxes[:, 2], cols, c1)
    local = torch.bmm(torch.bmm(wy, masks.to(torch.float32)), wx.transpose(1, 2)) >= threshold
    inst, ri, ci = local.nonzero(as_tuple=True)
    out[inst, rows[inst, ri], cols[inst, ci]] = True
    return out


@dataclass(frozen=True)
class CenterMaskResult:
    """Post-processed detections of one image, still tensors on the compute device.

    ``boxes float32[N, 4]`` xyxy original-image pixels (clipped); ``scores float32[N]`` the box
    scores ``sqrt(sigmoid(cls) * sigmoid(ctr))``, descending (upstream ``scores``);
    ``class_ids int64[N]`` 0-based; ``masks bool[N, H, W]``; ``mask_scores float32[N]`` =
    ``scores * maskiou`` (upstream ``mask_scores``, what its COCO mask AP ranks by; maskiou is
    the regressed value, not clamped, so it can leave ``[0, 1]``), ``None`` without MaskIoU.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    masks: torch.Tensor
    mask_scores: torch.Tensor | None = None


def mask_head_outputs(stage2: Stage2, cfg: CenterMaskConfig, features: list[torch.Tensor], boxes: torch.Tensor,
                      class_ids: torch.Tensor, image_area: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pool one image's boxes and run the RoI heads (the second stage) on them.

    ``features`` P3-P5 of that image (``float32[1, C, H_l, W_l]``), ``boxes float32[N, 4]`` input
    pixels, ``class_ids int64[N]`` -> ``mask_probs float32[N, 2R, 2R]`` (sigmoid of the predicted
    class's mask, ``mask_rcnn_inference``) and ``maskiou float32[N]`` of that class (``None``
    without the MaskIoU head). ``stage2``: ``{"roi_feats", "class_ids"} -> {"mask_probs",
    "maskiou"}`` (:class:`rtseg.families.centermask.stage2.CenterMaskStage2` or a backend's run of it).
    """
    levels = assign_roi_levels(boxes, image_area)
    batch_index = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    roi_feats = pool_rois(features, boxes, batch_index, levels, cfg.pooler_resolution, cfg.pooler_sampling_ratio)
    out = stage2({"roi_feats": roi_feats, "class_ids": class_ids})
    return out["mask_probs"], (out["maskiou"] if cfg.use_maskiou else None)


def postprocess(outputs: dict[str, torch.Tensor], net: nn.Module, cfg: CenterMaskConfig, image_size: tuple[int, int],
                *, score_threshold: float = 0.0, batch_index: int = 0,
                ops: PostprocessOps = TORCH_OPS, geometry: InputGeometry | None = None,
                stage2: Stage2 | None = None) -> CenterMaskResult:
    """Network outputs of one image -> final detections in original-image pixels.

    1. FCOS candidates (:func:`fcos_candidates`) at the locations of the input size
       (``geometry.padded``), class-aware NMS and the ``post_nms_topk`` best
       (:func:`class_aware_nms`); box score ``sqrt(sigmoid(cls) * sigmoid(ctr))``.
    2. Detections with box score ``<= score_threshold`` are dropped (saves the RoI heads;
       upstream has no such step: 0 keeps all).
    3. RoI heads on the unclipped boxes (:func:`mask_head_outputs`). With MaskIoU,
       ``mask_scores = scores * maskiou`` as upstream (``mask_iou_inference``): maskiou not
       clamped (unless ``cfg.clamp_maskiou``: rtseg's own small model), the order (by box score) kept.
    4. ``detector_postprocess``: boxes scaled per axis from the resized content
       (``geometry.resized``) to ``image_size``, clipped, empty ones dropped; masks pasted into
       the **clipped** boxes (as upstream, which clips before pasting) with ``cfg.mask_threshold``.

    Args:
        outputs: :class:`rtseg.families.centermask.network.CenterMask` outputs, batched.
        net: the network (``locations_for``; its ``roi_heads`` are the second stage unless ``stage2``).
        image_size: ``(H, W)`` of the original image.
        geometry: the input geometry the outputs were computed at (``None``: the fixed canvas
            ``cfg.input_size``, as :func:`preprocess` without one).
        stage2: the second stage as a backend runs it (``None``: the torch module,
            :class:`~rtseg.families.centermask.stage2.CenterMaskStage2` of ``net``).
    """
    b = batch_index
    h, w = int(image_size[0]), int(image_size[1])
    if geometry is None:
        geometry = input_geometry(cfg, (h, w), cfg.input_size)
    device = outputs["cls_logits"].device
    locations, strides, level_sizes = net.locations_for(geometry.padded, device)
    cand = fcos_candidates(outputs["cls_logits"][b], outputs["bbox_reg"][b], outputs["ctrness_logits"][b],
                           locations, strides, level_sizes, cfg.score_thresh, cfg.pre_nms_topk)
    keep = (ops.class_aware_nms or class_aware_nms)(cand.boxes, cand.scores, cand.class_ids, cfg.nms_thresh, cfg.post_nms_topk)
    boxes, class_ids = cand.boxes[keep], cand.class_ids[keep]
    scores = torch.sqrt(cand.scores[keep])
    keep = scores > score_threshold
    boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
    newh, neww = geometry.resized
    if boxes.shape[0] == 0:
        return CenterMaskResult(boxes.reshape(0, 4), scores, class_ids,
                                torch.zeros((0, h, w), dtype=torch.bool, device=device),
                                scores.clone() if cfg.use_maskiou else None)

    features = [outputs[f"p{level}"][b:b + 1] for level in ROI_LEVELS]
    if stage2 is None:
        stage2 = TorchStage2(CenterMaskStage2(net))
    probs, maskiou = mask_head_outputs(stage2, cfg, features, boxes, class_ids, float(newh * neww))
    if maskiou is not None and cfg.clamp_maskiou:
        maskiou = maskiou.clamp(0.0, 1.0)
    mask_scores = scores * maskiou if maskiou is not None else None

    scale = boxes.new_tensor([w / neww, h / newh, w / neww, h / newh])
    limit = boxes.new_tensor([w, h, w, h])
    boxes = torch.minimum((boxes * scale).clamp(min=0.0), limit)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, class_ids, probs = boxes[keep], scores[keep], class_ids[keep], probs[keep]
    if mask_scores is not None:
        mask_scores = mask_scores[keep]
    masks = (ops.paste_masks or paste_masks)(probs, boxes, (h, w), cfg.mask_threshold)
    return CenterMaskResult(boxes, scores, class_ids, masks, mask_scores)
