"""rtseg gives the official code's detections on real photographs, from the image file.

References: ``tests/fixtures/official/photos/<variant>/<photo>.npz``, made by
``tools/make_official_fixtures.py`` running the official code (mmdetection 3.3.0 for SOLOv2,
centermask2 on detectron2 for CenterMask) on the same PNG files, each preprocessing the file
itself (its own test pipeline: keep-ratio resize of the uint8 image, normalisation, padding to
32), with the deterministic weights of ``tests/official_reference*.py`` in the official
checkpoint layout. Here those weights go through rtseg's ``--weights`` loading and the photo
file through ``rtseg.Segmenter`` (``cv2.imread``, as ``rtseg run --source`` reads an image).

Tolerances (issue 16): same count and labels, boxes within 1 px, scores within 1e-4, every
mask IoU >= 0.98. Four photos per variant: portrait, two landscape, square (YOLACT's
deterministic weights find nothing on ``chelsea_landscape``: an empty result is compared there).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from official_reference_photos import PHOTOS, centermask_state_dict, load_reference, mmdet_state_dict, write_photo

#: variant -> how its weights file is laid out (as the official code saves it)
VARIANTS = {
    "yolact_base": "yolact",
    "solov2_light_448_r18": "mmdetection",
    "centermask2_lite_v19_slim_dw": "centermask2",
}


def weights_file(variant: str, folder) -> str:
    path = folder / f"{variant}.pth"
    if VARIANTS[variant] == "yolact":
        from official_reference import deterministic_state_dict, load_official_keys

        torch.save(deterministic_state_dict(load_official_keys(variant)["keys"]), path)  # a bare state_dict
    elif VARIANTS[variant] == "mmdetection":
        torch.save({"meta": {}, "state_dict": mmdet_state_dict(variant)}, path)  # mmengine's checkpoint layout
    else:
        torch.save({"model": centermask_state_dict(variant), "iteration": 0}, path)  # detectron2's
    return str(path)


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """``x1, y1, x2 + 1, y2 + 1`` of each mask's pixels (zeros for an empty mask)."""
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), a[0].size if len(a) else 0), b.reshape(len(b), b[0].size if len(b) else 0)
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def assert_matches(inst, ref) -> None:
    assert len(inst) == len(ref["scores"])
    np.testing.assert_array_equal(inst.class_ids, ref["labels"])
    np.testing.assert_allclose(inst.scores, ref["scores"], atol=1e-4, rtol=0)
    if "mask_scores" in ref:
        np.testing.assert_allclose(inst.mask_scores, ref["mask_scores"], atol=1e-4, rtol=0)
    boxes = ref["boxes"]
    if not boxes.any():  # mmdetection's SOLOv2 gives no boxes (zeros); rtseg's are the masks' tight boxes
        boxes = tight_boxes(ref["masks"])
    np.testing.assert_allclose(inst.boxes, boxes, atol=1.0, rtol=0)
    if len(inst):
        iou = mask_iou(inst.masks_dense(), ref["masks"])
        assert iou.min() >= 0.98, (iou.min(), int(iou.argmin()))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official_photos")
    return {"folder": folder, **{name: write_photo(name, folder) for name in PHOTOS}}


@pytest.fixture(scope="module")
def segmenters(files):
    from rtseg.segmenter import Segmenter

    return {v: Segmenter(v, weights=weights_file(v, files["folder"]), score_threshold=0.0) for v in VARIANTS}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_references_have_detections_on_three_aspect_ratios(variant):
    shapes = {}
    for name in PHOTOS:
        ref = load_reference(variant, name)
        if len(ref["scores"]):
            h, w = ref["image_shape"][:2]
            shapes["portrait" if h > w else "landscape" if w > h else "square"] = len(ref["scores"])
    assert set(shapes) == {"portrait", "landscape", "square"}, shapes


@pytest.mark.slow  # ResNet-50 with deformable convolutions on the CPU
def test_mmdetection_dcnv2_light_variant_loads_strictly_and_matches_official(files):
    """``solov2_light_448_dcn_r50`` (mmdetection's ``solov2-light_r50-dcn_fpn_ms-3x_coco``: DCNv2,
    27-channel offsets) takes mmdetection's file strictly; the nearest older variant (WXinlong's
    light-512, DCN v1) refuses it."""
    from rtseg.errors import CheckpointError
    from rtseg.segmenter import Segmenter

    path = files["folder"] / "dcnv2.pth"
    torch.save({"meta": {}, "state_dict": mmdet_state_dict("solov2_light_448_dcn_r50")}, path)
    with pytest.raises(CheckpointError):
        Segmenter("solov2_light_512_dcn_r50", weights=str(path))
    seg = Segmenter("solov2_light_448_dcn_r50", weights=str(path), score_threshold=0.0)
    image = cv2.imread(str(files["astronaut_portrait"]), cv2.IMREAD_COLOR)
    assert_matches(seg(image), load_reference("solov2_light_448_dcn_r50", "astronaut_portrait"))


