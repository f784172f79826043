"""Rendering: masks blended in class colours, boxes, labels, FPS readout; input untouched."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.render import MASK_ALPHA, PALETTE_BGR, VideoRecorder, class_color, render
from rtseg.structures import Instances
from rtseg.errors import ConfigError


def two_instances(h=60, w=80) -> Instances:
    masks = np.zeros((2, h, w), bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 20:50, 30:70] = True  # overlaps instance 0
    return Instances(boxes=np.array([[10, 10, 40, 30], [30, 20, 70, 50]], np.float32),
                     scores=np.array([0.9, 0.6], np.float32), class_ids=np.array([1, 3], np.int64),
                     masks=masks, image_size=(h, w))


def test_masks_are_blended_in_class_colours_with_the_best_instance_on_top():
    img = np.full((60, 80, 3), 100, np.uint8)
    before = img.copy()
    out = render(img, two_instances(), ["a", "b", "c", "d"], draw_boxes=False, draw_labels=False)
    np.testing.assert_array_equal(img, before)  # the input is not modified
    expect = lambda cid: (100 * (1 - MASK_ALPHA) + PALETTE_BGR[cid].astype(np.float32) * MASK_ALPHA).astype(np.uint8)
    np.testing.assert_array_equal(out[15, 15], expect(1))  # only instance 0
    np.testing.assert_array_equal(out[25, 35], expect(1))  # overlap: the higher score wins
    np.testing.assert_array_equal(out[45, 60], expect(3))  # only instance 1
    np.testing.assert_array_equal(out[55, 5], [100, 100, 100])  # background untouched


def test_boxes_labels_and_fps_are_drawn():
    img = np.zeros((60, 80, 3), np.uint8)
    plain = render(img, two_instances(), ["a", "b", "c", "d"], draw_boxes=False, draw_labels=False)
    boxed = render(img, two_instances(), ["a", "b", "c", "d"])
    assert tuple(boxed[40, 70]) == class_color(3)  # right edge of box 1
    assert (boxed != plain).any()
    with_fps = render(img, Instances.empty((60, 80)), [], fps=12.3)
    assert with_fps[:10, :40].any() and not with_fps[40:].any()


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"instances are for an image of size \(60, 80\)"):
        render(np.zeros((10, 10, 3), np.uint8), two_instances(), [])


def test_recorder_writes_a_playable_file_and_refuses_bad_paths(tmp_path):
    import cv2

    rec = VideoRecorder(str(tmp_path / "out.avi"), fps=10)
    for i in range(5):
        rec.write(np.full((48, 64, 3), i * 40, np.uint8))
    rec.close()
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    with pytest.raises(ConfigError, match="must end in one of"):
        VideoRecorder(str(tmp_path / "out.gif"))
    with pytest.raises(ConfigError, match="does not exist"):
        VideoRecorder(str(tmp_path / "missing" / "out.mp4"))


def _instances(boxes, scores, class_ids, masks=None, size=(120, 160)) -> Instances:
    h, w = size
    if masks is None:
        masks = np.zeros((len(boxes), h, w), bool)
    return Instances(boxes=np.array(boxes, np.float32).reshape(-1, 4), scores=np.array(scores, np.float32),
                     class_ids=np.array(class_ids, np.int64), masks=np.asarray(masks, bool), image_size=(h, w))


NAMES = ["square", "circle", "triangle", "star"]


def _has_color(img: np.ndarray, color) -> bool:
    return bool((img == np.array(color, np.uint8)).all(axis=-1).any())


def test_a_low_score_duplicate_of_another_class_does_not_cover_the_right_label():
    """The built-in model finds a square as 'square 0.95' and, in the same place, 'circle 0.39':
    what is drawn must be exactly what the square alone draws (mask, box and label)."""
    mask = np.zeros((120, 160), bool)
    mask[40:90, 50:110] = True
    img = np.full((120, 160, 3), 90, np.uint8)
    both = _instances([[50, 40, 110, 90], [52, 41, 111, 92]], [0.95, 0.39], [0, 1], [mask, mask])
    alone = _instances([[50, 40, 110, 90]], [0.95], [0], [mask])
    drawn = render(img, both, NAMES)
    np.testing.assert_array_equal(drawn, render(img, alone, NAMES))
    assert _has_color(drawn, class_color(0)) and not _has_color(drawn, class_color(1))
    # the same when the producer hands them over in ascending score order
    flipped = _instances([[52, 41, 111, 92], [50, 40, 110, 90]], [0.39, 0.95], [1, 0], [mask, mask])
    np.testing.assert_array_equal(render(img, flipped, NAMES), drawn)


def test_labels_of_neighbours_do_not_overlap_and_the_best_one_is_intact():
    img = np.full((120, 160, 3), 90, np.uint8)
    # two different objects side by side: their labels would both sit at y 22-40 and overlap
    pair = _instances([[40, 40, 150, 100], [20, 40, 70, 90]], [0.9, 0.5], [1, 2])
    drawn = render(img, pair, NAMES, draw_boxes=False)
    best = render(img, _instances([[40, 40, 150, 100]], [0.9], [1]), NAMES, draw_boxes=False)
    painted_best = (best != img).any(axis=-1)
    np.testing.assert_array_equal(drawn[painted_best], best[painted_best])  # not painted over
    assert _has_color(drawn, class_color(2))  # the other label is still shown, elsewhere


@pytest.mark.parametrize("box", [[150, 50, 160, 70], [0, 0, 30, 20], [140, 110, 160, 120], [-5, -5, 3, 3]])
def test_labels_stay_inside_the_image(box):
    img = np.zeros((120, 160, 3), np.uint8)
    middle = render(img, _instances([[40, 60, 80, 90]], [0.87], [2]), NAMES, draw_boxes=False)
    at_edge = render(img, _instances([box], [0.87], [2]), NAMES, draw_boxes=False)
    # the whole label is drawn: as many pixels painted, and the same picture shifted
    assert (at_edge != 0).any(axis=-1).sum() == (middle != 0).any(axis=-1).sum() > 0
    ys, xs = np.nonzero((at_edge != 0).any(axis=-1))
    my, mx = np.nonzero((middle != 0).any(axis=-1))
    np.testing.assert_array_equal(at_edge[ys.min():ys.max() + 1, xs.min():xs.max() + 1],
                                  middle[my.min():my.max() + 1, mx.min():mx.max() + 1])


def test_labels_keep_clear_of_the_fps_readout():
    img = np.zeros((120, 160, 3), np.uint8)
    drawn = render(img, _instances([[2, 2, 60, 60]], [0.8], [0]), NAMES, fps=25.0, draw_boxes=False)
    alone = render(img, Instances.empty((120, 160)), NAMES, fps=25.0)
    readout = (alone != 0).any(axis=-1)
    np.testing.assert_array_equal(drawn[readout], alone[readout])
    # and the label is whole, beside the readout
    label = render(img, _instances([[2, 2, 60, 60]], [0.8], [0]), NAMES, draw_boxes=False)
    color = np.array(class_color(0), np.uint8)
    assert (drawn == color).all(axis=-1).sum() == (label == color).all(axis=-1).sum() > 0


def test_built_in_model_output_shows_the_highest_scoring_class_of_every_object():
    """Real Instances of the built-in model on the synthetic video (where it finds some squares
    also as low-score circles): every detection is labelled, or a higher-scoring one of the same
    object (mask IoU >= DUPLICATE_IOU) is; every label, as painted, is filled with its own class
    colour (none painted over)."""
    from rtseg.render import _fps_rect, _same_object, label_boxes
    from rtseg.segmenter import Segmenter
    from rtseg.sources import open_source

    seg = Segmenter("yolact_resnet18_half_384")
    duplicates = labels_checked = 0
    with open_source("synthetic", max_frames=10) as source:
        for frame in source:
            inst, _ = seg.process(frame.image)
            drawn = render(frame.image, inst, seg.class_names, fps=20.0)
            labels = label_boxes(inst, seg.class_names, reserved=[_fps_rect(20.0)[1]])
            labelled = {i for i, _, _ in labels}
            for j in set(range(len(inst))) - labelled:
                assert any(inst.scores[i] >= inst.scores[j] and _same_object(inst, i, j) for i in labelled), (frame.seq, j)
                duplicates += 1
            for i, _, (x1, y1, x2, y2) in labels:
                patch = drawn[y1:y2, x1:x2]
                color = np.array(class_color(int(inst.class_ids[i])), np.int16)
                fill = (patch == color).all(axis=-1)
                # the rest is its white text, anti-aliased: between the fill colour and white
                assert fill.mean() > 0.3 and (patch >= color - 1).all(), (frame.seq, i)
                labels_checked += 1
    assert duplicates > 0 and labels_checked > 10  # the case of the issue did occur


def test_an_object_inside_another_is_not_taken_for_a_duplicate():
    """A star inside a ring has nearly the ring's box; their masks tell them apart: both labelled."""
    yy, xx = np.mgrid[:120, :160]
    r = np.hypot(yy - 60, xx - 80)
    ring, star = (r > 35) & (r < 45), r < 25
    inst = _instances([[35, 15, 125, 105], [37, 17, 123, 103]], [0.83, 0.34], [1, 3], [ring, star])
    drawn = render(np.full((120, 160, 3), 90, np.uint8), inst, NAMES)
    assert _has_color(drawn, class_color(1)) and _has_color(drawn, class_color(3))


