"""Persistent object ids per stream (``rtseg run --track``), from Roboflow's ``trackers``.

rtseg does not implement a tracker: :class:`InstanceTracker` adapts one of the maintained
implementations in ``trackers`` (Apache-2.0; ByteTrack, OC-SORT, SORT) to
:class:`~rtseg.structures.Instances`. Only the boxes, scores and class ids go through the
tracker, together with each detection's index (in ``supervision.Detections.data``); the
tracker hands back, for the detections it returns, their index and the track id, and
:meth:`InstanceTracker.update` writes the ids into ``Instances.track_ids`` by that index.
The masks never enter the tracker, so a mask stays with its own detection whatever order
the tracker returns them in, and nothing full-frame is copied per frame.

Association is the library's own: box IoU against Kalman-predicted track boxes
(``trackers/core/bytetrack/tracker.py``, ``ByteTrackTracker.update``). Its only cost hook is
``iou: BaseIoU``, whose ``compute(boxes_a, boxes_b)`` sees boxes alone, not which track or
detection a row or column is (``trackers/utils/iou.py``); so a mask-IoU cost cannot be
supplied without reaching into the library's private association steps, and rtseg does not.

Memory: a tracker keeps its live tracklets only. A track unmatched for ``lost_track_buffer``
frames (30 at 30 FPS, the library's default, scaled by ``frame_rate``) is dropped
(``trackers/core/bytetrack/utils.py`` ``_get_alive_tracklets``), and OC-SORT's per-track
observation history is cut to its ``delta_t`` look-back (``trackers/core/ocsort/tracklet.py``,
``update``). :meth:`InstanceTracker.retained` counts both; ``tests/test_track.py`` shows they
stay bounded over thousands of frames.

Install: ``pip install 'rtseg[track]'`` then ``pip install --no-deps trackers==2.6.1``
(its metadata asks for ``opencv-python``, which would clash with rtseg's
``opencv-python-headless``: both install the same ``cv2`` package; see pyproject.toml).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rtseg.errors import ConfigError
from rtseg.structures import Instances

#: ``--track NAME`` -> the ``trackers`` class; ByteTrack is the default (``--track`` alone)
TRACKERS = {"bytetrack": "ByteTrackTracker", "ocsort": "OCSORTTracker", "sort": "SORTTracker"}
DEFAULT_TRACKER = "bytetrack"

INSTALL_HINT = ("pip install 'rtseg[track]' && pip install --no-deps trackers==2.6.1 "
                "(--no-deps: its opencv-python would clash with rtseg's opencv-python-headless)")


def check_tracker(name: str) -> None:
    """``ConfigError`` (one line, before the model loads) for an unknown tracker name or a
    missing ``trackers`` package."""
    if name not in TRACKERS:
        raise ConfigError(f"unknown tracker '{name}': expected one of {', '.join(TRACKERS)}")
    try:
        import supervision  # noqa: F401
        import trackers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--track needs the 'trackers' package ({exc}): {INSTALL_HINT}") from None


class InstanceTracker:
    """One stream's tracker: :meth:`update` once per frame, in the stream's order.

    Args:
        name: a key of :data:`TRACKERS`.
        frame_rate: the stream's frame rate; the library scales its lost-track buffer by it.
        **params: passed to the ``trackers`` class (e.g. ``lost_track_buffer``,
            ``minimum_iou_threshold``, ``track_activation_threshold``).

    Tracking is class-agnostic, as the library's trackers are: a track keeps whatever
    class its detection has in each frame.
    """

    def __init__(self, name: str = DEFAULT_TRACKER, *, frame_rate: float = 30.0, **params: Any) -> None:
        check_tracker(name)
        import trackers

        if not frame_rate > 0:
            raise ValueError(f"frame_rate must be > 0, got {frame_rate!r}")
        self.name = name
        self._tracker = getattr(trackers, TRACKERS[name])(frame_rate=float(frame_rate), **params)

    def update(self, instances: Instances, timestamp: float | None = None) -> Instances:
        """``instances`` with ``track_ids`` set (``-1``: not in a confirmed track); the input
        is not modified.

        ``timestamp``: the frame's capture time in seconds for a live stream whose frames may
        be dropped (the library then predicts over the real gap); ``None`` for every-frame
        sources (files, synthetic), one step per call.
        """
        import supervision as sv

        n = len(instances)
        detections = sv.Detections(
            xyxy=instances.boxes.astype(np.float64).reshape(n, 4),
            confidence=instances.scores.astype(np.float64),
            class_id=instances.class_ids.astype(int),
            data={"rtseg_index": np.arange(n)},
        )
        out = self._tracker.update(detections, timestamp=timestamp)
        ids = np.full(n, -1, np.int64)
        if len(out):
            ids[np.asarray(out.data["rtseg_index"], np.int64)] = np.asarray(out.tracker_id, np.int64)
        return dataclasses.replace(instances, track_ids=ids)

    def retained(self) -> dict[str, int]:
        """What the tracker holds: ``tracks`` (tracklets, confirmed or not) and
        ``observations`` (per-track history entries, OC-SORT's look-back; 0 for the others)."""
        tracks = list(self._tracker.tracks)
        return {"tracks": len(tracks),
                "observations": sum(len(getattr(t, "observations", ())) for t in tracks)}

    def reset(self) -> None:
        """Forget every track; ids start again from 0."""
        self._tracker.reset()


def mot_metrics(gt_ids: list[np.ndarray], gt_boxes: list[np.ndarray], track_ids: list[np.ndarray],
                track_boxes: list[np.ndarray], *, iou_threshold: float = 0.5) -> dict[str, float]:
    """Tracking quality against known identities, by the ``trackers`` library's own metrics
    (``trackers.eval``: CLEAR, Identity and HOTA, TrackEval's definitions).

    Per frame: ``gt_ids`` ``int64[G]`` and ``gt_boxes`` ``float[G, 4]`` xyxy (e.g. a
    :class:`rtseg.synthetic.Scene`'s ``object_ids`` and ``boxes``), ``track_ids`` ``int64[T]``
    and ``track_boxes`` ``float[T, 4]`` of the tracked detections (leave out ``-1`` ids).
    Similarity is box IoU; a pair matches at ``>= iou_threshold`` (CLEAR, Identity).

    Returns ``HOTA``, ``DetA``, ``AssA``, ``MOTA``, ``IDF1``, ``IDSW`` (CLEAR's identity
    switches: a ground-truth object matched to another track id than the last time it was
    matched), ``frames``, ``gt_objects`` and ``track_ids`` (distinct ids given out).
    """
    from trackers.eval import box_iou, compute_clear_metrics, compute_hota_metrics, compute_identity_metrics

    if not len(gt_ids) == len(gt_boxes) == len(track_ids) == len(track_boxes):
        raise ValueError(f"expected one entry per frame in every list, got {len(gt_ids)}, {len(gt_boxes)}, "
                         f"{len(track_ids)}, {len(track_boxes)}")
    gts = [np.asarray(g, np.int64).reshape(-1) for g in gt_ids]
    trs = [np.asarray(t, np.int64).reshape(-1) for t in track_ids]
    sims = [box_iou(np.asarray(gb, float).reshape(-1, 4), np.asarray(tb, float).reshape(-1, 4))
            for gb, tb in zip(gt_boxes, track_boxes)]
    clear = compute_clear_metrics(gts, trs, sims, threshold=iou_threshold)
    ident = compute_identity_metrics(gts, trs, sims, threshold=iou_threshold)
    hota = compute_hota_metrics(gts, trs, sims)
    return {
        "HOTA": float(hota["HOTA"]), "DetA": float(hota["DetA"]), "AssA": float(hota["AssA"]),
        "MOTA": float(clear["MOTA"]), "IDF1": float(ident["IDF1"]), "IDSW": int(clear["IDSW"]),
        "frames": len(gts), "gt_objects": len(set(np.concatenate(gts).tolist())) if gts else 0,
        "track_ids": len(set(np.concatenate(trs).tolist())) if trs else 0,
    }
