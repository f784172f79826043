"""The NMS kernels (cuda/fast_nms.cu, cuda/matrix_nms.cu, cuda/greedy_nms.cu) against their torch
twins: on the CPU through the host build of the same kernel code (tests/cuda_host.py), and on a GPU
through rtseg.kernels.nms (marked ``gpu``).

Each host case runs the real preparation of rtseg.kernels.nms (``prepare_*``: the twins' stable
sorts), then the host-built kernels over every index a launch covers, then compares with the twin:
indices identical, scores within 1e-5.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from cuda_host import build_host_library
from rtseg.kernels import nms as knms
from rtseg.families.centermask.postprocess import class_aware_nms
from rtseg.families.solov2.postprocess import matrix_nms as matrix_nms_ref
from rtseg.families.yolact.postprocess import fast_nms as fast_nms_ref

CASES = 1000
P = ctypes.c_void_p


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return P(None) if t is None else P(t.data_ptr())


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


# -- host drivers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fast_lib():
    lib = build_host_library("fast_nms")
    lib.host_fast_nms.argtypes = [P, P, P, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_longlong, P, P, P]
    lib.host_fast_nms.restype = ctypes.c_int
    return lib


@pytest.fixture(scope="module")
def greedy_lib():
    lib = build_host_library("greedy_nms")
    lib.host_greedy_nms.argtypes = [P, P, ctypes.c_int, ctypes.c_double, ctypes.c_int, P]
    lib.host_greedy_nms.restype = ctypes.c_int
    return lib


@pytest.fixture(scope="module")
def matrix_lib():
    lib = build_host_library("matrix_nms")
    lib.host_matrix_nms.argtypes = [P, P, P, P, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_int, ctypes.c_float, P]
    lib.host_matrix_nms.restype = ctypes.c_int
    return lib


def host_fast_nms(lib, boxes, scores, iou_threshold=0.5, top_k=200, max_detections=100):
    prep = knms.prepare_fast_nms(boxes, scores, top_k)
    if prep is None or max_detections == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0)
    c, k = prep.sorted_index.shape
    size = min(c * k, max_detections)
    index = torch.full((size,), -1, dtype=torch.int64)
    classes = torch.full((size,), -1, dtype=torch.int64)
    out_scores = torch.full((size,), float("nan"))
    m = lib.host_fast_nms(_ptr(prep.class_boxes), _ptr(prep.sorted_scores), _ptr(prep.sorted_index), c, k,
                          float(np.float32(iou_threshold)), max_detections, _ptr(index), _ptr(classes),
                          _ptr(out_scores))
    return index[:m], classes[:m], out_scores[:m]


def host_greedy_nms(lib, boxes, scores, class_ids, iou_threshold, top_k):
    if boxes.shape[0] == 0 or top_k == 0:
        return torch.zeros(0, dtype=torch.int64)
    prep = knms.prepare_greedy_nms(boxes, scores, class_ids)
    keep = torch.full((min(top_k, boxes.shape[0]),), -1, dtype=torch.int64)
    count = lib.host_greedy_nms(_ptr(prep.boxes), _ptr(prep.class_ids), boxes.shape[0], iou_threshold,
                                keep.shape[0], _ptr(keep))
    return prep.order[keep[:count]]


def host_matrix_nms(lib, masks, labels, scores, kernel="gaussian", sigma=2.0, areas=None):
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0)
    flat = knms.prepare_matrix_nms(masks)
    out = torch.full((n,), float("nan"))
    lib.host_matrix_nms(_ptr(flat), _ptr(labels), _ptr(scores), _ptr(areas), n, flat.shape[1],
                        knms.matrix_nms_kernel_id(kernel), float(np.float32(-sigma)), _ptr(out))
    return out


# -- random case generators (shared by the host and GPU tests) ----------------------------------------

def random_boxes(g: torch.Generator, n: int, *, quantum: float | None, non_negative: bool = False) -> torch.Tensor:
    """xyxy boxes, some degenerate (zero width or height) or outside a 64 x 64 frame."""
    lo = 0.0 if non_negative else -16.0
    xy = lo + torch.rand(n, 2, generator=g) * (80.0 - lo)
    wh = torch.rand(n, 2, generator=g) * 40.0
    wh[torch.rand(n, generator=g) < 0.05] = 0.0  # degenerate
    boxes = torch.cat([xy, xy + wh], dim=1)
    if n > 1 and torch.rand(1, generator=g).item() < 0.3:  # exact duplicates
        boxes[1::3] = boxes[0]
    if quantum is not None:
        boxes = torch.round(boxes / quantum) * quantum
    return boxes.float()


def random_scores(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Scores in (0, 1]; half of the cases with few distinct values, so ties are common."""
    if torch.rand(1, generator=g).item() < 0.5:
        return (torch.randint(1, 6, shape, generator=g) / 5.0).float()
    return torch.rand(shape, generator=g)


THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.25)


def random_fast_case(g: torch.Generator):
    n = int(torch.randint(0, 30, (1,), generator=g))
    c = int(torch.randint(0, 5, (1,), generator=g))
    quantum = (None, 1.0, 0.5)[int(torch.randint(0, 3, (1,), generator=g))]
    boxes = random_boxes(g, n, quantum=quantum)
    scores = random_scores(g, (c, n))
    thr = THRESHOLDS[int(torch.randint(0, len(THRESHOLDS), (1,), generator=g))]
    top_k = int(torch.randint(1, 40, (1,), generator=g))
    max_det = int(torch.randint(0, 25, (1,), generator=g))
    return boxes, scores, thr, top_k, max_det


def random_greedy_case(g: torch.Generator):
    # Non-negative coordinates on a 1/8 grid: torchvision's batched_nms offsets each class by
    # class * (max coordinate + 1), exact for such boxes; for others it rounds, and with negative
    # coordinates it can suppress across classes (see rtseg.kernels.nms.greedy_nms).
    n = int(torch.randint(0, 150, (1,), generator=g))  # up to three 64-wide blocks of the bitmask
    boxes = random_boxes(g, n, quantum=0.125, non_negative=True)
    scores = random_scores(g, (n,))
    class_ids = torch.randint(0, 4, (n,), generator=g)
    thr = THRESHOLDS[int(torch.randint(0, len(THRESHOLDS), (1,), generator=g))]
    top_k = int(torch.randint(0, 200, (1,), generator=g))
    return boxes, scores, class_ids, thr, top_k


def random_matrix_case(g: torch.Generator):
    n = int(torch.randint(0, 14, (1,), generator=g))
    h, w = (int(v) for v in torch.randint(1, 40, (2,), generator=g))  # up to 48 words: beyond one per lane
    density = torch.rand(n, 1, 1, generator=g)
    masks = torch.rand(n, h, w, generator=g) < density
    if n > 2 and torch.rand(1, generator=g).item() < 0.3:
        masks[2] = masks[0]  # identical twin: IoU 1
    if n > 3 and torch.rand(1, generator=g).item() < 0.3:
        masks[3] = False  # empty mask
    labels = torch.randint(0, 3, (n,), generator=g)
    scores = random_scores(g, (n,)).sort(descending=True).values
    kernel = ("gaussian", "linear")[int(torch.randint(0, 2, (1,), generator=g))]
    sigma = (2.0, 0.5, 3.7)[int(torch.randint(0, 3, (1,), generator=g))]
    areas = masks.flatten(1).sum(1).float() if torch.rand(1, generator=g).item() < 0.3 else None
    return masks, labels, scores, kernel, sigma, areas


# -- host build vs twin: random cases ------------------------------------------------------------------

def test_fast_nms_random_cases_match_twin(fast_lib):
    g = torch.Generator().manual_seed(6001)
    kept = 0
    for case in range(CASES):
        boxes, scores, thr, top_k, max_det = random_fast_case(g)
        ref = fast_nms_ref(boxes, scores, thr, top_k, max_det)
        index, classes, out_scores = host_fast_nms(fast_lib, boxes, scores, thr, top_k, max_det)
        assert torch.equal(index, ref.index), f"case {case}: {index.tolist()} != {ref.index.tolist()}"
        assert torch.equal(classes, ref.class_ids), f"case {case}"
        assert torch.equal(out_scores, ref.scores), f"case {case}"
        kept += index.numel()
    assert kept > CASES  # the cases keep detections, not just empty sets


def test_greedy_nms_random_cases_match_twin(greedy_lib):
    g = torch.Generator().manual_seed(6002)
    kept = suppressing = 0
    for case in range(CASES):
        boxes, scores, class_ids, thr, top_k = random_greedy_case(g)
        ref = class_aware_nms(boxes, scores, class_ids, thr, top_k)
        got = host_greedy_nms(greedy_lib, boxes, scores, class_ids, thr, top_k)
        assert torch.equal(got, ref), f"case {case}: {got.tolist()} != {ref.tolist()}"
        kept += got.numel()
        suppressing += got.numel() < min(top_k, boxes.shape[0])
    assert kept > CASES and suppressing > CASES // 4  # many cases suppress something


