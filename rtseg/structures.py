"""The two types that flow between pipeline stages: :class:`Instances` and :class:`Frame`,
and the compact form an instance's mask takes in them, :class:`CompactMasks`.

Everything here is NumPy on the host. The model and its post-processing may run on any
device; post-processing packs the masks there, and the single, deliberate device->host copy
(of the packed bits, not of full-size masks) happens where a :class:`Segmenter` builds an
:class:`Instances` (``rtseg.postprocess.to_numpy_instances``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def _check_array(name: str, value: Any, dtype: type, ndim: int, shape_hint: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape {shape_hint}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_hint}, got {tuple(value.shape)}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {value.dtype.name}")
    return value


#: bits set in each byte value, for counting mask pixels without unpacking them
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], np.int64)


def dense_windows(masks: np.ndarray) -> np.ndarray:
    """Tight integer windows of ``bool[N, H, W]`` masks as ``int32[N, 4]`` ``x0, y0, x1, y1``.

    ``x0`` = the smallest column with a mask pixel, ``x1`` = the largest + 1 (exclusive end),
    likewise for rows: the wire format's ``mask_window`` (docs/wire-format.md, section 4). An
    empty mask gets the zero-size window ``0, 0, 0, 0``.
    """
    n, h, w = masks.shape
    rows = masks.any(axis=2)  # (N, H): one pass over every pixel
    y0, y1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    windows = np.zeros((n, 4), np.int32)
    for i in np.flatnonzero(rows.any(axis=1)).tolist():
        cols = masks[i, y0[i]:y1[i]].any(axis=0)  # columns: only the mask's rows (half the time at 1080p)
        windows[i] = (cols.argmax(), y0[i], w - cols[::-1].argmax(), y1[i])
    return windows


def window_lengths(windows: np.ndarray) -> np.ndarray:
    """``int64[N]``: bytes of each window's bits, ``ceil((x1 - x0) * (y1 - y0) / 8)``."""
    w = windows.astype(np.int64)
    return ((w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1]) + 7) // 8


