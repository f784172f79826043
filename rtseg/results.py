"""Saved results of a run: ``rtseg run --save-json OUT.jsonl`` and ``--save-coco OUT.json``.

:class:`JsonLinesWriter` writes one JSON object per line per frame::

    {"stream": "0", "source": "synthetic", "seq": 12, "capture_time": 1764680000.123,
     "end_to_end_ms": 84.2, "image_size": [480, 640],
     "instances": [{"class_id": 1, "class_name": "square", "score": 0.97,
                    "box": [x1, y1, x2, y2], "track_id": 3, "mask": {"size": [H, W], "counts": "..."}}]}

``capture_time`` is the wall clock (``time.time()``) when the frame was read,
``end_to_end_ms`` the time from capture to the frame leaving the pipeline; ``box`` is xyxy in
original-image pixels, ``track_id`` ``null`` when tracking is off (and for a detection not
(yet) in a confirmed track), ``mask`` a COCO RLE (:meth:`Instances.to_rle`). With several
streams every line names its stream; lines of one stream are in its order.

:class:`CocoResultsWriter` writes the COCO *results* format (a JSON list, one entry per
detection: ``image_id``, ``category_id``, ``score``, ``bbox`` ``[x, y, w, h]``,
``segmentation`` RLE, and ``mask_score`` where the family has one, which rtseg's scoring
ranks masks by; see :func:`rtseg.evaluate.evaluate_predictions`). Mapping:

- ``image_id`` is the frame's ``seq``: for a folder of images, the image's 0-based index in
  sorted file-name order, which is the image id ``rtseg data synthetic`` writes; for a video,
  the frame index.
- ``category_id`` is the class index + 1 (COCO's 1-based ids, the ids ``rtseg data
  synthetic`` writes); ``category_name`` is written beside it, so a dataset with other ids
  (COCO's own 1..90) can be mapped by name.

With several streams each gets its own file, ``OUT.<stream>.json``, as ``--record`` does
(image ids are per stream). Both writers stream to disk as frames come: memory stays flat
over a long run. The files are complete once the writer is closed (also after Ctrl-C).
"""

from __future__ import annotations

import json
from typing import IO, Sequence

from rtseg.errors import ConfigError


def _open(option: str, path: str) -> IO[str]:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write it: {exc.strerror}") from None


def instance_records(instances, class_names: Sequence[str]) -> list[dict]:
    """One dict per instance: ``class_id``, ``class_name``, ``score``, ``box`` (xyxy pixels),
    ``track_id`` (None without tracking or for ``-1``), ``mask`` (COCO RLE)."""
    rles = instances.to_rle()
    track_ids = instances.track_ids
    out = []
    for i in range(len(instances)):
        cid = int(instances.class_ids[i])
        tid = None if track_ids is None or int(track_ids[i]) < 0 else int(track_ids[i])
        out.append({"class_id": cid, "class_name": class_names[cid] if 0 <= cid < len(class_names) else str(cid),
                    "score": round(float(instances.scores[i]), 6),
                    "box": [round(float(v), 3) for v in instances.boxes[i]], "track_id": tid, "mask": rles[i]})
    return out


class JsonLinesWriter:
    """``--save-json``: one line per frame (see the module docstring)."""

    def __init__(self, path: str, class_names: Sequence[str]) -> None:
        self.path = path
        self.class_names = tuple(class_names)
        self.frames_written = 0
        self._f = _open("--save-json", path)

    def write(self, frame) -> None:
        inst = frame.instances
        record = {
            "stream": frame.stream,
            "source": frame.source_id,
            "seq": int(frame.seq),
            "capture_time": float(frame.capture_time),
            "end_to_end_ms": (round(1000.0 * frame.timings["end to end"], 3) if "end to end" in frame.timings
                              else None),
            "image_size": list(frame.image_size),
            "instances": [] if inst is None else instance_records(inst, self.class_names),
        }
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.frames_written += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class CocoResultsWriter:
    """``--save-coco``: COCO results of one stream (see the module docstring for the ids)."""

    def __init__(self, path: str, class_names: Sequence[str]) -> None:
        self.path = path
        self.class_names = tuple(class_names)
        self.frames_written = 0
        self.detections = 0
        self._f = _open("--save-coco", path)
        self._f.write("[")

    def write(self, frame) -> None:
        inst = frame.instances
        self.frames_written += 1
        if inst is None or len(inst) == 0:
            return
        rles = inst.to_rle()
        for i in range(len(inst)):
            cid = int(inst.class_ids[i])
            x1, y1, x2, y2 = (float(v) for v in inst.boxes[i])
            entry = {"image_id": int(frame.seq), "category_id": cid + 1,
                     "category_name": self.class_names[cid] if 0 <= cid < len(self.class_names) else str(cid),
                     "score": float(inst.scores[i]), "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": rles[i]}
            if inst.mask_scores is not None:
                entry["mask_score"] = float(inst.mask_scores[i])
            if inst.track_ids is not None and int(inst.track_ids[i]) >= 0:
                entry["track_id"] = int(inst.track_ids[i])
            self._f.write(("," if self.detections else "") + "\n" + json.dumps(entry, separators=(",", ":")))
            self.detections += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.write("\n]\n")
            self._f.close()
