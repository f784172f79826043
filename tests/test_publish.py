"""rtseg.wire, rtseg.publisher, rtseg.subscriber: the wire format (encode / decode, checked against docs/wire-format.md),
the ZeroMQ publisher and subscriber over real sockets on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtseg.errors import ConfigError, PublishError
from rtseg.publisher import Publisher, binds_all_interfaces, binds_loopback_only
from rtseg.structures import CompactMasks, Frame, Instances, dense_windows
from rtseg.subscriber import run_subscriber, subscribe
from rtseg.wire import MAX_IMAGE_SIDE, SCHEMA, GapCounter, Message, decode_message, encode_message

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"
NAMES = ["person", "bicycle", "traffic light", "dog"]
LOOPBACK = "tcp://127.0.0.1:*"  # ZeroMQ picks a free port; Publisher.endpoint tells which


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def random_instances(rng: np.random.Generator, n: int, h: int, w: int) -> Instances:
    """N instances with a mix of masks: blobs, noise, empty, full, touching the edges."""
    masks = np.zeros((n, h, w), np.bool_)
    for i in range(n):
        kind = i % 6
        if kind == 0:  # rectangle with noise, anywhere
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            y1, x1 = rng.integers(y0, h) + 1, rng.integers(x0, w) + 1
            masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
        elif kind == 1:  # empty
            pass
        elif kind == 2:  # full image: touches all four edges
            masks[i] = True
        elif kind == 3:  # single pixels in opposite corners
            masks[i, 0, 0] = masks[i, h - 1, w - 1] = True
        elif kind == 4:  # a disc, clipped by the right / bottom edge
            yy, xx = np.mgrid[:h, :w]
            masks[i] = (yy - h) ** 2 + (xx - w) ** 2 < (0.6 * max(h, w)) ** 2
        else:  # sparse noise
            masks[i] = rng.random((h, w)) < 0.05
    return Instances(
        boxes=(rng.random((n, 4)) * [w, h, w, h]).astype(np.float32),
        scores=rng.random(n).astype(np.float32),
        class_ids=rng.integers(0, len(NAMES), n).astype(np.int64),
        masks=masks,
        image_size=(h, w),
    )


def make_frame(instances: Instances | None, seq: int = 0, source: str = "test", size: tuple[int, int] | None = None) -> Frame:
    h, w = size or instances.image_size
    return Frame(seq=seq, source_id=source, capture_time=1700000000.125 + seq, image=np.zeros((h, w, 3), np.uint8), instances=instances)


def parts_of(n: int = 3, h: int = 12, w: int = 9, seed: int = 0) -> list[bytes]:
    return encode_message(make_frame(random_instances(np.random.default_rng(seed), n, h, w)), NAMES, publish_time=1700000001.0)


def with_header(parts: list[bytes], change) -> list[bytes]:
    header = json.loads(parts[1])
    change(header)
    return [parts[0], json.dumps(header).encode(), parts[2]]


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def decode_from_doc_prose(parts: list[bytes]) -> tuple[dict, np.ndarray]:
    """An independent decoder written from docs/wire-format.md, section 4, bit by bit
    (no rtseg.wire, no numpy.unpackbits)."""
    topic, header_bytes, blob = parts
    header = json.loads(header_bytes.decode("utf-8"))
    assert header["schema"].startswith("rtseg.instances/1.")
    assert header["mask_encoding"] == "bitpacked-window" and header["masks_bytes"] == len(blob)
    h, w = header["image_size"]
    masks = np.zeros((len(header["instances"]), h, w), np.bool_)
    data = np.frombuffer(blob, np.uint8).astype(np.int64)
    for i, inst in enumerate(header["instances"]):
        x0, y0, x1, y1 = inst["mask_window"]
        ww, hh = x1 - x0, y1 - y0
        assert inst["mask_length"] == math.ceil(ww * hh / 8)
        k = np.arange(ww * hh)
        bits = (data[inst["mask_offset"] + k // 8] >> (7 - k % 8)) & 1
        ys, xs = y0 + k // max(ww, 1), x0 + k % max(ww, 1)
        masks[i, ys[bits == 1], xs[bits == 1]] = True
    return header, masks


@pytest.fixture
def zmq_context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


# ---------------------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, h, w, seed",
    [(0, 5, 7, 0), (1, 1, 1, 1), (1, 13, 17, 2), (2, 1, 40, 3), (6, 40, 1, 4), (12, 37, 23, 5), (25, 64, 80, 6)],
)
def test_round_trip_gives_identical_instances(n, h, w, seed):
    instances = random_instances(np.random.default_rng(seed), n, h, w)
    frame = make_frame(instances, seq=42, source="cam:0 ü")
    parts = encode_message(frame, NAMES, topic=b"rtseg.cam0", publish_time=1700000002.5)
    message = decode_message(parts)
    assert isinstance(message, Message)
    assert message.instances == instances  # masks, boxes, scores (float32-exact), class ids
    assert message.instances.scores.dtype == np.float32 and message.instances.class_ids.dtype == np.int64
    assert message.topic == b"rtseg.cam0/0" and message.stream == "0"  # <topic>/<stream> (1.3)
    assert (message.seq, message.source, message.image_size) == (42, "cam:0 ü", (h, w))
    assert (message.capture_time, message.publish_time) == (frame.capture_time, 1700000002.5)
    assert message.class_names == [NAMES[c] for c in instances.class_ids]
    assert message.header["schema"] == SCHEMA


@pytest.mark.parametrize("instances", [None, "empty"])
def test_frame_without_instances_publishes_an_empty_list_and_blob(instances):
    frame = make_frame(Instances.empty((6, 8)) if instances == "empty" else None, size=(6, 8))
    parts = encode_message(frame, NAMES)
    header = json.loads(parts[1])
    assert header["instances"] == [] and header["masks_bytes"] == 0 and parts[2] == b""
    assert header["image_size"] == [6, 8]
    assert decode_message(parts).instances == Instances.empty((6, 8))


def test_header_has_every_documented_field_and_tight_windows():
    instances = random_instances(np.random.default_rng(7), 6, 20, 30)
    before = time.time()
    header = json.loads(encode_message(make_frame(instances, seq=5, source="file.mp4"), NAMES)[1])
    assert set(header) == {"schema", "stream", "seq", "source", "capture_time", "publish_time", "image_size",
                           "mask_encoding", "masks_bytes", "instances"}
    assert header["publish_time"] >= before and isinstance(header["publish_time"], float)
    offset = 0
    for entry, mask in zip(header["instances"], instances.masks_dense()):
        assert set(entry) == {"class_id", "class_name", "score", "box", "mask_window", "mask_offset", "mask_length"}
        x0, y0, x1, y1 = entry["mask_window"]
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert [x0, y0, x1, y1] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        else:
            assert [x0, y0, x1, y1] == [0, 0, 0, 0] and entry["mask_length"] == 0
        assert entry["mask_offset"] == offset  # contiguous, in instance order
        offset += entry["mask_length"]
    assert header["masks_bytes"] == offset


def test_publisher_id_and_publish_seq_are_written_when_given_and_decoded():
    frame = make_frame(None, seq=5, size=(4, 4))
    header = json.loads(encode_message(frame, NAMES, publisher_id="00ff00ff00ff00ff", publish_seq=41)[1])
    assert (header["publisher_id"], header["publish_seq"]) == ("00ff00ff00ff00ff", 41)
    message = decode_message(encode_message(frame, NAMES, publisher_id="00ff00ff00ff00ff", publish_seq=41))
    assert (message.publisher_id, message.publish_seq, message.missed) == ("00ff00ff00ff00ff", 41, 0)
    # a 1.0 message (no counter) still decodes
    assert (decode_message(encode_message(frame, NAMES)).publish_seq, decode_message(encode_message(frame, NAMES)).publisher_id) == (None, None)
    with pytest.raises(TypeError, match="publish_seq must be an integer"):
        encode_message(frame, NAMES, publish_seq=-1)


def _counted(publisher_id: str | None, publish_seq: int | None, seq: int = 0, source: str = "cam") -> Message:
    frame = make_frame(None, seq=seq, source=source, size=(2, 2))
    return decode_message(encode_message(frame, NAMES, publisher_id=publisher_id, publish_seq=publish_seq))


def test_gap_counter_counts_gaps_in_publish_seq_and_starts_afresh_after_a_restart():
    gaps = GapCounter()
    # first message: nothing before it is known (slow joiner); then gaps of 0, 3, 0
    assert [gaps.update(_counted("a", k)) for k in (7, 8, 12, 13)] == [0, 0, 3, 0]
    # a restarted publisher (new id) begins at 0 again: no negative or huge gap
    assert [gaps.update(_counted("b", k)) for k in (0, 2)] == [0, 1]
    # the frame seq, which may jump or restart with the source, does not matter here
    assert gaps.update(_counted("b", 3, seq=10**6)) == 0
    assert (gaps.received, gaps.missed, gaps.restarts) == (7, 4, 1)


def test_gap_counter_falls_back_to_the_frame_seq_for_messages_without_publish_seq():
    """Schema 1.0 publishers send no publish_seq: the frame seq of the source stands in; a
    seq going backwards or another source is a restart, never a negative count."""
    gaps = GapCounter()
    assert [gaps.update(_counted(None, None, seq=k)) for k in (3, 4, 9, 0, 2)] == [0, 0, 4, 0, 1]
    assert gaps.update(_counted(None, None, seq=50, source="other")) == 0
    assert (gaps.received, gaps.missed, gaps.restarts) == (6, 5, 2)


def test_encode_does_not_modify_the_frame():
    instances = random_instances(np.random.default_rng(8), 5, 10, 10)
    fields = lambda: (instances.boxes, instances.scores, instances.class_ids, instances.masks.windows,
                      instances.masks.offsets, instances.masks.blob)
    copies = [a.copy() for a in fields()]
    encode_message(make_frame(instances), NAMES)
    for original, copy in zip(fields(), copies):
        assert np.array_equal(original, copy)


def test_mask_windows_are_exclusive_ends_and_zero_for_empty():
    masks = np.zeros((3, 4, 5), np.bool_)
    masks[0, 3, 4] = True
    masks[2, 1:3, 0:2] = True
    assert dense_windows(masks).tolist() == [[4, 3, 5, 4], [0, 0, 0, 0], [0, 1, 2, 3]]
    inst = Instances(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), np.zeros(3, np.int64), masks, (4, 5))
    header = json.loads(encode_message(make_frame(inst), NAMES)[1])
    assert [e["mask_window"] for e in header["instances"]] == [[4, 3, 5, 4], [0, 0, 0, 0], [0, 1, 2, 3]]


def test_compact_masks_are_published_as_they_are_and_decoded_without_a_copy():
    """Part 2 is the instances' CompactMasks blob byte for byte (no re-encoding), and the
    decoded message's masks are a view of the received part 2."""
    instances = random_instances(np.random.default_rng(12), 6, 20, 30)
    parts = encode_message(make_frame(instances), NAMES, publish_time=1.5)
    assert parts[2] == instances.masks.blob.tobytes()
    header = json.loads(parts[1])
    assert [e["mask_window"] for e in header["instances"]] == instances.masks.windows.tolist()
    assert [e["mask_offset"] for e in header["instances"]] == instances.masks.offsets.tolist()
    decoded = decode_message(parts).instances
    assert np.shares_memory(decoded.masks.blob, np.frombuffer(parts[2], np.uint8))
    assert decoded == instances and encode_message(make_frame(decoded), NAMES, publish_time=1.5) == parts
    # picked out of order (and twice): laid out afresh, still a valid message
    picked = decoded[np.array([4, 1, 1])]
    again = decode_message(encode_message(make_frame(picked), NAMES)).instances
    assert again == instances[np.array([4, 1, 1])]


