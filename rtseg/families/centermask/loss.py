"""The CenterMask training loss, as youngwanLEE/centermask2 computes it.

Upstream references (commits in ``tests/fixtures/official/CENTERMASK.md``):
``centermask/modeling/fcos/fcos_outputs.py`` (``compute_targets_for_locations``,
``get_sample_region``, ``fcos_losses``), ``centermask/layers/iou_loss.py`` (``IOULoss``),
``centermask/modeling/centermask/center_heads.py`` (``label_and_sample_proposals``,
``select_foreground_proposals``), ``proposal_utils.py`` (GT boxes appended to the proposals),
``mask_head.py`` (``mask_rcnn_loss``, incl. the MaskIoU targets), ``maskiou_head.py``
(``mask_iou_loss``), with the values of ``centermask/config/defaults.py`` and detectron2's
``config/defaults.py`` (cited per field of :class:`CenterMaskLossConfig`). Terms:

- ``fcos_cls``: sigmoid focal loss (alpha 0.25, gamma 2) over every location and class,
  summed, divided by the number of positive locations (at least 1).
- ``fcos_loc``: GIoU loss of the positive locations' (l, t, r, b) in stride units, weighted by
  their centre-ness targets, divided by the sum of those targets.
- ``fcos_ctr``: BCE of the centre-ness logits of positives against
  ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``, divided by the positive count.
- ``mask``: per-pixel BCE (mean) of the 28 x 28 mask logits of the GT class for foreground
  RoIs. RoIs are the FCOS detections of the current (detached) predictions plus the GT boxes;
  a RoI is foreground when its IoU with a GT box is ``>= 0.5``; at most
  ``cfg.train_mask_rois_per_image`` are drawn at random per image. Targets: the GT mask
  RoIAligned (``aligned=True``) into the RoI, ``>= 0.5``.
- ``maskiou``: 0.5 x squared error between the MaskIoU head's prediction for the GT class and the
  IoU of the binarised predicted mask (``logit > 0``) with the GT mask, where the GT mask's
  part outside the RoI counts in the union; averaged over RoIs whose target IoU is > 0.

Crowd annotations are dropped (detectron2 ``DatasetMapper`` keeps only ``iscrowd == 0``).
``total`` is the sum of the five terms (all loss weights 1, as upstream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, roi_align, sigmoid_focal_loss

from rtseg.families.centermask.network import CenterMaskConfig
from rtseg.families.centermask.postprocess import (
    ROI_LEVELS,
    assign_roi_levels,
    class_aware_nms,
    fcos_candidates,
    pool_rois,
)

INF = 100000000.0  #: ``INF`` of fcos_outputs.py


@dataclass(frozen=True)
class CenterMaskLossConfig:
    """Loss settings; defaults from centermask2 ``centermask/config/defaults.py`` (``MODEL.FCOS.*``)
    and detectron2 ``config/defaults.py`` (``MODEL.ROI_HEADS.*``)."""

    focal_alpha: float = 0.25  #: ``FCOS.LOSS_ALPHA``
    focal_gamma: float = 2.0  #: ``FCOS.LOSS_GAMMA``
    sizes_of_interest: tuple[float, ...] = (64, 128, 256, 512)  #: ``FCOS.SIZES_OF_INTEREST`` (pixels)
    center_sample: bool = True  #: ``FCOS.CENTER_SAMPLE``
    pos_radius: float = 1.5  #: ``FCOS.POS_RADIUS`` (in strides)
    loc_loss_type: str = "giou"  #: ``FCOS.LOC_LOSS_TYPE``: "giou", "iou" or "linear_iou"
    proposal_score_thresh: float = 0.05  #: ``FCOS.INFERENCE_TH_TRAIN``
    proposal_pre_nms_topk: int = 1000  #: ``FCOS.PRE_NMS_TOPK_TRAIN``
    proposal_post_nms_topk: int = 100  #: ``FCOS.POST_NMS_TOPK_TRAIN``
    proposal_nms_thresh: float = 0.6  #: ``FCOS.NMS_TH``
    roi_fg_iou_threshold: float = 0.5  #: ``ROI_HEADS.IOU_THRESHOLDS``
    maskiou_loss_weight: float = 1.0  #: ``MODEL.MASKIOU_LOSS_WEIGHT``

    def __post_init__(self) -> None:
        if self.loc_loss_type not in ("giou", "iou", "linear_iou"):
            raise ValueError(f"loc_loss_type must be 'giou', 'iou' or 'linear_iou', got {self.loc_loss_type!r}")


@dataclass(frozen=True)
class FcosTargets:
    """Targets of one image's locations: ``labels int64[P]`` (``K`` = background),
    ``reg float32[P, 4]`` (l, t, r, b) in **pixels**, ``gt_index int64[P]`` (meaningful where
    ``labels < K``)."""

    labels: torch.Tensor
    reg: torch.Tensor
    gt_index: torch.Tensor


def size_ranges(level_sizes: Sequence[tuple[int, int]], sizes_of_interest: Sequence[float],
                device: torch.device | None = None) -> torch.Tensor:
    """``float32[P, 2]`` (low, high) of each location's level: ``[-1, s0], [s0, s1], ..., [s_last, INF]``."""
    bounds = [-1.0, *[float(s) for s in sizes_of_interest], INF]
    if len(bounds) - 1 != len(level_sizes):
        raise ValueError(f"sizes_of_interest must have {len(level_sizes) - 1} entries for {len(level_sizes)} levels, "
                         f"got {len(sizes_of_interest)}")
    rows = [torch.tensor([[bounds[i], bounds[i + 1]]]).expand(h * w, 2) for i, (h, w) in enumerate(level_sizes)]
    return torch.cat(rows).to(device=device, dtype=torch.float32)


