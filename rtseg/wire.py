"""The rtseg wire format: one ZeroMQ multipart message per frame (encode and decode).

The wire format is specified in ``docs/wire-format.md``; that document is normative and
this module follows it. In short, one ZeroMQ multipart message per frame:

1. the topic (bytes, for ZeroMQ prefix filtering),
2. a JSON header (ASCII, hence valid UTF-8) with the frame's metadata and one entry per
   instance,
3. one binary blob holding every mask: per instance, the smallest integer window that
   contains all its pixels, bit-packed row-major, most significant bit first.

Each header carries the publisher's own message counter (``publish_seq``) and a random id
per publisher (``publisher_id``), so a subscriber counts exactly what it missed
(:class:`GapCounter`, ``Message.missed``).

Decoding trusts nothing: every size is checked against the caps below and against the
blob before anything is allocated, and every problem raises :class:`PublishError` with
one line saying what was expected and what was found.

This module needs no ZeroMQ: the sockets are in :mod:`rtseg.publisher` (the PUB side) and
:mod:`rtseg.subscriber` (the SUB side).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtseg.errors import PublishError
from rtseg.structures import CompactMasks, Frame, Instances

#: header ``schema`` written by this module; a consumer accepts any ``1.x``
#: (1.1 added the optional ``publisher_id`` and ``publish_seq``; 1.2 the optional per-instance
#: ``mask_score``; 1.3 the optional ``stream`` and ``stream_seq`` and per-instance ``track_id``,
#: and the topic ``<base>/<stream>``)
SCHEMA = "rtseg.instances/1.3"
SCHEMA_NAME = "rtseg.instances"
SCHEMA_MAJOR = 1
#: header ``mask_encoding``: integer window per instance, bit-packed row-major, MSB first
MASK_ENCODING = "bitpacked-window"

#: Wire limits (docs/wire-format.md, "Limits"). 16384 is the largest side any camera or
#: file rtseg reads is expected to have (8K UHD is 7680 x 4320); 10000 instances is two
#: orders of magnitude above the per-image detection caps of the models (100-300).
MAX_IMAGE_SIDE = 16384
MAX_INSTANCES = 10000
#: longest ``publisher_id`` a decoder accepts; rtseg writes 16 hex digits (64 random bits)
MAX_PUBLISHER_ID_CHARS = 64
#: A stream name (header ``stream``, the topic's last part): 1-64 of these characters, not
#: ``.`` or ``..``: the rule ``rtseg run`` applies to the names it is given
#: (``rtseg.preflight.check_stream_name``), since a name becomes a topic and a file-name part
#: (``rtseg subscribe --save DIR`` writes ``DIR/<stream>/``).
MAX_STREAM_CHARS = 64
STREAM_CHARACTERS = "letters, digits, '_', '.' or '-'"
_STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % MAX_STREAM_CHARS)
#: the stream of a message without ``stream`` (before schema 1.3: a single-source run)
DEFAULT_STREAM = "0"
#: streams a :class:`GapCounter` keeps a counter for at once (a hostile publisher could
#: name a new stream in every message); beyond it the least recently seen is forgotten
MAX_COUNTED_STREAMS = 1024
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
#: Decoder-side cap on the JSON header (part 1): parsed JSON takes up to ~25 times its text
#: in Python objects, so the header is capped apart from the message. rtseg writes about
#: 230 bytes per instance: 2.3 MB at MAX_INSTANCES.
DEFAULT_MAX_HEADER_BYTES = 8 * 2**20
#: Decoder-side cap on N * H * W, the bytes of the full-size ``bool`` masks
#: ``Message.instances.masks_dense()`` would allocate (the blob alone does not bound it: empty
#: masks cost no blob bytes). Decoding itself keeps the masks packed and allocates in
#: proportion to the message's size.
#: 1 GiB fits e.g. 500 instances at 1920 x 1080 or 120 at 3840 x 2160.
DEFAULT_MAX_MASK_PIXELS = 2**30

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = 2**63 - 1


def is_stream_name(name: Any) -> bool:
    """True for a usable stream name: 1-64 letters, digits, ``_ . -``, not ``.`` or ``..``."""
    return isinstance(name, str) and _STREAM_NAME.fullmatch(name) is not None and name not in (".", "..")


def stream_topic(topic: bytes, stream: str) -> bytes:
    """The topic (part 0) of ``stream``'s messages: ``<topic>/<stream>``, e.g. ``b"rtseg/cam1"``.

    ZeroMQ's subscription is a prefix match, so a subscriber of this topic also receives
    ``<topic>/<stream>10``; one that wants ``stream`` alone also compares part 0 to this
    exactly (:func:`rtseg.subscriber.subscribe` with ``stream=``)."""
    return topic + b"/" + stream.encode("ascii")


# ---------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------
def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise PublishError(f"cannot publish: {name} must be finite numbers, found {values[~np.isfinite(values)][:3].tolist()}")


def encode_message(
    frame: Frame,
    class_names: Sequence[str],
    *,
    topic: bytes = b"rtseg",
    publish_time: float | None = None,
    publisher_id: str | None = None,
    publish_seq: int | None = None,
    stream_seq: int | None = None,
) -> list[bytes]:
    """One frame as the three parts of a wire message: ``[topic, header, masks]``.

    ``frame.instances`` (``None`` or empty publishes no instances and an empty blob);
    ``class_names[class_id]`` names each instance; ``publish_time`` is wall-clock seconds
    (``time.time()`` when not given). Scores and boxes are written as JSON numbers that
    give back the exact ``float32`` values. ``frame.stream`` is the header's ``stream``
    and part 0 is ``<topic>/<stream>`` (:func:`stream_topic`). A track id ``>= 0`` in
    ``instances.track_ids`` (when the instances have that field and it is not ``None``:
    tracking on) is the instance's ``track_id``; ``-1`` (no confirmed track) writes none.
    ``publisher_id``, ``publish_seq`` and ``stream_seq`` (the publisher's id, its message
    counter and its counter within ``frame.stream``, written by
    :class:`rtseg.publisher.Publisher`) go into the header when given.
    """
    if not isinstance(topic, bytes):
        raise TypeError(f"topic must be bytes, got {type(topic).__name__}")
    if publisher_id is not None and not (isinstance(publisher_id, str) and 0 < len(publisher_id) <= MAX_PUBLISHER_ID_CHARS):
        raise TypeError(f"publisher_id must be a string of 1 to {MAX_PUBLISHER_ID_CHARS} characters, got {_short(publisher_id)}")
    if publish_seq is not None and (isinstance(publish_seq, bool) or not isinstance(publish_seq, int) or not 0 <= publish_seq <= _INT64_MAX):
        raise TypeError(f"publish_seq must be an integer in [0, 2**63 - 1], got {_short(publish_seq)}")
    if stream_seq is not None and (isinstance(stream_seq, bool) or not isinstance(stream_seq, int) or not 0 <= stream_seq <= _INT64_MAX):
        raise TypeError(f"stream_seq must be an integer in [0, 2**63 - 1], got {_short(stream_seq)}")
    stream = frame.stream
    if not is_stream_name(stream):
        raise PublishError(f"cannot publish: the frame's stream must be 1-{MAX_STREAM_CHARS} {STREAM_CHARACTERS} "
                           f"(not '.' or '..'), found {_short(stream)}")
    instances = frame.instances
    h, w = instances.image_size if instances is not None else frame.image_size
    if h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE:
        raise PublishError(f"cannot publish: image_size must be at most {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE}, found {h} x {w}")
    n = 0 if instances is None else len(instances)
    if n > MAX_INSTANCES:
        raise PublishError(f"cannot publish: at most {MAX_INSTANCES} instances per frame, found {n}")

    entries: list[dict[str, Any]] = []
    blob = b""
    if n:
        assert instances is not None
        _check_finite("boxes", instances.boxes)
        _check_finite("scores", instances.scores)
        mask_scores = None
        if instances.mask_scores is not None:
            _check_finite("mask_scores", instances.mask_scores)
            mask_scores = instances.mask_scores.tolist()
        # rtseg.structures.Instances.track_ids (int64[N], -1 = no confirmed track), where it exists
        track_ids = getattr(instances, "track_ids", None)
        track_ids = None if track_ids is None else np.asarray(track_ids).tolist()
        # the masks as post-processing packed them (rtseg.structures.CompactMasks): their
        # windows, offsets and bits are part 2 as it is, no re-encoding (a decoded message's,
        # when re-published out of order or with gaps, is laid out afresh first)
        masks = instances.masks.contiguous()
        windows = masks.windows.tolist()
        offsets = masks.offsets.tolist()
        lengths = masks.lengths.tolist()
        boxes = instances.boxes.tolist()  # float32 -> Python float: exact
        scores = instances.scores.tolist()
        class_ids = instances.class_ids.tolist()
        for i in range(n):
            class_id = class_ids[i]
            if not 0 <= class_id < len(class_names):
                raise PublishError(
                    f"cannot publish: class id must be in [0, {len(class_names)}) to have a name, found {class_id}"
                )
            entries.append(
                {
                    "class_id": class_id,
                    "class_name": str(class_names[class_id]),
                    "score": scores[i],
                    "box": boxes[i],
                    "mask_window": windows[i],
                    "mask_offset": offsets[i],
                    "mask_length": lengths[i],
                }
            )
            if mask_scores is not None:
                entries[-1]["mask_score"] = mask_scores[i]
            if track_ids is not None and track_ids[i] >= 0:
                if not track_ids[i] <= _INT64_MAX:
                    raise PublishError(f"cannot publish: a track id must be in [0, 2**63 - 1], found {track_ids[i]}")
                entries[-1]["track_id"] = int(track_ids[i])
        blob = masks.blob.tobytes()
    header = {
        "schema": SCHEMA,
        "stream": stream,
        "seq": int(frame.seq),
        "source": str(frame.source_id),
        "capture_time": float(frame.capture_time),
        "publish_time": float(time.time() if publish_time is None else publish_time),
        "image_size": [int(h), int(w)],
        "mask_encoding": MASK_ENCODING,
        "masks_bytes": len(blob),
        "instances": entries,
    }
    if publisher_id is not None:
        header["publisher_id"] = publisher_id
    if publish_seq is not None:
        header["publish_seq"] = publish_seq
    if stream_seq is not None:
        header["stream_seq"] = stream_seq
    # ensure_ascii: the header is plain ASCII, so any UTF-8 JSON parser reads it, even
    # for source ids that carry undecodable file-name bytes (lone surrogates).
    text = json.dumps(header, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return [stream_topic(topic, stream), text.encode("ascii"), blob]


# ---------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    """One decoded wire message.

    ``header`` is the JSON header as received (a dict); the other fields are its checked,
    typed view: ``capture_time`` and ``publish_time`` in wall-clock seconds,
    ``image_size`` ``(H, W)``, ``class_names`` one name per instance, and ``instances``
    (an :class:`rtseg.structures.Instances` whose ``masks`` are the message's bit-packed
    windows as received, a :class:`rtseg.structures.CompactMasks`: a message costs in memory
    about its size on the wire; ``instances.masks_dense()`` makes the full-size
    ``bool[N, H, W]`` masks, ``instances.to_rle()`` COCO RLEs, when asked for).

    ``publisher_id`` and ``publish_seq`` are the publisher's id and message counter
    (``None`` in messages from publishers before schema 1.1). ``stream`` is the stream the
    frame belongs to (``"0"`` before schema 1.3) and ``stream_seq`` the publisher's counter
    within that stream (``None`` before 1.3). ``missed`` is set by
    :func:`subscribe`: how many messages of the same publisher this subscriber did not
    receive between the previous message it received and this one (0 for the first, and
    after a publisher restart; see :class:`GapCounter`). :func:`decode_message` alone,
    which sees one message, sets it to 0.
    """

    topic: bytes
    header: dict = field(repr=False)
    seq: int
    source: str
    capture_time: float
    publish_time: float
    image_size: tuple[int, int]
    class_names: list[str]
    instances: Instances
    publisher_id: str | None = None
    publish_seq: int | None = None
    stream: str = DEFAULT_STREAM
    stream_seq: int | None = None
    missed: int = 0

    __hash__ = None  # type: ignore[assignment]  # dict / numpy payload


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _malformed(what: str, expected: str, found: Any) -> PublishError:
    return PublishError(f"malformed rtseg message: {what} must be {expected}, found {found}")


def _get(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise PublishError(f"malformed rtseg message: {where} must have field {key!r}, found it missing")
    return obj[key]


def _int(obj: dict, key: str, where: str, lo: int, hi: int) -> int:
    value = _get(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _malformed(f"{where} field {key!r}", f"an integer in [{lo}, {hi}]", _short(value))
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= _FLOAT32_MAX:
        raise _malformed(what, "a finite number", _short(value))  # also rejects NaN / inf
    return float(value)


def _str(obj: dict, key: str, where: str) -> str:
    value = _get(obj, key, where)
    if not isinstance(value, str):
        raise _malformed(f"{where} field {key!r}", "a string", _short(value))
    return value


def _int_list(value: Any, what: str, length: int) -> list[int]:
    if not isinstance(value, list) or len(value) != length or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise _malformed(what, f"a list of {length} integers", _short(value))
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _as_bytes_view(part: Any, index: int) -> memoryview:
    try:
        view = memoryview(part)
    except TypeError:
        raise _malformed(f"part {index}", "bytes", type(part).__name__) from None
    if not view.c_contiguous:
        raise _malformed(f"part {index}", "a contiguous bytes buffer", "a strided buffer")
    return view.cast("B")


def decode_message(
    parts: Sequence[bytes],
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_mask_pixels: int = DEFAULT_MAX_MASK_PIXELS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Message:
    """Check and decode the parts of one wire message (see ``docs/wire-format.md``).

    ``parts``: the three frames as bytes-like objects. Raises :class:`PublishError` for
    anything malformed, including messages above ``max_message_bytes`` in total and
    messages whose full-size masks would need more than ``max_mask_pixels`` bytes
    (``N * H * W``, what ``instances.masks_dense()`` would allocate) and headers above
    ``max_header_bytes``. Decoding allocates in
    proportion to the message's size: the masks stay bit-packed in their windows
    (:class:`rtseg.structures.CompactMasks`, the blob not copied), and ``image_size`` alone
    costs nothing.
    """
    if isinstance(parts, (bytes, bytearray, memoryview, str)) or not isinstance(parts, Sequence):
        raise _malformed("the message", "a sequence of 3 parts", type(parts).__name__)
    if len(parts) != 3:
        raise _malformed("the message", "3 parts (topic, header, masks)", f"{len(parts)} parts")
    topic_view, header_view, blob = (_as_bytes_view(p, i) for i, p in enumerate(parts))
    total = topic_view.nbytes + header_view.nbytes + blob.nbytes
    if total > max_message_bytes:
        raise _malformed("the message", f"at most {max_message_bytes} bytes", f"{total} bytes")
    if header_view.nbytes > max_header_bytes:
        raise _malformed("the header (part 1)", f"at most {max_header_bytes} bytes", f"{header_view.nbytes} bytes")

    try:
        header = json.loads(bytes(header_view).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise _malformed("the header (part 1)", "UTF-8 text", f"an invalid byte at offset {exc.start}") from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _malformed("the header (part 1)", "a JSON object", f"invalid JSON ({reason})") from None
    if not isinstance(header, dict):
        raise _malformed("the header (part 1)", "a JSON object", type(header).__name__)

    schema = _str(header, "schema", "header")
    name, _, version = schema.partition("/")
    major = version.split(".", 1)[0]
    if name != SCHEMA_NAME or not major.isdigit():
        raise _malformed("header field 'schema'", f"'{SCHEMA_NAME}/<major>.<minor>'", _short(schema))
    if int(major) != SCHEMA_MAJOR:
        raise PublishError(
            f"unsupported rtseg message: schema major version must be {SCHEMA_MAJOR} ({SCHEMA}), found {_short(schema)}"
        )
    encoding = _str(header, "mask_encoding", "header")
    if encoding != MASK_ENCODING:
        raise _malformed("header field 'mask_encoding'", repr(MASK_ENCODING), _short(encoding))

    seq = _int(header, "seq", "header", 0, _INT64_MAX)
    publish_seq = _int(header, "publish_seq", "header", 0, _INT64_MAX) if "publish_seq" in header else None
    publisher_id = None
    if "publisher_id" in header:
        publisher_id = _str(header, "publisher_id", "header")
        if not 0 < len(publisher_id) <= MAX_PUBLISHER_ID_CHARS:
            raise _malformed("header field 'publisher_id'", f"a string of 1 to {MAX_PUBLISHER_ID_CHARS} characters",
                             f"{len(publisher_id)} characters")
    stream = DEFAULT_STREAM
    if "stream" in header:
        stream = _str(header, "stream", "header")
        if not is_stream_name(stream):
            raise _malformed("header field 'stream'", f"1-{MAX_STREAM_CHARS} {STREAM_CHARACTERS} (not '.' or '..')",
                             _short(stream))
    stream_seq = _int(header, "stream_seq", "header", 0, _INT64_MAX) if "stream_seq" in header else None
    source = _str(header, "source", "header")
    capture_time = _number(_get(header, "capture_time", "header"), "header field 'capture_time'")
    publish_time = _number(_get(header, "publish_time", "header"), "header field 'publish_time'")
    h, w = _int_list(_get(header, "image_size", "header"), "header field 'image_size'", 2)
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise _malformed("header field 'image_size'", f"[H, W] with 1 <= H, W <= {MAX_IMAGE_SIDE}", [h, w])
    masks_bytes = _int(header, "masks_bytes", "header", 0, _INT64_MAX)
    if masks_bytes != blob.nbytes:
        raise _malformed("header field 'masks_bytes'", f"the masks part's length {blob.nbytes}", masks_bytes)
    entries = _get(header, "instances", "header")
    if not isinstance(entries, list) or len(entries) > MAX_INSTANCES:
        found = f"{len(entries)} entries" if isinstance(entries, list) else type(entries).__name__
        raise _malformed("header field 'instances'", f"a list of at most {MAX_INSTANCES} entries", found)
    n = len(entries)
    if n * h * w > max_mask_pixels:
        raise _malformed("the message", f"at most {max_mask_pixels} mask pixels (N * H * W)", f"{n} x {h} x {w}")

    boxes = np.zeros((n, 4), np.float32)
    scores = np.zeros((n,), np.float32)
    mask_scores: np.ndarray | None = None  # schema 1.2: optional, on every entry or on none
    track_ids: np.ndarray | None = None  # schema 1.3: optional per entry; -1 where absent
    class_ids = np.zeros((n,), np.int64)
    names: list[str] = []
    spans: list[tuple[int, int, int]] = []  # (offset, length, instance index)
    windows: list[tuple[int, int, int, int]] = []
    for i, entry in enumerate(entries):
        where = f"instances[{i}]"
        if not isinstance(entry, dict):
            raise _malformed(where, "a JSON object", type(entry).__name__)
        class_ids[i] = _int(entry, "class_id", where, 0, _INT64_MAX)
        names.append(_str(entry, "class_name", where))
        scores[i] = _number(_get(entry, "score", where), f"{where} field 'score'")
        if i == 0 and "mask_score" in entry:
            mask_scores = np.zeros((n,), np.float32)
        if ("mask_score" in entry) != (mask_scores is not None):
            raise _malformed(f"{where} field 'mask_score'", "present on every instance or on none",
                             "present" if "mask_score" in entry else "absent")
        if mask_scores is not None:
            mask_scores[i] = _number(entry["mask_score"], f"{where} field 'mask_score'")
        if "track_id" in entry:
            if track_ids is None:
                track_ids = np.full((n,), -1, np.int64)
            track_ids[i] = _int(entry, "track_id", where, 0, _INT64_MAX)
        box = _get(entry, "box", where)
        if not isinstance(box, list) or len(box) != 4:
            raise _malformed(f"{where} field 'box'", "a list of 4 numbers", _short(box))
        boxes[i] = [_number(v, f"{where} field 'box'") for v in box]
        x0, y0, x1, y1 = _int_list(_get(entry, "mask_window", where), f"{where} field 'mask_window'", 4)
        if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
            raise _malformed(
                f"{where} field 'mask_window'", f"[x0, y0, x1, y1] with 0 <= x0 <= x1 <= {w}, 0 <= y0 <= y1 <= {h}", [x0, y0, x1, y1]
            )
        offset = _int(entry, "mask_offset", where, 0, _INT64_MAX)
        length = _int(entry, "mask_length", where, 0, _INT64_MAX)
        expected_length = ((x1 - x0) * (y1 - y0) + 7) // 8
        if length != expected_length:
            raise _malformed(f"{where} field 'mask_length'", f"{expected_length} (window bits / 8, rounded up)", length)
        if offset + length > blob.nbytes:
            raise _malformed(f"{where} mask bytes", f"inside the {blob.nbytes}-byte masks part", f"[{offset}, {offset + length})")
        windows.append((x0, y0, x1, y1))
        spans.append((offset, length, i))

    spans.sort()
    end = 0
    for offset, length, i in spans:
        if length == 0:
            continue
        if offset < end:
            raise _malformed(f"instances[{i}] mask bytes", f"not overlapping another mask (start >= {end})", f"start {offset}")
        end = offset + length

    # masks stay packed: what the message holds is what it cost on the wire
    blob_bytes = parts[2] if isinstance(parts[2], bytes) else bytes(blob)
    offsets = np.zeros((n,), np.int64)
    for offset, _, i in spans:
        offsets[i] = offset
    masks = CompactMasks(np.array(windows, np.int32).reshape(n, 4), offsets, np.frombuffer(blob_bytes, np.uint8), (h, w))
    instances = Instances(boxes=boxes, scores=scores, class_ids=class_ids, masks=masks, image_size=(h, w),
                          mask_scores=mask_scores, track_ids=track_ids)
    return Message(
        topic=bytes(topic_view),
        header=header,
        seq=seq,
        source=source,
        capture_time=capture_time,
        publish_time=publish_time,
        image_size=(h, w),
        class_names=names,
        instances=instances,
        publisher_id=publisher_id,
        publish_seq=publish_seq,
        stream=stream,
        stream_seq=stream_seq,
    )


class GapCounter:
    """Counts the messages a subscriber missed, from the counters in the headers it receives.

    Feed it every decoded :class:`Message` in the order received; :meth:`update` returns
    how many messages were missed between the previous one and this one. ZeroMQ delivers
    one publisher's messages in order, so a gap in its counter is exactly the messages
    dropped for this subscriber (its queue was full) or lost while it was disconnected.
    Gaps are counted per (publisher, stream), so a subscriber of one stream of a
    multi-stream run (``subscribe(..., stream=)``) counts the messages of that stream it
    missed, not the other streams' messages:

    * the counter is ``stream_seq`` (consecutive over everything one
      :class:`rtseg.publisher.Publisher` sends on that ``stream``), within one
      ``publisher_id``;
    * before schema 1.3 there is no ``stream_seq`` (and one stream, ``"0"``):
      ``publish_seq`` (consecutive over everything one publisher sends) stands in;
    * before schema 1.1 there is neither; the frame ``seq`` of its ``source`` stands in,
      whose gaps also count frames the publisher never sent (a live source keeps only its
      newest frame);
    * a new ``publisher_id`` (or source, before 1.1), or a counter that does not go
      forward, is a restarted publisher: counted in :attr:`restarts`, and that message has
      missed 0 (what a new publisher sent before this subscriber reached it is not known),
      as do the first message and the first message of each stream.

    Totals: :attr:`received`, :attr:`missed`, :attr:`restarts`. At most
    ``MAX_COUNTED_STREAMS`` streams are followed at once (the least recently seen is
    forgotten: its next message counts as its first).
    """

    def __init__(self) -> None:
        self.received = 0
        self.missed = 0
        self.restarts = 0
        self._publisher: tuple[str, str] | None = None
        self._last: OrderedDict[str, int] = OrderedDict()  # stream -> its last counter

    def update(self, message: Message) -> int:
        """Take the next received message; returns the messages missed just before it."""
        if message.publish_seq is not None:
            publisher = ("publisher", message.publisher_id or "")
            counter = message.stream_seq if message.stream_seq is not None else message.publish_seq
        else:
            publisher, counter = ("source", message.source), message.seq
        stream = message.stream
        missed = 0
        if self._publisher is not None and publisher != self._publisher:
            self.restarts += 1
            self._last.clear()
        last = self._last.get(stream)
        if last is not None:
            if counter > last:
                missed = counter - last - 1
            else:
                self.restarts += 1
                self._last.clear()
        self._publisher = publisher
        self._last[stream] = counter
        self._last.move_to_end(stream)
        if len(self._last) > MAX_COUNTED_STREAMS:
            self._last.popitem(last=False)
        self.received += 1
        self.missed += missed
        return missed
