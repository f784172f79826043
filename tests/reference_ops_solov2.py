"""Plain, loop-based reference twins of rtseg's SOLOv2 ops (post-processing and targets).

Written for clarity, not speed: one Python loop per instance / pair / pixel, float64 NumPy
(float32 where upstream's own arithmetic is float32 and the result depends on it), straight
from the SOLOv2 paper and WXinlong/SOLO's ``solov2_head.py`` / ``matrix_nms.py``. The
vectorised torch ops in ``rtseg/families/solov2/postprocess.py`` and ``rtseg/families/solov2/loss.py``
are tested against these.
"""

from __future__ import annotations

import math

import numpy as np

from reference_ops import bilinear_resize_reference


def point_nms_reference(heat: np.ndarray) -> np.ndarray:
    """``heat [C, S, S]``: keep ``heat[c, i, j]`` iff it is >= every value of the 2x2 window
    ``rows i-1..i, cols j-1..j`` (cells outside the grid do not count), else 0."""
    out = np.zeros_like(heat)
    c, s, _ = heat.shape
    for k in range(c):
        for i in range(s):
            for j in range(s):
                window = [heat[k, a, b] for a in (i - 1, i) for b in (j - 1, j) if a >= 0 and b >= 0]
                if heat[k, i, j] >= max(window):
                    out[k, i, j] = heat[k, i, j]
    return out


