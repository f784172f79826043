"""Plain, loop-based reference twins of rtseg's post-processing ops.

Written for clarity, not speed: one Python loop per box / pixel / instance, float64 NumPy,
straight from the definitions in the YOLACT paper and dbolya/yolact. The vectorised torch
ops (and the CUDA kernels later) are tested against these.
"""

from __future__ import annotations

import math

import numpy as np


def iou_one(a, b) -> float:
    """IoU of two xyxy boxes (float32 arithmetic, like the ops under test)."""
    a = [np.float32(v) for v in a]
    b = [np.float32(v) for v in b]
    iw = max(np.float32(0), min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(np.float32(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = np.float32(iw * ih)
    area_a = np.float32((a[2] - a[0]) * (a[3] - a[1]))
    area_b = np.float32((b[2] - b[0]) * (b[3] - b[1]))
    return float(inter / np.float32(area_a + area_b - inter))


def fast_nms_reference(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int,
                       max_detections: int) -> tuple[list[int], list[int], list[float]]:
    """Fast NMS by the paper's definition, one class and one pair at a time.

    For class c: take the top_k candidates by score (ties: lower index first). Candidate j is
    kept when, for every higher-ranked i (suppressed or not), IoU(i, j) <= threshold.
    Then all kept (class, candidate) pairs are ranked by score (ties: class, then rank) and the
    first max_detections returned as (indices, classes, scores).
    """
    num_classes, n = scores.shape
    kept = []
    for c in range(num_classes):
        order = sorted(range(n), key=lambda i: (-float(scores[c, i]), i))[:top_k]
        for rank, j in enumerate(order):
            suppressed = any(iou_one(boxes[order[r]], boxes[j]) > iou_threshold for r in range(rank))
            if not suppressed:
                kept.append((float(scores[c, j]), c, rank, j))
    kept.sort(key=lambda t: (-t[0], t[1], t[2]))
    kept = kept[:max_detections]
    return [t[3] for t in kept], [t[1] for t in kept], [t[0] for t in kept]


def decode_reference(loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """SSD box decoding with variances (0.1, 0.2), one prior at a time."""
    out = np.zeros_like(loc, dtype=np.float64)
    for p in range(loc.shape[0]):
        cx, cy, w, h = priors[p]
        dx, dy, dw, dh = loc[p]
        ncx = cx + dx * 0.1 * w
        ncy = cy + dy * 0.1 * h
        nw = w * math.exp(dw * 0.2)
        nh = h * math.exp(dh * 0.2)
        out[p] = (ncx - nw / 2, ncy - nh / 2, ncx + nw / 2, ncy + nh / 2)
    return out


def crop_reference(masks: np.ndarray, boxes: np.ndarray, padding: int = 1) -> np.ndarray:
    """Zero every pixel outside the (padded, clamped) box, pixel by pixel."""
    n, h, w = masks.shape
    out = np.zeros_like(masks)
    for k in range(n):
        bx1, by1, bx2, by2 = (float(v) for v in boxes[k])
        x1, x2 = max(min(bx1 * w, bx2 * w) - padding, 0), min(max(bx1 * w, bx2 * w) + padding, w)
        y1, y2 = max(min(by1 * h, by2 * h) - padding, 0), min(max(by1 * h, by2 * h) + padding, h)
        for r in range(h):
            for c in range(w):
                if x1 <= c < x2 and y1 <= r < y2:
                    out[k, r, c] = masks[k, r, c]
    return out


def assemble_reference(proto: np.ndarray, coef: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """sigmoid(P . c) per instance and pixel, then crop."""
    h, w, k = proto.shape
    n = coef.shape[0]
    masks = np.zeros((n, h, w), np.float64)
    for i in range(n):
        for r in range(h):
            for c in range(w):
                z = float(np.dot(proto[r, c].astype(np.float64), coef[i].astype(np.float64)))
                masks[i, r, c] = 1.0 / (1.0 + math.exp(-z))
    return crop_reference(masks, boxes)


def bilinear_resize_reference(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and edge clamping (``align_corners=False``)."""
    h, w = mask.shape
    out = np.zeros((out_h, out_w), np.float64)
    for r in range(out_h):
        sy = max((r + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for c in range(out_w):
            sx = max((c + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), w - 1)
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0
            top = mask[y0, x0] * (1 - fx) + mask[y0, x1] * fx
            bot = mask[y1, x0] * (1 - fx) + mask[y1, x1] * fx
            out[r, c] = top * (1 - fy) + bot * fy
    return out