def test_track_ids_are_drawn_in_the_labels():
    import dataclasses

    from rtseg.render import label_boxes

    inst = two_instances()
    assert [t for _, t, _ in label_boxes(inst, ["a", "b", "c", "d"])] == ["b 0.90", "d 0.60"]
    tracked = dataclasses.replace(inst, track_ids=np.array([12, -1], np.int64))  # -1: not a confirmed track
    assert [t for _, t, _ in label_boxes(tracked, ["a", "b", "c", "d"])] == ["#12 b 0.90", "d 0.60"]
    img = np.full((60, 80, 3), 100, np.uint8)
    assert not np.array_equal(render(img, tracked, ["a", "b", "c", "d"]), render(img, inst, ["a", "b", "c", "d"]))


# -- compact masks: the overlay is the one the full-size masks gave ------------------------------

def _dense_blend(image: np.ndarray, inst: Instances) -> np.ndarray:
    """The overlay's masks as render drew them from full-size ``bool[N, H, W]`` masks before
    they became compact: the highest-scoring (then earliest) instance covering a pixel colours it."""
    out = image.copy()
    if len(inst):
        order = np.argsort(-inst.scores, kind="stable")
        masks = inst.masks_dense()[order]
        covered = masks.any(axis=0)
        owner = order[masks.argmax(axis=0)]
        blend = PALETTE_BGR[inst.class_ids % len(PALETTE_BGR)][owner[covered]].astype(np.float32)
        out[covered] = (out[covered].astype(np.float32) * (1 - MASK_ALPHA) + blend * MASK_ALPHA).astype(np.uint8)
    return out


