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


#: a detection whose mask overlaps a higher-scoring one's this much (IoU; boxes when a mask
#: is empty) is the same object found again (NMS is per class, so a square can also come out
#: as a low-score circle): the overlay draws neither its box nor its label, so the label a
#: person reads is the highest-scoring class. Masks, not boxes, decide: a star inside a ring
#: has nearly the ring's box but is another object. Published results keep every detection.
DUPLICATE_IOU = 0.5

_FONT, _LABEL_SCALE, _FPS_SCALE = cv2.FONT_HERSHEY_DUPLEX, 0.5, 0.6

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (x2, y2 exclusive)


def class_color(class_id: int) -> tuple[int, int, int]:
    """BGR colour of a class (cycles through the palette)."""
    b, g, r = PALETTE_BGR[int(class_id) % len(PALETTE_BGR)]
    return int(b), int(g), int(r)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = float(iw) * float(ih)
    union = float(a[2] - a[0]) * float(a[3] - a[1]) + float(b[2] - b[0]) * float(b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _overlaps(r: Rect, others: Sequence[Rect]) -> bool:
    return any(r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3] for o in others)


def _same_object(instances: Instances, i: int, k: int) -> bool:
    a, b = instances.boxes[i], instances.boxes[k]
    box_iou = _box_iou(a, b)
    if box_iou == 0.0:
        return False
    h, w = instances.image_size  # masks compared on the two boxes' union only
    x1, y1 = max(int(min(a[0], b[0])), 0), max(int(min(a[1], b[1])), 0)
    x2, y2 = min(int(max(a[2], b[2])) + 1, w), min(int(max(a[3], b[3])) + 1, h)
    rect = (x1, y1, x2, y2)
    ma, mb = instances.masks.crop(i, rect), instances.masks.crop(k, rect)  # from the windows' bits
    union = int(np.count_nonzero(ma | mb))
    if not ma.any() or not mb.any() or union == 0:
        return box_iou >= DUPLICATE_IOU
    return np.count_nonzero(ma & mb) / union >= DUPLICATE_IOU


def shown_instances(instances: Instances) -> list[int]:
    """Indices of the instances the overlay draws a box and label for, by descending score
    (ties keep their order): all but those repeating a higher-scoring one (:data:`DUPLICATE_IOU`)."""
    kept: list[int] = []
    for i in np.argsort(-instances.scores, kind="stable"):
        if not any(_same_object(instances, int(i), k) for k in kept):
            kept.append(int(i))
    return kept


def label_boxes(instances: Instances, class_names: Sequence[str], *,
                reserved: Sequence[Rect] = ()) -> list[tuple[int, str, Rect]]:
    """Where :func:`render` puts the labels: ``(instance index, text, rect)`` by descending
    score, each rect inside the image and overlapping neither an earlier one nor ``reserved``.

    A label goes above its box, else inside the box's top edge, else below its bottom edge,
    else inside its bottom edge, else further down inside the box; at the box's left edge,
    else at its right (the first free place, each shifted into the image). A label with no
    free place is left out, and so is that of every duplicate (:func:`shown_instances`)."""
    h, w = instances.image_size
    taken: list[Rect] = list(reserved)
    placed: list[tuple[int, str, Rect]] = []
    for i in shown_instances(instances):
        cid = int(instances.class_ids[i])
        name = class_names[cid] if 0 <= cid < len(class_names) else str(cid)
        text = f"{name} {float(instances.scores[i]):.2f}"
        if instances.track_ids is not None and instances.track_ids[i] >= 0:  # rtseg run --track
            text = f"#{int(instances.track_ids[i])} {text}"
        (tw, th), base = cv2.getTextSize(text, _FONT, _LABEL_SCALE, 1)
        lw, lh = min(tw + 2, w), min(th + base, h)  # +2: the last glyph's anti-aliasing
        x1, y1, x2, y2 = (int(round(float(v))) for v in instances.boxes[i])
        tops = [y1 - lh, y1, y2 + 1, y2 - lh, *range(y1 + lh, y2 - lh, lh)]
        for top, left in ((t, x) for t in tops for x in (x1, x2 - lw)):
            top, left = min(max(top, 0), h - lh), min(max(left, 0), w - lw)
            rect = (left, top, left + lw, top + lh)
            if not _overlaps(rect, taken):
                taken.append(rect)
                placed.append((i, text, rect))
                break
    return placed


