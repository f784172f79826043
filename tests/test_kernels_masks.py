"""The mask and preprocessing kernels against their torch / NumPy reference twins.

Host tests build each ``cuda/<op>.cu`` for the CPU (``tests/cuda_host.py``) and run the very
``__host__ __device__`` functions the GPU kernels call, over every index, on 1,000 seeded random
cases per op (small sizes; a few at 720p) plus crafted ones. GPU tests (``-m gpu``) launch the real
kernels through :mod:`rtseg.kernels.masks`.

Masks are compared exactly, except for the documented float-order inexactness (see the headers of
``cuda/mask_assembly.cu`` and ``cuda/mask_paste.cu``): the references sum in BLAS (order
unspecified), so a pixel whose reference value lies within ``NEAR_THRESHOLD_EPS`` of the threshold
may differ; such pixels are counted, and bounded to a tiny share of all pixels.
"""

from __future__ import annotations

import ctypes
import importlib
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cuda_host import build_host_library
from rtseg.kernels.masks import PreprocessParams, preprocess_params
from rtseg.families.centermask.network import CenterMaskConfig
from rtseg.families.solov2.network import Solov2Config
from rtseg.families.yolact.network import YolactConfig
from rtseg.families.centermask import postprocess as cm_post
from rtseg.families.yolact import postprocess as yolact_post
from rtseg.structures import dense_windows
from mask_cases import random_masks

RANDOM_CASES = 1000
#: a pixel whose reference value is closer than this to the threshold may legitimately differ
NEAR_THRESHOLD_EPS = 1e-5
#: soft / pasted / normalised values: the issue's bound
VALUE_TOL = 1e-5

P = ctypes.c_void_p
I = ctypes.c_int
Fl = ctypes.c_float


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    assert a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


# -- host libraries --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def assembly_lib():
    lib = build_host_library("mask_assembly")
    lib.host_mask_assembly_proto.argtypes = [P, P, P, I, I, I, I, P]
    lib.host_mask_assembly_upsample.argtypes = [P, I, I, I, I, I, Fl, P, P]
    return lib


@pytest.fixture(scope="module")
def paste_lib():
    lib = build_host_library("mask_paste")
    lib.host_mask_paste.argtypes = [P, P, I, I, I, I, I, Fl, P, P]
    return lib


@pytest.fixture(scope="module")
def preprocess_lib():
    lib = build_host_library("preprocess")
    lib.host_preprocess.argtypes = [P, I, I, I, I, I, I, I, I, I, I, Fl, Fl, Fl, Fl, Fl, Fl, I, I, P]
    return lib


@pytest.fixture(scope="module")
def encode_lib():
    lib = build_host_library("mask_encode")
    lib.host_mask_encode.argtypes = [P, I, I, I, P, P, P, P, P]
    return lib


# -- YOLACT mask assembly --------------------------------------------------------------------------------

def host_assemble(lib, proto: np.ndarray, coef: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int],
                  threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(soft float32[N, h, w], masks bool[N, H, W], resized values float32[N, H, W])."""
    h, w, k = proto.shape
    n = coef.shape[0]
    H, W = image_size
    soft = np.empty((n, h, w), np.float32)
    masks = np.empty((n, H, W), np.uint8)
    values = np.empty((n, H, W), np.float32)
    assert lib.host_mask_assembly_proto(ptr(proto), ptr(coef), ptr(boxes), n, h, w, k, ptr(soft)) == 0
    assert lib.host_mask_assembly_upsample(ptr(soft), n, h, w, H, W, threshold, ptr(masks), ptr(values)) == 0
    return soft, masks.astype(bool), values


def random_rel_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Relative xyxy boxes: ordinary, partly and wholly outside, inverted, 1 proto pixel, zero size."""
    boxes = np.empty((n, 4), np.float32)
    for i in range(n):
        kind = rng.integers(6)
        if kind == 0:  # partly outside
            a = rng.uniform(-0.5, 1.5, 2)
            b = rng.uniform(-0.5, 1.5, 2)
            boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])]
        elif kind == 1:  # wholly outside
            x = rng.uniform(1.05, 2.0)
            boxes[i] = [x, rng.uniform(-1, 0), x + 0.3, rng.uniform(0, 1)] if rng.integers(2) else \
                [rng.uniform(-2, -1.1), -0.5, -1.05, 0.5]
        elif kind == 2:  # one proto pixel
            c, r = rng.integers(w), rng.integers(h)
            boxes[i] = [c / w, r / h, (c + 1) / w, (r + 1) / h]
        elif kind == 3:  # inverted corners (sanitize_coordinates orders them)
            a, b = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
            boxes[i] = [max(a[0], b[0]), max(a[1], b[1]), min(a[0], b[0]), min(a[1], b[1])]
        elif kind == 4:  # zero size
            x, y = rng.uniform(0, 1, 2)
            boxes[i] = [x, y, x, y]
        else:
            a, b = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
            boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])]
    return boxes