def _dense_shown(inst: Instances) -> list[int]:
    """shown_instances from full-size masks (the duplicate test on the boxes' union)."""
    from rtseg.render import DUPLICATE_IOU, _box_iou

    dense, (h, w) = inst.masks_dense(), inst.image_size
    kept: list[int] = []
    for i in np.argsort(-inst.scores, kind="stable").tolist():
        same = False
        for k in kept:
            a, b = inst.boxes[i], inst.boxes[k]
            box_iou = _box_iou(a, b)
            if box_iou == 0.0:
                continue
            x1, y1 = max(int(min(a[0], b[0])), 0), max(int(min(a[1], b[1])), 0)
            x2, y2 = min(int(max(a[2], b[2])) + 1, w), min(int(max(a[3], b[3])) + 1, h)
            ma, mb = dense[i, y1:y2, x1:x2], dense[k, y1:y2, x1:x2]
            union = int(np.count_nonzero(ma | mb))
            if not ma.any() or not mb.any() or union == 0:
                same = box_iou >= DUPLICATE_IOU
            else:
                same = np.count_nonzero(ma & mb) / union >= DUPLICATE_IOU
            if same:
                break
        if not same:
            kept.append(i)
    return kept


def _check_as_dense(image: np.ndarray, inst: Instances, names) -> None:
    from rtseg.render import shown_instances

    np.testing.assert_array_equal(render(image, inst, names, draw_boxes=False, draw_labels=False), _dense_blend(image, inst))
    assert shown_instances(inst) == _dense_shown(inst)