def _fps_rect(fps: float | None) -> tuple[str, Rect] | None:
    if fps is None:
        return None
    text = f"{fps:.1f} FPS"
    (tw, th), base = cv2.getTextSize(text, _FONT, _FPS_SCALE, 1)
    return text, (0, 0, tw + 8, th + base + 8)


def _blend_masks(out: np.ndarray, instances: Instances) -> None:
    """Blend each pixel any mask covers with the colour of the highest-scoring instance
    covering it (ties: the earlier instance), in place, reading the compact masks directly.

    Each instance paints its palette index into an index map inside its window only, in
    ascending score order, so the last to paint a pixel is its highest-scoring owner; then
    the rectangle around all windows is blended at once and copied back where covered
    (faster than gathering the covered pixels: at 1080p with 100 objects most are). Cost: the
    windows' area plus that rectangle, never ``N * H * W``."""
    masks = instances.masks
    h, w = instances.image_size
    uncovered = len(PALETTE_BGR)  # an index no class colour has
    owner = np.full((h, w), uncovered, np.uint8)
    palette_index = (instances.class_ids % len(PALETTE_BGR)).astype(np.uint8)
    order = np.argsort(-instances.scores, kind="stable")
    for i in order[::-1].tolist():  # ascending score, ties: the earlier instance last
        x0, y0, x1, y1 = (int(v) for v in masks.windows[i])
        if x1 > x0 and y1 > y0:
            owner[y0:y1, x0:x1][masks.window(i)] = palette_index[i]
    windows = masks.windows[(masks.windows[:, 2] > masks.windows[:, 0]) & (masks.windows[:, 3] > masks.windows[:, 1])]
    if not windows.size:
        return
    x0, y0 = int(windows[:, 0].min()), int(windows[:, 1].min())
    x1, y1 = int(windows[:, 2].max()), int(windows[:, 3].max())
    region, region_owner = out[y0:y1, x0:x1], owner[y0:y1, x0:x1]
    covered = region_owner != uncovered
    if covered.any():
        colors = _BLEND_COLORS[region_owner]  # float32, the sentinel's row unused
        blended = (region.astype(np.float32) * (1 - MASK_ALPHA) + colors * MASK_ALPHA).astype(np.uint8)
        np.copyto(region, blended, where=covered[..., None])


#: the palette as float32 with one more row for "no mask" (:func:`_blend_masks` blends it too, then drops it)
_BLEND_COLORS = np.vstack([PALETTE_BGR, np.zeros((1, 3), np.uint8)]).astype(np.float32)


def render(image: np.ndarray, instances: Instances, class_names: Sequence[str], *,
           fps: float | None = None, draw_boxes: bool = True, draw_labels: bool = True) -> np.ndarray:
    """A new ``uint8[H, W, 3]`` BGR image: masks blended in per-class colours, boxes, class
    names and scores, and an FPS readout in the top-left corner. ``image`` is not modified.

    The most confident result is what a person sees: where masks overlap, the highest score
    is on top; boxes and labels are painted in ascending score order (the highest last); a
    detection repeating a higher-scoring one in the same place gets no box or label
    (:func:`shown_instances`); labels stay inside the image, clear of each other and of the
    FPS readout (:func:`label_boxes`)."""
    if image.shape[:2] != instances.image_size:
        raise ValueError(f"instances are for an image of size {instances.image_size}, got an image of {image.shape[:2]}")
    out = image.copy()
    readout = _fps_rect(fps)
    if len(instances):
        _blend_masks(out, instances)
        if draw_boxes:
            for i in reversed(shown_instances(instances)):  # ascending score: the highest on top
                x1, y1, x2, y2 = (int(round(float(v))) for v in instances.boxes[i])
                cv2.rectangle(out, (x1, y1), (x2, y2), class_color(int(instances.class_ids[i])), 1)
        if draw_labels:
            reserved = [readout[1]] if readout else []
            for i, text, (x1, y1, x2, y2) in reversed(label_boxes(instances, class_names, reserved=reserved)):
                cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), class_color(int(instances.class_ids[i])), -1)
                th = cv2.getTextSize(text, _FONT, _LABEL_SCALE, 1)[0][1]
                cv2.putText(out, text, (x1, y1 + th), _FONT, _LABEL_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    if readout is not None:
        text, (_, _, x2, y2) = readout
        th = cv2.getTextSize(text, _FONT, _FPS_SCALE, 1)[0][1]
        cv2.rectangle(out, (0, 0), (x2, y2), (0, 0, 0), -1)
        cv2.putText(out, text, (4, th + 4), _FONT, _FPS_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
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
