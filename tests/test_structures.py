"""Instances and Frame: validation, indexing, COCO RLE round trips."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.structures import Frame, Instances


def make_instances(n: int, size=(20, 30), seed=0) -> Instances:
    rng = np.random.default_rng(seed)
    masks = rng.random((n, *size)) > 0.6
    return Instances(
        boxes=rng.uniform(0, 20, (n, 4)).astype(np.float32),
        scores=np.sort(rng.random(n).astype(np.float32))[::-1].copy(),
        class_ids=rng.integers(0, 5, n).astype(np.int64),
        masks=masks,
        image_size=size,
    )


def test_empty_has_declared_shapes():
    e = Instances.empty((48, 64))
    assert len(e) == 0
    assert e.boxes.shape == (0, 4) and e.boxes.dtype == np.float32
    assert e.masks.shape == (0, 48, 64) and e.masks.dtype == np.bool_
    assert e.to_rle() == []


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("boxes", np.zeros((3, 5), np.float32), r"boxes must have shape \(N, 4\), got \(3, 5\)"),
        ("boxes", np.zeros((2, 4), np.float64), "boxes must have dtype float32, got float64"),
        ("scores", np.zeros(3, np.float32), "scores must have 2 entries to match boxes, got 3"),
        ("class_ids", np.zeros(2, np.int32), "class_ids must have dtype int64, got int32"),
        ("masks", np.zeros((2, 20, 31), bool), r"masks must have shape \(2, 20, 30\)"),
        ("masks", [[0]], "masks must be a numpy.ndarray"),
    ],
)
def test_validation_says_expected_and_found(field, value, message):
    fields = dict(boxes=np.zeros((2, 4), np.float32), scores=np.zeros(2, np.float32),
                  class_ids=np.zeros(2, np.int64), masks=np.zeros((2, 20, 30), bool), image_size=(20, 30))
    fields[field] = value
    with pytest.raises((ValueError, TypeError), match=message):
        Instances(**fields)


def test_indexing_filters_every_field_and_leaves_the_original_alone():
    inst = make_instances(5)
    before = [a.copy() for a in (inst.boxes, inst.scores, inst.class_ids, inst.masks)]
    keep = inst.scores > np.median(inst.scores)
    sub = inst[keep]
    assert len(sub) == int(keep.sum())
    np.testing.assert_array_equal(sub.masks, inst.masks[keep])
    np.testing.assert_array_equal(sub.class_ids, inst.class_ids[keep])
    one = inst[-1]
    assert len(one) == 1 and one.scores[0] == inst.scores[-1]
    assert len(inst[1:3]) == 2 and len(inst[np.array([4, 0])]) == 2
    with pytest.raises(IndexError):
        inst[5]
    for a, b in zip(before, (inst.boxes, inst.scores, inst.class_ids, inst.masks)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [0, 1, 4])
def test_rle_round_trip(n):
    inst = make_instances(n, size=(33, 47), seed=n)
    rles = inst.to_rle()
    assert len(rles) == n
    assert all(r["size"] == [33, 47] and isinstance(r["counts"], str) for r in rles)
    back = Instances.from_rle(inst.boxes, inst.scores, inst.class_ids, rles, inst.image_size)
    assert back == inst


def test_rle_matches_pycocotools_area_and_rejects_wrong_size():
    from pycocotools import mask as mask_utils

    inst = make_instances(3, size=(16, 16))
    rles = inst.to_rle()
    areas = [int(mask_utils.area({"size": r["size"], "counts": r["counts"].encode()})) for r in rles]
    assert areas == inst.mask_areas().tolist()
    with pytest.raises(ValueError, match=r"RLE 0 has size \[16, 16\], expected \[8, 8\]"):
        Instances.masks_from_rle(rles, (8, 8))


def test_uncompressed_rle_is_accepted():
    m = np.zeros((4, 5), bool)
    m[1:3, 2:4] = True
    # column-major run lengths starting with zeros: 6 zeros, 2 ones, 2 zeros, 2 ones, 8 zeros
    rle = {"size": [4, 5], "counts": [9, 2, 2, 2, 5]}
    np.testing.assert_array_equal(Instances.masks_from_rle([rle], (4, 5))[0], m)


def test_concatenate():
    a, b = make_instances(2, seed=1), make_instances(3, seed=2)
    c = Instances.concatenate([a, b])
    assert len(c) == 5 and c[2:] == b
    with pytest.raises(ValueError, match="share one image_size"):
        Instances.concatenate([a, make_instances(1, size=(5, 5))])


def test_track_ids_are_optional_validated_indexed_concatenated_and_compared():
    import dataclasses

    inst = make_instances(4)
    assert inst.track_ids is None
    tracked = dataclasses.replace(inst, track_ids=np.array([7, -1, 3, 0], np.int64))
    assert tracked != inst and tracked == dataclasses.replace(inst, track_ids=np.array([7, -1, 3, 0], np.int64))
    assert tracked != dataclasses.replace(inst, track_ids=np.array([7, -1, 3, 1], np.int64))
    np.testing.assert_array_equal(tracked[np.array([2, 0])].track_ids, [3, 7])
    assert tracked[1].track_ids.tolist() == [-1] and tracked[1:1].track_ids.shape == (0,)
    both = Instances.concatenate([tracked, tracked[:2]])
    assert both.track_ids.tolist() == [7, -1, 3, 0, 7, -1]
    with pytest.raises(ValueError, match="either have track_ids or not"):
        Instances.concatenate([tracked, inst])
    with pytest.raises(ValueError, match="track_ids must have 4 entries to match boxes, got 3"):
        dataclasses.replace(inst, track_ids=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="track_ids must have dtype int64, got int32"):
        dataclasses.replace(inst, track_ids=np.zeros(4, np.int32))
    assert tracked.ranked_by_mask_score() is tracked  # no mask scores: unchanged


def test_frame_checks_its_image():
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) BGR, got float32\(4, 4, 3\)"):
        Frame(seq=0, source_id="x", capture_time=0.0, image=np.zeros((4, 4, 3), np.float32))
    f = Frame(seq=0, source_id="x", capture_time=0.0, image=np.zeros((4, 6, 3), np.uint8))
    assert f.image_size == (4, 6) and f.instances is None and f.timings == {}