def test_encode_refuses_class_ids_without_names_and_non_finite_scores():
    instances = random_instances(np.random.default_rng(9), 2, 5, 5)
    with pytest.raises(PublishError, match=r"class id must be in \[0, 1\)"):
        encode_message(make_frame(instances.__class__(instances.boxes, instances.scores, np.array([0, 3]), instances.masks, (5, 5))), NAMES[:1])
    bad = Instances(instances.boxes, np.array([0.5, np.nan], np.float32), instances.class_ids, instances.masks, (5, 5))
    with pytest.raises(PublishError, match="scores must be finite"):
        encode_message(make_frame(bad), NAMES)


# ---------------------------------------------------------------------------------------
# docs/wire-format.md is complete: decoders written from it agree with rtseg
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, h, w, seed", [(0, 4, 4, 0), (1, 7, 3, 1), (9, 31, 45, 2), (20, 50, 64, 3)])
def test_decoder_written_from_the_doc_agrees(n, h, w, seed):
    parts = parts_of(n, h, w, seed)
    header, masks = decode_from_doc_prose(parts)
    message = decode_message(parts)
    assert np.array_equal(masks, message.instances.masks_dense())
    assert np.array_equal(np.array([e["box"] for e in header["instances"]], np.float32).reshape(-1, 4), message.instances.boxes)
    assert np.array_equal(np.array([e["score"] for e in header["instances"]], np.float32), message.instances.scores)


