"""SOLOv2 pre/post-processing ops against their loop-based reference twins and crafted cases."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from reference_ops import bilinear_resize_reference
from reference_ops_solov2 import (dynamic_conv_reference, masks_to_boxes_reference, masks_to_image_reference,
                                  matrix_nms_reference, postprocess_reference)
from rtseg.models import MODELS
from rtseg.families.solov2.postprocess import (cell_strides, dynamic_conv, masks_to_boxes, masks_to_image, matrix_nms,
                                               postprocess)
from rtseg.families.solov2.preprocess import preprocess, resized_shape
from rtseg.postprocess import to_numpy_instances
from rtseg.structures import Instances

SMALL = MODELS["solov2_light_resnet18_half_384"]
LIGHT = MODELS["solov2_light_448_r18"]


def nms(masks, labels, scores, kernel="gaussian", sigma=2.0):
    return matrix_nms(torch.as_tensor(masks), torch.as_tensor(labels), torch.as_tensor(scores, dtype=torch.float32),
                      kernel=kernel, sigma=sigma).numpy()


def box_mask(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


# -- Matrix NMS ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", range(8))
def test_matrix_nms_matches_reference_on_random_masks(kernel, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    masks = np.stack([box_mask(12, 14, x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))
                      for x1, x2, y1, y2 in (sorted(rng.integers(0, 14, 2)) + sorted(rng.integers(0, 12, 2))
                                             for _ in range(n))])
    if seed % 2:
        masks[-1] = masks[0]  # an exact duplicate
    labels = rng.integers(0, 3, n)
    scores = np.sort(rng.random(n).astype(np.float32))[::-1].copy()
    np.testing.assert_allclose(nms(masks, labels, scores, kernel), matrix_nms_reference(masks, labels, scores, kernel),
                               rtol=1e-5, atol=1e-6)


def test_matrix_nms_decay_known_by_hand():
    # A (8 px) over B (4 px, inside A): IoU 4/8 = 0.5; C elsewhere, same class; D overlaps B but other class
    a = box_mask(4, 8, 0, 0, 4, 2)
    b = box_mask(4, 8, 0, 0, 2, 2)
    c = box_mask(4, 8, 6, 2, 8, 4)
    d = box_mask(4, 8, 0, 0, 2, 2)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([1, 1, 1, 2])
    out = nms(np.stack([a, b, c, d]), labels, scores)
    # B: decayed by A: exp(-2 * 0.5^2) / exp(0) = exp(-0.5); C: no overlap; D: other class, untouched
    np.testing.assert_allclose(out, [0.9, 0.8 * math.exp(-0.5), 0.7, 0.6], rtol=1e-6)
    out = nms(np.stack([a, b, c, d]), labels, scores, kernel="linear")
    np.testing.assert_allclose(out, [0.9, 0.8 * 0.5, 0.7, 0.6], rtol=1e-6)


def test_matrix_nms_compensation_by_hand():
    # A > B > C, same class, nested runs of 4, 2 and 1 pixels:
    # IoU(A,B) = 2/4, IoU(A,C) = 1/4, IoU(B,C) = 1/2; comp_A = 0, comp_B = 0.5.
    # C's decay = min(f(1/4) / f(0), f(1/2) / f(1/2)) = exp(-2/16): B, itself suppressed, decays C less
    a, b, c = box_mask(1, 6, 0, 0, 4, 1), box_mask(1, 6, 0, 0, 2, 1), box_mask(1, 6, 0, 0, 1, 1)
    out = nms(np.stack([a, b, c]), [0, 0, 0], np.array([0.9, 0.8, 0.7], np.float32))
    np.testing.assert_allclose(out, [0.9, 0.8 * math.exp(-0.5), 0.7 * math.exp(-2 / 16)], rtol=1e-6)
    out = nms(np.stack([a, b, c]), [0, 0, 0], np.array([0.9, 0.8, 0.7], np.float32), kernel="linear")
    np.testing.assert_allclose(out, [0.9, 0.8 * 0.5, 0.7 * min(0.75, 0.5 / 0.5)], rtol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_identical_masks(kernel):
    m = box_mask(5, 5, 1, 1, 4, 4)
    masks = np.stack([m, m, m])
    scores = np.array([0.9, 0.9, 0.5], np.float32)  # tied top scores: order decides, as given
    out = nms(masks, [3, 3, 3], scores, kernel)
    ref = matrix_nms_reference(masks, np.array([3, 3, 3]), scores, kernel)
    np.testing.assert_allclose(out, ref, atol=1e-7)
    assert np.isfinite(out).all()
    assert out[0] == pytest.approx(0.9)
    if kernel == "gaussian":  # IoU 1: f = exp(-2); the third is decayed by the first (comp 0)
        np.testing.assert_allclose(out[1:], [0.9 * math.exp(-2), 0.5 * math.exp(-2)], rtol=1e-6)
    else:  # linear: 1 - IoU = 0 -> both duplicates go to exactly 0 (upstream: 0 and NaN, both dropped)
        assert out[1] == 0 and out[2] == 0


def test_matrix_nms_empty_and_single():
    assert nms(np.zeros((0, 3, 3), bool), np.zeros(0, np.int64), np.zeros(0, np.float32)).shape == (0,)
    np.testing.assert_allclose(nms(box_mask(3, 3, 0, 0, 2, 2)[None], [0], np.array([0.4], np.float32)), [0.4])


def test_matrix_nms_does_not_modify_inputs():
    rng = np.random.default_rng(3)
    masks = torch.from_numpy(rng.random((6, 5, 5)) > 0.5)
    labels = torch.from_numpy(rng.integers(0, 2, 6))
    scores = torch.sort(torch.from_numpy(rng.random(6).astype(np.float32)), descending=True).values
    copies = [t.clone() for t in (masks, labels, scores)]
    matrix_nms(masks, labels, scores)
    assert all(torch.equal(a, b) for a, b in zip((masks, labels, scores), copies))


# -- dynamic conv, boxes, mask pasting ------------------------------------------------------------------
def test_dynamic_conv_matches_reference():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(6, 5, 7)).astype(np.float32)
    kernels = rng.normal(size=(4, 6)).astype(np.float32)
    out = dynamic_conv(torch.from_numpy(feat), torch.from_numpy(kernels)).numpy()
    np.testing.assert_allclose(out, dynamic_conv_reference(feat, kernels), rtol=1e-5, atol=1e-5)
    # the same as upstream's F.conv2d with N kernels of shape [E, 1, 1]
    conv = torch.nn.functional.conv2d(torch.from_numpy(feat)[None], torch.from_numpy(kernels)[:, :, None, None])[0]
    torch.testing.assert_close(torch.from_numpy(out), conv, rtol=1e-5, atol=1e-5)
    assert dynamic_conv(torch.from_numpy(feat), torch.zeros(0, 6)).shape == (0, 5, 7)
    with pytest.raises(ValueError, match=r"kernels must be \(N, 6\).*\(4, 5\)"):
        dynamic_conv(torch.from_numpy(feat), torch.zeros(4, 5))


def test_masks_to_boxes_matches_reference_including_empty_and_edges():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 9, 11)) > 0.93
    masks[0] = False  # empty
    masks[1] = False
    masks[1, 8, 10] = True  # bottom-right pixel: box (10, 8, 11, 9)
    out = masks_to_boxes(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(out, masks_to_boxes_reference(masks))
    np.testing.assert_array_equal(out[1], [10, 8, 11, 9])
    assert masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


@pytest.mark.parametrize("image_size", [(100, 160), (240, 200), (37, 301)])
def test_masks_to_image_crops_padding_and_matches_reference(image_size):
    cfg = dataclasses.replace(LIGHT, canvas=(64, 96), resize_max=(96, 64))  # small canvas: fast reference
    rng = np.random.default_rng(image_size[0])
    soft = rng.random((2, 16, 24)).astype(np.float32)
    hr, wr = resized_shape(image_size, cfg)
    assert hr <= 64 and wr <= 96 and (hr == 64 or wr == 96)
    out = masks_to_image(torch.from_numpy(soft), cfg, image_size).numpy()
    ref = masks_to_image_reference(soft, (hr, wr), image_size)
    # pixels whose value sits within float noise of the threshold may differ: none expected here
    assert out.shape == (2, *image_size)
    assert (out != ref).mean() < 1e-3


def test_padding_region_never_reaches_the_image():
    # a soft mask that is 1 only in the padding (right of the resized image) gives an empty mask
    cfg = dataclasses.replace(LIGHT, canvas=(64, 96), resize_max=(96, 64))
    hr, wr = resized_shape((100, 100), cfg)  # square image in a landscape canvas: 64 x 64, 32 px padding
    assert (hr, wr) == (64, 64)
    soft = torch.zeros(1, 16, 24)
    soft[:, :, 17:] = 1.0  # columns >= 68 px of the canvas
    assert not masks_to_image(soft, cfg, (100, 100)).any()
    soft = torch.zeros(1, 16, 24)
    soft[:, :, :16] = 1.0  # exactly the resized image: the whole original image
    assert masks_to_image(soft, cfg, (100, 100)).all()


# -- preprocessing ------------------------------------------------------------------------------------
def test_resized_shape_follows_mmcv_rescale_and_the_canvas():
    # 480 x 640 into light-448 (768, 448): scale min(768/640, 448/480) = 0.9333 -> 448 x 597
    assert resized_shape((480, 640), LIGHT) == (448, int(640 * 448 / 480 + 0.5))
    # full model (1333, 800): 1080p -> 750 x 1333 (long edge bound), canvas 800 x 1344
    assert resized_shape((1080, 1920), MODELS["solov2_r50_fpn"]) == (750, 1333)
    # portrait: upstream would give 1333 x 800 -- here fitted into the landscape canvas
    assert resized_shape((1920, 1080), MODELS["solov2_r50_fpn"]) == (800, 450)
    assert resized_shape((123, 456), SMALL) == (384, 384)  # stretched (keep_ratio=False)
    with pytest.raises(ValueError, match="positive"):
        resized_shape((0, 10), SMALL)


def test_preprocess_normalises_resizes_and_zero_pads():
    img = np.zeros((1, 60, 80, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # B, G, R
    cfg = dataclasses.replace(LIGHT, canvas=(64, 128), resize_max=(128, 64))
    x = preprocess(torch.from_numpy(img), cfg)
    hr, wr = resized_shape((60, 80), cfg)
    assert x.shape == (1, 3, 64, 128) and x.dtype == torch.float32 and (hr, wr) == (64, 85)
    expected = [(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375]  # RGB order
    for c in range(3):
        torch.testing.assert_close(x[0, c, :hr, :wr], torch.full((hr, wr), expected[c]))
    assert (x[0, :, hr:, :] == 0).all() and (x[0, :, :, wr:] == 0).all()
    caffe = dataclasses.replace(cfg, pixel_norm="bgr_caffe")
    y = preprocess(torch.from_numpy(img), caffe)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([10 - 103.53, 20 - 116.28, 30 - 123.675]))


def test_preprocess_resize_matches_bilinear_reference():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    cfg = dataclasses.replace(SMALL, canvas=(32, 32))
    x = preprocess(torch.from_numpy(img), cfg)
    ref_b = bilinear_resize_reference(img[0, :, :, 0].astype(np.float64), 32, 32)  # B plane -> channel 2
    np.testing.assert_allclose(x[0, 2].numpy(), (ref_b - 103.53) / 57.375, atol=1e-4)


def test_preprocess_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"uint8 tensor \(B, H, W, 3\) BGR, got torch.float32"):
        preprocess(torch.zeros(1, 8, 8, 3), SMALL)


def test_preprocess_does_not_modify_input():
    img = torch.randint(0, 255, (1, 40, 50, 3), dtype=torch.uint8)
    copy = img.clone()
    preprocess(img, SMALL)
    assert torch.equal(img, copy)


# -- the whole post-processing ----------------------------------------------------------------------
def tiny_cfg(**kw):
    base = dict(canvas=(32, 64), resize_max=(64, 32), num_grids=(4, 3, 2, 2, 2), nms_pre=6, max_per_img=4)
    base.update(kw)
    return dataclasses.replace(LIGHT, class_names=("a", "b", "c"), **base)


def random_outputs(cfg, seed, e=5):
    g = torch.Generator().manual_seed(seed)
    gc = cfg.num_cells
    cate = torch.rand(1, gc, 3, generator=g) * 0.4
    cate = torch.round(cate * 20) / 20  # tied scores
    kernel = torch.randn(1, gc, e, generator=g) * 2
    feat = torch.randn(1, e, cfg.input_size[0] // 4, cfg.input_size[1] // 4, generator=g)
    return {"cate": cate, "kernel": kernel, "mask_feat": feat}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_postprocess_matches_loop_reference(seed, kernel):
    cfg = tiny_cfg(nms_kernel=kernel)
    outputs = random_outputs(cfg, seed)
    image_size = (50, 90)
    res = postprocess(outputs, cfg, image_size)
    classes, scores, masks = postprocess_reference(
        outputs["cate"][0].numpy(), outputs["kernel"][0].numpy(), outputs["mask_feat"][0].numpy(),
        cell_strides(cfg).numpy(), cfg, resized_shape(image_size, cfg), image_size)
    assert res.class_ids.tolist() == classes
    np.testing.assert_allclose(res.scores.numpy(), scores, rtol=1e-5, atol=1e-6)
    assert (res.masks.numpy() != masks).mean() < 1e-3
    np.testing.assert_array_equal(res.boxes.numpy(), masks_to_boxes(res.masks).numpy())


def test_cell_strides_follow_levels_in_order():
    expected = []
    for grid, stride in zip(LIGHT.num_grids, LIGHT.strides):
        expected += [float(stride)] * (grid * grid)
    assert cell_strides(LIGHT).tolist() == expected and len(expected) == 3872


def test_postprocess_area_filter_is_strict_greater_than_stride():
    cfg = tiny_cfg(num_grids=(2, 2, 2, 2, 2), strides=(8, 8, 16, 32, 32))
    g = cfg.num_cells
    feat = torch.full((1, 1, 8, 16), -10.0)
    feat[0, 0, 0, :8] = 10.0  # 8 pixels "on" for a kernel of +1
    cate = torch.zeros(1, g, 3)
    cate[0, 0, 0] = 0.9  # level 0 (stride 8): area 8 is not > 8 -> dropped
    kernel = torch.ones(1, g, 1)
    res = postprocess({"cate": cate, "kernel": kernel, "mask_feat": feat}, cfg, (32, 64))
    assert res.scores.numel() == 0 and res.masks.shape == (0, 32, 64)
    feat[0, 0, 1, 0] = 10.0  # 9 pixels: kept, maskness = sigmoid(10)
    res = postprocess({"cate": cate, "kernel": kernel, "mask_feat": feat}, cfg, (32, 64))
    assert res.class_ids.tolist() == [0]
    assert res.scores.item() == pytest.approx(0.9 * torch.sigmoid(torch.tensor(10.0)).item(), rel=1e-6)


def test_postprocess_empty_and_score_threshold():
    cfg = tiny_cfg()
    outputs = random_outputs(cfg, 0)
    outputs["cate"] = torch.zeros_like(outputs["cate"])
    res = postprocess(outputs, cfg, (40, 41))
    assert res.masks.shape == (0, 40, 41) and res.boxes.shape == (0, 4)
    inst = to_numpy_instances(res, (40, 41))
    assert inst == Instances.empty((40, 41))
    full = postprocess(random_outputs(cfg, 1), cfg, (40, 41))
    assert full.scores.numel() > 1
    cut = float(full.scores[1])
    part = postprocess(random_outputs(cfg, 1), cfg, (40, 41), score_threshold=cut)
    assert part.scores.tolist() == [s for s in full.scores.tolist() if s > cut]


def test_postprocess_refuses_train_mode_outputs():
    with pytest.raises(ValueError, match="eval-mode"):
        postprocess({"cate_logits": torch.zeros(1, 2, 3)}, tiny_cfg(), (10, 10))


def test_postprocess_does_not_modify_outputs():
    cfg = tiny_cfg()
    outputs = random_outputs(cfg, 2)
    copies = {k: v.clone() for k, v in outputs.items()}
    postprocess(outputs, cfg, (30, 30))
    assert all(torch.equal(outputs[k], copies[k]) for k in outputs)


def test_many_candidates_are_scored_in_chunks_with_the_same_result(monkeypatch):
    """Above MAX_CANDIDATES_AT_ONCE candidates the masks are computed in chunks (memory);
    the instances equal those of the all-at-once path."""
    import rtseg.families.solov2.postprocess as post
    from rtseg.models import MODELS

    cfg = MODELS["solov2_light_resnet18_half_384"]
    g = torch.Generator().manual_seed(0)
    cells = sum(n * n for n in cfg.num_grids)
    outputs = {"cate": torch.rand(1, cells, len(cfg.class_names), generator=g),
               "kernel": torch.randn(1, cells, 8, generator=g),
               "mask_feat": torch.randn(1, 8, 96, 96, generator=g)}
    whole = post.postprocess(outputs, cfg, (120, 160))
    monkeypatch.setattr(post, "MAX_CANDIDATES_AT_ONCE", 100)
    chunked = post.postprocess(outputs, cfg, (120, 160))
    assert len(whole.scores) > 10
    torch.testing.assert_close(chunked.scores, whole.scores)
    assert torch.equal(chunked.class_ids, whole.class_ids) and torch.equal(chunked.masks, whole.masks)