def fcos_targets(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, locations: torch.Tensor, strides: torch.Tensor,
                 ranges: torch.Tensor, num_classes: int, center_sample: bool = True,
                 radius: float = 1.5) -> FcosTargets:
    """FCOS target assignment for one image (``compute_targets_for_locations``).

    Args:
        gt_boxes: ``float32[N, 4]`` xyxy input pixels (N may be 0); gt_labels: ``int64[N]``.
        locations: ``float32[P, 2]``; strides: ``float32[P]``; ranges: ``float32[P, 2]`` from
            :func:`size_ranges`.

    A location is a candidate for a GT box when it lies strictly inside the box (or, with
    ``center_sample``, strictly inside the box intersected with the square of half-side
    ``stride * radius`` around the box centre) and the largest of its four distances is in
    its level's range (both ends inclusive). Among candidates it takes the GT of smallest area
    (the first one on ties); locations without one are background.
    """
    p = locations.shape[0]
    device = locations.device
    if gt_boxes.shape[0] == 0:
        return FcosTargets(torch.full((p,), num_classes, dtype=torch.int64, device=device),
                           locations.new_zeros((p, 4)), torch.zeros(p, dtype=torch.int64, device=device))
    xs, ys = locations[:, 0, None], locations[:, 1, None]
    x1, y1, x2, y2 = (gt_boxes[None, :, i] for i in range(4))
    reg = torch.stack([xs - x1, ys - y1, x2 - xs, y2 - ys], dim=2)  # [P, N, 4]
    if center_sample:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        r = (strides * radius)[:, None]
        inner = torch.stack([xs - torch.maximum(cx - r, x1), ys - torch.maximum(cy - r, y1),
                             torch.minimum(cx + r, x2) - xs, torch.minimum(cy + r, y2) - ys], dim=2)
        inside = inner.min(dim=2).values > 0
    else:
        inside = reg.min(dim=2).values > 0
    max_reg = reg.max(dim=2).values
    cared = (max_reg >= ranges[:, :1]) & (max_reg <= ranges[:, 1:])
    area = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(p, -1)
    area = torch.where(inside & cared, area, torch.full_like(area, INF))
    min_area, gt_index = area.min(dim=1)
    labels = gt_labels[gt_index].clone()
    labels[min_area == INF] = num_classes
    return FcosTargets(labels, reg[torch.arange(p, device=device), gt_index], gt_index)


def centerness_targets(reg: torch.Tensor) -> torch.Tensor:
    """``float32[M, 4]`` positive (l, t, r, b) -> ``float32[M]`` ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``."""
    if reg.shape[0] == 0:
        return reg.new_zeros(0)
    lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
    return torch.sqrt((lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values))