def _doc_snippet_decode():
    namespace: dict = {"__name__": "wire_format_doc_snippet"}  # not __main__: defines decode() only
    (snippet,) = doc_blocks("python")
    exec(compile(snippet, str(DOC), "exec"), namespace)
    return namespace["decode"]


@pytest.mark.parametrize("n, h, w, seed", [(0, 4, 4, 0), (1, 1, 1, 1), (9, 31, 45, 2), (20, 50, 64, 3)])
def test_python_subscriber_in_the_doc_decodes_messages(n, h, w, seed):
    parts = parts_of(n, h, w, seed)
    header, masks = _doc_snippet_decode()(parts)
    assert np.array_equal(masks, decode_message(parts).instances.masks_dense())
    assert header == json.loads(parts[1])


def test_worked_example_in_the_doc_decodes_to_its_picture():
    (header_text,) = doc_blocks("json")
    blob = bytes.fromhex(re.search(r"part 2 \(hex\): `([0-9a-f]+)`", DOC.read_text()).group(1))
    topic = re.search(r"- part 0: `([^`]+)`", DOC.read_text()).group(1).encode()
    parts = [topic, header_text.encode(), blob]
    expected = np.zeros((2, 4, 7), np.bool_)
    expected[0, 1:4, 2:7] = [[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]]
    message = decode_message(parts)
    assert np.array_equal(message.instances.masks_dense(), expected)
    assert np.array_equal(decode_from_doc_prose(parts)[1], expected)
    assert np.array_equal(_doc_snippet_decode()(parts)[1], expected)
    assert message.class_names == ["person", "dog"] and message.instances.scores[0] == np.float32(0.9)
    assert (message.topic, message.stream, message.stream_seq, message.publish_seq) == (b"rtseg/0", "0", 12, 17)
    # and rtseg's encoder writes exactly the documented bytes for that mask
    reencoded = encode_message(make_frame(message.instances, seq=3, source="cam0"), NAMES)
    assert reencoded[2].hex() == "77d4" and json.loads(reencoded[1])["instances"][0]["mask_window"] == [2, 1, 7, 4]


# ---------------------------------------------------------------------------------------
# malformed input
# ---------------------------------------------------------------------------------------
def _drop(key):
    return lambda h: h.pop(key)


def _set(key, value):
    return lambda h: h.__setitem__(key, value)


def _set_instance(key, value, index=0):
    return lambda h: h["instances"][index].__setitem__(key, value)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (_drop("seq"), "header must have field 'seq', found it missing"),
        (_drop("instances"), "field 'instances', found it missing"),
        (_set("seq", "7"), "'seq' must be an integer"),
        (_set("seq", True), "'seq' must be an integer"),
        (_set("seq", -1), "'seq' must be an integer in [0,"),
        (_set("source", 3), "'source' must be a string"),
        (_set("capture_time", "now"), "'capture_time' must be a finite number"),
        (_set("image_size", [100000, 100000]), "'image_size' must be [H, W] with 1 <= H, W <= 16384, found [100000, 100000]"),
        (_set("image_size", [0, 5]), "'image_size' must be [H, W]"),
        (_set("image_size", [12]), "'image_size' must be a list of 2 integers"),
        (_set("schema", "rtseg.instances/2.0"), "schema major version must be 1"),
        (_set("schema", "something/1.0"), "'schema' must be 'rtseg.instances/<major>.<minor>'"),
        (_set("mask_encoding", "rle"), "'mask_encoding' must be 'bitpacked-window'"),
        (_set("masks_bytes", 10**6), "'masks_bytes' must be the masks part's length"),
        (_set("instances", {"a": 1}), "'instances' must be a list of at most 10000 entries"),
        (_set("instances", [{}] * 10001), "'instances' must be a list of at most 10000 entries, found 10001 entries"),
        (_set_instance("mask_offset", 10**9), "mask bytes must be inside the"),
        (lambda h: h["instances"][0].__setitem__("mask_length", h["instances"][0]["mask_length"] + 1), "'mask_length' must be"),
        (_set_instance("mask_window", [0, 0, 10, 13]), "'mask_window' must be [x0, y0, x1, y1] with 0 <= x0 <= x1 <= 9"),
        (_set_instance("mask_window", [5, 0, 4, 1]), "'mask_window' must be"),
        (_set_instance("mask_window", [0, 0, 1.5, 1]), "'mask_window' must be a list of 4 integers"),
        (_set_instance("box", [0, 0, 1]), "'box' must be a list of 4 numbers"),
        (_set_instance("box", [0, 0, 1, 1e300]), "'box' must be a finite number"),
        (_set_instance("score", None), "'score' must be a finite number"),
        (_set_instance("class_id", -2), "'class_id' must be an integer"),
        (_set_instance("class_name", None), "'class_name' must be a string"),
        (lambda h: h["instances"].__setitem__(0, [1, 2]), "instances[0] must be a JSON object"),
        (lambda h: h["instances"][2].__setitem__("mask_offset", h["instances"][0]["mask_offset"]), "not overlapping another mask"),
        (_set("publish_seq", -1), "'publish_seq' must be an integer in [0,"),
        (_set("publish_seq", 1.5), "'publish_seq' must be an integer"),
        (_set("publisher_id", 7), "'publisher_id' must be a string"),
        (_set("publisher_id", ""), "'publisher_id' must be a string of 1 to 64 characters, found 0 characters"),
        (_set("publisher_id", "x" * 65), "'publisher_id' must be a string of 1 to 64 characters, found 65 characters"),
    ],
)
def test_malformed_header_raises_one_line_publish_error(change, fragment):
    parts = with_header(parts_of(3, 12, 9, seed=0), change)
    with pytest.raises(PublishError) as info:
        decode_message(parts)
    message = str(info.value)
    assert fragment in message and "\n" not in message and "found" in message