def test_matrix_nms_random_cases_match_twin(matrix_lib):
    g = torch.Generator().manual_seed(6003)
    decayed = 0
    for case in range(CASES):
        masks, labels, scores, kernel, sigma, areas = random_matrix_case(g)
        ref = matrix_nms_ref(masks, labels, scores, kernel=kernel, sigma=sigma, areas=areas)
        got = host_matrix_nms(matrix_lib, masks, labels, scores, kernel, sigma, areas)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5, msg=lambda m: f"case {case} ({kernel}): {m}")
        decayed += int((ref < scores - 1e-3).sum())
    assert decayed > CASES  # scores really decay in these cases


def test_greedy_nms_beyond_torchvision_vanilla_threshold(greedy_lib):
    # > 1000 boxes: torchvision's CPU batched_nms switches to one nms call per class
    g = torch.Generator().manual_seed(6004)
    for thr in (0.5, 0.7):
        boxes = random_boxes(g, 1500, quantum=0.125, non_negative=True)
        scores = torch.randperm(1500, generator=g).float() / 1500  # distinct: the final sort is unstable
        class_ids = torch.randint(0, 5, (1500,), generator=g)
        ref = class_aware_nms(boxes, scores, class_ids, thr, 1000)
        assert torch.equal(host_greedy_nms(greedy_lib, boxes, scores, class_ids, thr, 1000), ref)


# -- crafted cases --------------------------------------------------------------------------------------

def _fast_both(lib, boxes, scores, thr=0.5, top_k=200, max_det=100):
    ref = fast_nms_ref(boxes, scores, thr, top_k, max_det)
    index, classes, out_scores = host_fast_nms(lib, boxes, scores, thr, top_k, max_det)
    assert torch.equal(index, ref.index) and torch.equal(classes, ref.class_ids) and torch.equal(out_scores, ref.scores)
    return index, classes


def _greedy_both(lib, boxes, scores, class_ids, thr=0.5, top_k=100):
    ref = class_aware_nms(boxes, scores, class_ids, thr, top_k)
    got = host_greedy_nms(lib, boxes, scores, class_ids, thr, top_k)
    assert torch.equal(got, ref)
    return got


HALF_OVERLAP = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # IoU exactly 1 / 2
THREE_FIFTHS = torch.tensor([[0.0, 0.0, 5.0, 1.0], [0.0, 0.0, 3.0, 1.0]])  # IoU = float32(0.6) > 0.6


def test_iou_exactly_at_threshold_is_kept(fast_lib, greedy_lib):
    s = torch.tensor([0.9, 0.8])
    assert _fast_both(fast_lib, HALF_OVERLAP, s[None], 0.5)[0].tolist() == [0, 1]
    assert _fast_both(fast_lib, HALF_OVERLAP, s[None], 0.4999)[0].tolist() == [0]
    assert _greedy_both(greedy_lib, HALF_OVERLAP, s, torch.zeros(2, dtype=torch.int64), 0.5).tolist() == [0, 1]
    assert _greedy_both(greedy_lib, HALF_OVERLAP, s, torch.zeros(2, dtype=torch.int64), 0.4999).tolist() == [0]


def test_threshold_precision_follows_each_twin(fast_lib, greedy_lib):
    # The IoU 3/5 rounds to float32(0.6) = 0.6000000238. YOLACT's twin compares float32 tensors
    # (0.6f <= 0.6f: kept); torchvision's CPU kernel compares in double (0.6000000238 > 0.6: suppressed).
    s = torch.tensor([0.9, 0.8])
    assert _fast_both(fast_lib, THREE_FIFTHS, s[None], 0.6)[0].tolist() == [0, 1]
    assert _greedy_both(greedy_lib, THREE_FIFTHS, s, torch.zeros(2, dtype=torch.int64), 0.6).tolist() == [0]