class CompactMasks:
    """``N`` masks of an ``H x W`` image, each stored only inside its window, one bit a pixel:
    exactly the wire format's ``bitpacked-window`` form (docs/wire-format.md, section 4), so
    the publisher sends :attr:`blob` as it is and a decoded message holds what it received.

    - ``windows``: ``int32[N, 4]`` ``x0, y0, x1, y1``: mask ``i`` lives in columns
      ``x0 <= x < x1``, rows ``y0 <= y < y1`` (``0 <= x0 <= x1 <= W``, ``0 <= y0 <= y1 <= H``)
      and is false outside it; an empty mask has a zero-size window (rtseg writes ``0, 0, 0, 0``).
    - ``offsets``: ``int64[N]``: where mask ``i``'s bytes start in ``blob``; it has
      ``ceil((x1 - x0) * (y1 - y0) / 8)`` of them (:attr:`lengths`).
    - ``blob``: ``uint8[B]``: each window's pixels row-major, packed most significant bit
      first (``numpy.packbits`` of the flattened window), zero-padded to a byte.
    - ``image_size``: ``(H, W)``.

    What rtseg makes (:meth:`from_dense`, post-processing, indexing) has tight windows and
    the masks laid out back to back in instance order (:attr:`is_contiguous`); a decoded
    message may have neither, and every method accepts both. A 1080p mask costs about its
    window's area / 8 bytes instead of ``H * W``. Nothing here modifies its inputs; ``==``
    compares pixels, not layouts.
    """

    __slots__ = ("windows", "offsets", "blob", "image_size")

    def __init__(self, windows: np.ndarray, offsets: np.ndarray, blob: np.ndarray | bytes,
                 image_size: tuple[int, int]) -> None:
        h, w = _image_size(image_size)
        if isinstance(blob, (bytes, bytearray, memoryview)):
            blob = np.frombuffer(blob, np.uint8)
        _check_array("windows", windows, np.int32, 2, "(N, 4)")
        if windows.shape[1] != 4:
            raise ValueError(f"windows must have shape (N, 4), got {tuple(windows.shape)}")
        n = windows.shape[0]
        _check_array("offsets", offsets, np.int64, 1, "(N,)")
        _check_array("blob", blob, np.uint8, 1, "(B,)")
        if offsets.shape[0] != n:
            raise ValueError(f"offsets must have {n} entries to match windows, got {offsets.shape[0]}")
        if n:
            x0, y0, x1, y1 = windows.T
            bad = ~((0 <= x0) & (x0 <= x1) & (x1 <= w) & (0 <= y0) & (y0 <= y1) & (y1 <= h))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"windows[{i}] must be [x0, y0, x1, y1] with 0 <= x0 <= x1 <= {w}, "
                                 f"0 <= y0 <= y1 <= {h}, got {windows[i].tolist()}")
            ends = offsets + window_lengths(windows)
            bad = (offsets < 0) | (ends > blob.shape[0])
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"mask {i}'s bytes [{int(offsets[i])}, {int(ends[i])}) must lie inside the "
                                 f"{blob.shape[0]}-byte blob")
        self.windows, self.offsets, self.blob, self.image_size = windows, offsets, blob, (h, w)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "CompactMasks":
        """No masks, for an image of size ``(H, W)``."""
        return cls(np.zeros((0, 4), np.int32), np.zeros((0,), np.int64), np.zeros((0,), np.uint8), image_size)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> "CompactMasks":
        """Tight windows and packed bits of full-size ``bool[N, H, W]`` masks (reads every
        pixel once; made where masks are still dense, e.g. by hand or from RLE)."""
        _check_array("masks", masks, np.bool_, 3, "(N, H, W)")
        n, h, w = masks.shape
        windows = dense_windows(masks)
        lengths = window_lengths(windows)
        offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
        blob = np.empty(int(lengths.sum()), np.uint8)
        for i, (x0, y0, x1, y1) in enumerate(windows.tolist()):
            if lengths[i]:
                blob[offsets[i]:offsets[i] + lengths[i]] = np.packbits(masks[i, y0:y1, x0:x1])  # flattened, MSB first
        return cls(windows, offsets, blob, (h, w))

    @classmethod
    def concatenate(cls, parts: Sequence["CompactMasks"]) -> "CompactMasks":
        """Join the masks of one image, in order (a new contiguous blob)."""
        if not parts:
            raise ValueError("concatenate needs at least one CompactMasks, got none")
        sizes = {p.image_size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"all parts must share one image_size, got {sorted(sizes)}")
        packed = [p.contiguous() for p in parts]
        starts = np.cumsum([0] + [p.blob.shape[0] for p in packed[:-1]])
        return cls(np.concatenate([p.windows for p in packed]),
                   np.concatenate([p.offsets + s for p, s in zip(packed, starts)]).astype(np.int64),
                   np.concatenate([p.blob for p in packed]), parts[0].image_size)

    # -- layout -------------------------------------------------------------------------
    @property
    def lengths(self) -> np.ndarray:
        """``int64[N]``: bytes of each mask in :attr:`blob`."""
        return window_lengths(self.windows)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, H, W)``, the shape of :meth:`dense`."""
        return (len(self), *self.image_size)

    @property
    def nbytes(self) -> int:
        """Bytes held: the blob, the windows and the offsets (compare ``N * H * W`` dense)."""
        return int(self.blob.nbytes + self.windows.nbytes + self.offsets.nbytes)

    @property
    def is_contiguous(self) -> bool:
        """Masks back to back in instance order from byte 0, and nothing else in the blob:
        :attr:`blob` is then the wire's masks part as it is."""
        lengths = self.lengths
        return bool(np.array_equal(self.offsets, np.cumsum(lengths) - lengths) and self.blob.shape[0] == int(lengths.sum()))

    def contiguous(self) -> "CompactMasks":
        """These masks with :attr:`is_contiguous` true (``self`` when it already is)."""
        return self if self.is_contiguous else self[:]

    # -- container protocol ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, item: Any) -> "CompactMasks":
        """Masks picked by an int, a slice, an index array or a boolean array (as NumPy
        indexes axis 0; an int keeps one mask), laid out contiguously."""
        index = np.arange(len(self))[item]
        index = np.atleast_1d(index)
        windows = self.windows[index]
        lengths = window_lengths(windows)
        offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
        total = int(lengths.sum())
        starts = self.offsets[index]
        if index.size and np.array_equal(starts, starts[0] + offsets):  # one run of the blob: a view
            blob = self.blob[int(starts[0]):int(starts[0]) + total]
        else:  # byte k of mask j comes from starts[j] + (k - offsets[j])
            blob = self.blob[np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lengths)]
        return CompactMasks(windows, offsets, blob, self.image_size)

    # -- reading ------------------------------------------------------------------------
    def window(self, i: int) -> np.ndarray:
        """Mask ``i`` inside its window: ``bool[y1 - y0, x1 - x0]`` (a new array)."""
        x0, y0, x1, y1 = (int(v) for v in self.windows[i])
        h, w = y1 - y0, x1 - x0
        if h * w == 0:
            return np.zeros((h, w), np.bool_)
        start = int(self.offsets[i])
        bits = np.unpackbits(self.blob[start:start + (h * w + 7) // 8], count=h * w)  # MSB first, padding ignored
        return bits.reshape(h, w).view(np.bool_)

    def dense(self) -> np.ndarray:
        """Full-size ``bool[N, H, W]`` masks, made on each call (``N * H * W`` bytes)."""
        masks = np.zeros(self.shape, np.bool_)
        for i, (x0, y0, x1, y1) in enumerate(self.windows.tolist()):
            if x1 > x0 and y1 > y0:
                masks[i, y0:y1, x0:x1] = self.window(i)
        return masks

    def areas(self) -> np.ndarray:
        """``int64[N]``: number of mask pixels per instance, counted in the packed bytes."""
        lengths = self.lengths
        ones = np.concatenate([[0], np.cumsum(_POPCOUNT[self.blob])])
        areas = ones[self.offsets + lengths] - ones[self.offsets]
        # padding bits are ignored by decoders and may be set in a received message
        w = self.windows.astype(np.int64)
        pad = lengths * 8 - (w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1])
        last = self.blob[np.maximum(self.offsets + lengths - 1, 0)] if self.blob.size else np.zeros(len(self), np.uint8)
        areas -= np.where(lengths > 0, _POPCOUNT[last & ((1 << pad) - 1).astype(np.uint8)], 0)
        return areas.astype(np.int64)

    def tight(self, i: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Mask ``i`` in its tightest window: ``((x0, y0, x1, y1), bool[y1 - y0, x1 - x0])``
        (``(0, 0, 0, 0)`` when empty), whatever window it is stored in."""
        x0, y0 = int(self.windows[i, 0]), int(self.windows[i, 1])
        window = self.window(i)
        rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
        if rows.size == 0:
            return (0, 0, 0, 0), window[:0, :0]
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return (x0 + c0, y0 + r0, x0 + c1, y0 + r1), window[r0:r1, c0:c1]

    def crop(self, i: int, rect: tuple[int, int, int, int]) -> np.ndarray:
        """Mask ``i`` on the image region ``rect = (x1, y1, x2, y2)`` (exclusive ends, inside
        the image): ``bool[y2 - y1, x2 - x1]``, what ``dense()[i, y1:y2, x1:x2]`` would be."""
        x1, y1, x2, y2 = rect
        out = np.zeros((max(y2 - y1, 0), max(x2 - x1, 0)), np.bool_)
        wx0, wy0, wx1, wy1 = (int(v) for v in self.windows[i])
        ix0, iy0, ix1, iy1 = max(x1, wx0), max(y1, wy0), min(x2, wx1), min(y2, wy1)
        if ix1 > ix0 and iy1 > iy0:
            out[iy0 - y1:iy1 - y1, ix0 - x1:ix1 - x1] = self.window(i)[iy0 - wy0:iy1 - wy0, ix0 - wx0:ix1 - wx0]
        return out

    def to_rle(self) -> list[dict]:
        """COCO compressed RLEs, ``{"size": [H, W], "counts": str}`` each: exactly what
        ``pycocotools.mask.encode`` gives for :meth:`dense`, computed from the windows in
        time and memory proportional to their pixels, never to ``H * W``."""
        from pycocotools import mask as mask_utils

        h, w = self.image_size
        out = []
        for i in range(len(self)):
            counts = _rle_counts(tuple(int(v) for v in self.windows[i]), self.window(i), h, w)
            rle = mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
            text = rle["counts"]
            out.append({"size": [h, w], "counts": text.decode("ascii") if isinstance(text, bytes) else text})
        return out

    def __eq__(self, other: object) -> bool:
        """Same image size and the same pixels in every mask (windows and layout may differ)."""
        if not isinstance(other, CompactMasks):
            return NotImplemented
        if self.image_size != other.image_size or len(self) != len(other):
            return False
        if np.array_equal(self.windows, other.windows) and self.is_contiguous and other.is_contiguous:
            if np.array_equal(self.blob, other.blob):
                return True
        for i in range(len(self)):
            if np.array_equal(self.windows[i], other.windows[i]):
                if not np.array_equal(self.window(i), other.window(i)):
                    return False
                continue
            a, b = self.tight(i), other.tight(i)
            if a[0] != b[0] or not np.array_equal(a[1], b[1]):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable numpy payload: not hashable

    def __repr__(self) -> str:
        return f"CompactMasks(n={len(self)}, image_size={self.image_size}, nbytes={self.nbytes})"


def _image_size(image_size: Any) -> tuple[int, int]:
    if (
        not isinstance(image_size, tuple)
        or len(image_size) != 2
        or not all(isinstance(v, (int, np.integer)) and v > 0 for v in image_size)
    ):
        raise ValueError(f"image_size must be a tuple (H, W) of positive ints, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


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
class Instances:
    """Objects found in one image.

    Fields (N = number of instances, H x W = the original image size):

    - ``boxes``: ``float32[N, 4]``, ``x1, y1, x2, y2`` in original-image pixels,
      ``0 <= x1 <= x2 <= W`` and ``0 <= y1 <= y2 <= H``.
    - ``scores``: ``float32[N]`` in ``[0, 1]``, sorted descending by the producers in rtseg
      (not required by the type).
    - ``class_ids``: ``int64[N]``, 0-based indices into the model's class names
      (no background class).
    - ``masks``: :class:`CompactMasks`, one mask per instance in its window, bit-packed (the
      wire format's form: 100 masks of 1080p objects cost a few MB, not 207 MB). The
      constructor also takes full-size ``bool[N, H, W]`` masks and packs them once;
      :meth:`masks_dense` gives them back.
    - ``image_size``: ``(H, W)`` of the image the instances refer to.
    - ``mask_scores``: optional ``float32[N]``, for families whose upstream gives a box score
      and a mask score (CenterMask: ``scores * maskiou``; YOLACT++: ``scores * maskiou``, the
      score upstream's mask AP ranks by). ``scores`` is then the box score. ``None`` otherwise.
      Not bounded to ``[0, 1]``: CenterMask's regressed maskiou is not clamped upstream.
    - ``track_ids``: optional ``int64[N]``, the persistent object id of each instance within
      its stream, set by a tracker (``rtseg run --track``, :mod:`rtseg.track`); ``-1`` for a
      detection not (yet) part of a confirmed track. ``None`` when tracking is off.

    Indexing with an int, a slice, an index array or a boolean array filters every field
    at once and returns a new :class:`Instances`; no method modifies its inputs.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: CompactMasks
    image_size: tuple[int, int]
    mask_scores: np.ndarray | None = None
    track_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.image_size, tuple)
            or len(self.image_size) != 2
            or not all(isinstance(v, (int, np.integer)) and v > 0 for v in self.image_size)
        ):
            raise ValueError(f"image_size must be a tuple (H, W) of positive ints, got {self.image_size!r}")
        h, w = int(self.image_size[0]), int(self.image_size[1])
        object.__setattr__(self, "image_size", (h, w))
        boxes = _check_array("boxes", self.boxes, np.float32, 2, "(N, 4)")
        if boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
        n = boxes.shape[0]
        _check_array("scores", self.scores, np.float32, 1, "(N,)")
        _check_array("class_ids", self.class_ids, np.int64, 1, "(N,)")
        for name, arr in (("scores", self.scores), ("class_ids", self.class_ids)):
            if arr.shape[0] != n:
                raise ValueError(f"{name} must have {n} entries to match boxes, got {arr.shape[0]}")
        if not isinstance(self.masks, CompactMasks):
            if not isinstance(self.masks, np.ndarray):
                raise TypeError(f"masks must be a CompactMasks or a numpy.ndarray of shape (N, H, W), "
                                f"got {type(self.masks).__name__}")
            _check_array("masks", self.masks, np.bool_, 3, "(N, H, W)")
            if self.masks.shape != (n, h, w):
                raise ValueError(f"masks must have shape {(n, h, w)} (N, H, W), got {tuple(self.masks.shape)}")
            object.__setattr__(self, "masks", CompactMasks.from_dense(self.masks))
        if self.masks.shape != (n, h, w):
            raise ValueError(f"masks must be {n} masks of an image of size {(h, w)}, got {len(self.masks)} of "
                             f"{self.masks.image_size}")
        if self.mask_scores is not None:
            _check_array("mask_scores", self.mask_scores, np.float32, 1, "(N,)")
            if self.mask_scores.shape[0] != n:
                raise ValueError(f"mask_scores must have {n} entries to match boxes, got {self.mask_scores.shape[0]}")
        if self.track_ids is not None:
            _check_array("track_ids", self.track_ids, np.int64, 1, "(N,)")
            if self.track_ids.shape[0] != n:
                raise ValueError(f"track_ids must have {n} entries to match boxes, got {self.track_ids.shape[0]}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Instances":
        """No instances in an image of size ``(H, W)``."""
        h, w = int(image_size[0]), int(image_size[1])
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            masks=CompactMasks.empty((h, w)),
            image_size=(h, w),
        )

    @classmethod
    def concatenate(cls, parts: Sequence["Instances"]) -> "Instances":
        """Join instances of the same image."""
        if not parts:
            raise ValueError("concatenate needs at least one Instances, got none")
        sizes = {p.image_size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"all parts must share one image_size, got {sorted(sizes)}")
        with_mask_scores = {p.mask_scores is not None for p in parts}
        if len(with_mask_scores) != 1:
            raise ValueError("all parts must either have mask_scores or not, got a mix")
        with_track_ids = {p.track_ids is not None for p in parts}
        if len(with_track_ids) != 1:
            raise ValueError("all parts must either have track_ids or not, got a mix")
        return cls(
            mask_scores=np.concatenate([p.mask_scores for p in parts]) if with_mask_scores == {True} else None,
            track_ids=np.concatenate([p.track_ids for p in parts]) if with_track_ids == {True} else None,
            boxes=np.concatenate([p.boxes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            class_ids=np.concatenate([p.class_ids for p in parts]),
            masks=CompactMasks.concatenate([p.masks for p in parts]),
            image_size=parts[0].image_size,
        )

    # -- container protocol ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, item: Any) -> "Instances":
        if isinstance(item, (int, np.integer)):
            n = len(self)
            if not -n <= int(item) < n:
                raise IndexError(f"instance index {int(item)} out of range for {n} instances")
            item = slice(int(item), int(item) + 1 if int(item) != -1 else None)
        return Instances(
            boxes=self.boxes[item],
            scores=self.scores[item],
            class_ids=self.class_ids[item],
            masks=self.masks[item],
            image_size=self.image_size,
            mask_scores=None if self.mask_scores is None else self.mask_scores[item],
            track_ids=None if self.track_ids is None else self.track_ids[item],
        )

    def __eq__(self, other: object) -> bool:  # value equality, for tests and round trips
        if not isinstance(other, Instances):
            return NotImplemented
        return (
            self.image_size == other.image_size
            and np.array_equal(self.boxes, other.boxes)
            and np.array_equal(self.scores, other.scores)
            and np.array_equal(self.class_ids, other.class_ids)
            and self.masks == other.masks
            and (self.mask_scores is None) == (other.mask_scores is None)
            and (self.mask_scores is None or np.array_equal(self.mask_scores, other.mask_scores))
            and (self.track_ids is None) == (other.track_ids is None)
            and (self.track_ids is None or np.array_equal(self.track_ids, other.track_ids))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable numpy payload: not hashable

    def __repr__(self) -> str:
        return f"Instances(n={len(self)}, image_size={self.image_size})"

    def ranked_by_mask_score(self, threshold: float = 0.0) -> "Instances":
        """The instances with ``scores`` replaced by ``mask_scores``, sorted by it (stable,
        descending) and those ``<= threshold`` dropped: how YOLACT++'s official display path
        (``eval.py`` ``prep_display``, ``rescore_bbox=True``) ranks and thresholds. Unchanged
        when there are no ``mask_scores``."""
        if self.mask_scores is None:
            return self
        order = np.argsort(-self.mask_scores, kind="stable")
        order = order[self.mask_scores[order] > threshold]
        picked = self[order]
        return Instances(boxes=picked.boxes, scores=picked.mask_scores.copy(), class_ids=picked.class_ids,
                         masks=picked.masks, image_size=picked.image_size, track_ids=picked.track_ids)

    # -- derived quantities ----------------------------------------------------------------
    def masks_dense(self) -> np.ndarray:
        """Full-size ``bool[N, H, W]`` masks, made on each call (``N * H * W`` bytes; not for
        the hot path)."""
        return self.masks.dense()

    def to_supervision(self) -> Any:
        """These instances as a ``supervision.Detections`` (for its annotators, zones, trackers):
        ``xyxy`` the boxes, ``confidence`` the scores, ``class_id`` the class ids, ``mask`` the
        dense ``bool[N, H, W]`` masks (:meth:`masks_dense`), ``tracker_id`` the track ids when
        there are any (``-1``: not part of a confirmed track), else None. Arrays are copies (the
        masks made afresh from the compact form).
        Needs supervision (``pip install 'rtseg[supervision]'``)."""
        try:
            import supervision
        except ImportError:
            from rtseg.errors import ConfigError

            raise ConfigError("Instances.to_supervision() needs supervision: expected it installed "
                              "(pip install 'rtseg[supervision]'), found it missing") from None
        track_ids = getattr(self, "track_ids", None)
        return supervision.Detections(xyxy=self.boxes.copy(), mask=self.masks_dense(),
                                      confidence=self.scores.copy(), class_id=self.class_ids.copy(),
                                      tracker_id=None if track_ids is None else np.array(track_ids, dtype=np.int64))

    def mask_areas(self) -> np.ndarray:
        """``int64[N]``: number of mask pixels per instance (counted in the packed bits)."""
        return self.masks.areas()

    def to_rle(self) -> list[dict]:
        """Masks as COCO run-length encodings (pycocotools' compressed form).

        Returns one dict per instance, ``{"size": [H, W], "counts": str}``, exactly what
        ``pycocotools.mask.encode`` gives for :meth:`masks_dense` (counts decoded to ``str``
        so it is JSON-ready), computed from the windows without making full-size masks.
        """
        return self.masks.to_rle()

    @staticmethod
    def masks_from_rle(rles: Sequence[dict], image_size: tuple[int, int]) -> np.ndarray:
        """Decode COCO RLEs (compressed or uncompressed) to ``bool[N, H, W]``."""
        from pycocotools import mask as mask_utils

        h, w = int(image_size[0]), int(image_size[1])
        if len(rles) == 0:
            return np.zeros((0, h, w), np.bool_)
        fixed = []
        for i, rle in enumerate(rles):
            size = [int(v) for v in rle.get("size", [])]
            if size != [h, w]:
                raise ValueError(f"RLE {i} has size {size}, expected [{h}, {w}]")
            counts = rle["counts"]
            if isinstance(counts, list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(rle, h, w)
            elif isinstance(counts, str):
                rle = {"size": size, "counts": counts.encode("ascii")}
            fixed.append(rle)
        masks = mask_utils.decode(fixed)  # (H, W, N) uint8
        return np.ascontiguousarray(masks.transpose(2, 0, 1).astype(np.bool_))

    @classmethod
    def from_rle(
        cls,
        boxes: np.ndarray,
        scores: np.ndarray,
        class_ids: np.ndarray,
        rles: Sequence[dict],
        image_size: tuple[int, int],
    ) -> "Instances":
        """Inverse of :meth:`to_rle` together with the other fields."""
        return cls(
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            scores=np.asarray(scores, np.float32).reshape(-1),
            class_ids=np.asarray(class_ids, np.int64).reshape(-1),
            masks=cls.masks_from_rle(rles, image_size),
            image_size=image_size,
        )


@dataclass
class Frame:
    """One captured image and everything the pipeline learns about it.

    A frame is owned by one stage at a time (it is handed on through queues), so stages
    fill in their fields directly: ``instances`` (inference), ``rendered`` (render), and
    one entry per stage in ``timings`` (seconds spent in that stage for this frame).
    """

    seq: int  #: 0-based sequence number within its source, in capture order
    source_id: str  #: what was opened, e.g. ``"synthetic"``, a path, or an RTSP URL
    capture_time: float  #: wall clock (``time.time()``) when the image was read
    image: np.ndarray  #: ``uint8[H, W, 3]`` BGR, as OpenCV delivers it
    capture_monotonic: float = 0.0  #: ``time.perf_counter()`` at capture, for latencies
    instances: Instances | None = None
    rendered: np.ndarray | None = None  #: ``uint8[H, W, 3]`` BGR overlay, when rendering
    timings: dict[str, float] = field(default_factory=dict)
    #: the stream this frame belongs to in a run: its name (``--sources`` file, else the
    #: source's 0-based position on the command line as text). Published as the header's
    #: ``stream`` and in the topic (``<topic>/<stream>``), used for per-stream files and counters.
    stream: str = "0"

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            found = f"{img.dtype.name}{tuple(img.shape)}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"Frame.image must be uint8 (H, W, 3) BGR, got {found}")

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])