@pytest.mark.parametrize(
    "parts, fragment",
    [
        ([b"rtseg", b"{}"], "must be 3 parts (topic, header, masks), found 2 parts"),
        ([b"a", b"b", b"c", b"d"], "found 4 parts"),
        (b"rtseg", "must be a sequence of 3 parts"),
        ([b"rtseg", b"{not json", b""], "must be a JSON object, found invalid JSON"),
        ([b"rtseg", b"\xff\xfe{}", b""], "must be UTF-8 text"),
        ([b"rtseg", b"[1, 2]", b""], "must be a JSON object, found list"),
        ([b"rtseg", b'{"seq": NaN}', b""], "found invalid JSON"),
        ([b"rtseg", b"[" * 100000, b""], "found invalid JSON"),
        ([b"rtseg", "{}", b""], "part 1 must be bytes, found str"),
    ],
)
def test_malformed_parts_raise_publish_error(parts, fragment):
    with pytest.raises(PublishError, match=re.escape(fragment)):
        decode_message(parts)


def test_size_limits_are_checked_before_allocating():
    parts = parts_of(3, 12, 9)
    with pytest.raises(PublishError, match="must be at most 100 bytes"):
        decode_message(parts, max_message_bytes=100)
    # empty masks cost no blob bytes: the decoded size N * H * W is capped separately
    header = {**json.loads(parts[1]), "image_size": [MAX_IMAGE_SIDE, MAX_IMAGE_SIDE], "masks_bytes": 0,
              "instances": [{"class_id": 0, "class_name": "a", "score": 0.5, "box": [0, 0, 1, 1],
                             "mask_window": [0, 0, 0, 0], "mask_offset": 0, "mask_length": 0}] * 10000}
    with pytest.raises(PublishError, match=r"at most 1073741824 mask pixels \(N \* H \* W\), found 10000 x 16384 x 16384"):
        decode_message([b"rtseg", json.dumps(header).encode(), b""])


def test_newer_minor_version_with_unknown_fields_is_accepted():
    parts = with_header(parts_of(2), lambda h: h.update(schema="rtseg.instances/1.7", future={"x": 1}))
    parts = with_header(parts, lambda h: h["instances"][0].update(colour="red"))
    assert decode_message(parts).instances == decode_message(parts_of(2)).instances


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
HEADER_KEYS = ["schema", "seq", "source", "capture_time", "publish_time", "image_size", "mask_encoding", "masks_bytes", "instances",
               "publisher_id", "publish_seq"]
INSTANCE_KEYS = ["class_id", "class_name", "score", "box", "mask_window", "mask_offset", "mask_length"]
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_publish_error(parts) -> None:
    try:
        decode_message(parts, max_mask_pixels=2**22)
    except PublishError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_fuzz_random_parts_only_raise_publish_error(parts):
    _decode_or_publish_error(parts)


