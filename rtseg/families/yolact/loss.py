"""The YOLACT / YOLACT++ training loss, as dbolya/yolact computes it.

Upstream reference: ``layers/modules/multibox_loss.py`` (``MultiBoxLoss``) and
``layers/box_utils.py`` (``match``, ``encode``, ``crop``) with the values of
``yolact_base_config`` / ``yolact_plus_base_config`` in ``data/config.py`` (cited per field
of :class:`YolactLossConfig`). Written from reading that code; the terms are:

- ``box`` (upstream ``B``): smooth-L1 between predicted and encoded GT offsets of positive
  priors, x ``bbox_alpha``.
- ``conf`` (``C``): softmax cross-entropy over positives and the hardest negatives
  (online hard example mining, 3 negatives per positive), x ``conf_alpha``.
- ``mask`` (``M``): per positive, ``sigmoid(proto @ coef)`` cropped to its GT box, binary
  cross-entropy against the GT mask downsampled to prototype size, normalised by the GT
  box area in prototype pixels (``mask_proto_normalize_emulate_roi_pooling``), x ``mask_alpha``.
- ``semantic`` (``S``): sigmoid BCE of the ``segm`` head against per-class GT masks.
- ``maskiou`` (``I``, YOLACT++ only): smooth-L1 between the mask-IoU net's prediction and
  the IoU of the binarised predicted mask with the GT mask, x ``maskiou_alpha``.

``box``, ``conf``, ``mask`` and ``maskiou`` are divided by the number of positive priors in
the batch, ``semantic`` by the batch size, as upstream. ``total`` is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from rtseg.families.yolact.postprocess import VARIANCES, box_iou, crop_masks

#: ``-log`` of the clamped probability torch's ``binary_cross_entropy`` uses for p = 0 or 1
_BCE_LOG_CLAMP = 100.0


@dataclass(frozen=True)
class YolactLossConfig:
    """Loss settings; defaults are dbolya/yolact ``yolact_base_config`` (and ``coco_base_config``)."""

    pos_iou_threshold: float = 0.5  #: prior IoU >= this: positive (``positive_iou_threshold``)
    neg_iou_threshold: float = 0.4  #: prior IoU < this: background, in between neutral
    crowd_iou_threshold: float = 0.7  #: non-positive prior covered > this by a crowd box: neutral
    negpos_ratio: int = 3  #: hard negatives per positive (``ohem_negpos_ratio``)
    bbox_alpha: float = 1.5
    conf_alpha: float = 1.0
    mask_alpha: float = 6.125  #: ``yolact_base_config`` (coco_base_config's 0.4/256*140*140)
    masks_to_train: int = 100  #: random subset of positives per image for the mask loss
    semantic_segmentation_alpha: float = 1.0
    maskiou_alpha: float = 25.0  #: ``yolact_plus_base_config``
    discard_mask_area: float = 25.0  #: YOLACT++: GT masks of <= this many prototype pixels train no mask IoU
    #: GT boxes with relative width or height <= this are ignored (upstream discards them in the
    #: training ``Resize`` transform: ``discard_box_width = 4 / 550``)
    min_box_size: float = 4 / 550


@dataclass(frozen=True)
class PriorMatch:
    """Targets of one image's priors.

    - ``labels``: ``int64[P]``: ``-1`` neutral (ignored), ``0`` background, ``c + 1`` for
      foreground class ``c``.
    - ``gt_index``: ``int64[P]``: index of the matched GT box (meaningful where ``labels > 0``).
    - ``loc``: ``float32[P, 4]``: the matched GT box encoded against each prior (:func:`encode_boxes`).
    """

    labels: torch.Tensor
    gt_index: torch.Tensor
    loc: torch.Tensor


def priors_to_xyxy(priors: torch.Tensor) -> torch.Tensor:
    """``float32[P, 4]`` (cx, cy, w, h) -> ``float32[P, 4]`` (x1, y1, x2, y2), same frame."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def encode_boxes(boxes: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD encoding, the inverse of :func:`rtseg.families.yolact.postprocess.decode_boxes`.

    ``boxes float32[P, 4]`` xyxy and ``priors float32[P, 4]`` (cx, cy, w, h), both relative
    -> ``float32[P, 4]`` offsets ``((c - c_p) / (0.1 w_p), log(w / w_p) / 0.2)``. Boxes must
    have positive width and height.
    """
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    d_center = (centers - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    d_size = torch.log(sizes / priors[:, 2:]) / VARIANCES[1]
    return torch.cat([d_center, d_size], dim=1)


def match_priors(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, priors: torch.Tensor,
                 crowd_boxes: torch.Tensor | None = None, cfg: YolactLossConfig = YolactLossConfig()) -> PriorMatch:
    """Assign each prior a GT box or background (``box_utils.match``).

    Args:
        gt_boxes: ``float32[N, 4]`` non-crowd GT boxes, relative xyxy (N may be 0).
        gt_labels: ``int64[N]`` 0-based foreground classes.
        priors: ``float32[P, 4]`` anchors (cx, cy, w, h) relative, from ``make_priors``.
        crowd_boxes: ``float32[M, 4]`` crowd boxes (relative xyxy) or None.

    Each prior takes the GT it overlaps most; it is positive when that IoU is ``>=
    pos_iou_threshold``, background when ``< neg_iou_threshold``, neutral in between. Then,
    greedily from the highest overlap down, every GT claims its best prior, which becomes
    positive whatever the IoU (no GT goes untrained; a prior claimed once is not re-claimed).
    Non-positive priors whose area is more than ``crowd_iou_threshold`` inside a crowd box
    become neutral.
    """
    num_priors = priors.shape[0]
    device = priors.device
    prior_boxes = priors_to_xyxy(priors)
    n = gt_boxes.shape[0]
    if n == 0:
        labels = torch.zeros(num_priors, dtype=torch.int64, device=device)
        gt_index = torch.zeros(num_priors, dtype=torch.int64, device=device)
        loc = torch.zeros(num_priors, 4, dtype=priors.dtype, device=device)
    else:
        overlaps = box_iou(gt_boxes, prior_boxes)  # [N, P]
        best_overlap, gt_index = overlaps.max(dim=0)
        # greedy forcing: a loop over the N GT boxes (not over priors), as upstream
        for _ in range(n):
            best_prior_overlap, best_prior = overlaps.max(dim=1)
            j = int(best_prior_overlap.argmax())
            i = int(best_prior[j])
            overlaps[:, i] = -1
            overlaps[j, :] = -1
            best_overlap[i] = 2.0
            gt_index[i] = j
        labels = gt_labels[gt_index] + 1
        labels[best_overlap < cfg.pos_iou_threshold] = -1
        labels[best_overlap < cfg.neg_iou_threshold] = 0
        loc = encode_boxes(gt_boxes[gt_index], priors)
    if crowd_boxes is not None and crowd_boxes.shape[0] > 0 and cfg.crowd_iou_threshold < 1:
        lt = torch.maximum(prior_boxes[:, None, :2], crowd_boxes[None, :, :2])
        rb = torch.minimum(prior_boxes[:, None, 2:], crowd_boxes[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)  # [P, M]
        prior_area = (priors[:, 2] * priors[:, 3])[:, None]
        crowd_cover = (inter / prior_area).max(dim=1).values
        labels[(labels <= 0) & (crowd_cover > cfg.crowd_iou_threshold)] = -1
    return PriorMatch(labels=labels, gt_index=gt_index, loc=loc)


def ohem_conf_loss(conf: torch.Tensor, labels: torch.Tensor, negpos_ratio: int) -> torch.Tensor:
    """Softmax cross-entropy summed over positives and hard negatives (``ohem_conf_loss``).

    ``conf float32[B, P, C]`` logits, ``labels int64[B, P]`` from :func:`match_priors`.
    Per image, background priors are ranked by ``-log softmax(conf)[0]`` and the top
    ``negpos_ratio * num_pos`` (at most ``P - 1``) are used; neutrals never are. Returns a scalar.
    """
    b, p, c = conf.shape
    pos = labels > 0
    with torch.no_grad():
        bg_loss = torch.logsumexp(conf, dim=2) - conf[:, :, 0]
        bg_loss[pos] = 0
        bg_loss[labels < 0] = 0
        order = bg_loss.sort(dim=1, descending=True, stable=True).indices
        rank = order.sort(dim=1, stable=True).indices
        num_neg = (negpos_ratio * pos.sum(dim=1, keepdim=True)).clamp(max=p - 1)
        neg = (rank < num_neg) & ~pos & (labels >= 0)
    chosen = pos | neg
    return F.cross_entropy(conf[chosen], labels[chosen], reduction="sum")


def _downsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``uint8/bool/float[N, H, W]`` -> ``float32[N, h, w]`` of 0/1: bilinear
    (``align_corners=False``) then ``> 0.5`` (``mask_proto_binarize_downsampled_gt``)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.float32, device=masks.device)
    small = F.interpolate(masks[None].float(), size, mode="bilinear", align_corners=False)[0]
    return (small > 0.5).float()


def _cropped_mask_bce(logits: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``BCE(crop(sigmoid(logits), boxes), target)`` per pixel, ``float32[N, h, w]``.

    Inside the crop this is ``binary_cross_entropy_with_logits`` (the same value as upstream's
    BCE on the sigmoid, numerically stable); outside, the prediction is exactly 0, so the
    loss is torch's clamped ``-log 0 = 100`` where the target is 1 and 0 elsewhere (no gradient).
    """
    inside = crop_masks(torch.ones_like(target), boxes) > 0
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return torch.where(inside, bce, target * _BCE_LOG_CLAMP)


