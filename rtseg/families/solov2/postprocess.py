"""SOLOv2 post-processing as pure torch functions (CPU or CUDA, no Python loop over
instances).

Upstream references: WXinlong/SOLO ``mmdet/models/anchor_heads/solov2_head.py``
(``get_seg_single``) and ``mmdet/core/post_processing/matrix_nms.py``; mmdetection 3
(``_predict_by_feat_single``, ``mask_matrix_nms``) and AdelaiDet (``inference_single_image``)
do the same (the test pipeline's preprocessing is :mod:`rtseg.families.solov2.preprocess`). Loop-based reference twins live in
``tests/reference_ops_solov2.py``. No function modifies its inputs.

Coordinate frames: *original* image ``(H, W)`` pixels; the network input ``(Hc, Wc) =
geometry.padded`` (the resized image padded to a multiple of 32, or rtseg's ``--canvas``); the
*resized* image ``(Hr, Wr) = geometry.resized`` sits at its top-left, the rest is zero padding;
mask features and soft masks live at ``(Hc / 4, Wc / 4)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rtseg.families.solov2.network import Solov2Config
from rtseg.families.solov2.preprocess import input_geometry
from rtseg.postprocess import TORCH_OPS, PostprocessOps
from rtseg.postprocess.resize import InputGeometry

#: stride of the mask features relative to the input (``MaskFeatHead`` output is at P2's 1/4)
MASK_STRIDE = 4


def cell_strides(cfg: Solov2Config, device: torch.device | str = "cpu") -> torch.Tensor:
    """``float32[G]``: the stride of each grid cell's level (levels in order, ``S_i^2`` cells
    each), as upstream's ``strides`` vector in ``get_seg_single``."""
    counts = torch.tensor([g * g for g in cfg.num_grids], device=device)
    return torch.repeat_interleave(torch.tensor(cfg.strides, dtype=torch.float32, device=device), counts)


def point_nms(heat: torch.Tensor) -> torch.Tensor:
    """SOLO's "point NMS": keep a score only where it equals the max of the 2x2 window whose
    bottom-right corner it is (``max_pool2d(k=2, stride=1, padding=1)[..., :-1, :-1]``).

    ``heat float32[B, C, S, S]`` (sigmoid scores) -> same shape, non-maxima set to 0. Ties keep
    every tied cell, as upstream (``hmax == heat``)."""
    hmax = F.max_pool2d(heat, 2, stride=1, padding=1)[..., :-1, :-1]
    return heat * (hmax == heat).to(heat.dtype)


def point_nms_cells(cate: torch.Tensor, num_grids: tuple[int, ...]) -> torch.Tensor:
    """:func:`point_nms` on the network's flattened cells: ``float32[G, C]`` (levels in order,
    cells row-major, ``G = sum S_i^2``) -> the same shape."""
    if cate.shape[0] != sum(s * s for s in num_grids):
        raise ValueError(f"cate has {cate.shape[0]} cells, grids {num_grids} make {sum(s * s for s in num_grids)}")
    out, start = [], 0
    for s in num_grids:
        level = cate[start: start + s * s].reshape(s, s, -1).permute(2, 0, 1)[None]  # [1, C, S, S]
        out.append(point_nms(level)[0].permute(1, 2, 0).reshape(s * s, -1))
        start += s * s
    return torch.cat(out, 0)