def iou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             loss_type: str = "giou") -> torch.Tensor:
    """Summed IoU-family loss of (l, t, r, b) distances from the same locations (``IOULoss``).

    ``pred, target float32[M, 4]``, ``weight float32[M]`` -> scalar. IoU is smoothed as
    upstream: ``(inter + 1) / (union + 1)``; GIoU subtracts ``(hull - union) / hull``.
    ``giou``: ``1 - giou``; ``iou``: ``-log(iou)``; ``linear_iou``: ``1 - iou``.
    """
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    w_inter = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    h_inter = torch.minimum(pred[:, 3], target[:, 3]) + torch.minimum(pred[:, 1], target[:, 1])
    hull = (torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 2], target[:, 2])) * \
           (torch.maximum(pred[:, 3], target[:, 3]) + torch.maximum(pred[:, 1], target[:, 1]))
    inter = w_inter * h_inter
    union = target_area + pred_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    if loss_type == "giou":
        losses = 1 - (ious - (hull - union) / hull)
    elif loss_type == "iou":
        losses = -torch.log(ious)
    elif loss_type == "linear_iou":
        losses = 1 - ious
    else:
        raise ValueError(f"loss_type must be 'giou', 'iou' or 'linear_iou', got {loss_type!r}")
    return (losses * weight).sum() if weight is not None else losses.sum()


def _pixel_targets(targets: Sequence[dict[str, Any]], size: tuple[int, int], device: torch.device) -> list[dict]:
    """Drop crowds; relative boxes -> input pixels; check the mask size."""
    h, w = size
    out = []
    for i, t in enumerate(targets):
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
        masks = torch.as_tensor(t["masks"], device=device)
        n = boxes.shape[0]
        crowd = torch.as_tensor(t.get("crowd", torch.zeros(n, dtype=torch.bool)), device=device).reshape(-1).bool()
        if labels.shape[0] != n or crowd.shape[0] != n or masks.dim() != 3 or masks.shape[0] != n:
            raise ValueError(f"target {i}: boxes (N, 4), labels (N,), crowd (N,) and masks (N, H, W) must agree, got "
                             f"{tuple(boxes.shape)}, {tuple(labels.shape)}, {tuple(crowd.shape)}, {tuple(masks.shape)}")
        if n and tuple(masks.shape[1:]) != (h, w):
            raise ValueError(f"target {i}: masks must be at the network input size {(h, w)}, got {tuple(masks.shape[1:])}")
        keep = ~crowd
        scale = boxes.new_tensor([w, h, w, h])
        out.append({"boxes": boxes[keep] * scale, "labels": labels[keep], "masks": masks[keep]})
    return out


