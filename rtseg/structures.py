"""The two types that flow between pipeline stages: :class:`Instances` and :class:`Frame`.

Everything here is NumPy on the host. The model and its post-processing may run on any
device; the single, deliberate device->host copy happens where a :class:`Segmenter`
builds an :class:`Instances` (see ``rtseg/segmenter.py``).
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
    - ``masks``: ``bool[N, H, W]``, one full-image mask per instance.
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
    masks: np.ndarray
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
        _check_array("masks", self.masks, np.bool_, 3, "(N, H, W)")
        for name, arr in (("scores", self.scores), ("class_ids", self.class_ids)):
            if arr.shape[0] != n:
                raise ValueError(f"{name} must have {n} entries to match boxes, got {arr.shape[0]}")
        if self.masks.shape != (n, h, w):
            raise ValueError(f"masks must have shape {(n, h, w)} (N, H, W), got {tuple(self.masks.shape)}")
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
            masks=np.zeros((0, h, w), np.bool_),
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
            masks=np.concatenate([p.masks for p in parts]),
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
            and np.array_equal(self.masks, other.masks)
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
        """Full-size ``bool[N, H, W]`` masks (made on request; not for the hot path)."""
        return self.masks

    def to_supervision(self) -> Any:
        """These instances as a ``supervision.Detections`` (for its annotators, zones, trackers):
        ``xyxy`` the boxes, ``confidence`` the scores, ``class_id`` the class ids, ``mask`` the
        dense ``bool[N, H, W]`` masks (:meth:`masks_dense`), ``tracker_id`` the track ids when
        there are any (``-1``: not part of a confirmed track), else None. Arrays are copies.
        Needs supervision (``pip install 'rtseg[supervision]'``)."""
        try:
            import supervision
        except ImportError:
            from rtseg.errors import ConfigError

            raise ConfigError("Instances.to_supervision() needs supervision: expected it installed "
                              "(pip install 'rtseg[supervision]'), found it missing") from None
        track_ids = getattr(self, "track_ids", None)
        return supervision.Detections(xyxy=self.boxes.copy(), mask=np.array(self.masks_dense(), dtype=bool),
                                      confidence=self.scores.copy(), class_id=self.class_ids.copy(),
                                      tracker_id=None if track_ids is None else np.array(track_ids, dtype=np.int64))

    def mask_areas(self) -> np.ndarray:
        """``int64[N]``: number of mask pixels per instance."""
        return self.masks.reshape(len(self), -1).sum(axis=1).astype(np.int64)

    def to_rle(self) -> list[dict]:
        """Masks as COCO run-length encodings (pycocotools' compressed form).

        Returns one dict per instance, ``{"size": [H, W], "counts": str}``, exactly what
        ``pycocotools.mask.encode`` gives (counts decoded to ``str`` so it is JSON-ready).
        """
        from pycocotools import mask as mask_utils

        if len(self) == 0:
            return []
        rles = mask_utils.encode(np.asfortranarray(self.masks.transpose(1, 2, 0).astype(np.uint8)))
        out = []
        for rle in rles:
            counts = rle["counts"]
            out.append({"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts})
        return out

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
