"""Drawing instances on frames, and the two places a rendered frame can go: a window and a
video file.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import cv2
import numpy as np

from rtseg.errors import ConfigError
from rtseg.structures import Instances

log = logging.getLogger("rtseg.render")

#: per-class colours (BGR); the palette of dbolya/yolact ``data/config.py`` ``COLORS`` (given there as RGB)
_PALETTE_RGB = (
    (244, 67, 54), (233, 30, 99), (156, 39, 176), (103, 58, 183), (63, 81, 181), (33, 150, 243),
    (3, 169, 244), (0, 188, 212), (0, 150, 136), (76, 175, 80), (139, 195, 74), (205, 220, 57),
    (255, 235, 59), (255, 193, 7), (255, 152, 0), (255, 87, 34), (121, 85, 72), (158, 158, 158),
    (96, 125, 139),
)
PALETTE_BGR = np.array([(b, g, r) for r, g, b in _PALETTE_RGB], dtype=np.uint8)

#: mask blend weight (dbolya/yolact eval.py ``mask_alpha=0.45``)
MASK_ALPHA = 0.45


def class_color(class_id: int) -> tuple[int, int, int]:
    """BGR colour of a class (cycles through the palette)."""
    b, g, r = PALETTE_BGR[int(class_id) % len(PALETTE_BGR)]
    return int(b), int(g), int(r)


def render(image: np.ndarray, instances: Instances, class_names: Sequence[str], *,
           fps: float | None = None, draw_boxes: bool = True, draw_labels: bool = True) -> np.ndarray:
    """A new ``uint8[H, W, 3]`` BGR image: masks blended in per-class colours, boxes, class
    names and scores, and an FPS readout in the top-left corner. ``image`` is not modified."""
    if image.shape[:2] != instances.image_size:
        raise ValueError(f"instances are for an image of size {instances.image_size}, got an image of {image.shape[:2]}")
    out = image.copy()
    if len(instances):
        # where masks overlap, the first instance (the highest score) is on top
        colors = PALETTE_BGR[instances.class_ids % len(PALETTE_BGR)]
        covered = instances.masks.any(axis=0)
        if covered.any():
            owner = instances.masks.argmax(axis=0)
            blend = colors[owner[covered]].astype(np.float32)
            base = out[covered].astype(np.float32)
            out[covered] = (base * (1 - MASK_ALPHA) + blend * MASK_ALPHA).astype(np.uint8)
    for i in range(len(instances)):
        color = class_color(int(instances.class_ids[i]))
        x1, y1, x2, y2 = (int(round(v)) for v in instances.boxes[i])
        if draw_boxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 1)
        if draw_labels:
            cid = int(instances.class_ids[i])
            name = class_names[cid] if 0 <= cid < len(class_names) else str(cid)
            text = f"{name} {float(instances.scores[i]):.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, 0.5, 1)
            ty = max(y1, th + base)
            cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), color, -1)
            cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_DUPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    if fps is not None:
        text = f"{fps:.1f} FPS"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, 0.6, 1)
        cv2.rectangle(out, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
        cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_DUPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class VideoRecorder:
    """Writes rendered frames to a video file (codec from the extension: ``.mp4`` mp4v,
    ``.avi`` MJPG). Opened lazily on the first frame, since the size is known only then."""

    _CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}

    def __init__(self, path: str, fps: float = 30.0) -> None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in self._CODECS:
            raise ConfigError(f"--record path must end in one of {', '.join(self._CODECS)}, got '{path}'")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ConfigError(f"--record directory '{parent}' does not exist")
        self.path = path
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self._codec = self._CODECS[ext]
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*self._codec), self.fps, (w, h))
            if not self._writer.isOpened():
                raise ConfigError(f"cannot open '{self.path}' for writing with codec {self._codec}")
            self._size = (h, w)
        elif (h, w) != self._size:
            image = cv2.resize(image, (self._size[1], self._size[0]))
        self._writer.write(image)
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class Window:
    """An OpenCV window; ``show`` returns False once the user pressed q / Esc or closed it."""

    def __init__(self, title: str = "rtseg") -> None:
        self.title = title
        self._opened = False
        try:  # fail at start-up, in one line, when this OpenCV cannot show windows
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
            self._opened = True
        except cv2.error:
            raise ConfigError(
                "--display needs an OpenCV build with GUI support and a screen; rtseg installs "
                "opencv-python-headless: 'pip install opencv-python' for windows, or use --record FILE"
            ) from None

    def show(self, image: np.ndarray) -> bool:
        try:
            cv2.imshow(self.title, image)
            self._opened = True
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as exc:
            raise ConfigError(f"cannot show the window: {str(exc).strip().splitlines()[-1][:200]}") from None
        if key in (ord("q"), 27):
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        if self._opened:
            cv2.destroyWindow(self.title)
            self._opened = False