@FUZZ
@given(st.data())
def test_fuzz_mutated_messages_only_raise_publish_error(data):
    parts = parts_of(data.draw(st.integers(1, 4)), data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
    header = json.loads(parts[1])
    blob = parts[2]
    for _ in range(data.draw(st.integers(1, 3))):
        mutation = data.draw(st.sampled_from(["header", "instance", "instance", "instance", "delete", "blob"]))
        if mutation == "header":
            header[data.draw(st.sampled_from(HEADER_KEYS))] = data.draw(JSON_VALUES)
        elif mutation == "instance" and isinstance(header.get("instances"), list) and header["instances"]:
            entry = header["instances"][data.draw(st.integers(0, len(header["instances"]) - 1))]
            if isinstance(entry, dict):
                entry[data.draw(st.sampled_from(INSTANCE_KEYS))] = data.draw(
                    JSON_VALUES | st.lists(st.integers(-3, 12), min_size=4, max_size=4) | st.integers(-2, 40))
        elif mutation == "delete" and header:
            header.pop(data.draw(st.sampled_from(sorted(header))))
        elif mutation == "blob":
            blob = data.draw(st.binary(max_size=len(blob) + 3))
    text = json.dumps(header).encode()
    if data.draw(st.integers(0, 4)) == 0:  # sometimes corrupt the JSON text itself
        position = data.draw(st.integers(0, len(text)))
        text = text[:position] + data.draw(st.binary(max_size=4)) + text[position + 1:]
    _decode_or_publish_error([parts[0], text, blob])


# ---------------------------------------------------------------------------------------
# Publisher and subscribe over real sockets
# ---------------------------------------------------------------------------------------
def test_publisher_to_subscriber_delivers_every_message_in_order():
    n_messages = 30
    frames = [make_frame(random_instances(np.random.default_rng(i), 4, 24, 32), seq=i, source="test") for i in range(n_messages)]
    received: list[Message] = []
    errors: list[BaseException] = []
    with Publisher(LOOPBACK, NAMES, sndhwm=100) as publisher:

        def collect() -> None:
            try:
                for message in subscribe(publisher.endpoint, timeout=10.0):
                    received.append(message)
                    if message.source == "test" and message.seq == n_messages - 1:
                        return
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        # handshake for the slow joiner: warm-up messages until the subscriber gets one
        for _ in range(1000):
            if received or errors or not thread.is_alive():
                break
            publisher.publish(make_frame(None, seq=0, source="warmup", size=(24, 32)))
            time.sleep(0.01)
        assert received, f"subscriber never received a warm-up message: {errors}"
        for frame in frames:  # sndhwm 100 > 30 messages: none can be dropped even if it lags
            publisher.publish(frame)
        thread.join(timeout=30)
        assert not thread.is_alive() and not errors
        stats = publisher.stats
    real = [m for m in received if m.source == "test"]
    assert [m.seq for m in real] == list(range(n_messages))
    assert all(m.instances == f.instances for m, f in zip(real, frames))
    assert stats.sent >= n_messages and stats.bytes_sent > 0
    # the publisher's counter runs on without gaps across warm-up and real messages
    assert all(m.missed == 0 for m in received) and {m.publisher_id for m in received} == {publisher.publisher_id}
    assert [m.publish_seq for m in received] == list(range(received[0].publish_seq, received[0].publish_seq + len(received)))


def _warm_up(publisher: Publisher, *subscribers) -> list[Message]:
    """Until each subscriber generator has received a message (ZeroMQ's slow joiner): a
    thread publishes small warm-up frames while this one waits on each ``next()``.
    Returns each subscriber's first message."""
    done = threading.Event()

    def keep_publishing() -> None:
        while not done.wait(0.01):
            publisher.publish(make_frame(None, source="warm-up", size=(8, 8)))

    thread = threading.Thread(target=keep_publishing, daemon=True)
    thread.start()
    try:
        firsts = [next(messages) for messages in subscribers]
    finally:
        done.set()
        thread.join()
    assert [m.source for m in firsts] == ["warm-up"] * len(subscribers)
    return firsts


def _next_from(messages, source: str) -> Message:
    """The next message from ``source``, skipping warm-up messages still queued."""
    for message in messages:
        if message.source == source:
            return message
    raise AssertionError(f"the subscriber ended (receive timeout) before a message from {source!r}")


def test_stalled_subscriber_misses_frames_alone_and_counts_them_while_a_healthy_one_gets_every_frame(tmp_path):
    """Without XPUB_NODROP, ZeroMQ drops a message only for the subscriber whose queue is
    full. A subscriber that stops reading (receive queue of 1 message, a Unix socket's small
    buffers) costs the healthy subscriber nothing, and publish() never blocks; when the
    stalled one reads again, the gaps in publish_seq say exactly what it missed."""
    rng = np.random.default_rng(0)
    big = make_frame(Instances(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64),
                               rng.random((1, 1024, 1024)) < 0.5, (1024, 1024)))  # ~128 KiB per message
    n_big, endpoint = 64, f"ipc://{tmp_path}/rtseg.sock"  # 8 MiB: far more than the queues and buffers hold
    with Publisher(endpoint, NAMES) as publisher:
        # the timeouts only end a wait that would otherwise hang the test
        healthy_gaps, stalled_gaps = GapCounter(), GapCounter()
        healthy = subscribe(publisher.endpoint, timeout=30.0, gaps=healthy_gaps)
        stalled = subscribe(publisher.endpoint, timeout=30.0, rcvhwm=1, gaps=stalled_gaps)
        _, first = _warm_up(publisher, healthy, stalled)  # the stalled one now stops reading
        got: list[Message] = []
        for seq in range(n_big):  # lock-step with the healthy subscriber only
            publisher.publish(make_frame(big.instances, seq=seq, source="big"))
            got.append(_next_from(healthy, "big"))
        # the stalled subscriber reads again; a tail message is published per message it
        # reads, until it has come through everything queued for it to a tail message
        late: list[Message] = []
        for seq in range(10 * n_big):
            publisher.publish(make_frame(None, seq=seq, source="tail", size=(8, 8)))
            assert _next_from(healthy, "tail").seq == seq
            late.append(next(stalled))
            if late[-1].source == "tail":
                break
        assert late[-1].source == "tail", "the stalled subscriber never got past its backlog"
        healthy.close()
        stalled.close()
    # the healthy subscriber received every frame, in order, and missed nothing
    assert [m.seq for m in got] == list(range(n_big)) and all(m.instances == big.instances for m in got)
    assert healthy_gaps.missed == 0 and healthy_gaps.restarts == 0
    # the stalled one missed frames, and its count is consistent: each gap in publish_seq
    # is reported once, on the message after it, and received + missed covers every
    # message published from the first one it received to the last
    assert stalled_gaps.received == 1 + len(late) and stalled_gaps.restarts == 0
    assert stalled_gaps.missed == sum(m.missed for m in late) > 0
    assert {m.publisher_id for m in [first, *late]} == {publisher.publisher_id}
    publish_seqs = [m.publish_seq for m in [first, *late]]
    assert all(m.missed == b - a - 1 >= 0 for a, b, m in zip(publish_seqs, publish_seqs[1:], late))
    assert stalled_gaps.received + stalled_gaps.missed == publish_seqs[-1] - publish_seqs[0] + 1
    assert len([m for m in late if m.source == "big"]) < n_big  # big frames were among those it missed


def test_bind_to_an_address_in_use_raises_publish_error():
    with Publisher(LOOPBACK, NAMES) as first:
        with pytest.raises(PublishError, match=re.escape(f"cannot bind ZeroMQ PUB socket to '{first.endpoint}'")) as info:
            Publisher(first.endpoint, NAMES)
    assert "in use" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:notaport", "nonsense://x", "tcp://127.0.0.1"])