def reference_assemble(proto: np.ndarray, coef: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]):
    """(soft, masks, resized values) of the torch twin (the values: its interpolate before `>`)."""
    soft = yolact_post.assemble_masks(torch.from_numpy(proto), torch.from_numpy(coef), torch.from_numpy(boxes))
    masks = yolact_post.masks_to_image(soft, image_size)
    if soft.shape[0]:
        values = F.interpolate(soft[None], image_size, mode="bilinear", align_corners=False)[0]
    else:
        values = torch.zeros((0, *image_size))
    return soft.numpy(), masks.numpy(), values.numpy()


class NearThreshold:
    """Counts pixels that differ only because the reference lies within eps of the threshold."""

    def __init__(self) -> None:
        self.near = 0
        self.flipped = 0
        self.pixels = 0

    def compare(self, got: np.ndarray, ref: np.ndarray, ref_values: np.ndarray, threshold: float, what: str) -> None:
        assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
        near = np.abs(ref_values.astype(np.float64) - threshold) <= NEAR_THRESHOLD_EPS
        diff = got != ref
        far_diff = diff & ~near
        assert not far_diff.any(), (
            f"{what}: {int(far_diff.sum())} mask pixels differ where the reference is not near the threshold, "
            f"first at {np.argwhere(far_diff)[0].tolist()}")
        self.near += int(near.sum())
        self.flipped += int(diff.sum())
        self.pixels += got.size


def check_assembly_case(lib, proto, coef, boxes, image_size, stats: NearThreshold, what: str) -> None:
    soft, masks, values = host_assemble(lib, proto, coef, boxes, image_size)
    ref_soft, ref_masks, ref_values = reference_assemble(proto, coef, boxes, image_size)
    np.testing.assert_allclose(soft, ref_soft, rtol=0, atol=VALUE_TOL, err_msg=what)
    # soft values are 0 exactly where the reference crops
    assert np.array_equal(soft == 0, ref_soft == 0), what
    np.testing.assert_allclose(values, ref_values, rtol=0, atol=VALUE_TOL, err_msg=what)
    stats.compare(masks, ref_masks, ref_values, 0.5, what)


def test_mask_assembly_random(assembly_lib):
    rng = np.random.default_rng(6001)
    stats = NearThreshold()
    for case in range(RANDOM_CASES):
        h, w = (int(v) for v in rng.integers(1, 20, 2))
        k = int(rng.integers(1, 9))
        n = int(rng.integers(0, 5))
        H, W = (int(v) for v in rng.integers(1, 48, 2))
        proto = rng.normal(0, 1, (h, w, k)).astype(np.float32)
        coef = rng.normal(0, 1, (n, k)).astype(np.float32)
        boxes = random_rel_boxes(rng, n, h, w)
        check_assembly_case(assembly_lib, proto, coef, boxes, (H, W), stats, f"case {case}")
    # the documented inexactness stays a rarity: at most the near-threshold pixels, a tiny share
    assert stats.flipped <= stats.near
    assert stats.near <= 1e-4 * stats.pixels, vars(stats)


def test_mask_assembly_720p(assembly_lib):
    """Real sizes: 138 x 138 x 32 prototypes (YOLACT at 550) into a 720 x 1280 frame."""
    rng = np.random.default_rng(6002)
    stats = NearThreshold()
    for case in range(2):
        proto = rng.normal(0, 1, (138, 138, 32)).astype(np.float32)
        coef = rng.normal(0, 0.3, (4, 32)).astype(np.float32)
        boxes = random_rel_boxes(rng, 4, 138, 138)
        boxes[0] = [0.1, 0.2, 0.7, 0.9]
        check_assembly_case(assembly_lib, proto, coef, boxes, (720, 1280), stats, f"720p case {case}")
    assert stats.near <= 1e-4 * stats.pixels, vars(stats)


@pytest.mark.parametrize("image_size", [(1, 1), (1, 7), (7, 1), (719, 1279), (5, 3)])
def test_mask_assembly_crafted(assembly_lib, image_size):
    rng = np.random.default_rng(6003)
    stats = NearThreshold()
    h, w, k = 9, 11, 4
    proto = rng.normal(0, 2, (h, w, k)).astype(np.float32)
    # empty input
    _, masks, _ = host_assemble(assembly_lib, proto, np.zeros((0, k), np.float32), np.zeros((0, 4), np.float32),
                                image_size)
    assert masks.shape == (0, *image_size)
    # one instance: the whole frame, a wholly outside box, a 1-proto-pixel box, a zero-size box
    cases = {
        "whole": [0.0, 0.0, 1.0, 1.0],
        "outside": [1.5, 0.2, 2.5, 0.8],
        "one pixel": [3 / w, 4 / h, 4 / w, 5 / h],
        "zero size": [0.5, 0.5, 0.5, 0.5],
        "partly outside": [-0.4, 0.6, 0.3, 1.7],
    }
    coef = np.full((1, k), 1.0, np.float32)
    for name, box in cases.items():
        boxes = np.array([box], np.float32)
        check_assembly_case(assembly_lib, proto, coef, boxes, image_size, stats, f"{name} {image_size}")
    outside = host_assemble(assembly_lib, proto, coef, np.array([cases["outside"]], np.float32), image_size)[1]
    assert not outside.any()


