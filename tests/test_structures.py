"""Instances and Frame: validation, indexing, COCO RLE round trips."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.structures import CompactMasks, Frame, Instances


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
    assert isinstance(e.masks, CompactMasks) and e.masks.shape == (0, 48, 64) and e.masks.nbytes == 0
    assert e.masks_dense().shape == (0, 48, 64) and e.masks_dense().dtype == np.bool_
    assert e.to_rle() == []


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("boxes", np.zeros((3, 5), np.float32), r"boxes must have shape \(N, 4\), got \(3, 5\)"),
        ("boxes", np.zeros((2, 4), np.float64), "boxes must have dtype float32, got float64"),
        ("scores", np.zeros(3, np.float32), "scores must have 2 entries to match boxes, got 3"),
        ("class_ids", np.zeros(2, np.int32), "class_ids must have dtype int64, got int32"),
        ("masks", np.zeros((2, 20, 31), bool), r"masks must have shape \(2, 20, 30\)"),
        ("masks", [[0]], "masks must be a CompactMasks or a numpy.ndarray"),
        ("masks", np.zeros((2, 20, 30), np.uint8), "masks must have dtype bool, got uint8"),
        ("masks", CompactMasks.empty((20, 30)), r"masks must be 2 masks of an image of size \(20, 30\), got 0"),
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
    before = [a.copy() for a in (inst.boxes, inst.scores, inst.class_ids, inst.masks_dense(), inst.masks.blob)]
    keep = inst.scores > np.median(inst.scores)
    sub = inst[keep]
    assert len(sub) == int(keep.sum())
    np.testing.assert_array_equal(sub.masks_dense(), inst.masks_dense()[keep])
    np.testing.assert_array_equal(sub.class_ids, inst.class_ids[keep])
    one = inst[-1]
    assert len(one) == 1 and one.scores[0] == inst.scores[-1]
    assert len(inst[1:3]) == 2 and len(inst[np.array([4, 0])]) == 2
    with pytest.raises(IndexError):
        inst[5]
    for a, b in zip(before, (inst.boxes, inst.scores, inst.class_ids, inst.masks_dense(), inst.masks.blob)):
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


# -- CompactMasks ----------------------------------------------------------------------------


def crafted_masks() -> np.ndarray:
    """The wire format's worked example (docs/wire-format.md section 4), an empty mask, a
    full one, a single pixel in a corner, and a window whose bits are a multiple of 8."""
    m = np.zeros((5, 4, 7), bool)
    m[0, 1, 3:6] = True
    m[0, 2, 2:7] = True
    m[0, 3, [3, 5]] = True
    m[2] = True
    m[3, 3, 6] = True
    m[4, 0:2, 0:4] = True
    return m


def test_compact_from_dense_is_the_wire_layout():
    m = crafted_masks()
    c = CompactMasks.from_dense(m)
    assert c.windows.dtype == np.int32 and c.offsets.dtype == np.int64 and c.blob.dtype == np.uint8
    assert c.windows.tolist() == [[2, 1, 7, 4], [0, 0, 0, 0], [0, 0, 7, 4], [6, 3, 7, 4], [0, 0, 4, 2]]
    assert c.lengths.tolist() == [2, 0, 4, 1, 1] and c.offsets.tolist() == [0, 2, 2, 6, 7]
    assert c.blob[:2].tobytes() == bytes.fromhex("77d4") and c.is_contiguous
    assert c.blob.nbytes == 8 and c.nbytes == 8 + 5 * 16 + 5 * 8
    assert c.shape == (5, 4, 7) and len(c) == 5
    np.testing.assert_array_equal(c.dense(), m)
    np.testing.assert_array_equal(c.window(0), m[0, 1:4, 2:7])
    assert c.window(1).shape == (0, 0)
    assert c.areas().tolist() == m.sum(axis=(1, 2)).tolist()


def test_compact_indexing_like_numpy_and_layout_contiguous():
    m = np.random.default_rng(3).random((6, 9, 11)) > 0.7
    m[2] = False
    c = CompactMasks.from_dense(m)
    blob = c.blob.copy()
    for item in (3, -1, slice(1, 4), slice(None, None, -2), np.array([5, 0, 0]), m.any(axis=(1, 2)), np.array([], np.int64)):
        sub = c[item]
        expected = m[item] if not isinstance(item, int) else m[item:item + 1 or None]
        np.testing.assert_array_equal(sub.dense(), expected)
        assert sub.is_contiguous and sub == CompactMasks.from_dense(expected)
    assert np.shares_memory(c[1:4].blob, c.blob)  # a run of masks is a view, not a copy
    with pytest.raises(IndexError):
        c[6]
    np.testing.assert_array_equal(c.blob, blob)  # indexing left the original alone


def test_compact_concatenate_and_equality_across_layouts():
    m = crafted_masks()
    a, b = CompactMasks.from_dense(m[:2]), CompactMasks.from_dense(m[2:])
    joined = CompactMasks.concatenate([a, b])
    assert joined == CompactMasks.from_dense(m) and joined.is_contiguous
    # the same pixels stored in loose windows, out of order, with set padding bits: equal
    c = CompactMasks.from_dense(m)
    loose_windows = np.array([[1, 0, 7, 4], [0, 0, 0, 0], [0, 0, 7, 4], [5, 2, 7, 4], [0, 0, 4, 2]], np.int32)
    chunks = [np.packbits(m[i, y0:y1, x0:x1]) for i, (x0, y0, x1, y1) in enumerate(loose_windows.tolist())]
    chunks[3][-1] |= 0x0F  # 4 bits in one byte, 4 of padding
    order = [4, 3, 2, 0, 1]
    blob = np.concatenate([np.zeros(3, np.uint8)] + [chunks[i] for i in order])
    offsets = np.zeros(5, np.int64)
    pos = 3
    for i in order:
        offsets[i] = pos
        pos += chunks[i].size
    loose = CompactMasks(loose_windows, offsets, blob, (4, 7))
    assert not loose.is_contiguous and loose == c and c == loose
    np.testing.assert_array_equal(loose.dense(), m)
    assert loose.areas().tolist() == m.sum(axis=(1, 2)).tolist()  # padding bits not counted
    assert loose.to_rle() == c.to_rle()
    assert loose.contiguous().is_contiguous and loose.contiguous() == c
    other = m.copy()
    other[4, 1, 1] = False
    assert c != CompactMasks.from_dense(other) and c != CompactMasks.from_dense(m[:, :, :6].copy())
    with pytest.raises(ValueError, match="share one image_size"):
        CompactMasks.concatenate([a, CompactMasks.empty((5, 5))])


@pytest.mark.parametrize(
    "args,message",
    [
        ((np.zeros((1, 4), np.int64), np.zeros(1, np.int64), np.zeros(0, np.uint8)), "windows must have dtype int32, got int64"),
        ((np.zeros((1, 3), np.int32), np.zeros(1, np.int64), np.zeros(0, np.uint8)), r"windows must have shape \(N, 4\), got \(1, 3\)"),
        ((np.zeros((1, 4), np.int32), np.zeros(2, np.int64), np.zeros(0, np.uint8)), "offsets must have 1 entries to match windows, got 2"),
        ((np.array([[0, 0, 8, 1]], np.int32), np.zeros(1, np.int64), np.zeros(1, np.uint8)),
         r"windows\[0\] must be \[x0, y0, x1, y1\] with 0 <= x0 <= x1 <= 7, 0 <= y0 <= y1 <= 4, got \[0, 0, 8, 1\]"),
        ((np.array([[0, 0, 7, 4]], np.int32), np.ones(1, np.int64), np.zeros(4, np.uint8)),
         r"mask 0's bytes \[1, 5\) must lie inside the 4-byte blob"),
    ],
)
def test_compact_validation_says_expected_and_found(args, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CompactMasks(*args, (4, 7))


@pytest.mark.parametrize("size", [(1, 1), (33, 47), (8, 64)])
def test_compact_rle_is_pycocotools_exactly(size):
    """to_rle from the windows gives pycocotools.mask.encode's bytes of the dense masks,
    including masks touching every border and windows as tall as the image."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(size[0])
    m = rng.random((6, *size)) > 0.5
    m[0] = False
    m[1] = True
    m[2, :, : size[1] // 2 + 1] = True
    ours = Instances(np.zeros((6, 4), np.float32), np.zeros(6, np.float32), np.zeros(6, np.int64), m, size).to_rle()
    theirs = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in ours] == [t["counts"].decode("ascii") for t in theirs]
    assert all(r["size"] == list(size) for r in ours)


def test_instances_keep_compact_masks_through_every_operation():
    inst = make_instances(4, size=(20, 30), seed=5)
    dense = inst.masks_dense()
    assert isinstance(inst.masks, CompactMasks) and inst.masks.is_contiguous
    built = Instances(inst.boxes, inst.scores, inst.class_ids, inst.masks, inst.image_size)
    assert built.masks is inst.masks and built == inst  # no re-packing of compact masks
    assert inst.mask_areas().tolist() == dense.sum(axis=(1, 2)).tolist()
    np.testing.assert_array_equal(Instances.concatenate([inst[:1], inst[1:]]).masks_dense(), dense)
    np.testing.assert_array_equal(inst[np.array([3, 1])].masks_dense(), dense[[3, 1]])
    changed = dense.copy()
    changed[0, 0, 0] = ~changed[0, 0, 0]
    assert inst != Instances(inst.boxes, inst.scores, inst.class_ids, changed, inst.image_size)
