"""SOLOv2 loss: target assignment against the upstream algorithm, focal / Dice by hand, training."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch

from reference_ops_solov2 import assign_targets_reference
from rtseg.families.solov2 import SOLOV2
from rtseg.models import MODELS
from rtseg.families.solov2.network import Solov2
from rtseg.families.solov2.loss import (Solov2LossConfig, assign_targets, center_of_mass, dice_loss, downsample_masks,
                                        sigmoid_focal_loss, solov2_loss)

#: a tiny SOLOv2 for fast tests: 64 x 64 input, quarter-width ResNet-18, 32-channel everything
TINY = dataclasses.replace(
    MODELS["solov2_light_resnet18_half_384"], name="tiny", class_names=("a", "b", "c"), canvas=(64, 64),
    resize_max=(64, 64), backbone_width=0.25, fpn_channels=32, head_channels=32, mask_feat_channels=32,
    mask_channels=32, num_grids=(8, 6, 4, 3, 2), scale_ranges=((1, 20), (10, 40), (20, 64), (40, 128), (64, 256)))


def target(boxes_px, labels, masks, crowd=None, size=64):
    n = len(labels)
    return {"boxes": torch.tensor(boxes_px, dtype=torch.float32).reshape(-1, 4) / size,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.as_tensor(np.asarray(masks, np.uint8).reshape(n, size, size)),
            "crowd": torch.tensor(crowd if crowd is not None else [False] * n)}


def box_masks(boxes, size=64):
    out = np.zeros((len(boxes), size, size), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        out[k, y1:y2, x1:x2] = 1
    return out


# -- target assignment --------------------------------------------------------------------------------
def test_assignment_of_one_square_worked_by_hand():
    # 16 x 16 square at (16, 16): sqrt area 16 -> levels 0 (1..20) and 1 (10..40); centre of mass
    # (23.5, 23.5) px. Level 0, grid 8: centre cell trunc(23.5 / 64 * 8) = 2; half-size
    # 0.2 * 16 / 2 = 1.6 px: rows trunc(21.9 / 8) = 2 .. trunc(25.1 / 8) = 3, columns alike.
    boxes = [(16, 16, 32, 32)]
    levels = assign_targets(torch.tensor(boxes, dtype=torch.float32), torch.tensor([2]),
                            torch.from_numpy(box_masks(boxes)), TINY, num_classes=3)
    assert [lt.pair_cells.tolist() for lt in levels] == [[18, 19, 26, 27], [14], [], [], []]
    # level 1, grid 6: centre cell trunc(23.5 / 64 * 6) = 2; rows trunc(21.9*6/64)=2 .. trunc(25.1*6/64)=2
    assert [lt.pair_instances.tolist() for lt in levels][:2] == [[0, 0, 0, 0], [0]]
    lab = levels[0].labels.reshape(8, 8)
    assert lab[2:4, 2:4].eq(2).all() and (lab == 2).sum() == 4 and (lab == 3).sum() == 60  # 3 = background


def test_center_of_mass_uses_pixel_indices():
    m = torch.zeros(1, 5, 7, dtype=torch.uint8)
    m[0, 1, 2] = m[0, 3, 6] = 1
    cy, cx = center_of_mass(m)
    assert (cy.item(), cx.item()) == (2.0, 4.0)


@pytest.mark.parametrize("seed", range(10))
def test_assignment_matches_upstream_algorithm_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 7))
    boxes, masks = [], np.zeros((n, 64, 64), np.uint8)
    for k in range(n):
        w, h = rng.integers(2, 60, 2)
        x1, y1 = rng.integers(0, 64 - w), rng.integers(0, 64 - h)
        boxes.append((x1, y1, x1 + w, y1 + h))
        cv2.ellipse(masks[k], (int(x1 + w / 2), int(y1 + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360, 1, -1)
        if rng.random() < 0.3:  # box drawn loosely: mask centre and box disagree
            masks[k] = np.roll(masks[k], int(rng.integers(-5, 6)), axis=1)
    if n and seed % 3 == 0:
        masks[0] = 0  # empty mask: skipped
    labels = rng.integers(0, 3, n)
    boxes_np = np.asarray(boxes, np.float32).reshape(-1, 4)
    ours = assign_targets(torch.from_numpy(boxes_np), torch.from_numpy(labels), torch.from_numpy(masks), TINY, 3)
    ref = assign_targets_reference(boxes_np, labels, masks, TINY.num_grids, TINY.scale_ranges, TINY.center_sigma, 3)
    for lt, (ref_labels, ref_pairs) in zip(ours, ref):
        assert lt.labels.tolist() == ref_labels.tolist()
        assert list(zip(lt.pair_cells.tolist(), lt.pair_instances.tolist())) == ref_pairs


def test_overlapping_instances_last_one_labels_the_cell_both_get_a_mask_pair():
    boxes = [(16, 16, 32, 32), (17, 17, 31, 31)]  # the same centre cells
    levels = assign_targets(torch.tensor(boxes, dtype=torch.float32), torch.tensor([0, 1]),
                            torch.from_numpy(box_masks(boxes)), TINY, num_classes=3)
    assert levels[0].labels[18].item() == 1  # later instance wins the class
    assert levels[0].pair_instances.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_downsample_masks_equals_opencv_as_upstream_uses_it():
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 64, 96)) > 0.5).astype(np.uint8)
    masks[3] = cv2.circle(np.zeros((64, 96), np.uint8), (40, 30), 17, 1, -1)
    ours = downsample_masks(torch.from_numpy(masks)).numpy()
    for k in range(len(masks)):  # mmcv.imrescale(mask, 1/4): cv2.resize INTER_LINEAR to (w/4, h/4)
        ref = cv2.resize(masks[k], (24, 16), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(ours[k], ref.astype(np.float32))


# -- loss terms by hand ---------------------------------------------------------------------------------
def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), -math.log(3.0)]])  # p = .5, .5 | .75, .25
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = (0.25 * 0.5 ** 2 * math.log(2) + 0.75 * 0.5 ** 2 * math.log(2)
                + 0.25 * 0.25 ** 2 * -math.log(0.75) + 0.75 * 0.25 ** 2 * -math.log(0.75))
    assert sigmoid_focal_loss(logits, targets, 0.25, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_by_hand():
    pred = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    tgt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = dice_loss(pred, tgt)
    assert out[0].item() == pytest.approx(1 - 2 * 1.5 / (1.25 + 0.001 + 2 + 0.001), rel=1e-6)
    assert out[1].item() == pytest.approx(1.0)  # nothing predicted, nothing there: 1 - 0 / 0.002


def test_loss_normalisation_and_terms_by_hand():
    cfg = TINY
    g, c, e = cfg.num_cells, 3, cfg.mask_channels
    boxes = [(16, 16, 32, 32)]
    t = target(boxes, [2], box_masks(boxes))
    logits = torch.zeros(1, g, c)  # p = 0.5 everywhere
    kernel = torch.zeros(1, g, e)
    feat = torch.zeros(1, e, 16, 16)  # soft masks 0.5 everywhere
    out = solov2_loss({"cate_logits": logits, "kernel": kernel, "mask_feat": feat}, [t], cfg)
    num_pos = 5  # 4 cells at level 0, 1 at level 1
    per = 0.5 ** 2 * math.log(2)
    cate = (num_pos * (0.25 * per + 2 * 0.75 * per) + (g - num_pos) * 3 * 0.75 * per) / (num_pos + 1)
    assert out["cate"].item() == pytest.approx(cate, rel=1e-5)
    # every pair's mask is 0.5 everywhere against the 4x4 square at 1/4 resolution
    a, b, cc = 0.5 * 16, 0.25 * 256 + 0.001, 16 + 0.001
    assert out["mask"].item() == pytest.approx(3.0 * (1 - 2 * a / (b + cc)), rel=1e-5)
    assert out["total"].item() == pytest.approx(out["cate"].item() + out["mask"].item())


def test_crowds_and_empty_images_and_gradients():
    net = Solov2(TINY)
    SOLOV2.init_from_scratch(net)
    net.train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = net(x)
    crowd = target([(0, 0, 40, 40)], [1], box_masks([(0, 0, 40, 40)]), crowd=[True])
    empty = target([], [], np.zeros((0, 64, 64)))
    losses = SOLOV2.loss(out, [crowd, empty], net, TINY)
    assert losses["mask"].item() == 0.0  # a crowd is not a positive
    losses["total"].backward()  # still connected to the graph
    assert net.bbox_head.solo_cate.bias.grad is not None


def test_loss_refuses_eval_outputs_and_wrong_mask_size():
    with pytest.raises(ValueError, match="train-mode"):
        solov2_loss({"cate": torch.zeros(1, 2, 3)}, [], TINY)
    g = TINY.num_cells
    outs = {"cate_logits": torch.zeros(1, g, 3), "kernel": torch.zeros(1, g, 32), "mask_feat": torch.zeros(1, 32, 16, 16)}
    bad = target([(0, 0, 8, 8)], [0], box_masks([(0, 0, 8, 8)], size=32), size=32)
    with pytest.raises(ValueError, match=r"\(32, 32\), expected the input size \(64, 64\)"):
        solov2_loss(outs, [bad], TINY)


def test_loss_settings_are_every_official_configs():
    import json
    from pathlib import Path

    cfg = Solov2LossConfig()
    for path in sorted((Path(__file__).parent / "fixtures" / "official" / "solov2_keys").glob("*.json")):
        f = json.loads(path.read_text())
        assert (f["loss_cate"]["type"], f["loss_cate"]["use_sigmoid"], f["loss_ins"]["type"]) == ("FocalLoss", True, "DiceLoss")
        assert (cfg.focal_alpha, cfg.focal_gamma, cfg.cate_weight) == (
            f["loss_cate"]["alpha"], f["loss_cate"]["gamma"], f["loss_cate"]["loss_weight"]), path.name
        assert cfg.mask_weight == f["loss_ins"]["loss_weight"] and f["bbox_head"]["sigma"] == 0.2, path.name


def test_family_is_registered():
    from rtseg.families import FAMILIES, family_of

    assert family_of(MODELS["solov2_light_resnet18_half_384"]) is FAMILIES["solov2"] is SOLOV2
    assert SOLOV2.class_dependent_prefixes == ("bbox_head.solo_cate.",)
    assert all(k.startswith("bbox_head.solo_cate.") for k in Solov2(TINY).state_dict()
               if "solo_cate" in k)


def test_init_puts_the_focal_prior_on_the_category_bias():
    net = Solov2(TINY)
    SOLOV2.init_from_scratch(net)
    bias = net.bbox_head.solo_cate.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, 0.01))


def test_a_few_sgd_steps_make_the_loss_fall():
    torch.manual_seed(0)
    net = Solov2(TINY)
    SOLOV2.init_from_scratch(net)
    net.train()
    boxes = [[(8, 8, 28, 24), (36, 30, 60, 58)], [(20, 4, 44, 40)]]
    images = torch.zeros(2, 3, 64, 64)
    targets = []
    for i, bx in enumerate(boxes):
        m = box_masks(bx)
        for k, (x1, y1, x2, y2) in enumerate(bx):
            images[i, k % 3, y1:y2, x1:x2] = 2.0
        targets.append(target(bx, [k % 3 for k in range(len(bx))], m))
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    totals = []
    for _ in range(10):
        losses = SOLOV2.loss(net(images), targets, net, TINY)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        totals.append(losses["total"].item())
    assert all(math.isfinite(t) for t in totals)
    assert np.mean(totals[-3:]) < 0.6 * np.mean(totals[:3]), totals