def test_tied_scores_keep_candidate_order(fast_lib, greedy_lib):
    boxes = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 10], [200, 0, 210, 10],
                          [100, 100, 110, 110]])
    scores = torch.full((5,), 0.5)
    # the earlier of two identical boxes wins; equal scores keep input order
    assert _fast_both(fast_lib, boxes, scores[None])[0].tolist() == [0, 1, 3]
    assert _greedy_both(greedy_lib, boxes, scores, torch.zeros(5, dtype=torch.int64)).tolist() == [0, 1, 3]
    # ties across classes: class-major, then rank
    index, classes = _fast_both(fast_lib, boxes, torch.full((2, 5), 0.5))
    assert index.tolist() == [0, 1, 3, 0, 1, 3] and classes.tolist() == [0, 0, 0, 1, 1, 1]
    # box 2 repeats box 0 in another class (kept), box 4 repeats box 1 in its class (suppressed)
    assert _greedy_both(greedy_lib, boxes, scores, torch.tensor([0, 0, 1, 1, 0])).tolist() == [0, 1, 2, 3]


def test_empty_input(fast_lib, greedy_lib, matrix_lib):
    for c, n in ((0, 0), (3, 0), (0, 4)):
        index, classes = _fast_both(fast_lib, torch.zeros(n, 4), torch.zeros(c, n))
        assert index.numel() == 0 and classes.numel() == 0
    assert _greedy_both(greedy_lib, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)).numel() == 0
    empty = host_matrix_nms(matrix_lib, torch.zeros(0, 5, 5, dtype=torch.bool), torch.zeros(0, dtype=torch.int64),
                            torch.zeros(0))
    assert empty.shape == matrix_nms_ref(torch.zeros(0, 5, 5, dtype=torch.bool), torch.zeros(0, dtype=torch.int64),
                                         torch.zeros(0)).shape == (0,)


def test_one_box(fast_lib, greedy_lib, matrix_lib):
    box = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert _fast_both(fast_lib, box, torch.tensor([[0.3], [0.7]]))[0].tolist() == [0, 0]
    assert _greedy_both(greedy_lib, box, torch.tensor([0.3]), torch.tensor([2])).tolist() == [0]
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    for kernel in ("gaussian", "linear"):
        got = host_matrix_nms(matrix_lib, mask, torch.tensor([0]), torch.tensor([0.7]), kernel)
        assert got.tolist() == pytest.approx([0.7]) and torch.equal(got, matrix_nms_ref(mask, torch.tensor([0]),
                                                                                        torch.tensor([0.7]), kernel=kernel))