def test_bad_endpoint_raises_publish_error_naming_it(endpoint):
    with pytest.raises(PublishError, match=re.escape(repr(endpoint))):
        Publisher(endpoint, NAMES)


def test_publisher_over_ipc_close_is_idempotent_and_publish_after_close_fails(tmp_path):
    publisher = Publisher(f"ipc://{tmp_path}/rtseg.sock", NAMES)
    publisher.publish(make_frame(None, size=(4, 4)))  # no subscriber: accepted, goes nowhere
    assert publisher.stats.sent == 1
    publisher.close()
    publisher.close()
    assert publisher.closed
    with pytest.raises(PublishError, match="expected an open Publisher, found it closed"):
        publisher.publish(make_frame(None, size=(4, 4)))


def test_binding_all_interfaces_is_recognised_for_the_warning():
    assert binds_all_interfaces("tcp://*:5555") and binds_all_interfaces("tcp://0.0.0.0:5555")
    assert binds_all_interfaces("tcp://[::]:5555")
    assert not binds_all_interfaces("tcp://127.0.0.1:5555") and not binds_all_interfaces("ipc:///tmp/x")


def test_loopback_only_endpoints_are_recognised_for_the_log():
    for endpoint in ("tcp://127.0.0.1:5555", "tcp://127.0.0.2:1", "tcp://[::1]:5555", "tcp://localhost:5", "ipc:///tmp/x"):
        assert binds_loopback_only(endpoint), endpoint
    for endpoint in ("tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.168.1.4:5555", "tcp://eth0:5555"):
        assert not binds_loopback_only(endpoint), endpoint


def test_subscriber_keeps_receiving_after_the_publisher_restarts():
    """The subscriber reconnects by itself when the publisher goes away and comes back on
    the same endpoint (its socket monitor reconnects after any disconnect)."""
    received: list[Message] = []
    with Publisher(LOOPBACK, NAMES) as first:
        endpoint = first.endpoint
        messages = subscribe(endpoint, timeout=20.0)
        thread = threading.Thread(target=lambda: received.extend(m for _, m in zip(range(6), messages)))
        thread.start()
        while not received:
            first.publish(make_frame(None, seq=1, source="first", size=(4, 4)))
            time.sleep(0.01)
    with Publisher(endpoint, NAMES) as second:  # same port, a new socket
        while thread.is_alive():
            second.publish(make_frame(None, seq=2, source="second", size=(4, 4)))
            time.sleep(0.01)
        thread.join()
    messages.close()
    assert received[0].source == "first" and received[-1].source == "second"


def test_subscribe_skips_malformed_messages_with_a_warning(zmq_context, caplog):
    pub = zmq_context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    good = parts_of(2)
    received: list[Message] = []

    def collect_first() -> None:
        for message in subscribe(f"tcp://127.0.0.1:{port}", timeout=10.0):
            received.append(message)
            return

    thread = threading.Thread(target=collect_first, daemon=True)
    with caplog.at_level(logging.WARNING, logger="rtseg.subscriber"):
        thread.start()
        for _ in range(500):  # handshake: until a good message has come through
            if received:
                break
            pub.send_multipart([b"rtseg", b"{broken", b""])
            pub.send_multipart(good)
            time.sleep(0.01)
        thread.join(timeout=20)
    pub.close(linger=0)
    assert not thread.is_alive() and received
    assert received[0].instances == decode_message(good).instances
    assert any("malformed" in r.getMessage() and "invalid JSON" in r.getMessage() for r in caplog.records)


def test_subscribe_stops_after_timeout_without_messages():
    with Publisher(LOOPBACK, NAMES) as publisher:
        assert list(subscribe(publisher.endpoint, timeout=0.2)) == []


def test_subscribe_to_a_bad_endpoint_raises_publish_error():
    with pytest.raises(PublishError, match="cannot connect ZeroMQ SUB socket to 'nonsense://x'"):
        next(subscribe("nonsense://x", timeout=0.1))


# ---------------------------------------------------------------------------------------
# run_subscriber (rtseg subscribe)
# ---------------------------------------------------------------------------------------
def test_run_subscriber_prints_lines_and_saves_decodable_json(tmp_path):
    save_dir = tmp_path / "out"
    out, err = io.StringIO(), io.StringIO()
    published: dict[int, Instances] = {}
    result: list = []
    with Publisher(LOOPBACK, NAMES) as publisher:

        def run() -> None:
            try:
                result.append(run_subscriber(publisher.endpoint, count=3, timeout=10.0, save_dir=str(save_dir), out=out,
                                             err=err))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        for seq in range(3000):  # until it has received 3 (earlier ones may precede the subscription)
            if not thread.is_alive():
                break
            instances = random_instances(np.random.default_rng(seq), seq % 4, 16, 20)
            published[seq] = instances
            publisher.publish(make_frame(instances, seq=seq, source="cam0"))
            time.sleep(0.005)
        thread.join(timeout=20)
    assert result == [0]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(re.match(r"seq=\d+ stream=0 source='cam0' latency=-?\d+\.\dms instances=\d+ \[", line) for line in lines)
    missed = sum(int(m.group(1)) for m in re.finditer(r" missed=(\d+)$", out.getvalue(), flags=re.M))
    assert err.getvalue() == f"received 3 message(s), missed {missed}, publisher restarts 0\n"
    files = sorted(save_dir.glob("*/*.json"))
    assert len(files) == 3
    for path in files:
        document = json.loads(path.read_text())
        header = document["header"]
        assert path.name == f"{header['seq']:010d}.json" and path.parent.name == header["stream"] == "0"
        expected = published[header["seq"]]
        decoded = Instances.from_rle(
            boxes=[e["box"] for e in header["instances"]],
            scores=[e["score"] for e in header["instances"]],
            class_ids=[e["class_id"] for e in header["instances"]],
            rles=document["mask_rle"],
            image_size=tuple(header["image_size"]),
        )
        assert decoded == expected


