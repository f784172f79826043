"""CenterMask loss: FCOS target assignment on crafted images (and against a loop twin), loss
terms by hand on small cases, and a few optimiser steps on a tiny config making the loss fall."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reference_ops_centermask import fcos_targets_loop
from rtseg.families import FAMILIES
from rtseg.families.centermask.network import CenterMask, CenterMaskConfig, make_locations
from rtseg.models.vovnet import VoVNetSpec
from rtseg.families.centermask.loss import (
    CenterMaskLossConfig,
    centerness_targets,
    centermask_loss,
    fcos_targets,
    iou_loss,
    mask_fraction_inside,
    maskiou_targets,
    sample_mask_rois,
    size_ranges,
)

TINY = CenterMaskConfig(name="tiny", class_names=("a", "b", "c"),
                        vovnet=VoVNetSpec((8, 8, 16), (8, 8, 8, 8), (16, 16, 16, 16), 1, (1, 1, 1, 1)), vovnet_norm="BN",
                        fpn_channels=32, fcos_num_convs=1, mask_num_conv=1, mask_conv_dim=16, maskiou_num_conv=1,
                        maskiou_conv_dim=8, maskiou_fc_dim=16, input_height=128, input_width=256, keep_ratio=False,
                        train_mask_rois_per_image=8)


def _locs(size=(128, 128)):
    locations, strides, sizes = make_locations(size)
    return locations, strides, sizes, size_ranges(sizes, (64, 128, 256, 512))


def _positives(targets, locations, k):
    return {tuple(int(v) for v in locations[p].tolist()) for p in (targets.labels != k).nonzero().squeeze(1).tolist()}


def test_fcos_targets_small_box_centre_sampled_on_p3():
    locations, strides, _, ranges = _locs()
    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    t = fcos_targets(gt, torch.tensor([1]), locations, strides, ranges, num_classes=3)
    # centre (30, 25) +- 1.5 strides (12 px) inside the box: P3 locations with 18 < x < 42, 13 < y < 37
    assert _positives(t, locations, 3) == {(x, y) for x in (20, 28, 36) for y in (20, 28, 36)}
    p = int(((locations[:, 0] == 20) & (locations[:, 1] == 28) & (strides == 8)).nonzero())
    assert t.labels[p] == 1 and t.reg[p].tolist() == [10.0, 18.0, 30.0, 12.0]


def test_fcos_targets_large_box_goes_to_the_level_of_its_size():
    locations, strides, _, ranges = _locs()
    gt = torch.tensor([[0.0, 0.0, 128.0, 100.0]])
    t = fcos_targets(gt, torch.tensor([2]), locations, strides, ranges, num_classes=3)
    pos = (t.labels != 3).nonzero().squeeze(1)
    assert set(strides[pos].tolist()) == {16.0}  # max distance 68..72 px: P4's range [64, 128]
    assert _positives(t, locations, 3) == {(x, y) for x in (56, 72) for y in (40, 56, 72)}


def test_fcos_targets_overlap_takes_the_smaller_box_and_no_gt_is_background():
    locations, strides, _, ranges = _locs()
    gt = torch.tensor([[20.0, 20.0, 60.0, 60.0], [24.0, 24.0, 56.0, 56.0]])
    t = fcos_targets(gt, torch.tensor([0, 1]), locations, strides, ranges, num_classes=3)
    assert _positives(t, locations, 3) == {(x, y) for x in (36, 44) for y in (36, 44)}
    assert set(t.labels[t.labels != 3].tolist()) == {1} and set(t.gt_index[t.labels != 3].tolist()) == {1}
    empty = fcos_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), locations, strides, ranges, 3)
    assert (empty.labels == 3).all()


@pytest.mark.parametrize("center_sample", [True, False])
def test_fcos_targets_match_loop_on_random_boxes(center_sample):
    locations, strides, _, ranges = _locs((96, 160))
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * torch.tensor([140.0, 80.0])
    gt = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 120 + 4], 1).round()
    labels = torch.randint(0, 4, (6,), generator=g)
    t = fcos_targets(gt, labels, locations, strides, ranges, 4, center_sample, 1.5)
    ref_labels, ref_reg = fcos_targets_loop(gt, labels, locations, strides, ranges, 4, center_sample, 1.5)
    assert t.labels.tolist() == ref_labels
    pos = t.labels != 4
    assert pos.sum() > 5
    np.testing.assert_allclose(t.reg[pos].numpy(), np.asarray(ref_reg, np.float32)[pos.numpy()])


def test_iou_loss_and_centerness_by_hand():
    pred, target = torch.tensor([[1.0, 1, 1, 1]]), torch.tensor([[2.0, 2, 2, 2]])
    # areas 4 and 16, intersection 4, union 16, hull 16: iou = (4 + 1) / (16 + 1), giou = iou
    assert float(iou_loss(pred, target, loss_type="giou")) == pytest.approx(12 / 17)
    assert float(iou_loss(pred, target, loss_type="linear_iou")) == pytest.approx(12 / 17)
    assert float(iou_loss(pred, target, loss_type="iou")) == pytest.approx(-math.log(5 / 17))
    assert float(iou_loss(target, target, torch.tensor([0.5]))) == pytest.approx(0.0, abs=1e-7)
    # disjoint-ish boxes: pred (0, 0, 2, 0) vs target (0, 0, 0, 2) from the same point: zero-area pred
    far = iou_loss(torch.tensor([[3.0, 1, 0, 1]]), torch.tensor([[0.0, 1, 3, 1]]))
    # areas 6 and 6, w_inter 0, hull 6 x 2 = 12, union 12: iou = 1/13, giou = 1/13 - 0
    assert float(far) == pytest.approx(1 - 1 / 13)
    assert centerness_targets(torch.tensor([[1.0, 2, 3, 4]])).tolist() == pytest.approx([math.sqrt(1 / 3 * 2 / 4)])
    assert centerness_targets(torch.zeros(0, 4)).shape == (0,)


def test_maskiou_targets_and_fraction_inside_by_hand():
    pred = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])  # left column
    gt = torch.tensor([[[True, True], [False, False]]])  # top row
    # inter 1; half the GT mask lies outside the RoI: full area 2 / 0.5 = 4; union 2 + 4 - 1 = 5
    assert maskiou_targets(pred, gt, torch.tensor([0.5])).tolist() == pytest.approx([0.2])
    masks = torch.ones(2, 4, 4, dtype=torch.uint8)
    masks[1] = 0
    boxes = torch.tensor([[0.0, 0.0, 2.0, 4.0], [0.6, 0.0, 4.0, 4.0], [-5.0, -5.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    frac = mask_fraction_inside(masks, torch.tensor([0, 0, 0, 1]), boxes)
    assert frac.tolist() == pytest.approx([0.5, 0.75, 1.0, 0.0])  # column 0's centre 0.5 < 0.6: outside


def test_sample_mask_rois_threshold_gt_appended_and_cap():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0],  # IoU exactly 0.5: foreground
                              [0.0, 0.0, 10.0, 21.0],  # IoU < 0.5
                              [50.0, 50.0, 60.0, 60.0]])
    rois, matched = sample_mask_rois(proposals, gt, 0.5, 10)
    assert rois.tolist() == [[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]] and matched.tolist() == [0, 0]
    torch.manual_seed(0)
    many = torch.tensor([[0.0, 0.0, 10.0, 10.0 + i / 10] for i in range(20)])
    rois, _ = sample_mask_rois(many, gt, 0.5, 5)
    assert rois.shape == (5, 4)
    assert sample_mask_rois(proposals, gt[:0], 0.5, 5)[0].shape == (0, 4)


def _targets(size, boxes_px, labels, crowd=None):
    h, w = size
    masks = torch.zeros(len(boxes_px), h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes_px):
        masks[i, int(y1):int(y2), int(x1):int(x2)] = 1
    rel = torch.tensor(boxes_px, dtype=torch.float32).reshape(-1, 4) / torch.tensor([w, h, w, h])
    n = len(boxes_px)
    return {"boxes": rel, "labels": torch.tensor(labels, dtype=torch.int64).reshape(-1), "masks": masks,
            "crowd": torch.zeros(n, dtype=torch.bool) if crowd is None else torch.tensor(crowd)}


def test_fcos_terms_by_hand_with_constant_outputs():
    net = CenterMask(TINY)
    p, k = net.locations.shape[0], 3
    outputs = {"cls_logits": torch.zeros(1, p, k), "bbox_reg": torch.ones(1, p, 4), "ctrness_logits": torch.zeros(1, p)}
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, *TINY.input_size))
    outputs.update({f"p{i}": feats[f"p{i}"] for i in (3, 4, 5)})
    target = _targets(TINY.input_size, [[10, 10, 50, 40], [100, 20, 240, 120]], [1, 2])
    losses = centermask_loss(outputs, [target], net, TINY)
    ranges = size_ranges(net.level_sizes, (64, 128, 256, 512))
    gt_px = target["boxes"] * torch.tensor([256.0, 128.0, 256.0, 128.0])
    labels, regs = fcos_targets_loop(gt_px, target["labels"], net.locations, net.location_strides, ranges, k)
    pos = [i for i, lab in enumerate(labels) if lab != k]
    npos = len(pos)
    # sigmoid(0) = 0.5: focal term log(2) * 0.25 weighted by alpha 0.25 (positive) or 0.75 (negative)
    expected_cls = (npos * 0.25 * 0.25 + (p * k - npos) * 0.75 * 0.25) * math.log(2) / npos
    assert float(losses["fcos_cls"]) == pytest.approx(expected_cls, rel=1e-5)
    assert float(losses["fcos_ctr"]) == pytest.approx(math.log(2), rel=1e-5)  # BCE(logit 0, t) = log 2 for any t
    t = torch.tensor([regs[i] for i in pos]) / net.location_strides[pos, None]
    ctr = centerness_targets(t)
    expected_loc = float(iou_loss(torch.ones(npos, 4), t, ctr)) / float(ctr.sum())
    assert float(losses["fcos_loc"]) == pytest.approx(expected_loc, rel=1e-5)
    assert set(losses) == {"fcos_cls", "fcos_loc", "fcos_ctr", "mask", "maskiou", "total"}
    assert float(losses["total"]) == pytest.approx(sum(float(losses[n]) for n in losses if n != "total"), rel=1e-6)


def test_crowds_are_dropped_and_wrong_mask_size_is_refused():
    torch.manual_seed(0)
    net = CenterMask(TINY)
    out = net(torch.randn(1, 3, *TINY.input_size))
    plain = centermask_loss(out, [_targets(TINY.input_size, [[10, 10, 50, 40]], [1])], net, TINY)
    torch.manual_seed(1)
    with_crowd = centermask_loss(out, [_targets(TINY.input_size, [[10, 10, 50, 40], [100, 20, 240, 120]], [1, 2],
                                                crowd=[False, True])], net, TINY)
    for name in ("fcos_cls", "fcos_loc", "fcos_ctr"):
        assert float(with_crowd[name]) == pytest.approx(float(plain[name]), rel=1e-6)
    bad = _targets((64, 64), [[10, 10, 50, 40]], [1])
    with pytest.raises(ValueError, match=r"masks must be at the network input size \(128, 256\), got \(64, 64\)"):
        centermask_loss(out, [bad], net, TINY)
    with pytest.raises(ValueError, match="got 2 targets for a batch of 1 images"):
        centermask_loss(out, [bad, bad], net, TINY)


def test_empty_targets_give_finite_loss_and_gradients_reach_every_head():
    torch.manual_seed(0)
    net = CenterMask(TINY)
    FAMILIES["centermask"].init_from_scratch(net)
    out = net(torch.randn(2, 3, *TINY.input_size))
    targets = [_targets(TINY.input_size, [], []), _targets(TINY.input_size, [[30, 20, 90, 100]], [0])]
    losses = FAMILIES["centermask"].loss(out, targets, net, TINY)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert net.roi_heads.mask_head.predictor.weight.grad is not None
    assert net.roi_heads.maskiou_head.maskiou.weight.grad is not None
    assert net.backbone.bottom_up.stem[0].weight.grad.abs().sum() > 0


def test_a_few_optimiser_steps_make_the_loss_fall():
    torch.manual_seed(0)
    net = CenterMask(TINY).train()
    FAMILIES["centermask"].init_from_scratch(net)
    images = torch.randn(2, 3, *TINY.input_size) * 0.1
    boxes = [[[20, 16, 84, 80], [150, 30, 230, 110]], [[60, 40, 180, 120]]]
    labels = [[0, 2], [1]]
    targets = []
    for b, (bx, lb) in enumerate(zip(boxes, labels)):
        t = _targets(TINY.input_size, bx, lb)
        for (x1, y1, x2, y2), c in zip(bx, lb):  # paint the objects so the network can see them
            images[b, c, y1:y2, x1:x2] += 1.0
        targets.append(t)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        losses = centermask_loss(net(images), targets, net, TINY, CenterMaskLossConfig())
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: float(v) for k, v in losses.items()})
    first, last = history[0], np.mean([h["total"] for h in history[-3:]])
    assert last < 0.6 * first["total"], [round(h["total"], 3) for h in history]
    for term in ("fcos_cls", "fcos_loc", "mask"):
        assert np.mean([h[term] for h in history[-3:]]) < first[term], term