def test_mask_assembly_threshold_is_strict(assembly_lib):
    """Zero coefficients give sigmoid(0) = 0.5 exactly inside the box; at the prototype size the
    resize copies it, and 0.5 is not > 0.5: no pixel is set, as in masks_to_image."""
    proto = np.random.default_rng(6004).normal(0, 1, (6, 8, 3)).astype(np.float32)
    coef = np.zeros((1, 3), np.float32)
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    soft, masks, values = host_assemble(assembly_lib, proto, coef, boxes, (6, 8))
    assert np.all(soft == 0.5) and np.all(values == 0.5)
    assert not masks.any()
    assert not reference_assemble(proto, coef, boxes, (6, 8))[1].any()
    assert host_assemble(assembly_lib, proto, coef, boxes, (6, 8), threshold=0.4999)[1].all()


def test_mask_assembly_matches_postprocess_order(assembly_lib):
    """The crop happens at prototype resolution before the resize: a box that covers one prototype
    pixel (plus 1 pixel of padding) yields a blob about 3 prototype pixels wide in the frame."""
    h = w = 10
    proto = np.full((h, w, 1), 5.0, np.float32)  # sigmoid(5) ~ 0.993 everywhere
    coef = np.ones((1, 1), np.float32)
    boxes = np.array([[0.5, 0.5, 0.6, 0.6]], np.float32)  # proto pixel (5, 5), padded to columns 4..6
    soft, masks, _ = host_assemble(assembly_lib, proto, coef, boxes, (100, 100))
    assert np.array_equal(np.argwhere(soft[0] > 0)[[0, -1]], [[4, 4], [6, 6]])
    cols = np.flatnonzero(masks[0].any(axis=0))
    assert 35 <= cols[0] <= 45 and 65 <= cols[-1] <= 75, cols


# -- CenterMask paste ------------------------------------------------------------------------------------

def host_paste(lib, masks: np.ndarray, boxes: np.ndarray, image_size, threshold=0.5):
    n, mh, mw = masks.shape
    H, W = image_size
    out = np.empty((n, H, W), np.uint8)
    values = np.empty((n, H, W), np.float32)
    assert lib.host_mask_paste(ptr(masks), ptr(boxes), n, mh, mw, H, W, threshold, ptr(out), ptr(values)) == 0
    return out.astype(bool), values


def grid_sample_values(masks: np.ndarray, boxes: np.ndarray, image_size) -> np.ndarray:
    """Independent float reference: detectron2's ``_do_paste_mask`` computation with grid_sample."""
    n, m, _ = masks.shape
    H, W = image_size
    if n == 0:
        return np.zeros((0, H, W), np.float32)
    b = torch.from_numpy(boxes).double()
    x0, y0, x1, y1 = (b[:, i, None] for i in range(4))
    xs = torch.arange(W, dtype=torch.float64) + 0.5
    ys = torch.arange(H, dtype=torch.float64) + 0.5
    gx = (xs - x0) / (x1 - x0) * 2 - 1  # [N, W]
    gy = (ys - y0) / (y1 - y0) * 2 - 1  # [N, H]
    grid = torch.stack([gx[:, None, :].expand(n, H, W), gy[:, :, None].expand(n, H, W)], dim=3)
    out = F.grid_sample(torch.from_numpy(masks).double()[:, None], grid, align_corners=False)[:, 0]
    empty = ((x1 <= x0) | (y1 <= y0)).view(n, 1, 1)
    return torch.where(empty, torch.zeros(()), out).float().numpy()


def random_pixel_boxes(rng: np.random.Generator, n: int, H: int, W: int) -> np.ndarray:
    boxes = np.empty((n, 4), np.float32)
    for i in range(n):
        kind = rng.integers(5)
        if kind == 0:  # partly outside
            xa, xb = sorted(rng.uniform(-0.5 * W, 1.5 * W, 2))
            ya, yb = sorted(rng.uniform(-0.5 * H, 1.5 * H, 2))
            boxes[i] = [xa, ya, xb, yb]
        elif kind == 1:  # wholly outside
            boxes[i] = [W + 1.0, 0.0, W + 5.0, H] if rng.integers(2) else [0.0, -7.0, W, -0.5]
        elif kind == 2:  # 1 pixel
            x, y = rng.integers(W), rng.integers(H)
            boxes[i] = [x, y, x + 1, y + 1]
        elif kind == 3:  # zero or negative width / height
            x, y = rng.uniform(0, W), rng.uniform(0, H)
            boxes[i] = [x, y, x - rng.uniform(0, 2) * rng.integers(2), y + 3]
        else:
            xa, xb = sorted(rng.uniform(0, W, 2))
            ya, yb = sorted(rng.uniform(0, H, 2))
            boxes[i] = [xa, ya, xb, yb]
    return boxes


