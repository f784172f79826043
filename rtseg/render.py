"""Drawing instances on frames, and the two places a rendered frame can go: a window and a
video file.
"""

from __future__ import annotations

import logging
import os
import threading
from fractions import Fraction
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
    """Writes rendered frames to a video file. Opened lazily on the first frame, since the
    size is known only then; later frames of another size are resized to the first's.

    ``.mp4`` / ``.m4v`` are written as **fragmented MP4** (MPEG-4 Part 2, one keyframe and one
    fragment a second, ``movflags=frag_keyframe+empty_moov+default_base_moof``) through PyAV,
    flushed to the OS after every packet. A standard MP4 keeps its index (the ``moov`` box)
    in memory until ``close()``: a recording cut off by SIGKILL, a crash or power loss had
    no index and could not be read back at all. A fragmented one carries a small index per
    fragment, so such a cut loses at most the unfinished last second. OpenCV's writer cannot
    do this (it passes no options to FFmpeg's muxer), hence PyAV (the ``av`` wheel bundles
    FFmpeg). ``.avi`` (MJPG) and ``.mkv`` (mp4v) go through OpenCV; both containers are
    readable up to a cut as they are.
    """

    _CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
    _FRAGMENTED = (".mp4", ".m4v")

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
        self._fragmented = ext in self._FRAGMENTED
        if self._fragmented:
            try:
                import av  # noqa: F401  (checked here, before any slow work)
            except ImportError:
                raise ConfigError("--record FILE.mp4 needs PyAV ('pip install av'), or record to .avi") from None
        self._lock = threading.Lock()  # close() may come from another thread than write()
        self._writer: cv2.VideoWriter | None = None
        self._container = None  # PyAV output container (fragmented MP4)
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._closed = False
        self.frames_written = 0

    def _open_fragmented_mp4(self, w: int, h: int) -> None:
        import av

        rate = Fraction(self.fps).limit_denominator(1001)
        try:
            container = av.open(self.path, "w", format="mp4", options={
                "movflags": "frag_keyframe+empty_moov+default_base_moof",
                "flush_packets": "1",
            })
        except (OSError, av.FFmpegError) as exc:
            raise ConfigError(f"cannot open '{self.path}' for writing: {exc}") from None
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w + (w & 1), h + (h & 1), "yuv420p"
        stream.bit_rate = int(min(self.fps * w * h, 2**31 - 1))  # OpenCV's writer's default
        stream.codec_context.gop_size = max(1, round(self.fps))  # a keyframe, so a fragment, a second
        self._container, self._stream = container, stream

    def write(self, image: np.ndarray) -> None:
        with self._lock:
            if self._closed:
                return
            h, w = image.shape[:2]
            if self._size is None:
                if self._fragmented:
                    self._open_fragmented_mp4(w, h)
                else:
                    self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*self._codec), self.fps, (w, h))
                    if not self._writer.isOpened():
                        raise ConfigError(f"cannot open '{self.path}' for writing with codec {self._codec}")
                self._size = (h, w)
            elif (h, w) != self._size:
                image = cv2.resize(image, (self._size[1], self._size[0]))
            if self._container is not None:
                import av

                sh, sw = self._stream.height, self._stream.width
                if (sh, sw) != image.shape[:2]:  # yuv420p needs even sides: pad by one pixel
                    image = cv2.copyMakeBorder(image, 0, sh - image.shape[0], 0, sw - image.shape[1], cv2.BORDER_REPLICATE)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
                frame.pts = self.frames_written
                self._container.mux(self._stream.encode(frame))
            else:
                self._writer.write(image)
            self.frames_written += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._writer is not None:
                self._writer.release()
                self._writer = None
            if self._container is not None:
                container, self._container = self._container, None
                try:
                    container.mux(self._stream.encode())  # flush the encoder
                finally:
                    container.close()


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