def test_boxes_outside_the_frame(fast_lib, greedy_lib):
    # partly or wholly outside a 64 x 48 image, including negative coordinates
    boxes = torch.tensor([[-20.0, -10, 10, 20], [-18, -10, 10, 20], [60, 40, 90, 70], [60, 41, 90, 70],
                          [-50, -50, -40, -40], [100, 100, 120, 130]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert _fast_both(fast_lib, boxes, scores[None])[0].tolist() == [0, 2, 4, 5]
    # one class: torchvision's class offset plays no part
    assert _greedy_both(greedy_lib, boxes, scores, torch.zeros(6, dtype=torch.int64)).tolist() == [0, 2, 4, 5]
    # two classes on positive coordinates: beyond the frame on the right and bottom only
    shifted = boxes + 60.0
    assert _greedy_both(greedy_lib, shifted, scores, torch.tensor([0, 1, 0, 0, 1, 1])).tolist() == [0, 1, 2, 4, 5]


def test_degenerate_boxes(fast_lib, greedy_lib):
    boxes = torch.tensor([[5.0, 5, 5, 5],    # a point
                          [5.0, 5, 5, 5],    # the same point: IoU 0 / 0 = NaN
                          [0.0, 0, 10, 0],   # a line
                          [3.0, 3, 1, 1],    # inverted (negative area)
                          [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    index, _ = _fast_both(fast_lib, boxes, scores[None])
    assert 1 not in index.tolist()  # a NaN column max fails `<=` in the twin: suppressed
    _greedy_both(greedy_lib, boxes, scores, torch.zeros(5, dtype=torch.int64))
    for thr in (0.0, 1.0):
        _fast_both(fast_lib, boxes, scores[None], thr)
        _greedy_both(greedy_lib, boxes, scores, torch.zeros(5, dtype=torch.int64), thr)


def test_fast_nms_top_k_and_max_detections(fast_lib):
    g = torch.Generator().manual_seed(6005)
    boxes = random_boxes(g, 50, quantum=None)
    scores = torch.rand(3, 50, generator=g)
    for top_k, max_det in ((1, 100), (5, 3), (200, 0), (50, 150)):
        index, _ = _fast_both(fast_lib, boxes, scores, 0.5, top_k, max_det)
        assert index.numel() <= min(max_det, 3 * top_k)


def test_matrix_nms_crafted(matrix_lib):
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[0, :2, :] = True   # 8 pixels
    masks[1, :2, :2] = True  # 4 pixels inside mask 0: IoU 1/2
    masks[2] = masks[0]      # identical to mask 0, other class
    masks[3, :2, :] = True   # identical to mask 0, same class: IoU 1
    labels = torch.tensor([0, 0, 1, 0])
    scores = torch.tensor([0.9, 0.8, 0.8, 0.5])
    for kernel in ("gaussian", "linear"):
        ref = matrix_nms_ref(masks, labels, scores, kernel=kernel)
        got = host_matrix_nms(matrix_lib, masks, labels, scores, kernel)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        assert got[2].item() == pytest.approx(0.8)  # another class: no decay
    linear = host_matrix_nms(matrix_lib, masks, labels, scores, "linear")
    assert linear[1].item() == pytest.approx(0.8 * 0.5) and linear[3].item() == pytest.approx(0.0, abs=1e-6)
    gauss = host_matrix_nms(matrix_lib, masks, labels, scores, "gaussian", 2.0)
    assert gauss[1].item() == pytest.approx(0.8 * np.exp(-2.0 * 0.25), rel=1e-6)
    # two empty masks: IoU 0, no decay (the twin's deviation from upstream's NaN)
    empty = torch.zeros(2, 3, 3, dtype=torch.bool)
    got = host_matrix_nms(matrix_lib, empty, torch.zeros(2, dtype=torch.int64), torch.tensor([0.6, 0.4]))
    assert got.tolist() == pytest.approx([0.6, 0.4])


def test_inputs_are_not_modified(fast_lib, greedy_lib, matrix_lib):
    g = torch.Generator().manual_seed(6006)
    boxes, scores, class_ids, thr, _ = random_greedy_case(g)
    while boxes.shape[0] < 5:
        boxes, scores, class_ids, thr, _ = random_greedy_case(g)
    copies = [t.clone() for t in (boxes, scores, class_ids)]
    host_greedy_nms(greedy_lib, boxes, scores, class_ids, thr, 10)
    host_fast_nms(fast_lib, boxes, scores[None], thr)
    assert all(torch.equal(a, b) for a, b in zip((boxes, scores, class_ids), copies))
    masks, labels, mscores, kernel, sigma, areas = random_matrix_case(g)
    mcopies = [masks.clone(), labels.clone(), mscores.clone()]
    host_matrix_nms(matrix_lib, masks, labels, mscores, kernel, sigma, areas)
    assert all(torch.equal(a, b) for a, b in zip((masks, labels, mscores), mcopies))


# -- the wrappers' argument checks (no GPU needed: they refuse before launching) --------------------------

def test_wrappers_refuse_cpu_tensors_naming_the_twin():
    with pytest.raises(ValueError, match="CUDA device.*rtseg.postprocess"):
        knms.fast_nms(torch.zeros(3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="CUDA device"):
        knms.greedy_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0.5, 10)
    with pytest.raises(ValueError, match="CUDA device"):
        knms.matrix_nms(torch.zeros(2, 3, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.int64), torch.zeros(2))
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        knms.fast_nms([[0, 0, 1, 1]], torch.zeros(1, 1))
    with pytest.raises(ValueError, match="'gaussian' or 'linear', got 'box'"):
        knms.matrix_nms_kernel_id("box")


# -- GPU: the real kernels through rtseg.kernels.nms ---------------------------------------------------------

def _gpu():
    from rtseg import kernels

    if not kernels.kernels_available("cuda"):
        pytest.skip("needs a CUDA GPU, pycuda or CuPy, and nvcc or NVRTC")
    return torch.device("cuda")


GPU_CASES = 300


@pytest.mark.gpu
def test_gpu_fast_nms_matches_twin():
    dev = _gpu()
    g = torch.Generator().manual_seed(6101)
    for case in range(GPU_CASES):
        boxes, scores, thr, top_k, max_det = random_fast_case(g)
        ref = fast_nms_ref(boxes, scores, thr, top_k, max_det)
        got = knms.fast_nms(boxes.to(dev), scores.to(dev), thr, top_k, max_det)
        assert torch.equal(got.index.cpu(), ref.index), f"case {case}"
        assert torch.equal(got.class_ids.cpu(), ref.class_ids), f"case {case}"
        assert torch.equal(got.scores.cpu(), ref.scores), f"case {case}"


@pytest.mark.gpu
def test_gpu_greedy_nms_matches_twin():
    dev = _gpu()
    g = torch.Generator().manual_seed(6102)
    for case in range(GPU_CASES):
        boxes, scores, class_ids, thr, top_k = random_greedy_case(g)
        ref = class_aware_nms(boxes, scores, class_ids, thr, top_k)  # the CPU twin: the semantics
        got = knms.greedy_nms(boxes.to(dev), scores.to(dev), class_ids.to(dev), thr, top_k)
        assert torch.equal(got.cpu(), ref), f"case {case}"
    # many candidates: several 64-wide blocks and the early stop at top_k
    boxes = random_boxes(g, 5000, quantum=0.125, non_negative=True)
    scores = torch.randperm(5000, generator=g).float() / 5000
    class_ids = torch.randint(0, 8, (5000,), generator=g)
    for top_k in (10, 100, 5000):
        ref = class_aware_nms(boxes, scores, class_ids, 0.5, top_k)
        got = knms.greedy_nms(boxes.to(dev), scores.to(dev), class_ids.to(dev), 0.5, top_k)
        assert torch.equal(got.cpu(), ref)


@pytest.mark.gpu
def test_gpu_matrix_nms_matches_twin():
    dev = _gpu()
    g = torch.Generator().manual_seed(6103)
    for case in range(GPU_CASES):
        masks, labels, scores, kernel, sigma, areas = random_matrix_case(g)
        ref = matrix_nms_ref(masks, labels, scores, kernel=kernel, sigma=sigma, areas=areas)
        got = knms.matrix_nms(masks.to(dev), labels.to(dev), scores.to(dev), kernel=kernel, sigma=sigma,
                              areas=None if areas is None else areas.to(dev))
        torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=1e-5, msg=lambda m: f"case {case}: {m}")
    # SOLOv2-sized masks (many words per mask, several warps' worth)
    masks = torch.rand(300, 1, 1, generator=g) > torch.rand(300, 96, 160, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    scores = torch.rand(300, generator=g).sort(descending=True).values
    ref = matrix_nms_ref(masks, labels, scores)
    got = knms.matrix_nms(masks.to(dev), labels.to(dev), scores.to(dev))
    torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_gpu_kernels_run_on_torchs_current_stream():
    dev = _gpu()
    g = torch.Generator().manual_seed(6104)
    boxes = random_boxes(g, 2000, quantum=0.125, non_negative=True)
    scores = torch.rand(2000, generator=g)
    class_ids = torch.randint(0, 4, (2000,), generator=g)
    ref = class_aware_nms(boxes, scores, class_ids, 0.5, 100)
    side = torch.cuda.Stream(dev)
    with torch.cuda.stream(side):
        # produced and consumed on the side stream: a launch on another stream would race these
        b, s, c = boxes.to(dev, non_blocking=True), scores.to(dev, non_blocking=True), class_ids.to(dev, non_blocking=True)
        got = knms.greedy_nms(b * 1.0, s + 0.0, c, 0.5, 100)
        fast = knms.fast_nms(b, s[None].repeat(3, 1), 0.5, 200, 100)
    side.synchronize()
    assert torch.equal(got.cpu(), ref)
    fref = fast_nms_ref(boxes, scores[None].repeat(3, 1), 0.5, 200, 100)
    assert torch.equal(fast.index.cpu(), fref.index)


@pytest.mark.gpu
def test_gpu_wrappers_check_arguments():
    dev = _gpu()
    with pytest.raises(TypeError, match="dtype torch.float32, got torch.float64"):
        knms.fast_nms(torch.zeros(3, 4, device=dev, dtype=torch.float64), torch.zeros(2, 3, device=dev))
    with pytest.raises(ValueError, match=r"shape \(_, 3\), got \(2, 4\)"):
        knms.fast_nms(torch.zeros(3, 4, device=dev), torch.zeros(2, 4, device=dev))
    with pytest.raises(ValueError, match="must be on cuda"):
        knms.greedy_nms(torch.zeros(3, 4, device=dev), torch.zeros(3), torch.zeros(3, dtype=torch.int64, device=dev),
                        0.5, 10)