def check_paste_case(lib, masks, boxes, image_size, stats: NearThreshold, what: str, threshold=0.5) -> None:
    got, values = host_paste(lib, masks, boxes, image_size, threshold)
    ref = cm_post.paste_masks(torch.from_numpy(masks), torch.from_numpy(boxes), image_size, threshold).numpy()
    ref_values = grid_sample_values(masks, boxes, image_size)
    np.testing.assert_allclose(values, ref_values, rtol=0, atol=VALUE_TOL, err_msg=what)
    stats.compare(got, ref, ref_values, threshold, what)


def test_mask_paste_random(paste_lib):
    rng = np.random.default_rng(6101)
    stats = NearThreshold()
    for case in range(RANDOM_CASES):
        m = int(rng.choice([1, 2, 5, 14, 28]))
        n = int(rng.integers(0, 5))
        H, W = (int(v) for v in rng.integers(1, 48, 2))
        masks = rng.uniform(0, 1, (n, m, m)).astype(np.float32)
        boxes = random_pixel_boxes(rng, n, H, W)
        threshold = 0.5 if case % 4 else float(rng.uniform(0.05, 0.95))
        check_paste_case(paste_lib, masks, boxes, (H, W), stats, f"case {case}", threshold)
    assert stats.flipped <= stats.near
    assert stats.near <= 1e-4 * stats.pixels, vars(stats)


def test_mask_paste_720p(paste_lib):
    rng = np.random.default_rng(6102)
    stats = NearThreshold()
    masks = rng.uniform(0, 1, (5, 28, 28)).astype(np.float32)
    boxes = random_pixel_boxes(rng, 5, 720, 1280)
    boxes[0] = [100.25, 50.5, 900.75, 700.0]
    check_paste_case(paste_lib, masks, boxes, (720, 1280), stats, "720p")


@pytest.mark.parametrize("image_size", [(1, 1), (3, 1), (1, 5), (7, 9)])
def test_mask_paste_crafted(paste_lib, image_size):
    stats = NearThreshold()
    H, W = image_size
    ones = np.ones((1, 28, 28), np.float32)
    # empty input
    got, _ = host_paste(paste_lib, np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), image_size)
    assert got.shape == (0, H, W)
    for name, box in {"whole frame": [0, 0, W, H], "outside": [W + 2, 0, W + 9, H], "one pixel": [0, 0, 1, 1],
                      "zero width": [0.5, 0, 0.5, H], "partly outside": [-W, -H, W / 2, H / 2],
                      "inverted": [W, H, 0, 0]}.items():
        check_paste_case(paste_lib, ones, np.array([box], np.float32), image_size, stats, f"{name} {image_size}")
    # a constant-1 mask over the whole frame: interior pixels are 1, the outermost may be 0.5+
    got, values = host_paste(paste_lib, ones, np.array([[0, 0, W, H]], np.float32), image_size)
    assert got.all()
    zero_width = host_paste(paste_lib, ones, np.array([[0.5, 0, 0.5, H]], np.float32), image_size)[0]
    assert not zero_width.any()


def test_mask_paste_identity_and_ties(paste_lib):
    """A box equal to the frame with M = H = W = 32 (exact divisions) maps each pixel centre onto
    one tap with weight 1: the pasted values are the mask itself, and a value exactly at the
    threshold is set (``>=``)."""
    rng = np.random.default_rng(6103)
    masks = rng.choice(np.array([0.25, 0.5, 0.75, 0.4999999, 0.5000001], np.float32), (2, 32, 32))
    boxes = np.array([[0, 0, 32, 32], [0, 0, 32, 32]], np.float32)
    got, values = host_paste(paste_lib, masks, boxes, (32, 32))
    assert np.array_equal(values, masks)
    assert np.array_equal(got, masks >= 0.5)
    assert np.array_equal(got, cm_post.paste_masks(torch.from_numpy(masks), torch.from_numpy(boxes), (32, 32)).numpy())


# -- preprocessing -----------------------------------------------------------------------------------------

YOLACT = YolactConfig(name="t", class_names=("a",), max_size=32)
SOLO = Solov2Config(name="t", class_names=("a",), canvas=(64, 96), resize_max=(96, 64))
CENTERMASK = CenterMaskConfig(name="t", class_names=("a",), input_height=64, input_width=96, min_size_test=64,
                              max_size_test=96)