def sample_mask_rois(proposals: torch.Tensor, gt_boxes: torch.Tensor, iou_threshold: float,
                     max_rois: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground RoIs of one image (``label_and_sample_proposals`` + ``select_foreground_proposals``).

    ``proposals float32[R, 4]``, ``gt_boxes float32[N, 4]`` (input pixels; GT boxes are appended
    to the proposals here, as ``add_ground_truth_to_proposals`` does). A RoI is foreground when
    its best IoU with a GT box is ``>= iou_threshold``; at most ``max_rois`` of them, drawn at
    random (torch's global generator). Returns ``(roi boxes float32[F, 4], matched GT int64[F])``.
    """
    rois = torch.cat([proposals, gt_boxes])
    if gt_boxes.shape[0] == 0 or rois.shape[0] == 0:
        return rois.new_zeros((0, 4)), torch.zeros(0, dtype=torch.int64, device=rois.device)
    best_iou, matched = box_iou(gt_boxes, rois).max(dim=0)
    fg = (best_iou >= iou_threshold).nonzero().squeeze(1)
    if fg.numel() > max_rois:
        fg = fg[torch.randperm(fg.numel(), device=fg.device)[:max_rois]]
    return rois[fg], matched[fg]


def mask_fraction_inside(masks: torch.Tensor, gt_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fraction of a GT mask's pixels whose centre lies in a RoI box (``mask_ratios`` upstream,
    which crops polygons instead of counting pixels).

    ``masks uint8/bool[G, H, W]``, ``gt_index int64[F]`` (mask of each RoI), ``boxes float32[F, 4]``
    input pixels -> ``float32[F]`` in ``[0, 1]`` (0 for empty masks). Pixel ``(r, c)`` is inside
    when ``x1 <= c + 0.5 < x2`` and ``y1 <= r + 0.5 < y2``. Counted with one integral image per GT
    mask (``[G, H + 1, W + 1]``), not per RoI.
    """
    g, h, w = masks.shape
    integral = F.pad(masks.to(torch.float32).cumsum(1).cumsum(2), (1, 0, 1, 0))
    c0 = torch.ceil(boxes[:, 0] - 0.5).clamp(0, w).long()
    c1 = torch.ceil(boxes[:, 2] - 0.5).clamp(0, w).long()
    r0 = torch.ceil(boxes[:, 1] - 0.5).clamp(0, h).long()
    r1 = torch.ceil(boxes[:, 3] - 0.5).clamp(0, h).long()
    c1, r1 = torch.maximum(c1, c0), torch.maximum(r1, r0)
    s = integral[gt_index]
    f = torch.arange(boxes.shape[0], device=boxes.device)
    inside = s[f, r1, c1] - s[f, r0, c1] - s[f, r1, c0] + s[f, r0, c0]
    total = s[f, h, w]
    return torch.where(total > 0, inside / total.clamp(min=1.0), torch.zeros_like(total)).clamp(0.0, 1.0)


def maskiou_targets(pred_logits: torch.Tensor, gt_crops: torch.Tensor, fraction_inside: torch.Tensor) -> torch.Tensor:
    """IoU of the binarised predicted RoI mask with the whole GT mask (``mask_rcnn_loss`` with MaskIoU on).

    ``pred_logits float32[F, M, M]``, ``gt_crops bool[F, M, M]`` (GT mask inside the RoI),
    ``fraction_inside float32[F]`` (:func:`mask_fraction_inside`) -> ``float32[F]``:
    ``inter / max(pred + gt_crop / max(fraction, 1e-10) - inter, 1)`` in RoI-mask pixels.
    """
    pred = pred_logits > 0
    gt = gt_crops.to(torch.float32)
    full_area = gt.sum(dim=(1, 2)) / fraction_inside.clamp(min=1e-10)
    inter = (pred & gt_crops).sum(dim=(1, 2)).to(torch.float32)
    union = (pred.sum(dim=(1, 2)).to(torch.float32) + full_area - inter).clamp(min=1.0)
    return inter / union


def centermask_loss(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], net: nn.Module,
                    cfg: CenterMaskConfig, loss_cfg: CenterMaskLossConfig = CenterMaskLossConfig()) -> dict[str, torch.Tensor]:
    """All CenterMask loss terms for a batch (see the module docstring).

    Args:
        outputs: :class:`rtseg.families.centermask.network.CenterMask` outputs for ``B`` images.
        targets: ``B`` dicts with ``boxes float32[N, 4]`` relative xyxy, ``labels int64[N]``,
            ``masks uint8[N, H, W]`` at the network input size, ``crowd bool[N]``.
        net: the network (``locations``, ``location_strides``, ``level_sizes``, ``roi_heads``).

    Returns ``{"fcos_cls", "fcos_loc", "fcos_ctr", "mask", "maskiou", "total"}`` scalars.
    """
    cls_logits, bbox_reg, ctr_logits = outputs["cls_logits"], outputs["bbox_reg"], outputs["ctrness_logits"]
    b, p, k = cls_logits.shape
    if len(targets) != b:
        raise ValueError(f"got {len(targets)} targets for a batch of {b} images")
    device = cls_logits.device
    gts = _pixel_targets(targets, cfg.input_size, device)
    locations, strides = net.locations, net.location_strides
    ranges = size_ranges(net.level_sizes, loss_cfg.sizes_of_interest, device)

    # -- FCOS ---------------------------------------------------------------------------------
    assigned = [fcos_targets(g["boxes"], g["labels"], locations, strides, ranges, k, loss_cfg.center_sample,
                             loss_cfg.pos_radius) for g in gts]
    labels = torch.stack([a.labels for a in assigned])  # [B, P]
    reg_t = torch.stack([a.reg for a in assigned]) / strides[None, :, None]
    pos = labels != k
    num_pos = max(float(pos.sum()), 1.0)
    cls_target = torch.zeros_like(cls_logits)
    cls_target[pos] = F.one_hot(labels[pos], k).to(cls_target.dtype)
    loss_cls = sigmoid_focal_loss(cls_logits, cls_target, alpha=loss_cfg.focal_alpha, gamma=loss_cfg.focal_gamma,
                                  reduction="sum") / num_pos
    ctr_t = centerness_targets(reg_t[pos])
    loss_loc = iou_loss(bbox_reg[pos], reg_t[pos], ctr_t, loss_cfg.loc_loss_type) / max(float(ctr_t.sum()), 1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[pos], ctr_t, reduction="sum") / num_pos

    # -- RoI heads -----------------------------------------------------------------------------
    rois, roi_batch, roi_gt = [], [], []
    offset = 0
    with torch.no_grad():
        for i, g in enumerate(gts):
            cand = fcos_candidates(cls_logits[i].detach(), bbox_reg[i].detach(), ctr_logits[i].detach(), locations,
                                   strides, net.level_sizes, loss_cfg.proposal_score_thresh,
                                   loss_cfg.proposal_pre_nms_topk)
            keep = class_aware_nms(cand.boxes, cand.scores, cand.class_ids, loss_cfg.proposal_nms_thresh,
                                   loss_cfg.proposal_post_nms_topk)
            boxes, matched = sample_mask_rois(cand.boxes[keep], g["boxes"], loss_cfg.roi_fg_iou_threshold,
                                              cfg.train_mask_rois_per_image)
            rois.append(boxes)
            roi_batch.append(torch.full((boxes.shape[0],), i, dtype=torch.int64, device=device))
            roi_gt.append(matched + offset)
            offset += g["boxes"].shape[0]
    rois_t = torch.cat(rois)
    if rois_t.shape[0] == 0:
        # every RoI-head parameter stays in the graph with a zero gradient (upstream: ``sum() * 0``)
        loss_mask = loss_maskiou = sum(q.sum() for q in net.roi_heads.parameters()) * 0
    else:
        batch_t, gt_t = torch.cat(roi_batch), torch.cat(roi_gt)
        gt_masks = torch.cat([g["masks"] for g in gts])
        labels_t = torch.cat([g["labels"] for g in gts])[gt_t]
        features = [outputs[f"p{level}"] for level in ROI_LEVELS]
        levels = assign_roi_levels(rois_t, float(cfg.input_height * cfg.input_width))
        roi_feats = pool_rois(features, rois_t, batch_t, levels, cfg.pooler_resolution, cfg.pooler_sampling_ratio)
        rows = torch.arange(rois_t.shape[0], device=device)
        selected = net.roi_heads.mask_head(roi_feats)[rows, labels_t]  # [F, M, M]
        m = cfg.mask_size
        with torch.no_grad():  # BitMasks.crop_and_resize
            idx_rois = torch.cat([gt_t.to(rois_t.dtype)[:, None], rois_t], dim=1)
            gt_crops = roi_align(gt_masks[:, None].to(torch.float32), idx_rois, (m, m), 1.0, 0, aligned=True)[:, 0] >= 0.5
        loss_mask = F.binary_cross_entropy_with_logits(selected, gt_crops.to(selected.dtype), reduction="mean")
        if cfg.use_maskiou:
            with torch.no_grad():
                iou_t = maskiou_targets(selected.detach(), gt_crops, mask_fraction_inside(gt_masks, gt_t, rois_t))
            pred_iou = net.roi_heads.maskiou_head(roi_feats, torch.sigmoid(selected)[:, None])[rows, labels_t]
            positive = iou_t > 0
            if positive.any():
                loss_maskiou = (0.5 * (pred_iou[positive] - iou_t[positive]) ** 2).sum() / positive.sum()
            else:
                loss_maskiou = pred_iou.sum() * 0
            loss_maskiou = loss_maskiou * loss_cfg.maskiou_loss_weight
        else:
            loss_maskiou = cls_logits.sum() * 0
    total = loss_cls + loss_loc + loss_ctr + loss_mask + loss_maskiou
    return {"fcos_cls": loss_cls, "fcos_loc": loss_loc, "fcos_ctr": loss_ctr, "mask": loss_mask,
            "maskiou": loss_maskiou, "total": total}