def dynamic_conv(mask_feat: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """The dynamic 1x1 convolution: ``mask_feat float32[E, h, w]`` with one kernel per instance
    ``kernels float32[N, E]`` -> mask logits ``float32[N, h, w]`` (upstream
    ``F.conv2d(seg_preds, kernel_preds.view(N, E, 1, 1))``; here a matrix product)."""
    e, h, w = mask_feat.shape
    if kernels.dim() != 2 or kernels.shape[1] != e:
        raise ValueError(f"kernels must be (N, {e}) for mask features with {e} channels, got {tuple(kernels.shape)}")
    return (kernels @ mask_feat.reshape(e, h * w)).reshape(-1, h, w)


def matrix_nms(masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, *, kernel: str = "gaussian",
               sigma: float = 2.0, areas: torch.Tensor | None = None) -> torch.Tensor:
    """Matrix NMS (SOLOv2 paper Sec. 4; ``matrix_nms.py``): decayed scores, nothing removed.

    Args:
        masks: ``bool[N, h, w]`` binary masks, **sorted by score, highest first**.
        labels: ``int64[N]`` class of each mask (only same-class masks decay each other).
        scores: ``float32[N]`` scores, descending.
        kernel: ``"gaussian"``: ``f(iou) = exp(-sigma iou^2)``; ``"linear"``: ``f(iou) = 1 - iou``.
        sigma: gaussian kernel parameter (2.0 in every official config).
        areas: ``float32[N]`` mask areas when already known (``masks.sum((1, 2))``).

    Returns ``float32[N]``: ``scores[j] * min_i f(iou_ij) / f(comp_i)`` over all ``i``, where
    ``iou_ij`` is the mask IoU when ``i < j`` and same class (else 0) and ``comp_i`` is the
    largest such IoU of mask ``i`` with any higher-scoring mask: exactly upstream's matrix
    expression, including its ``i >= j`` entries (they are ``>= 1`` and never the minimum
    over an ``i = 0`` entry ``<= 1``). Deviation: upstream's linear kernel divides by
    ``1 - comp_i``, giving ``inf`` or ``0 / 0 = NaN`` when a mask has an identical
    higher-scoring twin; here the denominator is clamped to ``1e-6``, so such a score becomes
    0 (upstream's NaN fails its ``>= update_thr`` filter: the outcome is the same).
    Two empty masks have IoU 0 here (upstream: NaN).
    """
    n = labels.shape[0]
    if n == 0:
        return scores.new_zeros(0)
    flat = masks.reshape(n, -1).to(scores.dtype)
    if areas is None:
        areas = flat.sum(1)
    inter = flat @ flat.t()
    union = areas[:, None] + areas[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter)).triu(diagonal=1)
    same = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    decay_iou = iou * same.to(iou.dtype)
    comp = decay_iou.max(dim=0).values[:, None]  # [N, 1]: row i's compensation
    if kernel == "gaussian":
        ratio = torch.exp(-sigma * decay_iou ** 2) / torch.exp(-sigma * comp ** 2)  # upstream's expression
    elif kernel == "linear":
        ratio = (1 - decay_iou) / (1 - comp).clamp(min=1e-6)
    else:
        raise ValueError(f"Matrix NMS kernel must be 'gaussian' or 'linear', got {kernel!r}")
    return scores * ratio.min(dim=0).values