def host_preprocess(lib, images: np.ndarray, p: PreprocessParams, half: bool = False) -> np.ndarray:
    b, h, w, _ = images.shape
    hc, wc = p.canvas
    out = np.empty((b, 3, hc, wc), np.float16 if half else np.float32)
    rc = lib.host_preprocess(ptr(images), b, h, w, p.resized[0], p.resized[1], hc, wc, *p.src_channels, *p.mean, *p.std,
                             int(p.antialias), int(half), ptr(out))
    assert rc == 0
    return out


def float_preprocess(cfg):
    """The torch twin the kernel reproduces: the family's float-resize path (rtseg's square models;
    official variants resize uint8 on the host), YOLACT's only preprocessing."""
    module = importlib.import_module(f"rtseg.families.{cfg.family}.preprocess")
    return getattr(module, "preprocess_float", module.preprocess)


def reference_preprocess(images: np.ndarray, cfg) -> np.ndarray:
    return float_preprocess(cfg)(torch.from_numpy(images), cfg).numpy()


def random_config(rng: np.random.Generator):
    family = rng.integers(3)
    if family == 0:
        return replace(YOLACT, max_size=int(rng.integers(1, 40)), normalize=bool(rng.integers(4)))
    if family == 1:
        return replace(SOLO, keep_ratio=bool(rng.integers(4)), pixel_norm=str(rng.choice(["rgb_imagenet", "bgr_caffe"])))
    return replace(CENTERMASK, keep_ratio=bool(rng.integers(4)))


def value_tolerance(cfg) -> np.ndarray:
    """Per output channel: ``VALUE_TOL`` plus 4 float32 ulps of a grey level near 255 (the resized
    value before normalisation, whose blend order differs from torch's), divided by the channel's
    std. With std ~ 57 (YOLACT, ImageNet) that adds 1e-6; with SOLOv2's ``bgr_caffe`` (std 1)
    the values reach 152 and their ulp alone is 1.5e-5, so the bound there is 7.1e-5."""
    std = np.asarray(preprocess_params(cfg, (8, 8)).std, np.float64).reshape(1, 3, 1, 1)
    return VALUE_TOL + 4 * float(np.spacing(np.float32(255))) / std


class GreyLevelFlips:
    """CenterMask rounds its antialiased resize to integers: where torch's sum lies within a few
    ulps of k + 0.5 the kernel may round the other way, one grey level (1 / std) apart."""

    def __init__(self) -> None:
        self.flips = 0
        self.values = 0

    def compare(self, got: np.ndarray, ref: np.ndarray, cfg, what: str) -> None:
        diff = np.abs(got.astype(np.float64) - ref)
        tol = value_tolerance(cfg)
        if cfg.family != "centermask":
            assert np.all(diff <= tol), f"{what}: max diff {diff.max()} beyond tolerance"
            return
        step = (1.0 / np.asarray(cfg.pixel_std, np.float64)).reshape(1, 3, 1, 1)
        flip = diff > tol
        bad = flip & (np.abs(diff - step) > tol)
        assert not bad.any(), f"{what}: {int(bad.sum())} values differ by other than one grey level"
        self.flips += int(flip.sum())
        self.values += got.size


def test_preprocess_random(preprocess_lib):
    rng = np.random.default_rng(6201)
    flips = GreyLevelFlips()
    for case in range(RANDOM_CASES):
        cfg = random_config(rng)
        b = int(rng.integers(1, 3))
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        images = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
        p = preprocess_params(cfg, (h, w))
        got = host_preprocess(preprocess_lib, images, p)
        ref = reference_preprocess(images, cfg)
        assert got.shape == ref.shape, f"case {case}"
        flips.compare(got, ref, cfg, f"case {case} {cfg.family} {(h, w)} -> {p.resized}")
        if case % 10 == 0:  # float16 output: the float32 result rounded to nearest even, bit for bit
            half = host_preprocess(preprocess_lib, images, p, half=True)
            assert np.array_equal(half.view(np.uint16), torch.from_numpy(got).half().numpy().view(np.uint16))
    assert flips.flips <= 1e-3 * max(flips.values, 1), vars(flips)


def test_preprocess_720p(preprocess_lib):
    rng = np.random.default_rng(6202)
    images = rng.integers(0, 256, (1, 720, 1280, 3), dtype=np.uint8)
    flips = GreyLevelFlips()
    for cfg in (YolactConfig(name="t", class_names=("a",)), replace(SOLO, canvas=(448, 768), resize_max=(768, 448)),
                replace(CENTERMASK, input_height=384, input_width=672, min_size_test=384, max_size_test=672)):
        p = preprocess_params(cfg, (720, 1280))
        got = host_preprocess(preprocess_lib, images, p)
        flips.compare(got, reference_preprocess(images, cfg), cfg, f"720p {cfg.family}")
    assert flips.flips <= 1e-3 * flips.values, vars(flips)


