"""CenterMask pre/post-processing ops against their loop-based twins (tests/reference_ops_centermask.py)
on random and crafted cases, plus the family end to end on a photograph."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from reference_ops_centermask import (
    assign_level_loop,
    fcos_candidates_loop,
    nms_loop,
    paste_mask_loop,
    pool_rois_loop,
)
from rtseg.models import MODELS
from rtseg.families.centermask.network import CenterMask, CenterMaskConfig
from rtseg.models.vovnet import VoVNetSpec
from rtseg.families.centermask import postprocess as post
from rtseg.families.centermask import preprocess as pre
from rtseg.postprocess import to_numpy_instances

LITE = MODELS["centermask2_lite_v19_slim_dw"]
FULL = MODELS["centermask2_v39"]
SMALL = MODELS["centermask_lite_vovnet19_quarter_384"]
TINY = CenterMaskConfig(name="tiny", class_names=("a", "b", "c"),
                        vovnet=VoVNetSpec((8, 8, 16), (8, 8, 8, 8), (16, 16, 16, 16), 1, (1, 1, 1, 1)), vovnet_norm="BN",
                        fpn_channels=64, fcos_num_convs=1, mask_num_conv=1, mask_conv_dim=16, maskiou_num_conv=1,
                        maskiou_conv_dim=8, maskiou_fc_dim=16, input_height=64, input_width=96, min_size_test=64,
                        max_size_test=96)


# -- preprocessing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, size, expected", [
    (FULL, (480, 640), (800, 1067)),  # shortest side 800
    (FULL, (720, 1280), (750, 1333)),  # longest side capped at 1333
    (LITE, (480, 640), (600, 800)),
    (LITE, (1080, 1920), (562, 1000)),
    (FULL, (800, 1333), (800, 1333)),
    (FULL, (640, 480), (800, 600)),  # portrait: upstream 1067 x 800 does not fit 800 x 1344, fitted instead
    (LITE, (1000, 100), (608, 61)),
    (SMALL, (480, 640), (384, 384)),  # keep_ratio=False: the whole canvas
])
def test_resized_size_follows_detectron2_then_fits_the_canvas(cfg, size, expected):
    assert pre.resized_size(size, cfg) == expected
    assert expected[0] <= cfg.input_height and expected[1] <= cfg.input_width


def test_preprocess_normalises_and_pads_without_resizing_a_fitting_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8)
    batch = torch.from_numpy(img)[None]
    before = batch.clone()
    x = pre.preprocess(batch, LITE)
    assert torch.equal(batch, before)  # input untouched
    assert x.shape == (1, 3, 608, 1024) and x.dtype == torch.float32
    expected = (torch.from_numpy(img).permute(2, 0, 1).float() - torch.tensor(LITE.pixel_mean).view(3, 1, 1))
    torch.testing.assert_close(x[0, :, :600, :1000], expected)  # BGR order kept, std 1
    assert (x[0, :, 600:] == 0).all() and (x[0, :, :, 1000:] == 0).all()  # zero padding after normalisation


def test_preprocess_resize_matches_pil_bilinear_within_one_grey_level():
    from PIL import Image

    rng = np.random.default_rng(1)
    img = (rng.random((300, 500, 3)) * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(np.repeat(img[::5, ::5], 5, 0), 5, 1))  # smooth-ish content
    x = pre.preprocess(torch.from_numpy(img)[None], LITE)[0]
    newh, neww = pre.resized_size(img.shape[:2], LITE)
    assert (newh, neww) == (600, 1000)
    pil = np.asarray(Image.fromarray(img).resize((neww, newh), Image.BILINEAR)).astype(np.float32)  # detectron2 ResizeTransform
    ours = (x[:, :newh, :neww] + torch.tensor(LITE.pixel_mean).view(3, 1, 1)).permute(1, 2, 0).numpy()
    assert np.abs(ours - pil).max() <= 1.0 + 1e-3


def test_preprocess_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"uint8 tensor \(B, H, W, 3\) BGR, got torch.float32"):
        pre.preprocess(torch.zeros(1, 10, 10, 3), LITE)
    with pytest.raises(ValueError, match="got torch.uint8 \\(10, 10, 3\\)"):
        pre.preprocess(torch.zeros(10, 10, 3, dtype=torch.uint8), LITE)


# -- FCOS decoding and NMS ---------------------------------------------------------------------------

def _random_head(seed: int, level_sizes, k=3):
    g = torch.Generator().manual_seed(seed)
    p = sum(h * w for h, w in level_sizes)
    cls = torch.randn(p, k, generator=g) * 2 - 2
    reg = torch.rand(p, 4, generator=g) * 3
    ctr = torch.randn(p, generator=g)
    locs, strides = [], []
    for (h, w), s in zip(level_sizes, (8, 16, 32, 64, 128)):
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        locs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() + s // 2)
        strides.append(torch.full((h * w,), float(s)))
    return cls, reg, ctr, torch.cat(locs), torch.cat(strides)


@pytest.mark.parametrize("seed, topk", [(0, 1000), (1, 7), (2, 1)])
def test_fcos_candidates_match_loop(seed, topk):
    sizes = ((8, 12), (4, 6), (2, 3), (1, 2), (1, 1))
    cls, reg, ctr, locs, strides = _random_head(seed, sizes)
    args = [t.clone() for t in (cls, reg, ctr, locs, strides)]
    cand = post.fcos_candidates(cls, reg, ctr, locs, strides, sizes, 0.05, topk)
    for a, b in zip(args, (cls, reg, ctr, locs, strides)):
        assert torch.equal(a, b)  # inputs untouched
    ref = fcos_candidates_loop(cls, reg, ctr, locs, strides, sizes, 0.05, topk)
    assert cand.location_index.tolist() == [r[1] for r in ref]
    assert cand.class_ids.tolist() == [r[2] for r in ref]
    np.testing.assert_allclose(cand.scores.numpy(), [r[0] for r in ref], rtol=1e-6)
    np.testing.assert_allclose(cand.boxes.numpy(), np.asarray([r[3] for r in ref], np.float32).reshape(-1, 4), atol=1e-4)


def test_fcos_threshold_ignores_centerness_and_is_strict():
    sizes = ((1, 2), (1, 1), (1, 1), (1, 1), (1, 1))
    cls = torch.full((6, 2), -20.0)
    logit = float(torch.logit(torch.tensor(0.05)))
    cls[0, 0] = 3.0  # prob 0.95, but centre-ness ~0: still a candidate (THRESH_WITH_CTR=False)
    cls[1, 1] = logit  # sigmoid exactly at the threshold in float32: not > 0.05
    ctr = torch.tensor([-30.0, 0, 0, 0, 0, 0])
    _, reg, _, locs, strides = _random_head(0, sizes, k=2)
    thresh = float(torch.sigmoid(torch.tensor(logit)))
    cand = post.fcos_candidates(cls, reg, ctr, locs, strides, sizes, thresh, 1000)
    assert cand.location_index.tolist() == [0] and cand.class_ids.tolist() == [0]


def test_fcos_topk_ties_keep_location_then_class_order():
    sizes = ((2, 2), (1, 1), (1, 1), (1, 1), (1, 1))
    cls = torch.zeros(8, 2)  # every pair has the same score
    ctr = torch.zeros(8)
    _, reg, _, locs, strides = _random_head(0, sizes, k=2)
    cand = post.fcos_candidates(cls, reg, ctr, locs, strides, sizes, 0.05, 3)
    assert list(zip(cand.location_index.tolist(), cand.class_ids.tolist()))[:3] == [(0, 0), (0, 1), (1, 0)]
    assert len(cand.scores) == 3 + 2 * 4  # 3 from P3, every pair of the 1x1 levels


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_greedy_loop_on_random_boxes(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    scores[::7] = scores[1]  # some exact ties
    classes = torch.randint(0, 3, (n,), generator=g)
    before = (boxes.clone(), scores.clone(), classes.clone())
    keep = post.class_aware_nms(boxes, scores, classes, 0.6, 25)
    assert all(torch.equal(a, b) for a, b in zip(before, (boxes, scores, classes)))
    assert keep.tolist() == nms_loop(boxes.numpy(), scores.numpy(), classes.numpy(), 0.6, 25)


def test_nms_iou_exactly_at_threshold_is_kept_and_just_above_is_suppressed():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],
                          [0.0, 0.0, 10.0, 20.0],  # IoU with box 0 exactly 0.5
                          [0.0, 0.0, 10.0, 19.5]])  # IoU 100 / 195 = 0.513 > 0.5
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.zeros(3, dtype=torch.int64)
    assert post.class_aware_nms(boxes[:2], scores[:2], classes[:2], 0.5, 10).tolist() == [0, 1]
    assert post.class_aware_nms(boxes[[0, 2]], scores[[0, 2]], classes[:2], 0.5, 10).tolist() == [0]
    assert nms_loop(boxes.numpy(), scores.numpy(), classes.numpy(), 0.5, 10) == [0, 1]


def test_nms_tied_scores_keep_the_earlier_box_and_classes_do_not_interact():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    same = torch.zeros(3, dtype=torch.int64)
    assert post.class_aware_nms(boxes, scores, same, 0.6, 10).tolist() == [0]
    assert post.class_aware_nms(boxes.flip(0), scores, same, 0.6, 10).tolist() == [0]
    assert post.class_aware_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.6, 10).tolist() == [0, 1, 2]
    assert post.class_aware_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.6, 2).tolist() == [0, 1]


def test_nms_classes_stay_apart_when_boxes_have_negative_coordinates():
    # FCOS boxes are not clipped before NMS. Shifting class c by c * (max + 1), as batched_nms
    # does, lets class 1's copy of this box overlap class 0's (IoU 0.68) when x1 = -100.
    boxes = torch.tensor([[-100.0, -100.0, 10.0, 10.0], [-100.0, -100.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    keep = post.class_aware_nms(boxes, scores, torch.tensor([0, 1]), 0.6, 10)
    assert keep.tolist() == [0, 1] == nms_loop(boxes.numpy(), scores.numpy(), np.array([0, 1]), 0.6, 10)


def test_nms_empty():
    keep = post.class_aware_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.6, 50)
    assert keep.shape == (0,) and keep.dtype == torch.int64


# -- RoI level assignment and pooling ------------------------------------------------------------------

def test_level_assignment_boundaries():
    area = 600.0 * 1000.0
    w = 1000.0
    heights = [600.0,  # whole image -> P5
               300.0 + 1e-2,  # just over half -> P5
               300.0,  # exactly half: ceil(5 - 1) = 4 -> P4
               150.0 + 1e-2,  # just over a quarter -> P4
               150.0,  # exactly a quarter -> P3
               1.0,  # tiny -> clamped to P3
               0.0]  # empty -> P3
    boxes = torch.tensor([[0.0, 0.0, w, h] for h in heights])
    levels = post.assign_roi_levels(boxes, area)
    assert levels.tolist() == [2, 2, 1, 1, 0, 0, 0]
    assert [assign_level_loop(b, area) for b in boxes.tolist()] == levels.tolist()
    huge = post.assign_roi_levels(torch.tensor([[-500.0, -500.0, 1500.0, 1100.0]]), area)
    assert huge.tolist() == [2]


def test_level_assignment_matches_loop_on_random_boxes():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(200, 2, generator=g) * 300
    wh = torch.rand(200, 2, generator=g) ** 3 * 600 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    area = 608.0 * 1024.0
    assert post.assign_roi_levels(boxes, area).tolist() == [assign_level_loop(b, area) for b in boxes.tolist()]


def test_pool_rois_matches_per_box_loop():
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 5, 64 // s, 96 // s, generator=g) for s in (8, 16, 32)]
    xy = torch.rand(30, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 80 + 1], 1)
    batch = torch.randint(0, 2, (30,), generator=g)
    levels = post.assign_roi_levels(boxes, 64.0 * 96.0)
    assert set(levels.tolist()) == {0, 1, 2}
    ours = post.pool_rois(feats, boxes, batch, levels, 14)
    ref = pool_rois_loop(feats, boxes, batch, levels, 14)
    torch.testing.assert_close(ours, ref)
    assert post.pool_rois(feats, boxes[:0], batch[:0], levels[:0], 14).shape == (0, 5, 14, 14)


# -- mask pasting ------------------------------------------------------------------------------------

def test_paste_matches_per_instance_grid_sample_loop():
    g = torch.Generator().manual_seed(5)
    n, h, w = 25, 70, 90
    masks = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - 10  # some start outside the image
    wh = torch.rand(n, 2, generator=g) * 80 + 0.3  # some sub-pixel, some larger than the image
    boxes = torch.cat([xy, xy + wh], 1)
    before = (masks.clone(), boxes.clone())
    ours = post.paste_masks(masks, boxes, (h, w))
    assert torch.equal(masks, before[0]) and torch.equal(boxes, before[1])
    ref = paste_mask_loop(masks, boxes, (h, w))
    assert ours.dtype == torch.bool and ours.shape == (n, h, w)
    # float rounding differs (matmul vs grid_sample): allow only pixels whose value is at 0.5
    differ = ours != ref
    assert differ.sum() <= 2, int(differ.sum())


def test_paste_crafted_cases():
    ones = torch.ones(1, 28, 28)
    full = post.paste_masks(ones, torch.tensor([[2.0, 3.0, 6.0, 5.0]]), (8, 8))[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    # pixel centres 2.5..5.5 in x and 3.5, 4.5 in y map inside; border columns get the tent's half weight
    vals = paste_mask_loop(ones, torch.tensor([[2.0, 3.0, 6.0, 5.0]]), (8, 8))[0]
    expected[3:5, 2:6] = True
    assert torch.equal(full, expected) and torch.equal(vals, expected)
    # threshold is ">=": a constant 0.5 mask is pasted, 0.49 is not
    half = post.paste_masks(torch.full((1, 28, 28), 0.5), torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8))
    assert half.all()
    assert not post.paste_masks(torch.full((1, 28, 28), 0.49), torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8)).any()
    # degenerate boxes give empty masks; no instances give (0, H, W)
    degenerate = post.paste_masks(torch.ones(2, 28, 28), torch.tensor([[3.0, 3.0, 3.0, 6.0], [1.0, 5.0, 4.0, 5.0]]), (8, 8))
    assert not degenerate.any()
    # a NaN box pastes nothing and leaves the others alone
    nan_box = torch.tensor([[float("nan"), 1.0, 5.0, 6.0], [2.0, 3.0, 6.0, 5.0]])
    pasted = post.paste_masks(torch.ones(2, 28, 28), nan_box, (8, 8))
    assert not pasted[0].any() and torch.equal(pasted[1], expected)
    assert post.paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (8, 9)).shape == (0, 8, 9)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        post.paste_masks(ones, torch.tensor([[2.0, 3.0, 6.0, 5.0]]), (8, 8), threshold=0.0)


def test_paste_small_and_frame_sized_boxes_together():
    # each box is computed only around itself, padded to the largest: a 2-pixel box beside one
    # covering (and overhanging) the whole frame, boxes touching each image edge
    g = torch.Generator().manual_seed(11)
    masks = torch.rand(5, 28, 28, generator=g)
    boxes = torch.tensor([[10.2, 7.7, 12.1, 9.4], [-30.0, -5.0, 130.0, 95.0], [0.0, 0.0, 20.0, 15.0],
                          [85.5, 60.25, 100.0, 70.0], [40.0, 30.0, 90.0, 70.0]])
    ours = post.paste_masks(masks, boxes, (70, 90))
    assert int((ours != paste_mask_loop(masks, boxes, (70, 90))).sum()) <= 2
    assert ours[3, 60:, 85:].any() and ours[4, 30:, 40:].any()


# -- postprocess ---------------------------------------------------------------------------------------

def _tiny_outputs(net, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return net(torch.randn(1, 3, *TINY.input_size))


def test_postprocess_nothing_above_threshold_gives_empty_result():
    net = CenterMask(TINY).eval()
    out = _tiny_outputs(net)
    out = dict(out, cls_logits=torch.full_like(out["cls_logits"], -10.0))
    res = post.postprocess(out, net, TINY, (50, 70))
    inst = to_numpy_instances(res, (50, 70))
    assert len(inst) == 0 and inst.masks.shape == (0, 50, 70) and inst.masks_dense().shape == (0, 50, 70) and inst.image_size == (50, 70)


def test_postprocess_is_consistent_and_does_not_modify_outputs():
    torch.manual_seed(0)
    net = CenterMask(TINY).eval()
    out = _tiny_outputs(net)
    snapshot = {k: v.clone() for k, v in out.items()}
    with torch.no_grad():
        res = post.postprocess(out, net, TINY, (50, 70), score_threshold=0.0)
    assert all(torch.equal(out[k], snapshot[k]) for k in out)
    n = res.boxes.shape[0]
    assert 0 < n <= TINY.post_nms_topk
    assert res.masks.shape == (n, 50, 70) and res.masks.dtype == torch.bool
    assert (res.scores[:-1] >= res.scores[1:]).all() and ((res.scores > 0) & (res.scores <= 1)).all()
    assert (res.boxes[:, 0] >= 0).all() and (res.boxes[:, 2] <= 70).all() and (res.boxes[:, 3] <= 50).all()
    assert (res.boxes[:, 2] > res.boxes[:, 0]).all() and (res.boxes[:, 3] > res.boxes[:, 1]).all()
    # a higher threshold keeps exactly the detections above it, in the same order
    cut = float(res.scores[n // 2])
    with torch.no_grad():
        high = post.postprocess(out, net, TINY, (50, 70), score_threshold=cut)
    keep = res.scores > cut
    torch.testing.assert_close(high.scores, res.scores[keep])
    torch.testing.assert_close(high.boxes, res.boxes[keep])
    assert torch.equal(high.masks, res.masks[keep])


def test_postprocess_without_maskiou_uses_box_scores():
    cfg = replace(TINY, use_maskiou=False)
    net = CenterMask(cfg).eval()
    assert not hasattr(net.roi_heads, "maskiou_head")
    out = _tiny_outputs(net)
    with torch.no_grad():
        res = post.postprocess(out, net, cfg, (64, 96), score_threshold=0.0)
        cand = post.fcos_candidates(out["cls_logits"][0], out["bbox_reg"][0], out["ctrness_logits"][0], net.locations,
                                    net.location_strides, net.level_sizes, cfg.score_thresh, cfg.pre_nms_topk)
        keep = post.class_aware_nms(cand.boxes, cand.scores, cand.class_ids, cfg.nms_thresh, cfg.post_nms_topk)
    box_scores = torch.sqrt(cand.scores[keep])
    nonempty = (cand.boxes[keep].clamp(min=0)[:, 2:] > cand.boxes[keep].clamp(min=0)[:, :2]).all(1)
    torch.testing.assert_close(res.scores, box_scores[nonempty])


def test_segmenter_runs_the_small_model_on_a_photograph():
    skimage_data = pytest.importorskip("skimage.data")
    from rtseg.segmenter import Segmenter

    seg = Segmenter("centermask_lite_vovnet19_quarter_384", score_threshold=0.0)  # seeded random weights
    image = np.ascontiguousarray(skimage_data.astronaut()[:400, :, ::-1])
    inst, times = seg.process(image)
    assert inst.image_size == (400, 512)
    assert 0 < len(inst) <= SMALL.post_nms_topk
    assert inst.masks.shape == (len(inst), 400, 512)
    assert ((inst.class_ids >= 0) & (inst.class_ids < len(SMALL.class_names))).all()
    assert (np.diff(inst.scores) <= 0).all() and (inst.scores <= 1).all()
    assert (inst.boxes[:, [0, 2]] <= 512).all() and (inst.boxes[:, [1, 3]] <= 400).all() and (inst.boxes >= 0).all()
    assert times.inference > 0


@pytest.mark.gpu
def test_cuda_ops_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(7)
    n = 3000  # > 4000 would switch torchvision's batched_nms to its per-class path on the CPU only
    xy = torch.rand(n, 2, generator=g) * 900
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 200 + 1], 1)
    scores, classes = torch.rand(n, generator=g), torch.randint(0, 80, (n,), generator=g)
    cpu = post.class_aware_nms(boxes, scores, classes, 0.6, 50)
    assert post.class_aware_nms(boxes.to(dev), scores.to(dev), classes.to(dev), 0.6, 50).cpu().tolist() == cpu.tolist()
    masks = torch.rand(50, 28, 28, generator=g)
    xy = torch.rand(50, 2, generator=g) * 600 - 20
    pboxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 300 + 0.5], 1)
    on_gpu = post.paste_masks(masks.to(dev), pboxes.to(dev), (480, 640)).cpu()
    assert int((on_gpu != paste_mask_loop(masks, pboxes, (480, 640))).sum()) <= 2
    feats = [torch.randn(1, 16, 608 // s, 1024 // s, generator=g) for s in (8, 16, 32)]
    levels = post.assign_roi_levels(pboxes, 608 * 1024.0)
    assert post.assign_roi_levels(pboxes.to(dev), 608 * 1024.0).cpu().tolist() == levels.tolist()
    batch = torch.zeros(50, dtype=torch.int64)
    ref = post.pool_rois(feats, pboxes, batch, levels, 14)
    got = post.pool_rois([f.to(dev) for f in feats], pboxes.to(dev), batch.to(dev), levels.to(dev), 14).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