def test_run_subscriber_prints_the_frames_missed_before_a_message(zmq_context):
    """A publisher (a plain PUB socket here) whose counter jumps by 10: the subscriber's
    line for the message after the jump says missed=9, and so do its totals."""
    pub = zmq_context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    out, err = io.StringIO(), io.StringIO()
    result: list = []
    thread = threading.Thread(target=lambda: result.append(
        run_subscriber(f"tcp://127.0.0.1:{port}", timeout=1.0, out=out, err=err)), daemon=True)
    thread.start()
    publish_seq = 0
    while not out.getvalue():  # until the subscriber has received one (slow joiner)
        assert thread.is_alive() and publish_seq < 3000
        pub.send_multipart(encode_message(make_frame(None, size=(4, 4)), NAMES, publisher_id="p1", publish_seq=publish_seq))
        publish_seq += 1
        time.sleep(0.01)
    pub.send_multipart(encode_message(make_frame(None, seq=99, source="jump", size=(4, 4)), NAMES,
                                      publisher_id="p1", publish_seq=publish_seq + 9))
    thread.join(timeout=30)  # it stops 1 s after the last message
    pub.close(linger=0)
    assert result == [0]
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("seq=99 stream=0 source='jump'") and lines[-1].endswith(" missed=9")
    assert not any("missed=" in line for line in lines[:-1])
    assert err.getvalue() == f"received {len(lines)} message(s), missed 9, publisher restarts 0\n"


def test_run_subscriber_with_a_bad_endpoint_raises_publish_error():
    with pytest.raises(PublishError, match="nonsense://x"):
        run_subscriber("nonsense://x", count=1, timeout=0.1, save_dir=None, out=io.StringIO())


# ---------------------------------------------------------------------------------------
# bounded memory: packed masks, the byte-bounded receive queue (issue 15, item 9)
# ---------------------------------------------------------------------------------------
def hostile_empty_masks_message() -> list[bytes]:
    """Under 1 KB on the wire, within every documented limit: four empty masks declared on
    a 16384 x 16384 image (4 * 16384**2 = 2**30 = max_mask_pixels)."""
    side = MAX_IMAGE_SIDE
    header = {"schema": SCHEMA, "seq": 7, "source": "hostile", "capture_time": 1.0, "publish_time": 1.0,
              "image_size": [side, side], "mask_encoding": "bitpacked-window", "masks_bytes": 0,
              "instances": [{"class_id": 0, "class_name": "person", "score": 0.5, "box": [0.0, 0.0, 1.0, 1.0],
                             "mask_window": [0, 0, 0, 0], "mask_offset": 0, "mask_length": 0}] * 4,
              "publisher_id": "00ff00ff00ff00ff", "publish_seq": 0}
    return [b"rtseg", json.dumps(header).encode(), b""]


@pytest.mark.parametrize("seed, n, h, w", [(0, 6, 24, 32), (1, 12, 7, 5), (2, 6, 1, 9), (3, 6, 9, 1), (4, 1, 3, 3)])
def test_packed_masks_give_the_dense_masks_rle_and_areas_of_the_published_instances(seed, n, h, w):
    instances = random_instances(np.random.default_rng(seed), n, h, w)
    packed = decode_message(encode_message(make_frame(instances), NAMES)).instances
    assert len(packed) == n and packed.image_size == (h, w)
    assert isinstance(packed, Instances) and isinstance(packed.masks, CompactMasks)
    assert np.array_equal(packed.masks_dense(), instances.masks_dense())
    assert packed.to_rle() == instances.to_rle()  # computed from the windows, same bytes as pycocotools
    assert np.array_equal(packed.mask_areas(), instances.mask_areas())
    assert packed[1:3] == instances[1:3] and packed[0] == instances[0] and packed == instances
    assert packed[1:] != instances[:-1] if n > 1 else True


def test_a_tiny_message_declaring_huge_empty_masks_is_received_and_saved_in_memory_proportional_to_its_size(
        zmq_context, tmp_path):
    """Through a real socket into ``rtseg subscribe --save`` (run_subscriber): receiving,
    decoding and saving the message allocates (traced by tracemalloc, numpy's buffers
    included) less than 200 bytes per byte on the wire -- not the 1 GiB its full-size
    masks would take."""
    parts = hostile_empty_masks_message()
    wire_bytes = sum(len(p) for p in parts)
    assert wire_bytes < 1000
    pub = zmq_context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def flood() -> None:  # until the subscriber has its one message (slow joiner)
        while not stop.is_set():
            pub.send_multipart(parts)
            time.sleep(0.01)

    sender = threading.Thread(target=flood, daemon=True)
    out, err = io.StringIO(), io.StringIO()
    import pycocotools.mask  # noqa: F401  # one-time imports (a few MB) are not the message's cost
    from zmq.utils import monitor  # noqa: F401
    tracemalloc.start()
    try:
        sender.start()
        code = run_subscriber(f"tcp://127.0.0.1:{port}", count=1, timeout=20.0, save_dir=str(tmp_path), out=out, err=err)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        stop.set()
        sender.join(timeout=10)
        pub.close(linger=0)
    assert code == 0 and "instances=4" in out.getvalue()
    assert peak < 200 * wire_bytes, f"{peak} bytes allocated for a {wire_bytes}-byte message"
    saved = json.loads((tmp_path / "0" / "0000000007.json").read_text())
    assert [int(a) for a in pycocotools.mask.area([{"size": r["size"], "counts": r["counts"].encode()} for r in saved["mask_rle"]])] \
        == [0, 0, 0, 0]
    assert all(r["size"] == [MAX_IMAGE_SIDE, MAX_IMAGE_SIDE] for r in saved["mask_rle"])