def test_preprocess_params_per_family():
    p = preprocess_params(YOLACT, (480, 640))
    assert p.canvas == p.resized == (32, 32) and p.src_channels == (2, 1, 0) and not p.antialias
    assert p.mean == (123.68, 116.78, 103.94)
    p = preprocess_params(replace(YOLACT, normalize=False), (480, 640))
    assert p.mean == (0.0, 0.0, 0.0) and p.std == (255.0, 255.0, 255.0)
    p = preprocess_params(replace(SOLO, pixel_norm="bgr_caffe"), (480, 640))
    assert p.src_channels == (0, 1, 2) and p.canvas == (64, 96) and p.resized == (64, 85)
    assert preprocess_params(CENTERMASK, (480, 640)).antialias
    with pytest.raises(ValueError, match="family"):
        preprocess_params(object(), (480, 640))
    with pytest.raises(ValueError, match="image_size"):
        preprocess_params(YOLACT, (0, 5))


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (31, 33), (64, 96)])
def test_preprocess_crafted_sizes(preprocess_lib, size):
    """Single pixels, odd sizes, no resize at all (the canvas size: SOLOv2 skips interpolate)."""
    rng = np.random.default_rng(6203)
    images = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    flips = GreyLevelFlips()
    for cfg in (YOLACT, SOLO, replace(SOLO, keep_ratio=False), CENTERMASK, replace(CENTERMASK, keep_ratio=False)):
        got = host_preprocess(preprocess_lib, images, preprocess_params(cfg, size))
        flips.compare(got, reference_preprocess(images, cfg), cfg, f"{cfg.family} {size}")
    if size == (64, 96):
        assert flips.flips == 0  # no resize: exact copies, exact normalisation


def test_preprocess_antialias_exact_halves(preprocess_lib):
    """Downscaling by exactly 2 gives antialias weights 1/8, 3/8, 3/8, 1/8 per axis, so many sums
    land exactly on k + 0.5: the kernel must round them half to even, as torch.round does."""
    rng = np.random.default_rng(6204)
    images = rng.integers(0, 256, (2, 128, 192, 3), dtype=np.uint8)
    cfg = replace(CENTERMASK, keep_ratio=False)
    p = preprocess_params(cfg, (128, 192))
    assert p.resized == (64, 96) and p.antialias
    got = host_preprocess(preprocess_lib, images, p)
    ref = reference_preprocess(images, cfg)
    assert np.abs(got.astype(np.float64) - ref).max() <= VALUE_TOL


def test_preprocess_half_extremes(preprocess_lib):
    """float16 conversion at its edges: overflow to inf, subnormals, ties to even."""
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    for mean, std in ((0.0, 1e-3), (128.0, 1e4), (100.0, 3e5), (0.0, 1.0), (127.0, 7.0)):
        p = PreprocessParams((16, 16), (16, 16), (0, 1, 2), (mean,) * 3, (std,) * 3, False)
        full = host_preprocess(preprocess_lib, images, p)
        half = host_preprocess(preprocess_lib, images, p, half=True)
        assert np.array_equal(half.view(np.uint16), torch.from_numpy(full).half().numpy().view(np.uint16)), (mean, std)


# -- mask encoding ------------------------------------------------------------------------------------------