@pytest.mark.slow  # ResNet-50 at 800 px on the CPU
@pytest.mark.parametrize("name", ["astronaut_portrait", "astronaut_landscape"])
def test_adelaidet_solov2_matches_official_adelaidet(name, files):
    """AdelaiDet's SOLOv2 (detectron2: ``ResizeShortestEdge(800, 1333)`` with PIL on uint8, caffe
    ResNet, BGR) from its own checkpoint layout."""
    from rtseg.segmenter import Segmenter

    path = files["folder"] / "adet.pth"
    torch.save({"model": mmdet_state_dict("solov2_adet_r50_fpn", layout="adelaidet"), "iteration": 0}, path)
    seg = Segmenter("solov2_adet_r50_fpn", weights=str(path), score_threshold=0.0)
    image = cv2.imread(str(files[name]), cv2.IMREAD_COLOR)
    assert_matches(seg(image), load_reference("solov2_adet_r50_fpn", name))


# the portrait (the case a fixed landscape canvas got most wrong) in the default run, the rest slow
PHOTO_PARAMS = [name if name == "astronaut_portrait" else pytest.param(name, marks=pytest.mark.slow) for name in PHOTOS]


@pytest.mark.parametrize("name", PHOTO_PARAMS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_segmenter_matches_official_on_photo(variant, name, files, segmenters):
    ref = load_reference(variant, name)
    image = cv2.imread(str(files[name]), cv2.IMREAD_COLOR)
    assert tuple(image.shape[:2]) == tuple(ref["image_shape"][:2])
    assert_matches(segmenters[variant](image), ref)


@pytest.fixture(scope="module")
def onnx_segmenters(files):
    from rtseg.segmenter import Segmenter

    cache = files["folder"] / "engines"
    return {v: Segmenter(v, weights=weights_file(v, files["folder"]), score_threshold=0.0, backend="onnxruntime",
                         cache_dir=str(cache)) for v in VARIANTS}


@pytest.mark.slow  # three exports and twelve photos: about 100 s on the 2-core CPU
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onnxruntime_with_dynamic_shapes_matches_official_on_every_photo(variant, files, onnx_segmenters):
    """One exported graph (symbolic height and width) serves every aspect ratio; YOLACT's input
    is always its square, so its graph stays fixed."""
    pytest.importorskip("onnxruntime")
    seg = onnx_segmenters[variant]
    dynamic = variant != "yolact_base"
    assert seg.backend.manifest["dynamic_hw"] is dynamic
    assert (seg.backend.manifest["input"]["shape"][2:] == ["height", "width"]) is dynamic
    shapes = set()
    for name in PHOTOS:
        image = cv2.imread(str(files[name]), cv2.IMREAD_COLOR)
        shapes.add(seg.geometry(image.shape[:2]).padded)
        assert_matches(seg(image), load_reference(variant, name))
    assert len(shapes) == (len(PHOTOS) if dynamic else 1)  # four input shapes through the one graph


@pytest.mark.slow  # a subprocess that imports torch and builds the model: about 30 s
def test_run_publishes_the_official_detections_of_a_photo(files):
    """``rtseg run --source PHOTO --weights ... --publish`` and a subscriber get the official
    detections, box and mask scores included (wire format 1.2)."""
    import threading

    from cli_helpers import free_port, run_cli
    from rtseg.subscriber import subscribe

    variant, name = "centermask2_lite_v19_slim_dw", "astronaut_portrait"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    received: list = []
    ready = threading.Event()

    def collect() -> None:
        gen = subscribe(endpoint, timeout=30.0)
        ready.set()
        received.extend(gen)

    sub = threading.Thread(target=collect, daemon=True)
    sub.start()
    assert ready.wait(10)
    proc = run_cli("run", "--source", str(files[name]), "--model", variant, "--weights",
                   weights_file(variant, files["folder"]), "--score-threshold", "0", "--loop", "--max-frames", "3",
                   "--publish", endpoint, timeout=600)
    sub.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert received, "the subscriber got no message"
    ref = load_reference(variant, name)
    for message in received:
        assert message.header["schema"] == "rtseg.instances/1.3"
        assert_matches(message.instances, ref)
