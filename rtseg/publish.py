"""Publishing the instances found in each frame over ZeroMQ, and the matching subscriber.

The wire format is specified in ``docs/wire-format.md``; that document is normative and
this module follows it. In short, one ZeroMQ multipart message per frame:

1. the topic (bytes, for ZeroMQ prefix filtering),
2. a JSON header (ASCII, hence valid UTF-8) with the frame's metadata and one entry per
   instance,
3. one binary blob holding every mask: per instance, the smallest integer window that
   contains all its pixels, bit-packed row-major, most significant bit first.

Delivery is best effort and per subscriber: the publisher never waits, and ZeroMQ drops
a message only for a subscriber whose queue is full. Each header carries the publisher's
own message counter (``publish_seq``) and a random id per :class:`Publisher`
(``publisher_id``), so a subscriber counts exactly what it missed (:class:`GapCounter`,
``Message.missed``).

Decoding trusts nothing: every size is checked against the caps below and against the
blob before anything is allocated, and every problem raises :class:`PublishError` with
one line saying what was expected and what was found.

``zmq`` is imported inside the functions that need it, so ``import rtseg.publish`` (and
encoding / decoding) works without touching ZeroMQ.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator, TextIO

import numpy as np

from rtseg.errors import ConfigError, PublishError
from rtseg.structures import Frame, Instances

if TYPE_CHECKING:
    from rtseg.keys import ClientKeys, ServerKeys

logger = logging.getLogger(__name__)

#: header ``schema`` written by this module; a consumer accepts any ``1.x``
#: (1.1 added the optional ``publisher_id`` and ``publish_seq``; 1.2 the optional per-instance
#: ``mask_score``)
SCHEMA = "rtseg.instances/1.2"
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
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
#: Decoder-side cap on the JSON header (part 1): parsed JSON takes up to ~25 times its text
#: in Python objects, so the header is capped apart from the message. rtseg writes about
#: 230 bytes per instance: 2.3 MB at MAX_INSTANCES.
DEFAULT_MAX_HEADER_BYTES = 8 * 2**20
#: Decoder-side cap on N * H * W, the bytes of the full-size ``bool`` masks
#: ``Message.instances.masks`` would allocate (the blob alone does not bound it: empty
#: masks cost no blob bytes). Decoding itself keeps the masks packed and allocates in
#: proportion to the message's size.
#: 1 GiB fits e.g. 500 instances at 1920 x 1080 or 120 at 3840 x 2160.
DEFAULT_MAX_MASK_PIXELS = 2**30

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = 2**63 - 1


# ---------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------
def mask_windows(masks: np.ndarray) -> np.ndarray:
    """Tight integer windows of ``bool[N, H, W]`` masks as ``int64[N, 4]`` ``x0, y0, x1, y1``.

    ``x0 = floor(min x)`` of the mask's pixels, ``x1 = max x + 1`` (exclusive end), same for
    ``y``. An empty mask gets the zero-size window ``0, 0, 0, 0``.
    """
    n, h, w = masks.shape
    rows = masks.any(axis=2)  # (N, H)
    cols = masks.any(axis=1)  # (N, W)
    nonempty = rows.any(axis=1)
    windows = np.stack(
        [
            cols.argmax(axis=1),
            rows.argmax(axis=1),
            w - cols[:, ::-1].argmax(axis=1),
            h - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.int64)
    windows[~nonempty] = 0
    return windows


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
) -> list[bytes]:
    """One frame as the three parts of a wire message: ``[topic, header, masks]``.

    ``frame.instances`` (``None`` or empty publishes no instances and an empty blob);
    ``class_names[class_id]`` names each instance; ``publish_time`` is wall-clock seconds
    (``time.time()`` when not given). Scores and boxes are written as JSON numbers that
    give back the exact ``float32`` values. ``publisher_id`` and ``publish_seq`` (the
    publisher's id and message counter, written by :class:`Publisher`) go into the header
    when given.
    """
    if not isinstance(topic, bytes):
        raise TypeError(f"topic must be bytes, got {type(topic).__name__}")
    if publisher_id is not None and not (isinstance(publisher_id, str) and 0 < len(publisher_id) <= MAX_PUBLISHER_ID_CHARS):
        raise TypeError(f"publisher_id must be a string of 1 to {MAX_PUBLISHER_ID_CHARS} characters, got {_short(publisher_id)}")
    if publish_seq is not None and (isinstance(publish_seq, bool) or not isinstance(publish_seq, int) or not 0 <= publish_seq <= _INT64_MAX):
        raise TypeError(f"publish_seq must be an integer in [0, 2**63 - 1], got {_short(publish_seq)}")
    instances = frame.instances
    h, w = instances.image_size if instances is not None else frame.image_size
    if h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE:
        raise PublishError(f"cannot publish: image_size must be at most {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE}, found {h} x {w}")
    n = 0 if instances is None else len(instances)
    if n > MAX_INSTANCES:
        raise PublishError(f"cannot publish: at most {MAX_INSTANCES} instances per frame, found {n}")

    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    if n:
        assert instances is not None
        _check_finite("boxes", instances.boxes)
        _check_finite("scores", instances.scores)
        mask_scores = None
        if instances.mask_scores is not None:
            _check_finite("mask_scores", instances.mask_scores)
            mask_scores = instances.mask_scores.tolist()
        windows = mask_windows(instances.masks).tolist()
        boxes = instances.boxes.tolist()  # float32 -> Python float: exact
        scores = instances.scores.tolist()
        class_ids = instances.class_ids.tolist()
        for i in range(n):
            class_id = class_ids[i]
            if not 0 <= class_id < len(class_names):
                raise PublishError(
                    f"cannot publish: class id must be in [0, {len(class_names)}) to have a name, found {class_id}"
                )
            x0, y0, x1, y1 = windows[i]
            packed = np.packbits(instances.masks[i, y0:y1, x0:x1]).tobytes()  # flattened, MSB first
            entries.append(
                {
                    "class_id": class_id,
                    "class_name": str(class_names[class_id]),
                    "score": scores[i],
                    "box": boxes[i],
                    "mask_window": [x0, y0, x1, y1],
                    "mask_offset": offset,
                    "mask_length": len(packed),
                }
            )
            if mask_scores is not None:
                entries[-1]["mask_score"] = mask_scores[i]
            chunks.append(packed)
            offset += len(packed)
    blob = b"".join(chunks)
    header = {
        "schema": SCHEMA,
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
    # ensure_ascii: the header is plain ASCII, so any UTF-8 JSON parser reads it, even
    # for source ids that carry undecodable file-name bytes (lone surrogates).
    text = json.dumps(header, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return [topic, text.encode("ascii"), blob]


# ---------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------
class PackedInstances:
    """The instances of one decoded message, masks kept as the wire's bit-packed windows.

    What :func:`decode_message` returns in ``Message.instances``: holding it costs about
    what the message cost on the wire, whatever ``image_size`` says (an empty mask costs
    nothing), so a hostile header that declares large empty masks costs nothing either.
    It reads like :class:`rtseg.structures.Instances` (``len()``, ``boxes``, ``scores``,
    ``class_ids``, ``image_size``, ``to_rle()``, ``mask_areas()``, indexing, ``==``), and
    the full-size masks are made only when asked for:

    - :attr:`masks` / :meth:`to_instances`: ``bool[N, H, W]``, ``N * H * W`` bytes each
      call (bounded by ``max_mask_pixels`` at decode);
    - :meth:`window_mask`: one mask's window and its pixels, the compact form;
    - :meth:`to_rle`: COCO compressed RLEs computed from the windows directly, in time and
      memory proportional to the windows' pixels, never to ``H * W``.
    """

    __slots__ = ("boxes", "scores", "class_ids", "image_size", "windows", "mask_scores", "_offsets", "_blob")

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, image_size: tuple[int, int],
                 windows: np.ndarray, offsets: np.ndarray, blob: bytes, *,
                 mask_scores: np.ndarray | None = None) -> None:
        n = boxes.shape[0]
        assert boxes.shape == (n, 4) and scores.shape == (n,) and class_ids.shape == (n,)
        assert windows.shape == (n, 4) and offsets.shape == (n,)
        assert mask_scores is None or mask_scores.shape == (n,)
        self.boxes = boxes  #: ``float32[N, 4]``
        self.scores = scores  #: ``float32[N]``
        self.class_ids = class_ids  #: ``int64[N]``
        self.image_size = (int(image_size[0]), int(image_size[1]))  #: ``(H, W)``
        self.windows = windows  #: ``int64[N, 4]``: each mask's ``x0, y0, x1, y1`` (``mask_window``)
        self.mask_scores = mask_scores  #: ``float32[N]`` or ``None`` (wire format 1.2 ``mask_score``)
        self._offsets = offsets
        self._blob = blob

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        return f"PackedInstances(n={len(self)}, image_size={self.image_size})"

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, item: Any) -> "PackedInstances":
        index = np.arange(len(self))[item]
        index = np.atleast_1d(index)
        return PackedInstances(self.boxes[index], self.scores[index], self.class_ids[index], self.image_size,
                               self.windows[index], self._offsets[index], self._blob,
                               mask_scores=None if self.mask_scores is None else self.mask_scores[index])

    def window_mask(self, i: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Mask ``i`` in its window: ``((x0, y0, x1, y1), bool[y1 - y0, x1 - x0])``; false outside it."""
        x0, y0, x1, y1 = (int(v) for v in self.windows[i])
        h, w = y1 - y0, x1 - x0
        if h * w == 0:
            return (x0, y0, x1, y1), np.zeros((h, w), np.bool_)
        packed = np.frombuffer(self._blob, dtype=np.uint8, count=(h * w + 7) // 8, offset=int(self._offsets[i]))
        bits = np.unpackbits(packed, count=h * w)  # MSB first, padding ignored
        return (x0, y0, x1, y1), bits.reshape(h, w).view(np.bool_)

    @property
    def masks(self) -> np.ndarray:
        """Full-size ``bool[N, H, W]`` masks, made on each call (``N * H * W`` bytes)."""
        h, w = self.image_size
        masks = np.zeros((len(self), h, w), np.bool_)
        for i in range(len(self)):
            (x0, y0, x1, y1), window = self.window_mask(i)
            masks[i, y0:y1, x0:x1] = window
        return masks

    def to_instances(self) -> Instances:
        """The same instances as :class:`rtseg.structures.Instances` (full-size masks)."""
        return Instances(boxes=self.boxes, scores=self.scores, class_ids=self.class_ids, masks=self.masks,
                         image_size=self.image_size, mask_scores=self.mask_scores)

    def mask_areas(self) -> np.ndarray:
        """``int64[N]``: number of mask pixels per instance (counted in the windows)."""
        return np.array([int(np.count_nonzero(self.window_mask(i)[1])) for i in range(len(self))], np.int64)

    def to_rle(self) -> list[dict]:
        """Masks as COCO compressed RLEs, ``{"size": [H, W], "counts": str}`` each: exactly
        what ``Instances.to_rle()`` (``pycocotools.mask.encode``) gives for the full-size
        masks, computed from the windows without making them."""
        from pycocotools import mask as mask_utils

        h, w = self.image_size
        out = []
        for i in range(len(self)):
            counts = _rle_counts(*self.window_mask(i), h, w)
            rle = mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
            text = rle["counts"]
            out.append({"size": [h, w], "counts": text.decode("ascii") if isinstance(text, bytes) else text})
        return out

    def _tight(self, i: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        (x0, y0, _, _), window = self.window_mask(i)
        rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
        if rows.size == 0:
            return (0, 0, 0, 0), window[:0, :0]
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return (x0 + c0, y0 + r0, x0 + c1, y0 + r1), window[r0:r1, c0:c1]

    def __eq__(self, other: object) -> bool:
        """Value equality with another :class:`PackedInstances` or an ``Instances``."""
        if not isinstance(other, (PackedInstances, Instances)):
            return NotImplemented
        if not (self.image_size == other.image_size and np.array_equal(self.boxes, other.boxes)
                and np.array_equal(self.scores, other.scores) and np.array_equal(self.class_ids, other.class_ids)):
            return False
        if (self.mask_scores is None) != (other.mask_scores is None) or (
                self.mask_scores is not None and not np.array_equal(self.mask_scores, other.mask_scores)):
            return False
        if isinstance(other, Instances):
            for i in range(len(self)):
                (x0, y0, x1, y1), window = self.window_mask(i)
                dense = other.masks[i]
                if not np.array_equal(dense[y0:y1, x0:x1], window) or int(np.count_nonzero(dense)) != int(np.count_nonzero(window)):
                    return False
            return True
        return all(self._tight(i)[0] == other._tight(i)[0] and np.array_equal(self._tight(i)[1], other._tight(i)[1])
                   for i in range(len(self)))


def _rle_counts(window: tuple[int, int, int, int], bits: np.ndarray, h: int, w: int) -> list[int]:
    """COCO RLE counts (column-major runs, zeros first) of an ``h x w`` mask that is
    ``bits`` inside ``window`` and false elsewhere; cost proportional to the window."""
    x0, y0, x1, y1 = window
    if not bits.any():
        return [h * w]
    wh, ww = bits.shape
    padded = np.zeros((ww, wh + 2), np.int8)  # one zero above and below each window column
    padded[:, 1:-1] = bits.T
    flat = padded.ravel()
    k = np.flatnonzero(np.diff(flat)) + 1  # first index of each new run, in padded coordinates
    column, row = np.divmod(k, wh + 2)
    position = (x0 + column) * h + y0 + row - 1  # the run's first pixel, column-major in the image
    starts, ends = position[0::2], position[1::2]
    # a window as tall as the image: a run that ends at the bottom of one column and one that
    # starts at the top of the next are one run
    joined = np.flatnonzero(starts[1:] == ends[:-1])
    starts, ends = np.delete(starts, joined + 1), np.delete(ends, joined)
    edges = np.empty(2 * starts.size + 2, np.int64)
    edges[0], edges[-1] = 0, h * w
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    counts = np.diff(edges).tolist()
    return counts[:-1] if counts[-1] == 0 else counts  # no empty trailing run (as pycocotools)


@dataclass(frozen=True)
class Message:
    """One decoded wire message.

    ``header`` is the JSON header as received (a dict); the other fields are its checked,
    typed view: ``capture_time`` and ``publish_time`` in wall-clock seconds,
    ``image_size`` ``(H, W)``, ``class_names`` one name per instance, and ``instances``
    (a :class:`PackedInstances`: the masks stay the wire's bit-packed windows, so a message
    costs in memory about its size on the wire; ``instances.masks`` makes the full-size
    ``bool[N, H, W]`` masks, ``instances.to_rle()`` COCO RLEs, when asked for).

    ``publisher_id`` and ``publish_seq`` are the publisher's id and message counter
    (``None`` in messages from publishers before schema 1.1). ``missed`` is set by
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
    instances: PackedInstances
    publisher_id: str | None = None
    publish_seq: int | None = None
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
    (``N * H * W``, what ``instances.masks`` would allocate) and headers above
    ``max_header_bytes``. Decoding allocates in
    proportion to the message's size: the masks stay bit-packed in their windows
    (:class:`PackedInstances`), and ``image_size`` alone costs nothing.
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
    instances = PackedInstances(boxes, scores, class_ids, (h, w), np.array(windows, np.int64).reshape(n, 4), offsets,
                                blob_bytes, mask_scores=mask_scores)
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
    )


class GapCounter:
    """Counts the messages a subscriber missed, from the counters in the headers it receives.

    Feed it every decoded :class:`Message` in the order received; :meth:`update` returns
    how many messages were missed between the previous one and this one. ZeroMQ delivers
    one publisher's messages in order, so a gap in its counter is exactly the messages
    dropped for this subscriber (its queue was full) or lost while it was disconnected:

    * the counter is ``publish_seq`` (consecutive over everything one :class:`Publisher`
      sends), within one ``publisher_id``;
    * a message from a publisher before schema 1.1 has neither; the frame ``seq`` of its
      ``source`` stands in, whose gaps also count frames the publisher never sent (a live
      source keeps only its newest frame);
    * a new ``publisher_id`` (or source), or a counter that does not go forward, is a
      restarted publisher: counted in :attr:`restarts`, and that message has missed 0
      (what a new publisher sent before this subscriber reached it is not known), as does
      the first message.

    Totals: :attr:`received`, :attr:`missed`, :attr:`restarts`.
    """

    def __init__(self) -> None:
        self.received = 0
        self.missed = 0
        self.restarts = 0
        self._stream: tuple[str, str] | None = None
        self._last = -1

    def update(self, message: Message) -> int:
        """Take the next received message; returns the messages missed just before it."""
        if message.publish_seq is not None:
            stream, counter = ("publisher", message.publisher_id or ""), message.publish_seq
        else:
            stream, counter = ("source", message.source), message.seq
        missed = 0
        if self._stream is not None:
            if stream == self._stream and counter > self._last:
                missed = counter - self._last - 1
            else:
                self.restarts += 1
        self._stream, self._last = stream, counter
        self.received += 1
        self.missed += missed
        return missed


# ---------------------------------------------------------------------------------------
# publisher
# ---------------------------------------------------------------------------------------
def _import_zmq():
    try:
        import zmq
    except ImportError:
        raise PublishError("publishing needs pyzmq: expected it installed (pip install pyzmq), found it missing") from None
    return zmq


def binds_all_interfaces(endpoint: str) -> bool:
    """True for a TCP endpoint whose host is every interface (``*``, ``0.0.0.0``, ``::``)."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    return host in ("*", "0.0.0.0", "::", "[::]", "[*]")


def binds_loopback_only(endpoint: str) -> bool:
    """True for an endpoint other machines cannot reach: ``ipc://``, ``inproc://``, or TCP on
    a loopback address (``127.x.x.x``, ``::1``, ``localhost``, the ``lo`` interface)."""
    if not endpoint.startswith("tcp://"):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "localhost", "lo")


#: where ``rtseg run --publish`` binds when given no endpoint: loopback only (docs/wire-format.md, section 8)
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


@dataclass(frozen=True)
class PublisherStats:
    """Counts since the publisher was made: messages ``sent`` (handed to ZeroMQ; also the
    next ``publish_seq``), ``bytes_sent``, and ``rejected_clients`` (CURVE handshakes
    refused).

    There is no drop count: ZeroMQ drops a message for each subscriber whose queue is full
    without telling the sender, so the subscribers count what they missed
    (``Message.missed``)."""

    sent: int
    bytes_sent: int
    #: CURVE only: handshakes refused because the subscriber's public key is not allowed
    rejected_clients: int = 0


class _AllowedKeys:
    """CURVE credentials check for :class:`zmq.auth.thread.ThreadAuthenticator` (runs in its
    thread): a subscriber gets in if its public key is one of ``allowed``."""

    def __init__(self, allowed: frozenset[bytes], endpoint: str) -> None:
        self.allowed = allowed
        self.endpoint = endpoint
        self.rejected = 0
        self._logged: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        from zmq.utils import z85

        encoded = z85.encode(key) if len(key) == 32 else key
        if encoded in self.allowed:
            return True
        self.rejected += 1
        if encoded not in self._logged and len(self._logged) < 100:  # once per key, bounded
            self._logged.add(encoded)
            logger.warning("refused a subscriber on %s: its public key %s is not in the allowed keys",
                           self.endpoint, encoded.decode("ascii", "replace"))
        return False


class Publisher:
    """A ZeroMQ PUB socket that publishes one message per :class:`Frame`.

    ``endpoint`` is bound, e.g. ``tcp://127.0.0.1:5555`` (loopback, the safe default),
    ``tcp://*:5555`` (every interface: reachable from the network, logged as a warning),
    ``tcp://127.0.0.1:*`` (a free port; read it back from :attr:`endpoint`) or
    ``ipc:///tmp/rtseg.sock``. ``sndhwm`` is how many messages ZeroMQ queues per
    subscriber; ``linger_ms`` how long :meth:`close` may wait to flush them (so the last
    frames of a run still reach subscribers that keep up).

    ``curve_keys``: a key folder (``rtseg keys generate DIR``, see :mod:`rtseg.keys`) or
    loaded :class:`rtseg.keys.ServerKeys`. The socket is then a CURVE server: traffic is
    encrypted and only subscribers holding the secret key of one of the folder's
    ``allowed_clients/*.key`` complete the handshake (checked by a
    ``zmq.auth.thread.ThreadAuthenticator``); others receive nothing and are counted in
    ``stats.rejected_clients``.

    :meth:`publish` never blocks, and one subscriber cannot cost another a frame: ZeroMQ
    queues each message for every subscriber and, for a subscriber whose queue is full
    (``sndhwm`` here plus its own receive queue and the socket buffers between), drops it
    for that subscriber only. The publisher cannot see those drops (nor could it count
    them per subscriber), so every header carries this publisher's random
    ``publisher_id`` and its message counter ``publish_seq`` (0, 1, 2, ...: one per
    :meth:`publish`), and each subscriber counts its own gaps (``Message.missed``,
    :class:`GapCounter`, the ``missed=`` of ``rtseg subscribe``).

    (The earlier design set ``ZMQ_XPUB_NODROP`` to count drops here; then a message went
    to every subscriber or to none, so one stalled subscriber made all of them miss
    frames.)

    Like every ZeroMQ socket, a Publisher must be used from one thread at a time.
    """

    def __init__(
        self,
        endpoint: str,
        class_names: Sequence[str],
        *,
        topic: bytes = b"rtseg",
        sndhwm: int = 10,
        linger_ms: int = 250,
        curve_keys: "str | os.PathLike | ServerKeys | None" = None,
    ) -> None:
        if not isinstance(endpoint, str):
            raise ConfigError(f"publish endpoint must be a string like 'tcp://127.0.0.1:5555', got {type(endpoint).__name__}")
        check_endpoint(endpoint, "cannot bind ZeroMQ PUB socket to", bind=True)
        if isinstance(class_names, (str, bytes)) or not all(isinstance(c, str) for c in class_names):
            raise ConfigError(f"class_names must be a sequence of strings, got {_short(class_names)}")
        if not isinstance(topic, bytes):
            raise ConfigError(f"topic must be bytes, got {type(topic).__name__}")
        if isinstance(sndhwm, bool) or not isinstance(sndhwm, int) or sndhwm < 0:
            raise ConfigError(f"sndhwm must be an integer >= 0 (0 = unlimited), got {sndhwm!r}")
        if isinstance(linger_ms, bool) or not isinstance(linger_ms, int) or linger_ms < -1:
            raise ConfigError(f"linger_ms must be an integer >= -1 (-1 = wait forever), got {linger_ms!r}")
        zmq = _import_zmq()
        keys = None
        if curve_keys is not None:
            from rtseg.keys import ServerKeys, load_server_keys

            keys = curve_keys if isinstance(curve_keys, ServerKeys) else load_server_keys(curve_keys)
        self._zmq = zmq
        self._class_names = list(class_names)
        self._topic = topic
        self._sent = self._bytes_sent = 0
        #: 64 random bits: a subscriber tells a restarted publisher (new id) from a gap
        self._publisher_id = os.urandom(8).hex()
        self._context = zmq.Context()
        self._auth = None
        self._allowed: _AllowedKeys | None = None
        socket = self._context.socket(zmq.PUB)
        try:
            socket.setsockopt(zmq.SNDHWM, sndhwm)
            socket.setsockopt(zmq.LINGER, linger_ms)
            # a peer that has not completed its handshake in 5 s (not 30) is disconnected
            socket.setsockopt(zmq.HANDSHAKE_IVL, PUBLISHER_HANDSHAKE_IVL_MS)
            # no ZMQ_XPUB_NODROP: a full queue drops the message for that subscriber only
            if keys is not None:
                from zmq.auth.thread import ThreadAuthenticator

                self._allowed = _AllowedKeys(keys.allowed_clients, endpoint)
                self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("rtseg.publish.auth"))
                self._auth.start()
                self._auth.configure_curve_callback("*", credentials_provider=self._allowed)
                socket.curve_secretkey = keys.secret
                socket.curve_publickey = keys.public
                socket.curve_server = True
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            self._stop_auth()
            self._context.term()
            raise PublishError(
                f"cannot bind ZeroMQ PUB socket to {endpoint!r} (expected e.g. tcp://127.0.0.1:5555 or ipc:///tmp/rtseg.sock): {exc.strerror}"
            ) from None
        self._socket = socket
        self._endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if keys is not None:
            protection = f"CURVE-encrypted, {len(keys.allowed_clients)} allowed subscriber key(s) from {keys.folder}"
        else:
            protection = "unencrypted, no authentication"
        if binds_loopback_only(endpoint):
            logger.info("publishing on %s: this machine only (%s)", self._endpoint, protection)
        else:  # reachable from the network: a warning unless encrypted
            where = "every network interface, reachable from the network" if binds_all_interfaces(endpoint) \
                else "reachable from the network"
            level = logging.INFO if keys is not None else logging.WARNING
            logger.log(level, "publishing on %s: %s (%s)", self._endpoint, where, protection)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    @property
    def curve(self) -> bool:
        """True when the socket is a CURVE server (``curve_keys`` was given)."""
        return self._allowed is not None

    @property
    def publisher_id(self) -> str:
        """This publisher's random id, written into every header (``publisher_id``)."""
        return self._publisher_id

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (wildcard ports resolved), e.g. ``tcp://127.0.0.1:40123``."""
        return self._endpoint

    @property
    def stats(self) -> PublisherStats:
        rejected = self._allowed.rejected if self._allowed is not None else 0
        return PublisherStats(sent=self._sent, bytes_sent=self._bytes_sent, rejected_clients=rejected)

    @property
    def closed(self) -> bool:
        return self._socket is None

    def publish(self, frame: Frame) -> None:
        """Send ``frame``'s instances without blocking, as message ``publish_seq`` =
        :attr:`stats` ``.sent``. Every subscriber whose queue has room gets it; the others
        miss it (and see the gap in ``publish_seq``)."""
        if self._socket is None:
            raise PublishError(f"cannot publish on {self._endpoint}: expected an open Publisher, found it closed")
        parts = encode_message(frame, self._class_names, topic=self._topic,
                               publisher_id=self._publisher_id, publish_seq=self._sent)
        zmq = self._zmq
        try:
            # A PUB socket without XPUB_NODROP never refuses a message (it drops per
            # subscriber instead), so NOBLOCK only guards against waiting at all.
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            raise PublishError(f"cannot send on {self._endpoint}: {exc.strerror}") from None
        self._sent += 1
        self._bytes_sent += sum(len(p) for p in parts)

    def close(self) -> None:
        """Close the socket (waiting at most ``linger_ms`` to flush); safe to call twice."""
        if self._socket is None:
            return
        self._socket.close()
        self._socket = None
        self._stop_auth()
        self._context.term()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._socket is None else "open"
        return f"Publisher({self._endpoint!r}, {state}, id={self._publisher_id}, sent={self._sent})"


# ---------------------------------------------------------------------------------------
# subscriber
# ---------------------------------------------------------------------------------------
#: Received messages a subscriber may hold, by default, in its ZeroMQ receive queue:
#: ``ZMQ_RCVHWM`` is this // ``max_message_bytes`` (8 messages at the default 64 MiB cap).
DEFAULT_MAX_QUEUED_BYTES = 512 * 2**20
#: after a refused handshake, or a connection dropped again before any message came, the
#: subscriber waits this long before connecting again, doubling up to the maximum; the
#: first drop after a message reconnects at once (a restarted publisher)
RECONNECT_BACKOFF_FIRST_S = 0.1
RECONNECT_BACKOFF_MAX_S = 5.0
#: ZeroMQ's own retry of a TCP connect that was refused (no publisher yet): 20 ms, doubling
#: to this (``ZMQ_RECONNECT_IVL`` / ``ZMQ_RECONNECT_IVL_MAX``). Kept well under the time
#: between a publisher's bind and its first message (the first inference): at 500 ms a
#: subscriber started before ``rtseg run`` missed its first 4 frames
RECONNECT_IVL_MS = 20
RECONNECT_IVL_MAX_MS = 100
#: a subscriber warning of the same kind is logged at most once per this many seconds
WARNING_INTERVAL_S = 30.0
#: ``ZMQ_HANDSHAKE_IVL`` of the publisher: a peer that has not completed its handshake
#: after this long is disconnected (ZeroMQ's default is 30 s)
PUBLISHER_HANDSHAKE_IVL_MS = 5000
#: a ZeroMQ IPC path must fit ``sockaddr_un.sun_path`` (108 bytes on Linux, with the NUL)
MAX_IPC_PATH_BYTES = 107


def check_endpoint(endpoint: Any, what: str, *, bind: bool, inproc: bool = True) -> str:
    """``endpoint`` if it is one rtseg can bind (``bind``) or connect to, else
    :class:`PublishError` with one line: what was expected and what was found.

    Accepted: ``tcp://HOST:PORT`` with a port in 1-65535 (``*`` as the port, a free one,
    only to bind; ``*`` as the host only to bind), ``ipc://PATH`` (at most 107 bytes) and,
    when ``inproc``, ``inproc://NAME`` (the same process only).
    """
    expected = "tcp://HOST:PORT (port 1-65535), ipc://PATH" + (" or inproc://NAME" if inproc else "")
    if not isinstance(endpoint, str):
        raise PublishError(f"{what} {_short(endpoint)}: expected an endpoint string like tcp://127.0.0.1:5555, "
                           f"found {type(endpoint).__name__}")
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise PublishError(f"{what} {endpoint!r}: expected {expected}, found no '://'")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise PublishError(f"{what} {endpoint!r}: expected tcp://HOST:PORT, found no {'port' if not colon else 'host'}")
        if host in ("*", "[*]") and not bind:
            raise PublishError(f"{what} {endpoint!r}: expected the publisher's host (e.g. 127.0.0.1) to connect to, found '*'")
        if port == "*" and bind:
            return endpoint
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            allowed = "1-65535, or * for a free one" if bind else "1-65535"
            raise PublishError(f"{what} {endpoint!r}: expected a TCP port in {allowed}, found {port!r}")
        return endpoint
    if scheme == "ipc":
        if not rest or len(os.fsencode(rest)) > MAX_IPC_PATH_BYTES:
            found = "an empty path" if not rest else f"a path of {len(os.fsencode(rest))} bytes"
            raise PublishError(f"{what} {endpoint!r}: expected ipc://PATH with 1-{MAX_IPC_PATH_BYTES} bytes, found {found}")
        return endpoint
    if scheme == "inproc" and inproc:
        if not rest:
            raise PublishError(f"{what} {endpoint!r}: expected inproc://NAME, found an empty name")
        return endpoint
    found = "inproc:// (it reaches only the same process)" if scheme == "inproc" else f"scheme {scheme!r}"
    raise PublishError(f"{what} {endpoint!r}: expected {expected}, found {found}")


class _ThrottledWarnings:
    """Warnings logged at most once per ``interval`` seconds per kind; the next one logged
    says how many were left out."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warning(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, -math.inf):
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            text += f" ({left_out} more like this in the last {self.interval:.0f} s not logged)"
        self._next[kind] = now + self.interval
        logger.warning("%s", text)


def _handshake_failure(zmq: Any, event: int, value: int, keys: "ClientKeys | None") -> tuple[str, str]:
    """(kind, one line) for a failed handshake seen by the subscriber's socket monitor; one
    kind for all, so that the log shows one line per ``WARNING_INTERVAL_S`` however the
    refusal shows (a CURVE server may close before the client reads why)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if keys is not None:
            return "auth", (f"authentication failed: the publisher refused this subscriber's CURVE key (ZAP status {value}; "
                            f"expected {keys.folder}/client.key in the publisher's allowed_clients)")
        return "auth", f"authentication failed: the publisher refused this subscriber (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if keys is None:
                return "auth", ("authentication failed: the publisher expects another security mechanism than this "
                                "subscriber's none (a CURVE publisher: expected --curve-keys DIR / curve_keys=)")
            return "auth", ("authentication failed: this subscriber uses CURVE (--curve-keys) and the publisher another "
                            "security mechanism (an unencrypted publisher: expected no --curve-keys)")
        return "auth", f"authentication failed: ZeroMQ handshake protocol error 0x{value:08x}"
    # EVENT_HANDSHAKE_FAILED_NO_DETAIL: the peer closed the connection during the handshake;
    # a CURVE server does so when the client's HELLO is not encrypted for its key
    if keys is not None:
        return "auth", ("authentication failed: the publisher ended the CURVE handshake (expected "
                        f"{keys.folder}/server.key to be this publisher's public key)")
    reason = os.strerror(value) if value else "no detail"
    return "auth", (f"handshake failed: the publisher closed the connection ({reason}); a CURVE publisher refuses a "
                    "subscriber without keys (expected --curve-keys DIR / curve_keys= for one)")


def subscribe(
    endpoint: str,
    *,
    topic: bytes = b"rtseg",
    timeout: float | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    curve_keys: "str | os.PathLike | ClientKeys | None" = None,
    rcvhwm: int | None = None,
    gaps: GapCounter | None = None,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
) -> Iterator[Message]:
    """Connect a SUB socket to ``endpoint`` and yield each decoded :class:`Message`.

    Each message's ``missed`` is the number of the publisher's messages this subscriber
    did not receive just before it (its queue was full, or it was disconnected), counted
    by a :class:`GapCounter` from the headers' ``publish_seq``; pass ``gaps`` to read the
    running totals (received, missed, publisher restarts).

    Memory is bounded: ZeroMQ queues at most ``rcvhwm`` received messages on this side
    (``ZMQ_RCVHWM``; by default ``max_queued_bytes // max_message_bytes``, at least 1: 8
    with the defaults, 512 MiB / 64 MiB), each at most ``max_message_bytes``, so what this
    subscriber holds is about ``(rcvhwm + 2) * max_message_bytes`` (the queue, one message
    being received, one being decoded; a decoded :class:`Message` keeps its masks packed,
    about its size on the wire). An explicit ``rcvhwm`` must keep ``rcvhwm *
    max_message_bytes`` within ``max_queued_bytes``. To queue more small messages, lower
    ``max_message_bytes``. Once this queue and the publisher's for this subscriber are
    full, the publisher drops messages for this subscriber only.

    A generator: the socket is made at the first ``next()`` (a bad endpoint raises
    :class:`PublishError` there) and closed when the generator ends or is closed.
    ``timeout`` (seconds): stop once that long passes with no valid message; ``None``
    waits forever. ZeroMQ drops the connection of a peer that sends a part above
    ``max_message_bytes`` (``ZMQ_MAXMSGSIZE``) before buffering it; the subscriber then
    connects again. Malformed messages are counted and skipped. Messages published before
    the subscription reaches the publisher are not received (ZeroMQ's "slow joiner").

    ``curve_keys``: a key folder (:mod:`rtseg.keys`: ``client.key_secret`` and
    ``server.key``) or loaded :class:`rtseg.keys.ClientKeys`, for a publisher that uses
    CURVE. A publisher that does not accept the key (or a key for another publisher, or
    no key for a CURVE publisher) completes no handshake: nothing is received, the log
    says ``authentication failed`` and why, and ``timeout`` ends the wait.

    Connection trouble backs off and is logged sparingly: after a refused handshake, or a
    connection dropped again before any message arrived, the next attempt waits
    ``RECONNECT_BACKOFF_FIRST_S`` (0.1 s), doubling to ``RECONNECT_BACKOFF_MAX_S`` (5 s),
    until a message arrives; each kind of warning (authentication, dropped connection,
    malformed message) is logged at most once per ``WARNING_INTERVAL_S`` (30 s), with a
    count of those left out.
    """
    check_endpoint(endpoint, "cannot connect ZeroMQ SUB socket to", bind=False)
    if not isinstance(topic, bytes):
        raise ConfigError(f"topic must be bytes, got {type(topic).__name__}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ConfigError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) or max_message_bytes < 1:
        raise ConfigError(f"max_message_bytes must be an integer >= 1, got {max_message_bytes!r}")
    if isinstance(max_queued_bytes, bool) or not isinstance(max_queued_bytes, int) or max_queued_bytes < 1:
        raise ConfigError(f"max_queued_bytes must be an integer >= 1, got {max_queued_bytes!r}")
    if rcvhwm is None:
        rcvhwm = max(1, max_queued_bytes // max_message_bytes)
    elif isinstance(rcvhwm, bool) or not isinstance(rcvhwm, int) or rcvhwm < 1 \
            or rcvhwm * max_message_bytes > max(max_queued_bytes, max_message_bytes):
        limit = max(1, max_queued_bytes // max_message_bytes)
        raise ConfigError(f"rcvhwm must be an integer in [1, {limit}] (max_queued_bytes {max_queued_bytes} / "
                          f"max_message_bytes {max_message_bytes}: bounded memory) or None, got {rcvhwm!r}")
    if gaps is not None and not isinstance(gaps, GapCounter):
        raise ConfigError(f"gaps must be a GapCounter or None, got {type(gaps).__name__}")
    counter = GapCounter() if gaps is None else gaps
    zmq = _import_zmq()
    from zmq.utils.monitor import parse_monitor_message

    keys = None
    if curve_keys is not None:
        from rtseg.keys import ClientKeys, load_client_keys

        keys = curve_keys if isinstance(curve_keys, ClientKeys) else load_client_keys(curve_keys)
    warnings = _ThrottledWarnings(WARNING_INTERVAL_S)
    context = zmq.Context()

    def open_socket() -> tuple[Any, Any]:
        """A new SUB socket connected to ``endpoint``, and its monitor. A connection that
        failed is replaced by a new socket rather than ``disconnect()`` + ``connect()``:
        disconnecting terminates the pipe under messages still queued in it, and reading
        one of those then aborts the process inside libzmq (``Assertion failed: !_more
        (src/fq.cpp:80)``, seen once on a subscriber whose publisher was killed)."""
        sock = context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                sock.curve_secretkey = keys.secret
                sock.curve_publickey = keys.public
                sock.curve_serverkey = keys.server_public
            # Retry a refused TCP connect soon (20 ms; ZeroMQ's default is 100 ms), so a
            # subscriber started before the publisher misses no first frame, backing off to
            # 0.1 s while no publisher is there.
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
            sock.setsockopt(zmq.SUBSCRIBE, topic)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                raise PublishError(
                    f"cannot connect ZeroMQ SUB socket to {endpoint!r} (expected e.g. tcp://127.0.0.1:5555): "
                    f"{exc.strerror}") from None
            # libzmq ends a connection on a protocol error -- a part above ZMQ_MAXMSGSIZE, a
            # refused handshake -- *without* reconnecting (session_base_t::engine_error), so
            # one oversized message would silently end the subscription for good. A monitor
            # sees the disconnect (and why the handshake failed) and the subscriber connects
            # again, after a back-off while nothing gets through.
            mon = sock.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock, mon

    def close_socket(sock: Any, mon: Any) -> None:
        sock.disable_monitor()
        mon.close(linger=0)
        sock.close(linger=0)

    socket = monitor = None
    try:
        socket, monitor = open_socket()
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        malformed = 0
        failures = 0  # connection failures since the last message received
        failure: tuple[str, str] | None = None  # why the handshake failed, until its DISCONNECTED
        reconnect_at: float | None = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wake = min((t for t in (deadline, reconnect_at) if t is not None), default=None)
            wait_ms = None if wake is None else max(0, int(math.ceil((wake - time.monotonic()) * 1000)))
            if socket is None:  # waiting out a back-off: nothing to poll
                time.sleep(0 if wait_ms is None else wait_ms / 1000)
                ready = {}
            else:
                ready = dict(poller.poll(wait_ms))
            if reconnect_at is not None and time.monotonic() >= reconnect_at:
                reconnect_at = None
                socket, monitor = open_socket()
                poller.register(socket, zmq.POLLIN)
                poller.register(monitor, zmq.POLLIN)
                continue
            if monitor is not None and monitor in ready:
                event = parse_monitor_message(monitor.recv_multipart())
                if event["event"] != zmq.EVENT_DISCONNECTED:
                    failure = _handshake_failure(zmq, event["event"], event["value"], keys)
                    continue
                failures += 1
                delay = 0.0 if failures == 1 and failure is None else \
                    min(RECONNECT_BACKOFF_MAX_S, RECONNECT_BACKOFF_FIRST_S * 2 ** (failures - 1))
                kind, why = failure or ("dropped", "connection dropped (publisher gone, or a message part above "
                                                   f"max_message_bytes={max_message_bytes})")
                failure = None
                warnings.warning(kind, f"{endpoint}: {why}; connecting again in {delay:.1f} s "
                                       f"(attempt {failures} since the last message)")
                # a new socket after the delay; closing this one also stops ZeroMQ's own retries
                poller.unregister(socket)
                poller.unregister(monitor)
                close_socket(socket, monitor)
                socket = monitor = None
                reconnect_at = time.monotonic() + delay
                continue
            if socket is None or socket not in ready:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                continue
            parts, extra = _receive_parts(socket, zmq)
            try:
                if extra:  # dropped while receiving: one message never holds more than 3 parts here
                    raise _malformed("the message", "3 parts (topic, header, masks)", f"{3 + extra} parts")
                message = decode_message(parts, max_message_bytes=max_message_bytes)
            except PublishError as exc:
                malformed += 1
                warnings.warning("malformed", f"skipping a malformed message from {endpoint} ({malformed} so far): {exc}")
                continue
            finally:
                del parts
            failures = 0
            restarts = counter.restarts
            missed = counter.update(message)
            if counter.restarts != restarts:
                logger.info("a new or restarted publisher on %s (publisher_id %s): counting missed messages afresh",
                            endpoint, message.publisher_id)
            yield replace(message, missed=missed) if missed else message
            if timeout is not None:
                deadline = time.monotonic() + timeout
    finally:
        if socket is not None:
            close_socket(socket, monitor)
        context.term()


def _receive_parts(socket: Any, zmq: Any) -> tuple[list[bytes], int]:
    """The parts of the next message, at most 3 kept: ``(parts, how many more were dropped)``."""
    parts = [socket.recv()]
    extra = 0
    while socket.getsockopt(zmq.RCVMORE):
        part = socket.recv()
        if len(parts) < 3:
            parts.append(part)
        else:
            extra += 1
        del part
    return parts, extra


def _format_line(message: Message, received_time: float) -> str:
    latency_ms = (received_time - message.publish_time) * 1000.0
    found = ", ".join(f"{name} {score:.2f}" for name, score in zip(message.class_names, message.instances.scores.tolist()))
    missed = f" missed={message.missed}" if message.missed else ""
    return (
        f"seq={message.seq} source={message.source!r} latency={latency_ms:.1f}ms "
        f"instances={len(message.instances)} [{found}]{missed}"
    )


def _save(message: Message, received_time: float, save_dir: str) -> str:
    document = {
        "header": message.header,
        "received_time": received_time,
        "mask_rle": message.instances.to_rle(),  # COCO compressed RLE, one per instance
    }
    path = os.path.join(save_dir, f"{message.seq:010d}.json")
    temporary = path + ".part"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(document, f, allow_nan=False)
    os.replace(temporary, path)
    return path


def run_subscriber(
    endpoint: str,
    *,
    topic: bytes = b"rtseg",
    count: int | None = None,
    timeout: float | None = None,
    save_dir: str | None = None,
    out: TextIO | None = None,
    curve_keys: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    err: TextIO | None = None,
) -> int:
    """``rtseg subscribe ENDPOINT [--topic T] [--count N] [--timeout S] [--save DIR] [--curve-keys DIR]``; returns the exit code.

    Prints one line per message to ``out`` (default ``sys.stdout``): seq, source,
    publish-to-receive latency in ms (wall clocks: across machines it includes their
    clock offset), number of instances and each class name and score, and ``missed=N``
    when N messages of the publisher did not reach this subscriber just before this one
    (its queue was full or it was disconnected; see :class:`GapCounter`). At the end, one
    line to ``err`` (default ``sys.stderr``): messages received, missed, and publisher
    restarts seen. With ``save_dir``,
    writes ``<seq>.json`` per message: the header, the receive time and the masks as
    COCO RLEs (``Instances.to_rle()``). Stops after ``count`` messages, or after
    ``timeout`` seconds without one. ``curve_keys``: a key folder for a CURVE publisher
    (``--curve-keys DIR``); ``max_message_bytes``: larger messages are not accepted.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    check_endpoint(endpoint, "cannot connect ZeroMQ SUB socket to", bind=False)  # before --save makes a folder
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"--count must be an integer >= 1, got {count!r}")
    if save_dir is not None:
        try:
            os.makedirs(save_dir, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--save must be a directory that can be created, got {save_dir!r}: {exc.strerror}") from None
    received = 0
    gaps = GapCounter()
    messages = subscribe(endpoint, topic=topic, timeout=timeout, curve_keys=curve_keys, max_message_bytes=max_message_bytes,
                         gaps=gaps)
    try:
        for message in messages:
            received_time = time.time()
            print(_format_line(message, received_time), file=out, flush=True)
            if save_dir is not None:
                try:
                    _save(message, received_time, save_dir)
                except OSError as exc:
                    raise ConfigError(f"--save: cannot write into {save_dir!r}: {exc.strerror}") from None
            received += 1
            if count is not None and received >= count:
                break
    except KeyboardInterrupt:  # Ctrl-C, the usual end without --count: the totals still count
        print(_totals_line(gaps), file=err, flush=True)
        raise
    finally:
        messages.close()
    print(_totals_line(gaps), file=err, flush=True)
    return 0


def _totals_line(gaps: GapCounter) -> str:
    return f"received {gaps.received} message(s), missed {gaps.missed}, publisher restarts {gaps.restarts}"