def host_encode(lib, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    n, h, w = masks.shape
    m = np.ascontiguousarray(masks, dtype=np.uint8)
    windows = np.empty((n, 4), np.int32)
    lengths = np.empty(n, np.int64)
    offsets = np.empty(n, np.int64)
    total = np.zeros(1, np.int64)
    assert lib.host_mask_encode(ptr(m), n, h, w, ptr(windows), ptr(lengths), ptr(offsets), None, ptr(total)) == 0
    blob = np.zeros(int(total[0]), np.uint8)
    assert lib.host_mask_encode(ptr(m), n, h, w, ptr(windows), ptr(lengths), ptr(offsets), ptr(blob) if blob.size else None,
                                ptr(total)) == 0
    return windows, offsets, lengths, blob.tobytes()


def reference_encode(masks: np.ndarray) -> tuple[np.ndarray, bytes, list[int]]:
    """CompactMasks.from_dense's own steps: dense_windows, then packbits of each window, back to back."""
    windows = dense_windows(masks)
    chunks = [np.packbits(masks[i, y0:y1, x0:x1]).tobytes() for i, (x0, y0, x1, y1) in enumerate(windows.tolist())]
    return windows, b"".join(chunks), [len(c) for c in chunks]


def check_encode_case(lib, masks: np.ndarray, what: str) -> None:
    windows, offsets, lengths, blob = host_encode(lib, masks)
    ref_windows, ref_blob, ref_lengths = reference_encode(masks)
    assert np.array_equal(windows, ref_windows), what
    assert lengths.tolist() == ref_lengths, what
    assert offsets.tolist() == (np.cumsum([0, *ref_lengths])[:-1].tolist() if ref_lengths else []), what
    assert blob == ref_blob, what


def test_mask_encode_random(encode_lib):
    rng = np.random.default_rng(6301)
    for case in range(RANDOM_CASES):
        n = int(rng.integers(0, 6))
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        check_encode_case(encode_lib, random_masks(rng, n, h, w), f"case {case}")


def test_mask_encode_720p(encode_lib):
    rng = np.random.default_rng(6302)
    check_encode_case(encode_lib, random_masks(rng, 6, 720, 1280), "720p")


def test_mask_encode_wire_format_example(encode_lib):
    """docs/wire-format.md section 4: the 4 x 7 example is bytes 77 d4, window [2, 1, 7, 4]."""
    masks = np.zeros((2, 4, 7), bool)
    masks[0, 1, 3:6] = True
    masks[0, 2, 2:7] = True
    masks[0, 3, [3, 5]] = True
    windows, offsets, lengths, blob = host_encode(encode_lib, masks)
    assert windows.tolist() == [[2, 1, 7, 4], [0, 0, 0, 0]]
    assert lengths.tolist() == [2, 0] and offsets.tolist() == [0, 2]
    assert blob == bytes.fromhex("77d4")


@pytest.mark.parametrize("shape", [(0, 5, 5), (1, 1, 1), (3, 1, 9), (2, 9, 1), (1, 3, 8)])
def test_mask_encode_crafted(encode_lib, shape):
    """Empty input, single pixels, single rows / columns, all set, window bits a multiple of 8."""
    for fill in (False, True):
        check_encode_case(encode_lib, np.full(shape, fill), f"{shape} fill {fill}")


def test_mask_encode_output_is_the_compact_masks_instances_hold(encode_lib):
    """What ``to_numpy_instances`` makes of the kernel's output under --postprocess cuda
    (``compact_from_encoded``) is ``CompactMasks.from_dense`` of the same masks, byte for byte."""
    from rtseg.kernels.masks import EncodedMasks
    from rtseg.postprocess import compact_from_encoded
    from rtseg.structures import CompactMasks

    rng = np.random.default_rng(6303)
    for case in range(50):
        n = int(rng.integers(1, 6))
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        masks = random_masks(rng, n, h, w)
        windows, offsets, lengths, blob = host_encode(encode_lib, masks)
        encoded = EncodedMasks(torch.from_numpy(windows.astype(np.int64)), torch.from_numpy(offsets),
                               torch.from_numpy(lengths), torch.from_numpy(np.frombuffer(blob, np.uint8).copy()))
        compact, reference = compact_from_encoded(encoded, (h, w)), CompactMasks.from_dense(masks)
        assert np.array_equal(compact.windows, reference.windows) and np.array_equal(compact.offsets, reference.offsets)
        assert compact.blob.tobytes() == reference.blob.tobytes() and compact.is_contiguous, f"case {case}"


def test_wrappers_refuse_what_they_cannot_launch():
    """Without a GPU the wrappers still check their inputs: CPU tensors and non-tensors are refused
    with what was expected, before anything is compiled."""
    from rtseg.kernels.masks import assemble_masks_cuda, encode_masks_cuda, paste_masks_cuda, preprocess_cuda

    with pytest.raises(ValueError, match="proto must be on a CUDA device"):
        assemble_masks_cuda(torch.zeros(4, 4, 2), torch.zeros(1, 2), torch.zeros(1, 4), (8, 8))
    with pytest.raises(ValueError, match="masks must be on a CUDA device"):
        paste_masks_cuda(torch.zeros(1, 28, 28), torch.zeros(1, 4), (8, 8))
    with pytest.raises(ValueError, match="images must be on a CUDA device"):
        preprocess_cuda(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), YOLACT)
    with pytest.raises(TypeError, match="masks must be a torch.Tensor, got ndarray"):
        encode_masks_cuda(np.zeros((1, 4, 4), bool))


# -- GPU: the real kernels -------------------------------------------------------------------------------

def _cuda_or_skip() -> torch.device:
    from rtseg import kernels

    if not kernels.kernels_available("cuda"):
        pytest.skip("needs a CUDA GPU, pycuda or CuPy, and nvcc or NVRTC")
    return torch.device("cuda")


@pytest.mark.gpu
def test_gpu_assemble_masks_matches_torch():
    from rtseg.kernels.masks import assemble_masks_cuda

    dev = _cuda_or_skip()
    rng = np.random.default_rng(6401)
    stats = NearThreshold()
    for case in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        k, n = int(rng.integers(1, 33)), int(rng.integers(0, 8))
        H, W = (int(v) for v in rng.integers(1, 200, 2))
        if case < 3:
            h, w, k, H, W = 138, 138, 32, 720, 1280
        proto = torch.from_numpy(rng.normal(0, 1, (h, w, k)).astype(np.float32)).to(dev)
        coef = torch.from_numpy(rng.normal(0, 1, (n, k)).astype(np.float32)).to(dev)
        boxes = torch.from_numpy(random_rel_boxes(rng, n, h, w)).to(dev)
        proto_in, coef_in, boxes_in = proto.clone(), coef.clone(), boxes.clone()
        got = assemble_masks_cuda(proto, coef, boxes, (H, W))
        soft = yolact_post.assemble_masks(proto, coef, boxes)
        ref = yolact_post.masks_to_image(soft, (H, W))
        values = F.interpolate(soft[None], (H, W), mode="bilinear", align_corners=False)[0] if n else ref.float()
        assert got.dtype == torch.bool and got.device == dev
        stats.compare(got.cpu().numpy(), ref.cpu().numpy(), values.cpu().numpy(), 0.5, f"case {case}")
        assert torch.equal(proto, proto_in) and torch.equal(coef, coef_in) and torch.equal(boxes, boxes_in)
    assert stats.near <= 1e-4 * stats.pixels, vars(stats)


