"""Post-processing: rtseg's ops vs torchvision's ``batched_nms`` and vs re-implementations of
each upstream post-processing path, at 100 / 1,000 / 10,000 candidates.

"Upstream" here is a re-implementation written for this benchmark from the upstream
code's documented behaviour, in the upstream code's own structure (its tensor layouts, its
order of steps, its loops), so the timing shows what rtseg's vectorised versions change:

* **YOLACT** (dbolya/yolact ``Detect`` + ``output_utils.postprocess``): decode, confidence
  filter, Fast NMS on ``[C, top_k]``, masks ``sigmoid(P C^T)`` in ``[h, w, N]`` layout, crop,
  bilinear to the frame, ``> 0.5``. rtseg's path is the same algorithm (its outputs are
  checked equal here), so the ratio shows layout / bookkeeping costs only.
* **SOLOv2** (WXinlong/SOLO ``get_seg_single`` + ``matrix_nms``): every candidate's mask at
  once (rtseg works in chunks of 1,024 beyond that, to bound memory), maskness, the
  ``nms_pre`` best, Matrix NMS, ``update_thr``, ``max_per_img``, two bilinear resizes.
* **FCOS NMS + paste** (CenterMask on detectron2: ``ml_nms`` = ``batched_nms``, then
  ``paste_masks_in_image``, whose CPU path pastes one instance at a time with
  ``grid_sample`` inside the box): rtseg's ``class_aware_nms`` + batched-matmul ``paste_masks``.

NMS steps are also timed against torchvision's greedy ``batched_nms`` on the same
candidates (for YOLACT: each candidate's best class; for SOLOv2: the boxes of the
``nms_pre`` masks) -- a different algorithm than Fast / Matrix NMS, shown as the cost of
the common alternative. The loop-style twins in ``tests/reference_ops*.py`` are
correctness references (pure Python, seconds at 1,000 candidates) and are not timed.

Candidates are synthetic (seeded): boxes clustered around 20 objects, 80 classes, shapes
of each family's official COCO model (``yolact_base``, ``solov2_light_448_r18``,
``centermask2_lite_v19``) and a 480x640 frame. Median of ``--repeats`` after one warm-up,
torch on ``--threads`` threads (default all cores).

    python benchmarks/postprocess.py
    python benchmarks/postprocess.py --candidates 100,1000 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from common import hardware

from rtseg.models import MODELS
from rtseg.families.centermask import postprocess as cm_ops
from rtseg.families.solov2 import postprocess as solo_ops
from rtseg.families.solov2.preprocess import resized_shape
from rtseg.families.yolact import postprocess as yolact_ops
from rtseg.segmenter import configure_threads

FRAME = (480, 640)


# -- synthetic candidates -------------------------------------------------------------------------
def clustered_boxes(n: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """``n`` xyxy boxes jittered around 20 object boxes, in ``[0, scale]`` coordinates."""
    centres = torch.rand(20, 2, generator=gen) * 0.8 + 0.1
    sizes = torch.rand(20, 2, generator=gen) * 0.25 + 0.05
    pick = torch.randint(0, 20, (n,), generator=gen)
    c = centres[pick] + torch.randn(n, 2, generator=gen) * 0.02
    s = sizes[pick] * (1 + torch.randn(n, 2, generator=gen) * 0.1).clamp(min=0.5)
    return torch.cat([c - s / 2, c + s / 2], 1).clamp(0, 1) * scale


def yolact_inputs(n: int, cfg, gen: torch.Generator) -> tuple[dict, torch.Tensor]:
    boxes = clustered_boxes(n, gen)
    priors = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)], 1)
    loc = torch.randn(n, 4, generator=gen) * 0.1
    conf = torch.rand(n, 81, generator=gen) * 0.04
    best = torch.randint(1, 81, (n,), generator=gen)
    conf[torch.arange(n), best] = torch.rand(n, generator=gen) * 0.85 + 0.1  # every prior is a candidate
    side = 138  # yolact_base's prototype resolution at 550 px
    proto = torch.randn(side, side, cfg.mask_dim, generator=gen).relu()
    coef = torch.tanh(torch.randn(n, cfg.mask_dim, generator=gen))
    return {"loc": loc[None], "conf": conf[None], "coef": coef[None], "proto": proto[None]}, priors


def solov2_inputs(n: int, cfg, gen: torch.Generator) -> dict:
    g = sum(s * s for s in cfg.num_grids)
    cate = torch.zeros(g * 80)
    cate[torch.randperm(g * 80, generator=gen)[:n]] = torch.rand(n, generator=gen) * 0.7 + 0.2
    fh, fw = cfg.input_size[0] // solo_ops.MASK_STRIDE, cfg.input_size[1] // solo_ops.MASK_STRIDE
    e = cfg.mask_channels
    return {"cate": cate.view(1, g, 80), "kernel": torch.randn(1, g, e, generator=gen) * 0.2,
            "mask_feat": torch.randn(1, e, fh, fw, generator=gen)}


def fcos_inputs(n: int, gen: torch.Generator) -> tuple:
    h, w = FRAME
    boxes = clustered_boxes(n, gen) * torch.tensor([w, h, w, h])
    scores = torch.rand(n, generator=gen) * 0.9 + 0.05
    classes = torch.randint(0, 80, (n,), generator=gen)
    probs = torch.sigmoid(torch.randn(n, 28, 28, generator=gen) * 3)
    return boxes, scores, classes, probs


# -- upstream paths, re-implemented in their own structure -------------------------------------------
def upstream_yolact(outputs: dict, priors: torch.Tensor, cfg, image_size: tuple[int, int]):
    loc, conf, coef, proto = (outputs[k][0] for k in ("loc", "conf", "coef", "proto"))
    variances = (0.1, 0.2)
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    conf_preds = conf.t()[1:]  # [C, P]
    keep = conf_preds.max(dim=0).values > cfg.nms_conf_thresh
    scores, boxes, masks = conf_preds[:, keep], boxes[keep], coef[keep]
    # Fast NMS
    scores, idx = scores.sort(1, descending=True)
    idx, scores = idx[:, :cfg.nms_top_k].contiguous(), scores[:, :cfg.nms_top_k]
    c, k = idx.shape
    boxes = boxes[idx.view(-1)].view(c, k, 4)
    masks = masks[idx.view(-1)].view(c, k, -1)
    lt = torch.max(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.min(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(3)
    area = (boxes[:, :, 2] - boxes[:, :, 0]) * (boxes[:, :, 3] - boxes[:, :, 1])
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)
    iou.triu_(diagonal=1)
    keep = iou.max(dim=1).values <= cfg.nms_thresh
    classes = torch.arange(c)[:, None].expand_as(keep)[keep]
    boxes, masks, scores = boxes[keep], masks[keep], scores[keep]
    scores, idx = scores.sort(0, descending=True)
    idx, scores = idx[:cfg.max_num_detections], scores[:cfg.max_num_detections]
    classes, boxes, masks = classes[idx], boxes[idx], masks[idx]
    # output_utils.postprocess: masks in [h, w, N] layout
    h, w = image_size
    m = torch.sigmoid(proto @ masks.t())
    ph, pw, n = m.shape
    x1, x2 = yolact_ops.sanitize_coordinates(boxes[:, 0], boxes[:, 2], pw, 1)
    y1, y2 = yolact_ops.sanitize_coordinates(boxes[:, 1], boxes[:, 3], ph, 1)
    rows = torch.arange(pw, dtype=x1.dtype).view(1, -1, 1).expand(ph, pw, n)
    cols = torch.arange(ph, dtype=x1.dtype).view(-1, 1, 1).expand(ph, pw, n)
    crop = (rows >= x1.view(1, 1, -1)) & (rows < x2.view(1, 1, -1)) & (cols >= y1.view(1, 1, -1)) & (cols < y2.view(1, 1, -1))
    m = (m * crop.float()).permute(2, 0, 1).contiguous()
    m = F.interpolate(m[None], (h, w), mode="bilinear", align_corners=False)[0].gt(0.5)
    bx1, bx2 = yolact_ops.sanitize_coordinates(boxes[:, 0], boxes[:, 2], w)
    by1, by2 = yolact_ops.sanitize_coordinates(boxes[:, 1], boxes[:, 3], h)
    return torch.stack([bx1, by1, bx2, by2], 1), scores, classes, m


def upstream_matrix_nms(seg_masks, cate_labels, cate_scores, sigma, sum_masks):
    n = len(cate_labels)
    seg_masks = seg_masks.reshape(n, -1).float()
    inter = torch.mm(seg_masks, seg_masks.t())
    sum_x = sum_masks.expand(n, n)
    iou = (inter / (sum_x + sum_x.t() - inter)).triu(diagonal=1)
    labels_x = cate_labels.expand(n, n)
    label_matrix = (labels_x == labels_x.t()).float().triu(diagonal=1)
    compensate = (iou * label_matrix).max(0).values.expand(n, n).t()
    decay_iou = iou * label_matrix
    coefficient = (torch.exp(-sigma * decay_iou ** 2) / torch.exp(-sigma * compensate ** 2)).min(0).values
    return cate_scores * coefficient


def upstream_solov2(outputs: dict, cfg, image_size: tuple[int, int]):
    heat = []
    start = 0
    cate_all = outputs["cate"][0]
    for s in cfg.num_grids:  # points_nms in the head, per level
        lv = cate_all[start:start + s * s].reshape(s, s, -1).permute(2, 0, 1)[None]
        hmax = F.max_pool2d(lv, (2, 2), stride=1, padding=1)
        lv = lv * (hmax[:, :, :-1, :-1] == lv).float()
        heat.append(lv[0].permute(1, 2, 0).reshape(s * s, -1))
        start += s * s
    cate_preds = torch.cat(heat)
    kernel_preds, seg_preds = outputs["kernel"][0], outputs["mask_feat"]
    inds = cate_preds > cfg.score_thr
    cate_scores = cate_preds[inds]
    inds = inds.nonzero()
    cate_labels = inds[:, 1]
    size_trans = torch.tensor(cfg.num_grids).pow(2).cumsum(0)
    strides = torch.ones(int(size_trans[-1]))
    strides[:size_trans[0]] *= cfg.strides[0]
    for i in range(1, len(cfg.num_grids)):
        strides[size_trans[i - 1]:size_trans[i]] *= cfg.strides[i]
    strides = strides[inds[:, 0]]
    kernel_preds = kernel_preds[inds[:, 0]]
    i, e = kernel_preds.shape
    seg_preds = F.conv2d(seg_preds, kernel_preds.view(i, e, 1, 1)).squeeze(0).sigmoid()
    seg_masks = seg_preds > cfg.mask_thr
    sum_masks = seg_masks.sum((1, 2)).float()
    keep = sum_masks > strides
    seg_masks, seg_preds, sum_masks = seg_masks[keep], seg_preds[keep], sum_masks[keep]
    cate_scores, cate_labels = cate_scores[keep], cate_labels[keep]
    seg_scores = (seg_preds * seg_masks.float()).sum((1, 2)) / sum_masks
    cate_scores = cate_scores * seg_scores
    sort_inds = torch.argsort(cate_scores, descending=True)[:cfg.nms_pre]
    seg_masks, seg_preds, sum_masks = seg_masks[sort_inds], seg_preds[sort_inds], sum_masks[sort_inds]
    cate_scores, cate_labels = cate_scores[sort_inds], cate_labels[sort_inds]
    cate_scores = upstream_matrix_nms(seg_masks, cate_labels, cate_scores, cfg.nms_sigma, sum_masks)
    keep = cate_scores >= cfg.update_thr
    seg_preds, cate_scores, cate_labels = seg_preds[keep], cate_scores[keep], cate_labels[keep]
    sort_inds = torch.argsort(cate_scores, descending=True)[:cfg.max_per_img]
    seg_preds, cate_scores, cate_labels = seg_preds[sort_inds], cate_scores[sort_inds], cate_labels[sort_inds]
    fh, fw = seg_preds.shape[-2:]
    hr, wr = resized_shape(image_size, cfg)
    seg = F.interpolate(seg_preds[None], size=(fh * 4, fw * 4), mode="bilinear", align_corners=False)[:, :, :hr, :wr]
    seg_masks = F.interpolate(seg, size=image_size, mode="bilinear", align_corners=False)[0] > cfg.mask_thr
    return seg_masks, cate_labels, cate_scores


def upstream_paste(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float):
    """detectron2 ``paste_masks_in_image`` on a CPU: one instance per chunk, ``grid_sample``
    over the box's integer extent only (``skip_empty``)."""
    h, w = image_size
    out = torch.zeros((len(masks), h, w), dtype=torch.bool)
    for i in range(len(masks)):
        x0, y0, x1, y1 = boxes[i].tolist()
        x0i, y0i = max(int(x0) - 1, 0), max(int(y0) - 1, 0)
        x1i, y1i = min(int(x1) + 2, w), min(int(y1) + 2, h)
        img_y = (torch.arange(y0i, y1i, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        img_x = (torch.arange(x0i, x1i, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gx = img_x[None, :].expand(img_y.numel(), img_x.numel())
        gy = img_y[:, None].expand(img_y.numel(), img_x.numel())
        grid = torch.stack([gx, gy], dim=2)[None]
        sampled = F.grid_sample(masks[i][None, None], grid, align_corners=False)[0, 0]
        out[i, y0i:y1i, x0i:x1i] = sampled >= threshold
    return out


def upstream_fcos(boxes, scores, classes, probs, cfg, image_size):
    keep = batched_nms(boxes, scores, classes, cfg.nms_thresh)[:cfg.post_nms_topk]
    return upstream_paste(probs[keep], boxes[keep], image_size, cfg.mask_threshold), keep


def rtseg_fcos(boxes, scores, classes, probs, cfg, image_size):
    keep = cm_ops.class_aware_nms(boxes, scores, classes, cfg.nms_thresh, cfg.post_nms_topk)
    return cm_ops.paste_masks(probs[keep], boxes[keep], image_size, cfg.mask_threshold), keep


# -- timing -------------------------------------------------------------------------------------------
def timed(fn, repeats: int):
    fn()
    out = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out), result


@torch.inference_mode()
def measure(n: int, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(n)
    rows = []

    def add(path, step, impl, ms, same=None, note=""):
        rows.append({"candidates": n, "path": path, "step": step, "impl": impl, "ms": ms, "same_result": same,
                     "note": note})

    # YOLACT
    ycfg = MODELS["yolact_base"]
    outputs, priors = yolact_inputs(n, ycfg, gen)
    boxes = yolact_ops.decode_boxes(outputs["loc"][0], priors)
    cls_scores = outputs["conf"][0][:, 1:]
    ms, ours = timed(lambda: yolact_ops.fast_nms(boxes, cls_scores.t(), ycfg.nms_thresh, ycfg.nms_top_k,
                                                 ycfg.max_num_detections), repeats)
    add("yolact", "nms", "rtseg fast_nms", ms)
    best, best_cls = cls_scores.max(1)
    ms, _ = timed(lambda: batched_nms(boxes, best, best_cls, ycfg.nms_thresh)[:ycfg.max_num_detections], repeats)
    add("yolact", "nms", "torchvision batched_nms (greedy, best class)", ms)
    ms, ours = timed(lambda: yolact_ops.postprocess(outputs, priors, ycfg, FRAME), repeats)
    add("yolact", "whole", "rtseg", ms)
    ms, theirs = timed(lambda: upstream_yolact(outputs, priors, ycfg, FRAME), repeats)
    same = bool(torch.equal(ours.masks, theirs[3]) and torch.equal(ours.class_ids, theirs[2]))
    add("yolact", "whole", "upstream (dbolya/yolact structure)", ms, same)

    # SOLOv2
    scfg = MODELS["solov2_light_448_r18"]
    outputs = solov2_inputs(n, scfg, gen)
    actual = int((solo_ops.point_nms_cells(outputs["cate"][0], scfg.num_grids) > scfg.score_thr).sum())
    note = f"{actual} candidates after point NMS"
    ms, ours = timed(lambda: solo_ops.postprocess(outputs, scfg, FRAME), repeats)
    add("solov2", "whole", "rtseg", ms, note=note)
    ms, theirs = timed(lambda: upstream_solov2(outputs, scfg, FRAME), repeats)
    same = bool(torch.equal(ours.masks, theirs[0]) and torch.equal(ours.class_ids, theirs[1]))
    add("solov2", "whole", "upstream (WXinlong/SOLO structure, all masks at once)", ms, same, note)
    # the NMS step alone, on min(n, nms_pre) masks (what the path gives it)
    k = min(n, scfg.nms_pre)
    masks = torch.sigmoid(torch.randn(k, 112, 192, generator=gen) + torch.randn(k, 1, 1, generator=gen)) > 0.5
    labels = torch.randint(0, 80, (k,), generator=gen)
    scores = torch.rand(k, generator=gen).sort(descending=True).values
    areas = masks.sum((1, 2)).float()
    ms, ours = timed(lambda: solo_ops.matrix_nms(masks, labels, scores, sigma=scfg.nms_sigma, areas=areas), repeats)
    add("solov2", "nms", "rtseg matrix_nms", ms, note=f"{k} masks")
    ms, theirs = timed(lambda: upstream_matrix_nms(masks, labels, scores, scfg.nms_sigma, areas), repeats)
    add("solov2", "nms", "upstream matrix_nms", ms, bool(torch.allclose(ours, theirs, atol=1e-6)), f"{k} masks")
    mboxes = solo_ops.masks_to_boxes(masks)
    ms, _ = timed(lambda: batched_nms(mboxes, scores, labels, 0.5), repeats)
    add("solov2", "nms", "torchvision batched_nms (greedy, mask boxes)", ms, note=f"{k} masks")

    # FCOS NMS + paste (CenterMask)
    ccfg = MODELS["centermask2_lite_v19"]
    boxes, scores, classes, probs = fcos_inputs(n, gen)
    ms, ours = timed(lambda: cm_ops.class_aware_nms(boxes, scores, classes, ccfg.nms_thresh, ccfg.post_nms_topk),
                     repeats)
    add("fcos", "nms", "rtseg class_aware_nms", ms)
    ms, theirs = timed(lambda: batched_nms(boxes, scores, classes, ccfg.nms_thresh)[:ccfg.post_nms_topk], repeats)
    add("fcos", "nms", "torchvision batched_nms", ms, bool(torch.equal(ours, theirs)))
    ms, ours = timed(lambda: rtseg_fcos(boxes, scores, classes, probs, ccfg, FRAME), repeats)
    add("fcos", "whole", "rtseg (NMS + batched-matmul paste)", ms, note=f"{len(ours[1])} pasted")
    ms, theirs = timed(lambda: upstream_fcos(boxes, scores, classes, probs, ccfg, FRAME), repeats)
    differ = int((ours[0] != theirs[0]).sum()) if ours[0].shape == theirs[0].shape else -1
    add("fcos", "whole", "upstream (detectron2 CPU paste, one instance at a time)", ms, differ == 0,
        f"{len(theirs[1])} pasted; {differ} pixels differ")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    threads = configure_threads(args.threads)
    counts = [int(c) for c in args.candidates.split(",")]
    hw = hardware()
    rows = []
    for n in counts:
        rows += measure(n, args.repeats)
    print(f"{hw['cpu']} ({hw['cores']} cores), torch {hw['torch']} on {threads} threads, load average "
          f"{hw['load_average_1_5_15']}; frame {FRAME[0]}x{FRAME[1]}; median of {args.repeats} ms")
    impls = list(dict.fromkeys((r["path"], r["step"], r["impl"]) for r in rows))
    print(f"{'path':<8}{'step':<7}{'implementation':<58}" + "".join(f"{n:>10,}" for n in counts) + "  same result")
    for path, step, impl in impls:
        cells = {r["candidates"]: r for r in rows if (r["path"], r["step"], r["impl"]) == (path, step, impl)}
        same = {str(c["same_result"]) for c in cells.values() if c["same_result"] is not None}
        print(f"{path:<8}{step:<7}{impl:<58}" + "".join(f"{cells[n]['ms']:>10.2f}" for n in counts)
              + f"  {'/'.join(sorted(same)) or ''}")
    for r in rows:
        if r["note"]:
            print(f"  {r['candidates']:>6} {r['path']} {r['impl']}: {r['note']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python benchmarks/postprocess.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "machine": hw, "threads": threads, "repeats": args.repeats, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
