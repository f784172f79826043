"""YOLACT post-processing ops against their loop-based reference twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference_ops import (assemble_reference, bilinear_resize_reference, crop_reference, decode_reference,
                           fast_nms_reference)
from rtseg.models import MODELS
from rtseg.families.yolact.network import make_priors
from rtseg.families.yolact.postprocess import (assemble_masks, box_iou, crop_masks, decode_boxes, fast_nms, masks_to_image,
                                               postprocess)


def random_boxes(rng: np.random.Generator, n: int, clustered: bool = True) -> np.ndarray:
    """xyxy boxes in [0, 1]; clustered so that many pairs overlap."""
    centers = rng.uniform(0.2, 0.8, (max(n // 4, 1), 2))
    c = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 0.03 if clustered else 0.3, (n, 2))
    wh = rng.uniform(0.05, 0.3, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


def run_fast_nms(boxes: np.ndarray, scores: np.ndarray, thr=0.5, top_k=200, max_det=100):
    d = fast_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr, top_k, max_det)
    return d.index.tolist(), d.class_ids.tolist(), d.scores.numpy()


@pytest.mark.parametrize("seed", range(30))
def test_fast_nms_matches_reference_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    c = int(rng.integers(1, 5))
    boxes = random_boxes(rng, n)
    scores = rng.random((c, n)).astype(np.float32)
    if seed % 3 == 0:  # quantised scores: many exact ties
        scores = np.round(scores * 4) / 4
    top_k, max_det = int(rng.integers(1, 40)), int(rng.integers(1, 50))
    idx, cls, sc = run_fast_nms(boxes, scores, 0.5, top_k, max_det)
    ridx, rcls, rsc = fast_nms_reference(boxes, scores, 0.5, top_k, max_det)
    assert idx == ridx
    assert cls == rcls
    np.testing.assert_allclose(sc, np.array(rsc, np.float32), atol=1e-6)


def test_iou_exactly_at_threshold_is_kept_and_just_above_is_suppressed():
    # IoU([0,0,4,1], [0,0,2,1]) = 2 / 4 = 0.5 exactly in float32
    boxes = np.array([[0, 0, 4, 1], [0, 0, 2, 1]], np.float32)
    scores = np.array([[0.9, 0.8]], np.float32)
    assert box_iou(torch.from_numpy(boxes[:1]), torch.from_numpy(boxes[1:])).item() == 0.5
    idx, _, _ = run_fast_nms(boxes, scores, thr=0.5)
    assert idx == [0, 1]
    idx, _, _ = run_fast_nms(boxes, scores, thr=0.4999)
    assert idx == [0]
    assert fast_nms_reference(boxes, scores, 0.5, 200, 100)[0] == [0, 1]


def test_tied_scores_rank_by_candidate_index():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 6, 6]], np.float32)
    scores = np.array([[0.7, 0.7, 0.7]], np.float32)
    idx, cls, sc = run_fast_nms(boxes, scores)
    assert idx == [0, 2]  # box 1 ties with box 0 and overlaps it fully: the lower index wins
    assert cls == [0, 0]


def test_fast_nms_suppresses_through_already_suppressed_boxes():
    # A > B > C; IoU(A,B) and IoU(B,C) above the threshold, IoU(A,C) = 0: greedy NMS would keep
    # A and C, Fast NMS keeps only A (the paper's stated relaxation).
    boxes = np.array([[0, 0, 10, 1], [6, 0, 16, 1], [12, 0, 22, 1]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7]], np.float32)
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes))
    assert iou[0, 1] > 0.2 and iou[1, 2] > 0.2 and iou[0, 2] == 0
    assert run_fast_nms(boxes, scores, thr=0.2)[0] == [0]


def test_fast_nms_is_per_class():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.float32)
    scores = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    idx, cls, sc = run_fast_nms(boxes, scores)
    # class 0 keeps box 0 (box 1 suppressed), class 1 keeps box 1 (box 0 suppressed)
    assert list(zip(idx, cls)) == [(0, 0), (1, 1)]


@pytest.mark.parametrize("n,c", [(0, 3), (1, 1), (1, 4), (5, 0)])
def test_fast_nms_zero_and_one_detection(n, c):
    rng = np.random.default_rng(n + c)
    boxes = random_boxes(rng, n)[:n]
    scores = rng.random((c, n)).astype(np.float32)
    idx, cls, sc = run_fast_nms(boxes, scores)
    assert (idx, cls) == fast_nms_reference(boxes, scores, 0.5, 200, 100)[:2]
    assert len(idx) == (min(c, 100) if n == 1 else 0)


def test_fast_nms_does_not_modify_inputs():
    rng = np.random.default_rng(1)
    boxes = torch.from_numpy(random_boxes(rng, 20))
    scores = torch.from_numpy(rng.random((3, 20)).astype(np.float32))
    b0, s0 = boxes.clone(), scores.clone()
    fast_nms(boxes, scores)
    assert torch.equal(boxes, b0) and torch.equal(scores, s0)


def test_decode_matches_reference():
    rng = np.random.default_rng(2)
    priors = make_priors(MODELS["yolact_plus_resnet50"])[::97].numpy()
    loc = rng.normal(0, 1, (len(priors), 4)).astype(np.float32)
    out = decode_boxes(torch.from_numpy(loc), torch.from_numpy(priors)).numpy()
    np.testing.assert_allclose(out, decode_reference(loc, priors), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_crop_matches_reference_including_boxes_outside_and_degenerate(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((6, 13, 17)).astype(np.float32)
    boxes = rng.uniform(-0.3, 1.3, (6, 4)).astype(np.float32)  # some outside the image, some flipped
    boxes[0] = [0.5, 0.5, 0.5, 0.5]  # zero-size box: padding keeps a 2x2 window
    out = crop_masks(torch.from_numpy(masks), torch.from_numpy(boxes)).numpy()
    np.testing.assert_array_equal(out, crop_reference(masks, boxes).astype(np.float32))


def test_assemble_masks_matches_reference():
    rng = np.random.default_rng(3)
    proto = rng.normal(0, 1, (9, 11, 8)).astype(np.float32)
    coef = rng.uniform(-1, 1, (4, 8)).astype(np.float32)
    boxes = np.sort(rng.uniform(0, 1, (4, 4)).astype(np.float32).reshape(4, 2, 2), axis=1).transpose(0, 2, 1).reshape(4, 4)
    boxes = boxes[:, [0, 2, 1, 3]]  # x1, y1, x2, y2 with x1 <= x2, y1 <= y2
    out = assemble_masks(torch.from_numpy(proto), torch.from_numpy(coef), torch.from_numpy(boxes)).numpy()
    np.testing.assert_allclose(out, assemble_reference(proto, coef, boxes), atol=1e-5)


def test_masks_to_image_matches_bilinear_reference():
    rng = np.random.default_rng(4)
    soft = rng.random((2, 7, 9)).astype(np.float32)
    out = masks_to_image(torch.from_numpy(soft), (15, 20)).numpy()
    for k in range(2):
        ref = bilinear_resize_reference(soft[k].astype(np.float64), 15, 20)
        up = F.interpolate(torch.from_numpy(soft)[None], (15, 20), mode="bilinear", align_corners=False)[0, k].numpy()
        np.testing.assert_allclose(up, ref, atol=1e-5)
        decided = np.abs(ref - 0.5) > 1e-5
        np.testing.assert_array_equal(out[k][decided], (ref > 0.5)[decided])
    assert masks_to_image(torch.zeros(0, 7, 9), (15, 20)).shape == (0, 15, 20)


def _one_object_outputs(cfg, prior_index: int, class_id: int, score: float):
    """Head outputs with background everywhere except one prior, whose box is the prior itself."""
    priors = make_priors(cfg)
    p = priors.shape[0]
    conf = torch.zeros(1, p, cfg.num_classes)
    conf[0, :, 0] = 1.0
    conf[0, prior_index, 0] = 1 - score
    conf[0, prior_index, class_id + 1] = score
    s = cfg.max_size // 4
    proto = torch.full((1, s, s, cfg.mask_dim), 0.0)
    proto[..., 0] = 10.0  # prototype 0 is "on" everywhere; the crop makes the mask the box
    coef = torch.zeros(1, p, cfg.mask_dim)
    coef[..., 0] = 1.0
    return {"loc": torch.zeros(1, p, 4), "conf": conf, "coef": coef, "proto": proto}, priors


def test_postprocess_one_object_box_and_mask_in_image_pixels():
    cfg = MODELS["yolact_resnet18_384"]
    outputs, priors = _one_object_outputs(cfg, prior_index=1234, class_id=2, score=0.9)
    res = postprocess(outputs, priors, cfg, (240, 320), score_threshold=0.3)
    assert res.class_ids.tolist() == [2]
    assert res.scores.tolist() == pytest.approx([0.9])
    cx, cy, w, h = priors[1234].tolist()
    expected = torch.tensor([(cx - w / 2) * 320, (cy - h / 2) * 240, (cx + w / 2) * 320, (cy + h / 2) * 240]).clamp(min=0)
    torch.testing.assert_close(res.boxes[0], torch.minimum(expected, torch.tensor([320, 240, 320, 240.0])))
    ys, xs = torch.nonzero(res.masks[0], as_tuple=True)
    # the mask is the box (cropped at prototype resolution with 1 px padding, then upsampled)
    tol = 2 * 320 / (cfg.max_size // 4) + 1
    assert abs(xs.min().item() - res.boxes[0, 0].item()) <= tol
    assert abs(xs.max().item() + 1 - res.boxes[0, 2].item()) <= tol
    assert abs(ys.min().item() - res.boxes[0, 1].item()) <= tol


def test_postprocess_no_detections():
    cfg = MODELS["yolact_resnet18_384"]
    outputs, priors = _one_object_outputs(cfg, prior_index=0, class_id=0, score=0.01)
    res = postprocess(outputs, priors, cfg, (100, 120), score_threshold=0.3)
    assert res.boxes.shape == (0, 4) and res.masks.shape == (0, 100, 120)