def dynamic_conv_reference(mask_feat: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """``mask_feat [E, h, w]``, ``kernels [N, E]`` -> ``[N, h, w]``: one dot product per pixel."""
    e, h, w = mask_feat.shape
    out = np.zeros((kernels.shape[0], h, w), np.float64)
    for n in range(kernels.shape[0]):
        for r in range(h):
            for c in range(w):
                out[n, r, c] = sum(float(kernels[n, k]) * float(mask_feat[k, r, c]) for k in range(e))
    return out


def mask_iou_reference(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks by counting pixels; 0 when both are empty."""
    inter = union = 0
    for x, y in zip(a.reshape(-1), b.reshape(-1)):
        inter += int(bool(x) and bool(y))
        union += int(bool(x) or bool(y))
    return inter / union if union else 0.0


def matrix_nms_reference(masks: np.ndarray, labels: np.ndarray, scores: np.ndarray, kernel: str = "gaussian",
                         sigma: float = 2.0) -> np.ndarray:
    """Matrix NMS by its definition, one pair at a time.

    For masks sorted by score: ``d[i][j]`` = IoU(i, j) if ``i < j`` and same class, else 0;
    ``comp[i] = max_k d[k][i]``; the decayed score of ``j`` is ``scores[j] * min over all i``
    of ``f(d[i][j]) / f(comp[i])`` (all ``i``, as upstream's column minimum), with
    ``f(x) = exp(-sigma x^2)`` or ``1 - x``. Linear kernel with ``comp[i] = 1``: the ratio is
    0 when ``d[i][j] = 1`` and infinite otherwise (rtseg's documented treatment of upstream's
    division by zero).
    """
    n = len(scores)
    d = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] == labels[j]:
                d[i][j] = mask_iou_reference(masks[i], masks[j])
    comp = [max([d[k][i] for k in range(n)] + [0.0]) for i in range(n)]
    out = np.zeros(n, np.float64)
    for j in range(n):
        best = math.inf
        for i in range(n):
            if kernel == "gaussian":
                ratio = math.exp(-sigma * d[i][j] ** 2) / math.exp(-sigma * comp[i] ** 2)
            elif comp[i] < 1.0:
                ratio = (1 - d[i][j]) / (1 - comp[i])
            else:
                ratio = 0.0 if d[i][j] >= 1.0 else math.inf
            best = min(best, ratio)
        out[j] = float(scores[j]) * best
    return out


def masks_to_boxes_reference(masks: np.ndarray) -> np.ndarray:
    """Tight pixel-edge boxes ``(x1, y1, x2 = last col + 1, y2 = last row + 1)``; empty -> zeros."""
    out = np.zeros((len(masks), 4), np.float32)
    for k, m in enumerate(masks):
        ys = [r for r in range(m.shape[0]) for c in range(m.shape[1]) if m[r, c]]
        xs = [c for r in range(m.shape[0]) for c in range(m.shape[1]) if m[r, c]]
        if xs:
            out[k] = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
    return out


def masks_to_image_reference(soft: np.ndarray, resized: tuple[int, int], image_size: tuple[int, int],
                             threshold: float = 0.5) -> np.ndarray:
    """Per instance: bilinear x4, keep the top-left ``resized`` region, bilinear to the image, ``> threshold``."""
    h, w = image_size
    out = np.zeros((len(soft), h, w), bool)
    for k, m in enumerate(soft):
        up = bilinear_resize_reference(m.astype(np.float64), m.shape[0] * 4, m.shape[1] * 4)
        crop = up[: resized[0], : resized[1]]
        out[k] = bilinear_resize_reference(crop, h, w) > threshold
    return out


def postprocess_reference(cate: np.ndarray, kernels: np.ndarray, mask_feat: np.ndarray, cell_strides: np.ndarray,
                          cfg, resized: tuple[int, int], image_size: tuple[int, int]):
    """Point NMS per level, then ``get_seg_single`` one candidate at a time: returns
    ``(classes, scores, masks)`` lists. ``cate``: sigmoid scores ``[G, C]`` as the network
    gives them (cells of each level row-major).

    Sorting is by score, ties by candidate order (cell-major, then class).
    """
    levels, start = [], 0
    for s in cfg.num_grids:
        level = cate[start: start + s * s].reshape(s, s, -1).transpose(2, 0, 1)
        levels.append(point_nms_reference(level).transpose(1, 2, 0).reshape(s * s, -1))
        start += s * s
    cate = np.concatenate(levels, 0)
    cands = []
    for cell in range(cate.shape[0]):
        for cls in range(cate.shape[1]):
            if cate[cell, cls] > cfg.score_thr:
                logit = dynamic_conv_reference(mask_feat, kernels[cell: cell + 1])[0]
                soft = 1.0 / (1.0 + np.exp(-logit))
                binary = soft > cfg.mask_thr
                area = int(binary.sum())
                if area <= cell_strides[cell]:
                    continue
                maskness = float((soft * binary).sum()) / area
                cands.append((float(cate[cell, cls]) * maskness, len(cands), cls, soft, binary))
    cands.sort(key=lambda t: (-t[0], t[1]))
    cands = cands[: cfg.nms_pre]
    if not cands:
        return [], [], np.zeros((0, *image_size), bool)
    decayed = matrix_nms_reference(np.stack([c[4] for c in cands]), np.array([c[2] for c in cands]),
                                   np.array([c[0] for c in cands]), cfg.nms_kernel, cfg.nms_sigma)
    kept = [(float(s), r, c) for r, (s, c) in enumerate(zip(decayed, cands)) if s >= cfg.update_thr]
    kept.sort(key=lambda t: (-t[0], t[1]))
    kept = kept[: cfg.max_per_img]
    masks = masks_to_image_reference(np.stack([c[3] for _, _, c in kept]), resized, image_size, cfg.mask_thr) \
        if kept else np.zeros((0, *image_size), bool)
    return [c[2] for _, _, c in kept], [s for s, _, _ in kept], masks


def assign_targets_reference(boxes: np.ndarray, labels: np.ndarray, masks: np.ndarray, grids, scale_ranges,
                             sigma: float, num_classes: int):
    """``solov2_target_single`` transcribed: per level, per instance, per cell.

    Arithmetic in float32 where upstream's is (tensor ops): the centre of mass, the divisions and
    the truncating ``//``. Returns per level ``(cell labels [S*S], [(cell, instance), ...])``.
    """
    f32 = np.float32
    n, h, w = masks.shape
    out = []
    for (lo, hi), grid in zip(scale_ranges, grids):
        cell_labels = np.full(grid * grid, num_classes, np.int64)
        pairs = []
        for k in range(n):
            bw, bh = f32(boxes[k, 2] - boxes[k, 0]), f32(boxes[k, 3] - boxes[k, 1])
            area = float(np.sqrt(f32(bw * bh)))
            total = int(masks[k].sum())
            if not (lo <= area <= hi) or total == 0:
                continue
            cx = f32(sum(c for r in range(h) for c in range(w) if masks[k, r, c])) / f32(total)
            cy = f32(sum(r for r in range(h) for c in range(w) if masks[k, r, c])) / f32(total)
            half_w, half_h = f32(f32(0.5) * bw) * f32(sigma), f32(f32(0.5) * bh) * f32(sigma)
            step = f32(1.0 / grid)

            def cell(v, size):
                return int(math.trunc(float(f32(f32(v) / f32(size)) / step)))

            coord_w, coord_h = cell(cx, w), cell(cy, h)
            top = max(max(0, cell(f32(cy - half_h), h)), coord_h - 1)
            down = min(min(grid - 1, cell(f32(cy + half_h), h)), coord_h + 1)
            left = max(coord_w - 1, max(0, cell(f32(cx - half_w), w)))
            right = min(min(grid - 1, cell(f32(cx + half_w), w)), coord_w + 1)
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    cell_labels[i * grid + j] = labels[k]
                    pairs.append((i * grid + j, k))
        out.append((cell_labels, pairs))
    return out
