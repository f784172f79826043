"""Tests for rtseg.synthetic: exact ground truth, determinism, motion."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.structures import Instances
from rtseg.synthetic import (
    CLASS_NAMES,
    MIN_VISIBLE_PIXELS,
    Scene,
    SyntheticVideo,
    _compose,
    _Shape,
    render_scene,
)


def assert_ground_truth_consistent(scene: Scene) -> None:
    """Every invariant a Scene promises."""
    h, w = scene.image_size
    n = len(scene.class_ids)
    assert scene.image.dtype == np.uint8 and scene.image.shape == (h, w, 3)
    assert scene.masks.dtype == np.bool_ and scene.masks.shape == (n, h, w)
    assert scene.class_ids.dtype == np.int64 and scene.class_ids.shape == (n,)
    assert scene.boxes.dtype == np.float32 and scene.boxes.shape == (n, 4)
    assert scene.object_ids.dtype == np.int64 and scene.object_ids.shape == (n,)
    assert np.all(np.diff(scene.object_ids) > 0)
    assert np.all((scene.class_ids >= 0) & (scene.class_ids < len(CLASS_NAMES)))
    # occlusion: every pixel belongs to at most one object
    assert scene.masks.sum(axis=0).max(initial=0) <= 1
    for mask, box in zip(scene.masks, scene.boxes):
        assert mask.sum() >= MIN_VISIBLE_PIXELS
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        # tight box, pixel-edge convention: x2 = last column + 1
        assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        # the mask is exactly where the object's flat colour was drawn
        colours = np.unique(scene.image[mask], axis=0)
        assert len(colours) == 1


@pytest.mark.parametrize("seed", range(6))
def test_render_scene_ground_truth_is_exact(seed):
    scene = render_scene(np.random.default_rng(seed), size=(120, 160), n_objects=(3, 12))
    assert_ground_truth_consistent(scene)


def test_render_scene_crowded_scenes_keep_masks_disjoint_and_drop_hidden_objects():
    scene = render_scene(np.random.default_rng(7), size=(96, 96), n_objects=(40, 40))
    assert_ground_truth_consistent(scene)
    assert 0 < len(scene.class_ids) < 40  # 40 objects on 96x96 pixels: some are hidden
    assert scene.object_ids.max() < 40


def test_render_scene_is_deterministic_in_the_generator_state():
    a = render_scene(np.random.default_rng(3), size=(64, 80))
    b = render_scene(np.random.default_rng(3), size=(64, 80))
    c = render_scene(np.random.default_rng(4), size=(64, 80))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.class_ids, b.class_ids)
    assert not np.array_equal(a.image, c.image)


def test_render_scene_default_size_and_all_classes_occur():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(8):
        scene = render_scene(rng)
        assert scene.image_size == (480, 640)
        seen.update(scene.class_ids.tolist())
    assert seen == set(range(len(CLASS_NAMES)))


def test_painter_order_occlusion_and_ring_hole():
    background = np.full((60, 80, 3), 50, np.uint8)
    square = _Shape(class_id=1, cx=30, cy=30, radius=15, angle=np.pi / 4, hole=0.5, colour=(0, 0, 255))
    ring = _Shape(class_id=4, cx=44, cy=30, radius=14, angle=0.0, hole=0.5, colour=(0, 255, 0))
    alone = _compose(background, [square], [], [0])
    both = _compose(background, [square, ring], [], [0, 1])
    assert_ground_truth_consistent(alone)
    assert_ground_truth_consistent(both)
    square_full, square_visible, ring_mask = alone.masks[0], both.masks[0], both.masks[1]
    # the ring (drawn later) hides part of the square, never the other way round
    assert np.array_equal(square_visible, square_full & ~ring_mask)
    assert square_visible.sum() < square_full.sum()
    # the ring's hole shows what lies beneath: the square where it overlaps, else background
    hole = np.zeros_like(ring_mask)
    hole[26:35, 40:49] = True  # well inside the inner radius (7 px) around (44, 30)
    assert not (ring_mask & hole).any()
    assert (square_visible & hole).any()
    assert np.all(both.image[square_visible] == (0, 0, 255))
    assert np.all(both.image[ring_mask] == (0, 255, 0))
    untouched = ~(square_full | ring_mask)
    assert np.all(both.image[untouched] == 50)


def test_objects_outside_the_image_are_dropped():
    background = np.zeros((40, 40, 3), np.uint8)
    outside = _Shape(class_id=0, cx=-100, cy=20, radius=10, angle=0.0, hole=0.5, colour=(255, 255, 255))
    sliver = _Shape(class_id=0, cx=-9.5, cy=20, radius=10, angle=0.0, hole=0.5, colour=(255, 255, 255))
    scene = _compose(background, [outside, sliver], [], [0, 1])
    assert len(scene.class_ids) == 0 and scene.masks.shape == (0, 40, 40)


def test_scene_to_instances():
    scene = render_scene(np.random.default_rng(1), size=(48, 64))
    inst = scene.to_instances()
    assert isinstance(inst, Instances)
    assert inst.image_size == (48, 64) and len(inst) == len(scene.class_ids)
    assert np.all(inst.scores == 1)


@pytest.mark.parametrize(
    "kwargs",
    [dict(size=(10, 64)), dict(size=(64,)), dict(size=(64.0, 64)), dict(n_objects=(3, 2)), dict(n_objects=(0, 999))],
)
def test_render_scene_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="must be"):
        render_scene(np.random.default_rng(0), **kwargs)


# -- video -------------------------------------------------------------------------------
def test_video_frames_are_deterministic_and_random_access():
    a = SyntheticVideo(seed=5, size=(96, 128))
    b = SyntheticVideo(seed=5, size=(96, 128))
    late_first = b.frame(40)
    for i in (0, 1, 40):
        fa, fb = a.frame(i), b.frame(i)
        assert np.array_equal(fa.image, fb.image)
        assert np.array_equal(fa.masks, fb.masks)
        assert np.array_equal(fa.object_ids, fb.object_ids)
    assert np.array_equal(late_first.image, a.frame(40).image)
    assert not np.array_equal(a.frame(0).image, SyntheticVideo(seed=6, size=(96, 128)).frame(0).image)


def test_video_default_size_is_640x480():
    assert SyntheticVideo().frame(0).image_size == (480, 640)


def test_video_ground_truth_is_exact_over_time():
    video = SyntheticVideo(seed=2, size=(120, 160))
    for i in range(0, 300, 15):
        assert_ground_truth_consistent(video.frame(i))


def test_video_objects_move_smoothly():
    video = SyntheticVideo(seed=1, size=(240, 320))
    moved = 0
    for i in range(0, 20):
        s0, s1 = video.frame(i), video.frame(i + 1)
        common = np.intersect1d(s0.object_ids, s1.object_ids)
        for obj in common:
            b0 = s0.boxes[s0.object_ids == obj][0]
            b1 = s1.boxes[s1.object_ids == obj][0]
            c0 = ((b0[0] + b0[2]) / 2, (b0[1] + b0[3]) / 2)
            c1 = ((b1[0] + b1[2]) / 2, (b1[1] + b1[3]) / 2)
            step = np.hypot(c1[0] - c0[0], c1[1] - c0[1])
            # occlusion and the border can move a visible box centre by more than the
            # object moved, but never by a jump across the image
            assert step < 80
            moved += step > 0.5
    assert moved > 20


def test_video_objects_overlap_and_leave_and_all_classes_appear():
    video = SyntheticVideo(seed=0, size=(120, 160), n_objects=8)
    visible_counts, classes, overlapping = set(), set(), 0
    for i in range(0, 1200, 4):
        scene = video.frame(i)
        visible_counts.add(len(scene.class_ids))
        classes.update(scene.class_ids.tolist())
        boxes = scene.boxes
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                ix = min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0])
                iy = min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1])
                overlapping += ix > 0 and iy > 0
    assert classes == set(range(len(CLASS_NAMES)))
    assert len(visible_counts) > 1  # objects leave (or hide) and come back
    assert overlapping > 0


def test_video_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_objects"):
        SyntheticVideo(n_objects=-1)
    with pytest.raises(ValueError, match="frame index"):
        SyntheticVideo(size=(32, 32)).frame(-1)