@dataclass(frozen=True)
class Solov2Result:
    """Post-processed instances of one image, still tensors on the compute device.

    ``boxes float32[N, 4]`` xyxy original-image pixels (the tight box of each mask,
    ``x2 = last column + 1``; all zero for an empty mask); ``scores float32[N]`` (Matrix-NMS
    decayed, descending); ``class_ids int64[N]`` (0-based); ``masks bool[N, H, W]``.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    masks: torch.Tensor


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``bool[N, H, W]`` -> ``float32[N, 4]`` tight boxes ``(x1, y1, x2, y2)`` in pixel-edge
    coordinates (``x1`` = first column with a pixel, ``x2`` = last such column + 1); an empty
    mask gives ``(0, 0, 0, 0)``."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.float32, device=masks.device)
    cols = masks.any(dim=1)  # [N, W]
    rows = masks.any(dim=2)  # [N, H]
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x1 = torch.where(cols, xs, w).amin(1)
    x2 = torch.where(cols, xs + 1, 0).amax(1)
    y1 = torch.where(rows, ys, h).amin(1)
    y2 = torch.where(rows, ys + 1, 0).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)
    return torch.where(cols.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def masks_to_image(soft: torch.Tensor, cfg: Solov2Config, image_size: tuple[int, int],
                   geometry: InputGeometry | None = None) -> torch.Tensor:
    """Soft masks ``float32[N, Hc/4, Wc/4]`` -> ``bool[N, H, W]`` in the original image.

    As upstream: bilinear x4 to the canvas, crop the padding (keep the resized image's
    ``Hr x Wr``), bilinear to ``(H, W)`` (both ``align_corners=False``), then ``> mask_thr``.
    """
    h, w = int(image_size[0]), int(image_size[1])
    if soft.shape[0] == 0:
        return torch.zeros((0, h, w), dtype=torch.bool, device=soft.device)
    hr, wr = (geometry or input_geometry(cfg, (h, w), cfg.input_size)).resized
    fh, fw = soft.shape[-2:]
    up = F.interpolate(soft[None], size=(fh * MASK_STRIDE, fw * MASK_STRIDE), mode="bilinear", align_corners=False)
    up = up[:, :, :hr, :wr]
    return F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)[0] > cfg.mask_thr


#: candidates (cell x class above ``score_thr``) whose masks are computed at once. Upstream
#: computes all of them in one go; an untrained or odd network can pass hundreds of thousands
#: (e.g. 3872 cells x 80 classes), which at 1/4 resolution needs tens of GB, so beyond this
#: they go in chunks (same result: only the ``nms_pre`` best survive, and their masks are
#: recomputed).
MAX_CANDIDATES_AT_ONCE = 1024


def postprocess(outputs: dict[str, torch.Tensor], cfg: Solov2Config, image_size: tuple[int, int], *,
                score_threshold: float = 0.0, batch_index: int = 0,
                ops: PostprocessOps = TORCH_OPS, geometry: InputGeometry | None = None) -> Solov2Result:
    """Eval-mode head outputs of one image -> final instances (upstream ``get_seg_single``).

    Args:
        outputs: the network's named outputs (``cate`` after sigmoid,
            ``kernel``, ``mask_feat``), batched; see :class:`rtseg.families.solov2.network.Solov2`.
        image_size: ``(H, W)`` of the original image; masks and boxes are returned in it.
        score_threshold: instances whose final score is ``<=`` this are dropped before the
            masks are upsampled (0 keeps all; upstream has no such step).
        geometry: the input geometry the outputs were computed at (``None``: the fixed canvas
            ``cfg.input_size``, as :func:`preprocess` without one).

    Steps (all vectorised): :func:`point_nms_cells`; cells x classes with score ``> score_thr``; their kernels
    convolved with the mask features (:func:`dynamic_conv`), sigmoid; binary masks
    ``> mask_thr``; drop masks whose area (at 1/4 resolution) is ``<=`` their level's stride;
    score *= maskness (mean soft value inside the binary mask); keep the ``nms_pre`` best;
    :func:`matrix_nms`; keep scores ``>= update_thr``; the ``max_per_img`` best;
    :func:`masks_to_image`; boxes from the masks (:func:`masks_to_boxes`). Sorting is stable,
    so tied scores keep candidate order (cell-major, then class); upstream's ``argsort`` leaves
    ties in an unspecified order.
    """
    if "cate" not in outputs:
        raise ValueError("postprocess needs eval-mode outputs ('cate' scores); got keys "
                         f"{sorted(outputs)} (put the network in eval mode)")
    cate = point_nms_cells(outputs["cate"][batch_index], cfg.num_grids)  # [G, C]
    kernels = outputs["kernel"][batch_index]  # [G, E]
    mask_feat = outputs["mask_feat"][batch_index]  # [E, h, w]
    h, w = int(image_size[0]), int(image_size[1])
    device = cate.device

    def empty() -> Solov2Result:
        z = torch.zeros(0, dtype=torch.int64, device=device)
        return Solov2Result(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), z,
                            torch.zeros((0, h, w), dtype=torch.bool, device=device))

    cell, cls = torch.nonzero(cate > cfg.score_thr, as_tuple=True)
    if cell.numel() == 0:
        return empty()
    scores = cate[cell, cls]
    strides = cell_strides(cfg, device)
    if cell.numel() <= MAX_CANDIDATES_AT_ONCE:
        soft = torch.sigmoid(dynamic_conv(mask_feat, kernels[cell]))
        binary = soft > cfg.mask_thr
        areas = binary.sum((1, 2)).to(soft.dtype)
        keep = areas > strides[cell]
        soft, binary, areas, scores, cls = soft[keep], binary[keep], areas[keep], scores[keep], cls[keep]
        if scores.numel() == 0:
            return empty()
        scores = scores * (soft * binary).sum((1, 2)) / areas  # maskness
        scores, order = scores.sort(descending=True, stable=True)
        order, scores = order[: cfg.nms_pre], scores[: cfg.nms_pre]
        soft, binary, areas, cls = soft[order], binary[order], areas[order], cls[order]
    else:  # the same steps in chunks (memory), then the nms_pre survivors' masks again
        kept, kept_scores = [], []
        for start in range(0, cell.numel(), MAX_CANDIDATES_AT_ONCE):
            part = slice(start, start + MAX_CANDIDATES_AT_ONCE)
            soft = torch.sigmoid(dynamic_conv(mask_feat, kernels[cell[part]]))
            binary = soft > cfg.mask_thr
            areas = binary.sum((1, 2)).to(soft.dtype)
            keep = areas > strides[cell[part]]
            maskness = (soft * binary).sum((1, 2))[keep] / areas[keep]
            kept.append(torch.nonzero(keep).squeeze(1) + start)
            kept_scores.append(scores[part][keep] * maskness)
        index, scores = torch.cat(kept), torch.cat(kept_scores)
        if scores.numel() == 0:
            return empty()
        scores, order = scores.sort(descending=True, stable=True)
        index, scores = index[order[: cfg.nms_pre]], scores[: cfg.nms_pre]
        cell, cls = cell[index], cls[index]
        soft = torch.sigmoid(dynamic_conv(mask_feat, kernels[cell]))
        binary = soft > cfg.mask_thr
        areas = binary.sum((1, 2)).to(soft.dtype)
    scores = (ops.matrix_nms or matrix_nms)(binary, cls, scores, kernel=cfg.nms_kernel, sigma=cfg.nms_sigma, areas=areas)
    keep = scores >= cfg.update_thr
    soft, scores, cls = soft[keep], scores[keep], cls[keep]
    scores, order = scores.sort(descending=True, stable=True)
    order, scores = order[: cfg.max_per_img], scores[: cfg.max_per_img]
    soft, cls = soft[order], cls[order]
    if score_threshold > 0:
        keep = scores > score_threshold
        soft, scores, cls = soft[keep], scores[keep], cls[keep]
    masks = masks_to_image(soft, cfg, (h, w), geometry)
    return Solov2Result(masks_to_boxes(masks), scores, cls, masks)

