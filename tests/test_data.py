"""Synthetic COCO generator, YOLACT augmentation and the COCO-format dataset."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from rtseg.data import augment as aug
from rtseg.data.coco import CocoInstanceDataset, collate, load_coco_folder
from rtseg.data.synthetic_coco import generate_dataset, image_rng
from rtseg.errors import ConfigError
from rtseg.families.yolact.network import YolactConfig
from rtseg.families.yolact.preprocess import preprocess
from rtseg.synthetic import CLASS_NAMES, render_scene

SIZE = (96, 128)  # small images keep the tests fast
N_OBJECTS = (2, 6)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(str(out), images=6, seed=7, size=SIZE, n_objects=N_OBJECTS)
    return str(out)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------
def test_generator_is_deterministic(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate_dataset(a, images=3, seed=11, size=SIZE, n_objects=N_OBJECTS)
    generate_dataset(b, images=3, seed=11, size=SIZE, n_objects=N_OBJECTS)
    generate_dataset(c, images=3, seed=12, size=SIZE, n_objects=N_OBJECTS)
    read = lambda d, p: open(os.path.join(d, p), "rb").read()  # noqa: E731
    assert read(a, "annotations.json") == read(b, "annotations.json")
    assert sorted(os.listdir(os.path.join(a, "images"))) == ["000000.png", "000001.png", "000002.png"]
    for name in os.listdir(os.path.join(a, "images")):
        assert read(a, f"images/{name}") == read(b, f"images/{name}")
    assert read(a, "images/000000.png") != read(c, "images/000000.png")
    source = read(a, "SOURCE.txt").decode()
    assert "seed: 11" in source and "images: 3" in source and "version" in source


def test_generator_writes_valid_coco_matching_the_scenes(synth_dir):
    coco = COCO(os.path.join(synth_dir, "annotations.json"))
    cats = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"]) for c in cats] == [(i + 1, n) for i, n in enumerate(CLASS_NAMES)]
    assert sorted(coco.getImgIds()) == list(range(6))
    total = 0
    for image_id in range(6):
        scene = render_scene(image_rng(7, image_id), SIZE, N_OBJECTS)
        info = coco.loadImgs(image_id)[0]
        assert (info["height"], info["width"]) == SIZE and info["file_name"] == f"{image_id:06d}.png"
        pixels = cv2.imread(os.path.join(synth_dir, "images", info["file_name"]))
        np.testing.assert_array_equal(pixels, scene.image)  # PNG: lossless
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: a["id"])
        assert len(anns) == len(scene.masks)
        for ann, mask, box, cls in zip(anns, scene.masks, scene.boxes, scene.class_ids):
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["category_id"] == cls + 1 and ann["area"] == mask.sum()
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], box)
            total += 1
    assert total > 6


def test_generator_refuses_a_non_empty_folder_unless_told(tmp_path):
    out = tmp_path / "set"
    generate_dataset(str(out), images=4, seed=1, size=SIZE)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        generate_dataset(str(out), images=2, seed=1, size=SIZE)
    assert "not empty" in _one_line(err)
    generate_dataset(str(out), images=2, seed=2, size=SIZE, overwrite=True)
    assert sorted(os.listdir(out / "images")) == ["000000.png", "000001.png"]  # stale images gone
    assert (out / "notes.txt").read_text() == "mine"  # files it did not write are kept
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2
    with pytest.raises(ConfigError):
        generate_dataset(str(tmp_path / "x"), images=0, seed=1)


# --------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------
def _scene_arrays(seed: int):
    scene = render_scene(np.random.default_rng(seed), SIZE, (3, 6))
    return scene.image, scene.masks.astype(np.uint8), scene.boxes, np.zeros(len(scene.boxes), bool)


def _check_boxes_fit_masks(masks: np.ndarray, boxes: np.ndarray, size: int) -> list[float]:
    """Every mask pixel lies inside its box (1.5 px slack for the resize); returns the IoU
    of each box with its mask's extent, for masks of >= 100 pixels (smaller ones are
    dominated by pixel quantisation)."""
    ious = []
    tol = 1.5 / size
    for mask, box in zip(masks, boxes):
        assert np.all(box >= 0) and np.all(box <= 1) and box[2] > box[0] and box[3] > box[1]
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / size
        assert np.all(extent[:2] >= box[:2] - tol) and np.all(extent[2:] <= box[2:] + tol), (extent, box)
        inter = np.prod(np.clip(np.minimum(extent[2:], box[2:]) - np.maximum(extent[:2], box[:2]), 0, None))
        union = np.prod(extent[2:] - extent[:2]) + np.prod(box[2:] - box[:2]) - inter
        if len(xs) >= 100:
            ious.append(inter / union)
    return ious


def test_ssd_augment_keeps_boxes_and_masks_consistent_and_is_deterministic():
    ious, mirrored_or_cropped = [], 0
    for i in range(40):
        image, masks, boxes, crowd = _scene_arrays(i)
        before = (image.copy(), masks.copy(), boxes.copy())
        out = aug.ssd_augment(image, masks, boxes, crowd, np.random.default_rng(i), 128)
        again = aug.ssd_augment(image, masks, boxes, crowd, np.random.default_rng(i), 128)
        for x, y in zip(out, again):
            np.testing.assert_array_equal(x, y)
        for x, y in zip((image, masks, boxes), before):  # inputs untouched
            np.testing.assert_array_equal(x, y)
        img, m, b, keep = out
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert m.shape == (len(keep), 128, 128) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert b.shape == (len(keep), 4) and b.dtype == np.float32 and keep.dtype == np.int64
        assert np.all(np.diff(keep) > 0) and (len(keep) == 0 or keep.max() < len(boxes))
        ious += _check_boxes_fit_masks(m, b, 128)
        mirrored_or_cropped += len(keep) < len(boxes) or not np.allclose(b, boxes[keep] / [128, 96, 128, 96], atol=1e-4)
    assert len(ious) > 30 and np.median(ious) > 0.9  # clipped boxes of cut shapes may be loose, most are tight
    assert mirrored_or_cropped > 10  # the geometric augmentations actually happen


def test_mirror_and_expand_geometry_on_a_single_square():
    # one opaque square; over many draws every output must still show it where its box says
    image = np.full((100, 100, 3), 50, np.uint8)
    image[20:40, 60:90] = 250
    masks = np.zeros((1, 100, 100), np.uint8)
    masks[0, 20:40, 60:90] = 1
    boxes = np.array([[60, 20, 90, 40]], np.float32)
    seen_fill = False
    for i in range(30):
        img, m, b, keep = aug.ssd_augment(image, masks, boxes, np.zeros(1, bool), np.random.default_rng(100 + i), 100)
        assert list(keep) == [0]  # the only instance is always kept (its centre decides the crop)
        x1, y1, x2, y2 = np.round(b[0] * 100).astype(int)
        assert m[0, y1 + 1:y2 - 1, x1 + 1:x2 - 1].all() and m[0].sum() <= (x2 - x1 + 2) * (y2 - y1 + 2)
        seen_fill |= bool(np.all(np.abs(img[0, 0].astype(int) - (104, 117, 124)) <= 1))
    assert seen_fill  # expand pads with YOLACT's BGR means


def test_sample_crop_needs_a_non_crowd_instance_inside():
    boxes = np.array([[10, 10, 30, 30], [60, 60, 90, 90]], np.float32)
    assert aug.sample_crop_rect(boxes, np.array([True, True]), 100, 100, np.random.default_rng(0)) is None
    crowd = np.array([False, True])
    for i in range(50):
        got = aug.sample_crop_rect(boxes, crowd, 100, 100, np.random.default_rng(i))
        if got is None:
            continue
        (x1, y1, x2, y2), keep = got
        assert keep[0] and x1 < 20 < x2 and y1 < 20 < y2  # the non-crowd box's centre is inside
        assert 0.5 <= (y2 - y1) / max(x2 - x1, 1) <= 2.1


def test_photometric_distort_is_deterministic_and_changes_colours():
    image, *_ = _scene_arrays(3)
    outs = [aug.photometric_distort(image, np.random.default_rng(s)) for s in range(6)]
    np.testing.assert_array_equal(outs[0], aug.photometric_distort(image, np.random.default_rng(0)))
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert any(np.abs(o.astype(int) - image).mean() > 3 for o in outs)


# --------------------------------------------------------------------------------------
# dataset on the synthetic folder
# --------------------------------------------------------------------------------------
def test_dataset_sample_shapes_and_types(synth_dir):
    ds = CocoInstanceDataset(synth_dir, size=64, augment=True, seed=3)
    assert len(ds) == 6 and ds.class_names == CLASS_NAMES
    s = ds[1]
    n = len(s["labels"])
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["boxes"].shape == (n, 4) and s["boxes"].dtype == torch.float32
    assert s["labels"].dtype == torch.int64 and s["masks"].shape == (n, 64, 64) and s["masks"].dtype == torch.uint8
    assert s["crowd"].dtype == torch.bool and s["crowd"].shape == (n,)
    assert s["image_id"] == 1 and s["orig_size"] == SIZE
    assert torch.all(s["labels"] >= 0) and torch.all(s["labels"] < len(CLASS_NAMES))
    # same seed and epoch: same sample; another epoch: other draws
    torch.testing.assert_close(ds[1]["image"], s["image"], rtol=0, atol=0)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], s["image"])
    images, targets = collate([ds[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3 and "image" not in targets[0]


def test_dataset_boxes_fit_masks_after_augmentation(synth_dir):
    ds = CocoInstanceDataset(synth_dir, size=128, augment=True, seed=0)
    ious = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            ious += _check_boxes_fit_masks(s["masks"].numpy(), s["boxes"].numpy(), 128)
    assert len(ious) > 20 and np.median(ious) > 0.9


def test_dataset_without_augmentation_is_the_plain_resized_image(synth_dir):
    ds = CocoInstanceDataset(synth_dir, size=64, augment=False)
    s = ds[2]
    original = cv2.imread(os.path.join(synth_dir, "images", "000002.png"))
    expected = preprocess(torch.from_numpy(original)[None], YolactConfig(name="t", class_names=CLASS_NAMES, max_size=64))[0]
    torch.testing.assert_close(s["image"], expected, rtol=0, atol=0)
    scene = render_scene(image_rng(7, 2), SIZE, N_OBJECTS)
    rel = scene.boxes / np.array([SIZE[1], SIZE[0], SIZE[1], SIZE[0]], np.float32)
    np.testing.assert_allclose(s["boxes"].numpy(), rel[aug.discard_tiny_boxes(rel)], atol=1e-6)
    np.testing.assert_array_equal(s["labels"].numpy(), scene.class_ids[aug.discard_tiny_boxes(rel)])
    _check_boxes_fit_masks(s["masks"].numpy(), s["boxes"].numpy(), 64)


# --------------------------------------------------------------------------------------
# dataset on real photographs with hand-made COCO annotations
# --------------------------------------------------------------------------------------
def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a run of zeros (COCO's uncompressed RLE)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    os.makedirs(root / "images")
    photos = {"astronaut.jpg": skimage.data.astronaut(), "coffee.jpg": skimage.data.coffee(), "chelsea.jpg": skimage.data.chelsea()}
    images = []
    for k, (name, rgb) in enumerate(photos.items(), start=1):
        cv2.imwrite(str(root / "images" / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": k * 10, "file_name": name, "height": rgb.shape[0], "width": rgb.shape[1]})
    h, w = 400, 600  # coffee
    cup = np.zeros((h, w), np.uint8)
    cv2.ellipse(cup, (300, 190), (170, 120), 0, 0, 360, 1, -1)
    spoon = np.zeros((h, w), np.uint8)
    cv2.rectangle(spoon, (420, 250), (560, 280), 1, -1)
    coffee_rle = mask_utils.encode(np.asfortranarray(cup[:, :, None]))[0]
    annotations = [
        # astronaut: face and helmet as polygons (hand-placed), one with two parts
        {"id": 1, "image_id": 10, "category_id": 7, "iscrowd": 0,
         "segmentation": [[180, 60, 320, 60, 330, 200, 250, 250, 170, 200]], "bbox": [170, 60, 160, 190], "area": 25000.0},
        {"id": 2, "image_id": 10, "category_id": 12, "iscrowd": 0,
         "segmentation": [[20, 300, 120, 300, 120, 500, 20, 500], [140, 400, 200, 400, 170, 480], [1, 2]]},
        # coffee: the cup as compressed RLE, the spoon as an uncompressed-RLE crowd
        {"id": 3, "image_id": 20, "category_id": 3, "iscrowd": 1,
         "segmentation": {"size": [h, w], "counts": _uncompressed_rle(spoon)}},
        {"id": 4, "image_id": 20, "category_id": 3, "iscrowd": 0,
         "segmentation": {"size": [h, w], "counts": coffee_rle["counts"].decode("ascii")}},
        # chelsea (id 30) has no annotations
    ]
    categories = [{"id": 12, "name": "helmet"}, {"id": 3, "name": "cup"}, {"id": 7, "name": "face"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(root), cup, spoon


def test_real_photos_with_polygons_and_rle_load(photo_dir):
    root, cup, spoon = photo_dir
    ds = CocoInstanceDataset(root, size=128, augment=False)
    assert ds.class_names == ("cup", "face", "helmet")  # category-id order: 3, 7, 12
    assert len(ds) == 3
    astro = ds.load_original(0)
    assert astro["image"].shape == (512, 512, 3) and list(astro["labels"]) == [1, 2]
    face, helmet = astro["masks"]
    # the face polygon's area (shoelace: 25 000 px) within a perimeter's worth of pixels
    assert abs(int(face.sum()) - 25000) < 700 and face[150, 250] == 1 and face[10, 10] == 0
    # two valid parts (rectangle + triangle); the 2-number part is ignored
    assert helmet[400, 70] == 1 and helmet[430, 170] == 1 and helmet[400, 130] == 0
    np.testing.assert_allclose(astro["boxes"][1], [20, 300, 200, 500], atol=1.5)  # bbox from the mask
    coffee = ds.load_original(1)
    np.testing.assert_array_equal(coffee["masks"][0], cup)  # non-crowd first, exactly decoded
    np.testing.assert_array_equal(coffee["masks"][1], spoon)
    assert list(coffee["crowd"]) == [False, True] and list(coffee["labels"]) == [0, 0]
    s = ds[1]
    assert s["masks"].shape == (2, 128, 128) and list(s["crowd"]) == [False, True]
    empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 128, 128) and empty["labels"].shape == (0,)
    assert empty["orig_size"] == (300, 451)
    aug_ds = CocoInstanceDataset(root, size=128, augment=True, seed=5)
    for i in range(3):
        s = aug_ds[i]
        assert s["image"].shape == (3, 128, 128) and len(s["labels"]) == len(s["masks"]) == len(s["crowd"])


def test_dataset_errors_are_one_line_config_errors(photo_dir, tmp_path):
    root, *_ = photo_dir
    with pytest.raises(ConfigError) as err:
        CocoInstanceDataset(str(tmp_path / "nope"), size=64, augment=False)
    assert "does not exist" in _one_line(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        CocoInstanceDataset(str(empty), size=64, augment=False)
    assert "annotations.json" in _one_line(err) and "not found" in str(err.value)
    (empty / "annotations.json").write_text("{not json")
    with pytest.raises(ConfigError) as err:
        load_coco_folder(str(empty))
    assert "not valid JSON" in _one_line(err)
    data = json.loads(open(os.path.join(root, "annotations.json")).read())
    broken = dict(data)
    del broken["categories"]
    (empty / "annotations.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError) as err:
        load_coco_folder(str(empty))
    assert "'categories'" in _one_line(err)
    broken = json.loads(json.dumps(data))
    del broken["annotations"][0]["segmentation"]
    (empty / "annotations.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError) as err:
        load_coco_folder(str(empty))
    assert "'segmentation'" in _one_line(err)
    broken = json.loads(json.dumps(data))
    broken["annotations"][0]["image_id"] = 999
    (empty / "annotations.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError) as err:
        load_coco_folder(str(empty))
    assert "999" in _one_line(err)
    (empty / "annotations.json").write_text(json.dumps(data))  # images folder missing
    with pytest.raises(ConfigError) as err:
        load_coco_folder(str(empty))
    assert "astronaut.jpg" in _one_line(err) and "not found" in str(err.value)
    with pytest.raises(ConfigError):
        CocoInstanceDataset(root, size=0, augment=False)


def test_synthetic_generation_in_parallel_writes_the_same_files(tmp_path):
    from rtseg.data.synthetic_coco import generate_dataset

    one = generate_dataset(str(tmp_path / "one"), images=6, seed=3, size=(64, 96))
    two = generate_dataset(str(tmp_path / "two"), images=6, seed=3, size=(64, 96), workers=2)
    assert open(one).read() == open(two).read()
    for k in range(6):
        name = f"images/{k:06d}.png"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_damaged_annotations_are_repaired_counted_and_reported_in_one_warning(tmp_path, caplog):
    """Polygon parts with fewer than 3 points, a box with a negative width, a mask with no
    pixel: loaded (as before), and now counted and reported in one warning line (issue 15,
    item 14); the negative box is replaced by its mask's extent."""
    import logging

    generate_dataset(str(tmp_path), images=2, seed=4, size=(64, 80), n_objects=(2, 3))
    path = tmp_path / "annotations.json"
    data = json.loads(path.read_text())
    first, second = data["images"][0]["id"], data["images"][1]["id"]
    cat = data["categories"][0]["id"]
    data["annotations"] += [
        # a valid square and two short parts (2 points, 1 point): the square stays
        {"image_id": first, "category_id": cat, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30], [1, 2, 3, 4], [5, 6]]},
        # only a 2-point polygon: an empty mask
        {"image_id": second, "category_id": cat, "segmentation": [[1, 1, 9, 9]]},
        # a negative width
        {"image_id": second, "category_id": cat, "segmentation": [[40, 20, 60, 20, 60, 40]], "bbox": [60, 20, -20, 20]},
    ]
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="rtseg.data.coco"):
        folder = load_coco_folder(str(tmp_path))
    assert folder.problems == {"short_polygon_parts": 3, "negative_boxes": 1, "empty_masks": 1}
    records = [r for r in caplog.records if r.name == "rtseg.data.coco"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert "\n" not in line and "3 polygon part(s) with fewer than 3 points (dropped)" in line
    assert "1 box(es) with a negative width or height (replaced by the mask's extent)" in line
    assert "1 annotation(s) whose mask has no pixel" in line
    total = len(data["annotations"])
    assert f"in {total} annotations ({total - 1} usable" in line and folder.usable_annotations == total - 1
    repaired = folder.dataset["annotations"][-1]["bbox"]
    assert repaired[2] > 0 and repaired[3] > 0 and abs(repaired[0] - 40) <= 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rtseg.data.coco"):
        generate_dataset(str(tmp_path / "clean"), images=1, seed=4, size=(64, 80))
        assert load_coco_folder(str(tmp_path / "clean")).problems == {}
    assert not [r for r in caplog.records if r.name == "rtseg.data.coco"]  # a clean set says nothing