@pytest.mark.gpu
def test_gpu_paste_masks_matches_torch():
    from rtseg.kernels.masks import paste_masks_cuda

    dev = _cuda_or_skip()
    rng = np.random.default_rng(6402)
    stats = NearThreshold()
    for case in range(200):
        n = int(rng.integers(0, 8))
        H, W = (int(v) for v in rng.integers(1, 200, 2))
        if case < 3:
            H, W = 720, 1280
        masks = rng.uniform(0, 1, (n, 28, 28)).astype(np.float32)
        boxes = random_pixel_boxes(rng, n, H, W)
        got = paste_masks_cuda(torch.from_numpy(masks).to(dev), torch.from_numpy(boxes).to(dev), (H, W))
        ref = cm_post.paste_masks(torch.from_numpy(masks).to(dev), torch.from_numpy(boxes).to(dev), (H, W))
        stats.compare(got.cpu().numpy(), ref.cpu().numpy(), grid_sample_values(masks, boxes, (H, W)), 0.5,
                      f"case {case}")
    assert stats.near <= 1e-4 * stats.pixels, vars(stats)


@pytest.mark.gpu
def test_gpu_preprocess_matches_torch():
    from rtseg.kernels.masks import preprocess_cuda

    dev = _cuda_or_skip()
    rng = np.random.default_rng(6403)
    flips = GreyLevelFlips()
    configs = [YolactConfig(name="t", class_names=("a",)), replace(SOLO, canvas=(448, 768), resize_max=(768, 448)),
               replace(CENTERMASK, input_height=384, input_width=672, min_size_test=384, max_size_test=672)]
    for case in range(60):
        cfg = configs[case % 3] if case < 6 else random_config(rng)
        h, w = (720, 1280) if case < 6 else (int(v) for v in rng.integers(1, 300, 2))
        images = torch.from_numpy(rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)).to(dev)
        got = preprocess_cuda(images, cfg)
        ref = float_preprocess(cfg)(images, cfg)  # the kernel's float path
        flips.compare(got.cpu().numpy(), ref.cpu().double().numpy(), cfg, f"case {case} {cfg.family}")
        half = preprocess_cuda(images, cfg, half=True)
        assert half.dtype == torch.float16
        assert torch.equal(half, got.half())
    assert flips.flips <= 1e-3 * flips.values, vars(flips)


@pytest.mark.gpu
def test_gpu_encode_masks_matches_publish():
    from rtseg.kernels.masks import encode_masks_cuda

    dev = _cuda_or_skip()
    rng = np.random.default_rng(6404)
    for case in range(100):
        n = int(rng.integers(0, 8))
        h, w = (720, 1280) if case < 2 else (int(v) for v in rng.integers(1, 200, 2))
        masks = random_masks(rng, n, h, w)
        enc = encode_masks_cuda(torch.from_numpy(masks).to(dev))
        ref_windows, ref_blob, ref_lengths = reference_encode(masks)
        assert enc.windows.tolist() == ref_windows.tolist(), f"case {case}"
        assert enc.lengths.tolist() == ref_lengths, f"case {case}"
        assert enc.blob.device == dev and enc.blob.cpu().numpy().tobytes() == ref_blob, f"case {case}"


@pytest.mark.gpu
def test_gpu_wrappers_check_arguments():
    from rtseg.kernels.masks import assemble_masks_cuda, encode_masks_cuda, paste_masks_cuda

    dev = _cuda_or_skip()
    proto = torch.zeros((4, 4, 2), device=dev)
    with pytest.raises(TypeError, match="float32"):
        assemble_masks_cuda(proto, torch.zeros((1, 2), dtype=torch.float64, device=dev), torch.zeros((1, 4), device=dev),
                            (8, 8))
    with pytest.raises(ValueError, match="shape"):
        assemble_masks_cuda(proto, torch.zeros((1, 3), device=dev), torch.zeros((1, 4), device=dev), (8, 8))
    with pytest.raises(ValueError, match="CUDA"):
        paste_masks_cuda(torch.zeros((1, 28, 28)), torch.zeros((1, 4)), (8, 8))
    with pytest.raises(TypeError, match="bool"):
        encode_masks_cuda(torch.zeros((1, 4, 4), device=dev))