def test_crafted_overlaps_ties_and_empty_masks_draw_as_dense_masks_did():
    """Nested, crossing and identical masks, tied scores (the earlier instance wins), an
    empty mask, masks on every border, class ids beyond the palette."""
    h, w = 40, 50
    masks = np.zeros((7, h, w), bool)
    masks[0, 5:30, 5:30] = True
    masks[1, 10:20, 10:20] = True  # inside 0, lower score
    masks[2, 15:40, 20:50] = True  # crosses 0, same score as 0
    masks[3] = masks[2]  # identical to 2, same score: 2 wins
    masks[5, 0, :] = masks[5, :, 0] = masks[5, -1, :] = masks[5, :, -1] = True  # the border
    masks[6, 12:14, 40:41] = True
    inst = Instances(boxes=np.array([[5, 5, 30, 30], [10, 10, 20, 20], [20, 15, 50, 40], [20, 15, 50, 40],
                                     [0, 0, 3, 3], [0, 0, 50, 40], [40, 12, 41, 14]], np.float32),
                     scores=np.array([0.7, 0.4, 0.7, 0.7, 0.9, 0.2, 0.95], np.float32),
                     class_ids=np.array([0, 1, 2, 25, 3, 4, 40], np.int64), masks=masks, image_size=(h, w))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    _check_as_dense(image, inst, [str(c) for c in range(41)])
    rng = np.random.default_rng(7)
    for case in range(30):  # random overlaps, many ties
        n = int(rng.integers(1, 8))
        m = rng.random((n, h, w)) < rng.uniform(0.0, 0.6, (n, 1, 1))
        boxes = np.sort(rng.uniform(0, w, (n, 2, 2)), axis=1).reshape(n, 4).astype(np.float32)
        inst = Instances(boxes=boxes, scores=rng.integers(0, 3, n).astype(np.float32) / 2,
                         class_ids=rng.integers(0, 30, n).astype(np.int64), masks=m, image_size=(h, w))
        _check_as_dense(image, inst, [str(c) for c in range(30)])


def test_built_in_model_on_a_photograph_draws_as_dense_masks_did():
    """Real Instances (the built-in YOLACT on skimage's astronaut, at a low threshold: many
    overlapping masks) and the synthetic video: the overlay is pixel for pixel the one drawn
    from full-size masks."""
    from skimage import data as skimage_data

    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import SyntheticVideo

    seg = Segmenter("yolact_resnet18_half_384", score_threshold=0.05)
    for image in (np.ascontiguousarray(skimage_data.astronaut()[..., ::-1]), SyntheticVideo(seed=3).frame(5).image):
        inst = seg(image)
        assert len(inst) > 10 and (inst.masks_dense().sum(axis=0) > 1).any()  # overlaps do occur
        _check_as_dense(image, inst, seg.class_names)
