"""Loop-based reference twins of rtseg.families.centermask.postprocess / rtseg.families.centermask.loss.

Written for clarity, not speed: one location, box or instance at a time, straight from the
upstream code's description (centermask2 ``fcos_outputs.py``, ``pooler.py``; detectron2
``mask_ops._do_paste_mask``), so the vectorised ops can be compared against them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def fcos_candidates_loop(cls_logits, bbox_reg, ctrness_logits, locations, strides, level_sizes, score_thresh, topk):
    """Returns a list of (score, location, class, box) in the order rtseg's op promises:
    per level, by decreasing score, ties in (location, class) order."""
    probs = torch.sigmoid(cls_logits).tolist()
    ctr = torch.sigmoid(ctrness_logits).tolist()
    out, start = [], 0
    for h, w in level_sizes:
        level = []
        for p in range(start, start + h * w):
            for c, prob in enumerate(probs[p]):
                if prob > score_thresh:
                    level.append((np.float32(prob) * np.float32(ctr[p]), p, c))
        level.sort(key=lambda t: -t[0])  # stable: ties keep (location, class) order
        for score, p, c in level[:topk]:
            x, y = locations[p].tolist()
            l, t, r, b = (bbox_reg[p] * strides[p]).tolist()
            out.append((float(score), p, c, [x - l, y - t, x + r, y + b]))
        start += h * w
    return out


def iou_f32(a, b) -> float:
    """IoU as torchvision's CPU NMS kernel computes it (float32 arithmetic)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    iw = max(np.float32(0), min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(np.float32(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = np.float32(iw * ih)
    return float(inter / (area_a + area_b - inter))


def nms_loop(boxes, scores, class_ids, iou_threshold, top_k):
    """Greedy per-class NMS: by decreasing score (ties: lower index first), keep a box unless a
    kept box of its class overlaps it with IoU > threshold. Returns kept indices, best first."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        if all(int(class_ids[j]) != int(class_ids[i]) or iou_f32(boxes[i], boxes[j]) <= iou_threshold for j in kept):
            kept.append(i)
    return kept[:top_k]


def assign_level_loop(box, image_area, min_level=3, max_level=5) -> int:
    area = float(np.float32(box[2] - box[0]) * np.float32(box[3] - box[1]))
    if area <= 0:
        return 0
    level = math.ceil(max_level - math.log2(image_area / area))
    return min(max(level, min_level), max_level) - min_level


def pool_rois_loop(features, boxes, batch_index, levels, output_size, sampling_ratio=0, strides=(8, 16, 32)):
    out = []
    for box, b, level in zip(boxes, batch_index.tolist(), levels.tolist()):
        feat = features[level][b:b + 1]
        roi = torch.cat([torch.zeros(1, 1), box[None]], dim=1)
        out.append(roi_align(feat, roi, (output_size, output_size), 1.0 / strides[level], sampling_ratio, aligned=True))
    return torch.cat(out) if out else features[0].new_zeros((0, features[0].shape[1], output_size, output_size))


def paste_mask_loop(masks, boxes, image_size, threshold=0.5):
    """detectron2 ``_do_paste_mask(skip_empty=False)`` one instance at a time, then ``>= threshold``."""
    h, w = image_size
    out = torch.zeros((len(masks), h, w), dtype=torch.bool)
    for n in range(len(masks)):
        x0, y0, x1, y1 = boxes[n].tolist()
        if x1 <= x0 or y1 <= y0:
            continue
        img_y = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        img_x = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gx = img_x[None, :].expand(h, w)
        gy = img_y[:, None].expand(h, w)
        grid = torch.stack([gx, gy], dim=2)[None]
        sampled = F.grid_sample(masks[n][None, None].float(), grid, align_corners=False)[0, 0]
        out[n] = sampled >= threshold
    return out


def fcos_targets_loop(gt_boxes, gt_labels, locations, strides, ranges, num_classes, center_sample=True, radius=1.5):
    """One location at a time: candidate GTs, smallest area wins (first on ties)."""
    labels, regs = [], []
    for p in range(len(locations)):
        x, y = locations[p].tolist()
        best, best_area, best_reg = None, math.inf, [0.0, 0.0, 0.0, 0.0]
        for g, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist()):
            reg = [x - x1, y - y1, x2 - x, y2 - y]
            if center_sample:
                cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, float(strides[p]) * radius
                region = [max(cx - r, x1), max(cy - r, y1), min(cx + r, x2), min(cy + r, y2)]
                inside = min(x - region[0], y - region[1], region[2] - x, region[3] - y) > 0
            else:
                inside = min(reg) > 0
            lo, hi = ranges[p].tolist()
            cared = lo <= max(reg) <= hi
            area = (x2 - x1) * (y2 - y1)
            if inside and cared and area < best_area:
                best, best_area, best_reg = g, area, reg
        labels.append(num_classes if best is None else int(gt_labels[best]))
        regs.append(best_reg)
    return labels, regs