SLOW_SUBSCRIBER = r"""
import sys, time
from rtseg.subscriber import subscribe

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

endpoint, max_message_bytes, max_queued_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
baseline = rss("VmRSS")
messages = subscribe(endpoint, timeout=30.0, max_message_bytes=max_message_bytes, max_queued_bytes=max_queued_bytes)
for i, message in enumerate(messages):
    if i == 0:
        print("first", flush=True)  # the test floods from here on
        sys.stdin.readline()  # ... and says when it has sent everything
    time.sleep(0.2)  # a slow consumer: 5 messages a second
    if i == 10:
        break
messages.close()
print("peak", rss("VmHWM") - baseline, flush=True)
"""


def test_a_slow_subscriber_under_a_flood_of_large_messages_holds_a_bounded_number_of_bytes(tmp_path):
    """A real subscriber process that reads 5 messages a second while a publisher floods
    it with 2 MiB messages (200 MiB in all, as fast as loopback takes them): its peak RSS
    stays within its byte budget (``max_queued_bytes`` 16 MiB: ZMQ_RCVHWM 7) plus three
    messages and 48 MiB for everything else. With a queue of 1000 messages it held every
    message that arrived."""
    rng = np.random.default_rng(0)
    masks = rng.random((1, 4096, 4096)) < 0.5  # noise: 2 MiB bit-packed
    big = Instances(np.array([[0, 0, 4096, 4096]], np.float32), np.array([0.5], np.float32), np.array([0], np.int64),
                    masks, (4096, 4096))
    parts = encode_message(make_frame(big), NAMES, publisher_id="00ff00ff00ff00ff", publish_seq=0)
    message_bytes = sum(len(p) for p in parts)
    max_message_bytes, max_queued_bytes = message_bytes + 4096, 16 * 2**20
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1000)  # the publisher side queues the whole flood (zero-copy)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    script = tmp_path / "slow_subscriber.py"
    script.write_text(SLOW_SUBSCRIBER)
    proc = subprocess.Popen([sys.executable, str(script), f"tcp://127.0.0.1:{port}", str(max_message_bytes),
                             str(max_queued_bytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        frames = [zmq.Frame(p) for p in parts]
        ready = zmq.Poller()
        ready.register(proc.stdout, zmq.POLLIN)
        for _ in range(3000):  # until the subscriber has its first message (slow joiner)
            pub.send_multipart(frames, copy=False)
            if ready.poll(10):
                break
        assert proc.stdout.readline() == "first\n"
        for _ in range(100):
            pub.send_multipart(frames, copy=False)
        time.sleep(3.0)  # lets the flood reach the subscriber (it holds what arrives while it is slow)
        out, _ = proc.communicate("go\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close(linger=0)
        context.term()
    assert proc.returncode == 0
    peak = int(out.split()[-1])
    bound = max_queued_bytes + 3 * max_message_bytes + 48 * 2**20
    assert peak < bound, f"peak RSS grew by {peak / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB"


@pytest.mark.parametrize("kwargs, message", [
    (dict(rcvhwm=0), r"rcvhwm must be an integer in \[1, 8\]"),  # 0 = unlimited in ZeroMQ: unbounded memory
    (dict(rcvhwm=1000), r"rcvhwm must be an integer in \[1, 8\] \(max_queued_bytes 536870912 / max_message_bytes 67108864"),
    (dict(rcvhwm=5, max_message_bytes=2**20, max_queued_bytes=4 * 2**20), r"rcvhwm must be an integer in \[1, 4\]"),
    (dict(max_queued_bytes=0), "max_queued_bytes must be an integer >= 1"),
])
def test_a_receive_queue_beyond_the_byte_budget_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        next(subscribe("tcp://127.0.0.1:1", timeout=0.1, **kwargs))


def test_a_header_above_its_cap_is_refused_before_it_is_parsed():
    """JSON in Python takes up to ~25 times its text: a header of a million empty objects in
    an unknown field is refused by its length alone."""
    header = json.loads(parts_of(1)[1])
    header["future"] = [{}] * 1_000_000  # 3 MB of text, about 70 MB parsed
    parts = [b"rtseg", json.dumps(header, separators=(",", ":")).encode(), parts_of(1)[2]]
    with pytest.raises(PublishError, match=r"the header \(part 1\) must be at most 2097152 bytes, found 3"):
        decode_message(parts, max_header_bytes=2 * 2**20)
    assert decode_message(parts).seq == 0  # within the default 8 MiB: parsed, the unknown field ignored


def test_subscribe_keeps_at_most_three_parts_of_a_message(zmq_context, caplog):
    """A publisher's message of 50 parts of 1 MiB each (each part within max_message_bytes,
    which ZeroMQ checks per part): the subscriber keeps three, drops the rest as they
    arrive (tracemalloc: under 8 MiB allocated, not the 49 MiB of the whole message), and
    reports the message as malformed."""
    pub = zmq_context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    good = parts_of(2)
    hostile = [b"rtseg"] + [b"x" * 2**20] * 49
    received: list[Message] = []
    messages = subscribe(f"tcp://127.0.0.1:{port}", timeout=10.0, max_message_bytes=2 * 2**20)
    stop = threading.Event()

    def send() -> None:  # hostile then good, until the subscriber has a good one (slow joiner)
        while not stop.is_set():
            pub.send_multipart(hostile, copy=False)
            pub.send_multipart(good)
            time.sleep(0.05)

    sender = threading.Thread(target=send, daemon=True)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="rtseg.subscriber"):
            sender.start()
            received.append(next(messages))
            while not any("found 50 parts" in r.getMessage() for r in caplog.records):
                received.append(next(messages))  # until a hostile message came through whole
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        stop.set()
        sender.join(timeout=10)
        messages.close()
        pub.close(linger=0)
    assert received[0].instances == decode_message(good).instances
    assert any("must be 3 parts (topic, header, masks), found 50 parts" in r.getMessage() for r in caplog.records)
    assert peak < 8 * 2**20, f"{peak} bytes allocated"
