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
