"""The SOLOv2 training loss, as WXinlong/SOLO computes it.

Upstream reference: ``mmdet/models/anchor_heads/solov2_head.py`` (``loss``,
``solov2_target_single``, ``dice_loss``, ``center_of_mass``) with the values of every
``configs/solov2/*.py``: ``loss_cate=FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25,
loss_weight=1.0)``, ``loss_ins=DiceLoss(loss_weight=3.0)``, ``sigma=0.2`` (mmdetection 3:
``pos_scale=0.2``; AdelaiDet ``MODEL.SOLOV2.LOSS``: the same numbers). Written from reading
that code; the terms are:

- ``cate``: sigmoid focal loss summed over every grid cell and class, divided by
  ``num_pos + 1`` (``num_pos`` = positive cells in the batch), x 1.0.
- ``mask``: Dice loss ``1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + 0.002)`` of each positive
  (cell, instance) pair's predicted mask (its kernel convolved with the mask features,
  sigmoid) against the instance's mask at 1/4 resolution, averaged over the pairs, x 3.0.

Target assignment (:func:`assign_targets`, per image and level): an instance goes to every
level whose ``scale_ranges`` contain ``sqrt(box w * box h)`` (ranges overlap, so up to two
levels); its positive cells are the cells of the box around the mask's centre of mass with
half-size ``sigma * box / 2``, clipped to the 3x3 cells around the centre cell. A cell claimed
by several instances takes the last one's class; each claiming instance still adds a mask
pair for it (upstream's behaviour). Crowd instances are left out entirely (upstream hands
them to ``gt_bboxes_ignore``, which SOLOv2 ignores); instances with empty masks too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from rtseg.families.solov2.network import Solov2Config
from rtseg.families.solov2.postprocess import MASK_STRIDE


@dataclass(frozen=True)
class Solov2LossConfig:
    """Loss settings; defaults are every WXinlong/SOLO ``configs/solov2/*.py``."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cate_weight: float = 1.0  #: ``loss_cate.loss_weight``
    mask_weight: float = 3.0  #: ``loss_ins.loss_weight``
    dice_eps: float = 0.001  #: added to each of ``sum(p^2)`` and ``sum(t^2)`` (``dice_loss``)


@dataclass(frozen=True)
class LevelTargets:
    """Targets of one image at one level with grid ``S``.

    - ``labels``: ``int64[S * S]`` class of each cell (row-major), ``C`` (= number of
      classes) for background.
    - ``pair_cells``: ``int64[P]`` cell index of each positive (cell, instance) pair.
    - ``pair_instances``: ``int64[P]`` instance index (into the image's targets) of each pair.
      Pairs are instance-major, then cells row-major (upstream's append order).
    """

    labels: torch.Tensor
    pair_cells: torch.Tensor
    pair_instances: torch.Tensor


def center_of_mass(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``masks [N, H, W]`` (0/1) -> ``(cy, cx)`` ``float32[N]`` in pixel-index coordinates
    (row / column indices, no +0.5), as upstream's ``center_of_mass``."""
    m = masks.to(torch.float32)
    n, h, w = m.shape
    m00 = m.sum((1, 2)).clamp(min=1e-6)
    cx = (m.sum(1) * torch.arange(w, dtype=torch.float32, device=m.device)).sum(1) / m00
    cy = (m.sum(2) * torch.arange(h, dtype=torch.float32, device=m.device)).sum(1) / m00
    return cy, cx


def _cell_of(v: torch.Tensor, size: int, grid: int) -> torch.Tensor:
    """Upstream's ``int((v / size) // (1. / grid))`` on float32 tensors (old torch ``//``
    truncates; mmdetection 3 writes it ``floordiv(..., rounding_mode='trunc')``)."""
    return torch.div(v / size, 1.0 / grid, rounding_mode="trunc").to(torch.int64)


def assign_targets(boxes: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, cfg: Solov2Config,
                   num_classes: int) -> list[LevelTargets]:
    """Grid-cell targets of one image for every level (upstream ``solov2_target_single``).

    Args:
        boxes: ``float32[N, 4]`` xyxy in input pixels (non-crowd instances only).
        labels: ``int64[N]`` 0-based classes.
        masks: ``uint8[N, Hc, Wc]`` instance masks at input size.
        cfg: grids, scale ranges and ``center_sigma``.
        num_classes: ``C``; background cells get label ``C``.

    Returns one :class:`LevelTargets` per level.
    """
    device = labels.device
    n = labels.shape[0]
    hc, wc = masks.shape[-2:]
    if n == 0:
        none = torch.zeros(0, dtype=torch.int64, device=device)
        return [LevelTargets(torch.full((g * g,), num_classes, dtype=torch.int64, device=device), none, none)
                for g in cfg.num_grids]
    areas = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    half_w = 0.5 * (boxes[:, 2] - boxes[:, 0]) * cfg.center_sigma
    half_h = 0.5 * (boxes[:, 3] - boxes[:, 1]) * cfg.center_sigma
    cy, cx = center_of_mass(masks)
    valid = (masks.reshape(n, -1) != 0).any(1)  # upstream: mask sum > 0
    out = []
    for (lo, hi), grid in zip(cfg.scale_ranges, cfg.num_grids):
        hit = (areas >= lo) & (areas <= hi) & valid
        coord_h, coord_w = _cell_of(cy, hc, grid), _cell_of(cx, wc, grid)
        top = torch.maximum(_cell_of(cy - half_h, hc, grid).clamp(min=0), coord_h - 1)
        down = torch.minimum(_cell_of(cy + half_h, hc, grid).clamp(max=grid - 1), coord_h + 1)
        left = torch.maximum(_cell_of(cx - half_w, wc, grid).clamp(min=0), coord_w - 1)
        right = torch.minimum(_cell_of(cx + half_w, wc, grid).clamp(max=grid - 1), coord_w + 1)
        rows = torch.arange(grid, device=device)
        in_rows = (rows[None] >= top[:, None]) & (rows[None] <= down[:, None])  # [N, S]
        in_cols = (rows[None] >= left[:, None]) & (rows[None] <= right[:, None])
        inside = (in_rows[:, :, None] & in_cols[:, None, :] & hit[:, None, None]).reshape(n, grid * grid)
        # a cell takes the class of the last instance claiming it (later writes win upstream)
        last = torch.where(inside, torch.arange(n, device=device)[:, None], -1).amax(0)
        cell_labels = torch.where(last >= 0, labels[last.clamp(min=0)], num_classes)
        pair_instances, pair_cells = torch.nonzero(inside, as_tuple=True)
        out.append(LevelTargets(cell_labels, pair_cells, pair_instances))
    return out


def downsample_masks(masks: torch.Tensor) -> torch.Tensor:
    """``uint8[N, H, W]`` -> ``float32[N, H/4, W/4]`` 0/1 masks at mask-feature resolution.

    Upstream uses ``mmcv.imrescale(mask, 1/4)``, OpenCV ``INTER_LINEAR`` on the uint8 mask: at
    an exact factor 4 each output pixel is the mean of a 2x2 block of input pixels (rows and
    columns ``4 i + 1, 4 i + 2``), rounded half up by OpenCV's fixed-point arithmetic. Bilinear
    ``align_corners=False`` samples the same points; ``>= 0.5`` rounds the same way.
    """
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, h // MASK_STRIDE, w // MASK_STRIDE), dtype=torch.float32)
    small = F.interpolate(masks[:, None].to(torch.float32), size=(h // MASK_STRIDE, w // MASK_STRIDE), mode="bilinear",
                          align_corners=False)[:, 0]
    return (small >= 0.5).to(torch.float32)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Summed sigmoid focal loss (Lin et al. 2017) of ``logits float32[M, C]`` against one-hot
    ``targets float32[M, C]``: ``sum(-alpha_t (1 - p_t)^gamma log(p_t))`` (mmdet's
    ``sigmoid_focal_loss``)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.001) -> torch.Tensor:
    """Per-instance Dice loss of soft masks ``pred float32[P, h, w]`` in [0, 1] against
    ``target float32[P, h, w]`` (0/1): ``1 - 2 a / (b + c)`` with ``a = sum(p t)``,
    ``b = sum(p^2) + eps``, ``c = sum(t^2) + eps`` -> ``float32[P]`` (upstream ``dice_loss``)."""
    p = pred.reshape(pred.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    a = (p * t).sum(1)
    b = (p * p).sum(1) + eps
    c = (t * t).sum(1) + eps
    return 1 - 2 * a / (b + c)


def solov2_loss(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], cfg: Solov2Config,
                loss_cfg: Solov2LossConfig = Solov2LossConfig()) -> dict[str, torch.Tensor]:
    """The loss of a batch.

    Args:
        outputs: train-mode outputs of :class:`rtseg.families.solov2.network.Solov2`: ``cate_logits
            float32[B, G, C]``, ``kernel float32[B, G, E]``, ``mask_feat float32[B, E, Hc/4, Wc/4]``.
        targets: one dict per image (:func:`rtseg.data.coco.collate`): ``boxes float32[N, 4]``
            relative xyxy in [0, 1], ``labels int64[N]``, ``masks uint8[N, Hc, Wc]``,
            ``crowd bool[N]``.

    Returns ``{"cate", "mask", "total"}`` scalars (``total = cate + mask``, weights applied).
    """
    if "cate_logits" not in outputs:
        raise ValueError("the SOLOv2 loss needs train-mode outputs ('cate_logits'); got keys "
                         f"{sorted(outputs)} (put the network in training mode)")
    logits, kernels, mask_feat = outputs["cate_logits"], outputs["kernel"], outputs["mask_feat"]
    b, g, c = logits.shape
    fh, fw = mask_feat.shape[-2:]
    hc, wc = fh * MASK_STRIDE, fw * MASK_STRIDE
    if len(targets) != b:
        raise ValueError(f"expected one target dict per image ({b}), got {len(targets)}")
    offsets = [0]
    for grid in cfg.num_grids:
        offsets.append(offsets[-1] + grid * grid)
    if offsets[-1] != g:
        raise ValueError(f"outputs have {g} grid cells, config {cfg.name} has {offsets[-1]}")
    cell_labels = []
    dice_terms = []
    for i, t in enumerate(targets):
        masks = t["masks"]
        if tuple(masks.shape[-2:]) != (hc, wc):
            raise ValueError(f"target masks of image {i} are {tuple(masks.shape[-2:])}, expected the input size {(hc, wc)}")
        keep = ~t["crowd"].to(torch.bool)
        boxes = t["boxes"][keep].to(torch.float32) * torch.tensor([wc, hc, wc, hc], dtype=torch.float32,
                                                                     device=logits.device)
        labels, masks = t["labels"][keep], masks[keep]
        levels = assign_targets(boxes, labels, masks, cfg, c)
        cell_labels.append(torch.cat([lt.labels for lt in levels]))
        cells = torch.cat([lt.pair_cells + off for lt, off in zip(levels, offsets)])
        insts = torch.cat([lt.pair_instances for lt in levels])
        if cells.numel():
            pred = torch.sigmoid(torch.einsum("pe,ehw->phw", kernels[i, cells], mask_feat[i]))
            dice_terms.append(dice_loss(pred, downsample_masks(masks)[insts], loss_cfg.dice_eps))
    labels = torch.stack(cell_labels).reshape(-1)  # [B * G]
    pos = labels < c
    onehot = torch.zeros_like(logits.reshape(-1, c))
    onehot[pos.nonzero(as_tuple=True)[0], labels[pos]] = 1.0
    num_pos = pos.sum().to(logits.dtype)
    cate = sigmoid_focal_loss(logits.reshape(-1, c), onehot, loss_cfg.focal_alpha, loss_cfg.focal_gamma) / (num_pos + 1)
    cate = cate * loss_cfg.cate_weight
    if dice_terms:
        mask = torch.cat(dice_terms).mean() * loss_cfg.mask_weight
    else:  # no positive anywhere in the batch: zero, still connected to the graph
        mask = (kernels.sum() + mask_feat.sum()) * 0.0
    return {"cate": cate, "mask": mask, "total": cate + mask}