def yolact_loss(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]], priors: torch.Tensor,
                *, cfg: YolactLossConfig = YolactLossConfig(),
                maskiou_net: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The YOLACT training loss of one batch.

    Args:
        outputs: training-mode outputs of :class:`rtseg.families.yolact.network.Yolact`: ``loc float32[B, P, 4]``,
            ``conf float32[B, P, C]`` logits, ``coef float32[B, P, k]``, ``proto float32[B, h, w, k]``,
            ``segm float32[B, C-1, hs, ws]``.
        targets: one dict per image (the ``CocoInstanceDataset`` interface): ``boxes float32[N, 4]``
            relative xyxy, ``labels int64[N]`` 0-based, ``masks uint8[N, S, S]`` at input size,
            ``crowd bool[N]`` (optional; crowd annotations only make priors neutral).
        priors: ``float32[P, 4]`` (cx, cy, w, h), same order as the head outputs.
        maskiou_net: YOLACT++ mask-IoU net (``float32[n, 1, h, w] -> float32[n, C-1]``); when given
            the ``maskiou`` term is added.

    Returns:
        ``{"box", "conf", "mask", "semantic"[, "maskiou"], "total"}``, scalar tensors.
    """
    loc, conf, coef, proto = outputs["loc"], outputs["conf"], outputs["coef"], outputs["proto"]
    segm = outputs.get("segm")
    b = loc.shape[0]
    if len(targets) != b:
        raise ValueError(f"expected {b} targets (one per image), got {len(targets)}")
    device = loc.device
    mask_h, mask_w = proto.shape[1:3]

    labels_t, loc_t, index_t, gts = [], [], [], []
    for t in targets:
        boxes = t["boxes"].to(device, torch.float32).reshape(-1, 4)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh > cfg.min_box_size).all(dim=1)
        crowd = t.get("crowd")
        crowd = torch.zeros_like(keep) if crowd is None else crowd.to(device, torch.bool).reshape(-1)
        real = keep & ~crowd
        gt = {"boxes": boxes[real], "labels": t["labels"].to(device).reshape(-1)[real], "masks": t["masks"].to(device)[real]}
        m = match_priors(gt["boxes"], gt["labels"], priors, boxes[keep & crowd], cfg)
        labels_t.append(m.labels)
        loc_t.append(m.loc)
        index_t.append(m.gt_index)
        gts.append(gt)
    labels_t = torch.stack(labels_t)
    pos = labels_t > 0
    # a batch without positives: upstream divides by 0 and skips the step; here those terms are 0
    num_pos = pos.sum().clamp(min=1).float()

    box_loss = F.smooth_l1_loss(loc[pos], torch.stack(loc_t)[pos], reduction="sum") * cfg.bbox_alpha
    conf_loss = ohem_conf_loss(conf, labels_t, cfg.negpos_ratio) * cfg.conf_alpha

    mask_loss = proto.new_zeros(())
    iou_inputs, iou_targets, iou_labels = [], [], []
    for i, gt in enumerate(gts):
        pos_i = torch.nonzero(pos[i]).squeeze(1)
        if pos_i.numel() == 0:
            continue
        all_pos = pos_i.numel()
        if all_pos > cfg.masks_to_train:
            pos_i = pos_i[torch.randperm(all_pos, device=device)[: cfg.masks_to_train]]
        gt_idx = index_t[i][pos_i]
        mask_t = _downsample_masks(gt["masks"], (mask_h, mask_w))[gt_idx]  # [n, h, w]
        boxes = gt["boxes"][gt_idx]
        logits = torch.einsum("hwk,nk->nhw", proto[i], coef[i, pos_i])
        pixel_loss = _cropped_mask_bce(logits, mask_t, boxes)
        box_area = (boxes[:, 2] - boxes[:, 0]) * mask_w * (boxes[:, 3] - boxes[:, 1]) * mask_h
        # emulate_roi_pooling: sum / box area * (h*w), then the final * alpha / (h*w)
        per_mask = pixel_loss.sum(dim=(1, 2)) / box_area
        mask_loss = mask_loss + per_mask.sum() * (all_pos / pos_i.numel())
        if maskiou_net is not None:
            big = mask_t.sum(dim=(1, 2)) > cfg.discard_mask_area
            if big.any():
                soft = crop_masks(torch.sigmoid(logits[big]), boxes[big])
                hard = (soft > 0.5).float()
                inter = (hard * mask_t[big]).sum(dim=(1, 2))
                union = hard.sum(dim=(1, 2)) + mask_t[big].sum(dim=(1, 2)) - inter
                iou_inputs.append(soft[:, None])
                iou_targets.append(inter / union)
                iou_labels.append(gt["labels"][gt_idx][big])
    mask_loss = mask_loss * cfg.mask_alpha

    losses = {"box": box_loss / num_pos, "conf": conf_loss / num_pos, "mask": mask_loss / num_pos}
    if segm is not None:
        losses["semantic"] = _semantic_loss(segm, gts) * cfg.semantic_segmentation_alpha / b
    if maskiou_net is not None:
        if iou_inputs:
            pred = maskiou_net(torch.cat(iou_inputs))
            pred = pred.gather(1, torch.cat(iou_labels)[:, None]).squeeze(1)
            iou_loss = F.smooth_l1_loss(pred, torch.cat(iou_targets), reduction="sum")
            losses["maskiou"] = iou_loss * cfg.maskiou_alpha / num_pos
        else:
            losses["maskiou"] = proto.new_zeros(())
    losses["total"] = sum(losses.values())
    return losses


def _semantic_loss(segm: torch.Tensor, gts: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Sum over the batch of per-image BCE-with-logits of ``segm float32[B, C-1, h, w]``
    against the union of each class's GT masks, divided by ``h * w``
    (``semantic_segmentation_loss``)."""
    _, num_fg, h, w = segm.shape
    total = segm.new_zeros(())
    for i, gt in enumerate(gts):
        small = _downsample_masks(gt["masks"], (h, w))
        target = segm.new_zeros(num_fg, h, w)
        if small.shape[0]:
            index = gt["labels"].view(-1, 1, 1).expand_as(small)
            target = target.scatter_reduce(0, index, small, reduce="amax")
        total = total + F.binary_cross_entropy_with_logits(segm[i], target, reduction="sum")
    return total / (h * w)
