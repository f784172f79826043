"""Video sources: every input a user can point rtseg at, behind one small interface.

:func:`open_source` turns a spec string into a :class:`Source`:

==============================  =========================  ==========================
spec                            source                     delivery
==============================  =========================  ==========================
``synthetic[:SEED[:WxH]]``      :class:`SyntheticSource`   every frame, endless
``synthetic[:SEED[:WxH]]@FPS``  :class:`SyntheticSource`   live camera at FPS, newest only
``0``, ``1``, ...               :class:`CameraSource`      live, newest frame only
``rtsp(s)://``, ``http(s)://``  :class:`StreamSource`      live, newest frame only
a video file                    :class:`VideoFileSource`   every frame, in order
an image file or a folder       :class:`ImageFilesSource`  every image, sorted by name
==============================  =========================  ==========================

Live sources run a capture thread that keeps only the newest frame: a slow consumer sees
gaps in ``Frame.seq`` (counted in ``stats.frames_dropped``), never a growing backlog.
A lost live source is reopened with exponential back-off; meanwhile :meth:`Source.read`
waits: no placeholder frames, no repeated frames, and no stale frames: what FFmpeg buffered
while a new connection was probed is dropped (``stats.frames_stale``). Files deliver every
decodable frame, reading on past damaged stretches; undecodable ones are skipped, counted in
``stats.frames_skipped`` and logged.

Each ``cv2.VideoCapture`` is only ever touched by one thread (OpenCV captures are not
thread-safe). Logs go to ``logging.getLogger("rtseg.sources")``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from rtseg.errors import SourceError
from rtseg.structures import Frame
from rtseg.synthetic import Scene, SyntheticVideo

log = logging.getLogger("rtseg.sources")

#: file name extensions read as still images (the formats OpenCV's imread decodes)
IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".dib", ".jpg", ".jpeg", ".jpe", ".jp2", ".png", ".webp", ".avif", ".pbm", ".pgm",
     ".ppm", ".pxm", ".pnm", ".pfm", ".sr", ".ras", ".tif", ".tiff", ".exr", ".hdr", ".pic"}
)
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")

#: a video file ends after this many failed reads in a row (a single corrupt frame makes
#: one read fail, a truncated file makes every further read fail)
MAX_CONSECUTIVE_DECODE_FAILURES = 25
#: largest image (pixels) an image file may declare; OpenCV refuses larger ones before
#: allocating (``OPENCV_IO_MAX_IMAGE_PIXELS``, default 2^30 = 3 GiB of BGR). 2^26 is
#: 8192 x 8192, above 8K UHD (7680 x 4320); a decoded image then needs at most 192 MiB.
MAX_IMAGE_PIXELS = 2**26
#: largest side of a ``synthetic:SEED:WxH`` frame: 8192 x 8192 is :data:`MAX_IMAGE_PIXELS`,
#: the bound image files have too. Such a frame is 192 MiB of BGR and takes about 1.4 GiB
#: and 4 s to render on a 2-core machine; 40000 x 40000 would need 4.5 GiB a frame and ends
#: in OpenCV's out-of-memory error, so it is refused when the spec is parsed, before any model
#: is loaded.
MAX_SYNTHETIC_SIDE = 8192
#: reconnect back-off: first wait, doubling up to a cap of RECONNECT_EARLY_MAX_DELAY_S for
#: the first RECONNECT_EARLY_PERIOD_S of an outage, then up to RECONNECT_MAX_DELAY_S. With
#: one 8 s cap from the start, an 8 s outage became 16.8 s without frames (attempts at 0.5,
#: 1.5, 3.5, 7.5, 15.5 s); capped at 2 s, a short outage costs at most one 2 s step more,
#: and a camera gone for minutes is still tried only every 8 s.
RECONNECT_FIRST_DELAY_S = 0.5
RECONNECT_EARLY_MAX_DELAY_S = 2.0
RECONNECT_EARLY_PERIOD_S = 60.0
RECONNECT_MAX_DELAY_S = 8.0
#: a new live connection drops at most this much stream time of stale, buffered frames
#: (FFmpeg buffers up to 5 s while probing a stream, ``max_analyze_duration``)
STALE_CATCH_UP_MAX_S = 5.0


def reconnect_delay(attempt: int, outage_seconds: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...) of an outage that
    has lasted ``outage_seconds`` so far: 0.5, 1, 2, 2, 2, ... in the first minute, then
    doubling on to 8."""
    cap = RECONNECT_EARLY_MAX_DELAY_S if outage_seconds < RECONNECT_EARLY_PERIOD_S else RECONNECT_MAX_DELAY_S
    return min(RECONNECT_FIRST_DELAY_S * 2 ** (attempt - 1), cap)


#: reconnect waits kept in ``SourceStats.reconnect_delays`` (about a day of 8 s waits)
MAX_RECONNECT_DELAYS_KEPT = 10_000


@dataclass
class SourceStats:
    """Counters of one source, updated while it runs."""

    frames_read: int = 0  #: frames returned by read()
    frames_dropped: int = 0  #: live only: captured, then replaced by a newer frame before being read
    frames_skipped: int = 0  #: undecodable frames or images, and non-image files in a folder
    #: video files: ``frames_skipped`` by reason (``"undecodable"``, or passed by seeking)
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0  #: successful reopenings of a lost live source
    #: live only: waits (s) before the most recent reconnect attempts, in order, over all
    #: outages (the newest ``MAX_RECONNECT_DELAYS_KEPT``: one per attempt, so bounded for
    #: cameras that stay away for days)
    reconnect_delays: deque = field(default_factory=lambda: deque(maxlen=MAX_RECONNECT_DELAYS_KEPT))
    #: live only: frames a new connection delivered from FFmpeg's buffer, older than the
    #: stream's steady latency, and dropped (also counted in ``frames_dropped``)
    frames_stale: int = 0
    #: outages of a live source as ``(start, end)`` wall-clock times (``time.time()``)
    gaps: list[tuple[float, float]] = field(default_factory=list)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """``uint8[H, W, 3]`` BGR from an 8-bit decoder output (some cameras deliver gray)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _limit_image_pixels() -> None:
    """Cap what OpenCV's image decoders allocate for a file's declared size (see
    :data:`MAX_IMAGE_PIXELS`), unless the user set ``OPENCV_IO_MAX_IMAGE_PIXELS``. OpenCV
    reads the variable at its first image decode in the process, so this runs before it."""
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))


def _cv2_reason(exc: Exception) -> str:
    """The useful last line of a ``cv2.error`` (its first lines are a file/line banner)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if "CV_IO_MAX_IMAGE_PIXELS" in text:
        return f"declared size above {MAX_IMAGE_PIXELS} pixels"
    return text[:200]


def _make_frame(seq: int, source_id: str, image: np.ndarray) -> Frame:
    return Frame(
        seq=seq,
        source_id=source_id,
        capture_time=time.time(),
        capture_monotonic=time.perf_counter(),
        image=_as_bgr(image),
    )


# --------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------
class Source(ABC):
    """Where frames come from. Use as a context manager, or call open() / close().

    ``read()`` opens the source if needed and returns the next :class:`Frame` (``seq``
    strictly increasing) or ``None`` at the end of input, after ``max_frames`` frames or
    after ``close()``. ``open()`` and ``read()`` raise :class:`SourceError` when the input
    cannot be opened or is lost for good. Iterating yields frames until ``None``.
    """

    is_live: bool = False

    def __init__(self, source_id: str, *, max_frames: int | None = None) -> None:
        self.source_id = source_id
        self.stats = SourceStats()
        self.max_frames = max_frames
        self._open_lock = threading.Lock()  # serialises open(); close() never waits for it
        self._opened = False
        self._closed = False

    # -- public ----------------------------------------------------------------------
    def open(self) -> None:
        """Open the input and make sure a first frame can be read; idempotent."""
        with self._open_lock:
            if self._closed:
                raise SourceError(f"source {self.source_id!r} is closed; open a new one")
            if self._opened:
                return
            self._open()
            self._opened = True

    def read(self) -> Frame | None:
        """The next frame, or ``None`` at the end (see the class docstring)."""
        if self._closed:
            return None
        if not self._opened:
            self.open()
        if self.max_frames is not None and self.stats.frames_read >= self.max_frames:
            return None
        frame = self._read()
        if frame is not None:
            self.stats.frames_read += 1
        return frame

    def close(self) -> None:
        """Release the input and join its threads; idempotent, safe from another thread.

        A ``read()`` blocked in another thread returns ``None``.
        """
        if self._closed:
            return
        self._closed = True
        self._close()  # idempotent in every subclass, so a racing second close() is harmless

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source_id!r})"

    # -- for subclasses ----------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read(self) -> Frame | None: ...

    def _close(self) -> None:
        pass

    def _error(self, reason: str) -> SourceError:
        return SourceError(f"cannot open source {self.source_id!r}: {reason}")


# --------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------
class SyntheticSource(Source):
    """Frames of :class:`rtseg.synthetic.SyntheticVideo`: ``seq`` = frame index, endless.

    Not rate limited: frames come as fast as they are rendered. The ground truth of the
    frame with ``seq = i`` is ``source.video.frame(i)``; the last one read is ``last_scene``.

    With ``fps`` (spec ``synthetic:SEED@FPS``) it behaves like a live camera instead: frame
    ``i`` is due at ``i / fps`` seconds after open, ``read()`` waits for the next due frame
    and skips the ones a slow reader missed (``seq`` gaps, counted in
    ``stats.frames_dropped``), and ``is_live`` is True, so the pipeline keeps only the newest
    frame. For latency measurements (``benchmarks/multistream.py``).
    """

    def __init__(self, source_id: str, seed: int = 0, size: tuple[int, int] = (480, 640), *,
                 max_frames: int | None = None, fps: float | None = None) -> None:
        super().__init__(source_id, max_frames=max_frames)
        if fps is not None and not fps > 0:
            raise SourceError(f"synthetic fps must be > 0, got {fps!r}")
        self.video = SyntheticVideo(seed=seed, size=size)
        self.last_scene: Scene | None = None
        self.fps = fps
        self.is_live = fps is not None
        self._next = 0
        self._t0 = 0.0
        self._wake = threading.Event()  # set by close(): a paced read() returns at once

    def _open(self) -> None:
        self._t0 = time.monotonic()

    def _close(self) -> None:
        self._wake.set()

    def _read(self) -> Frame | None:
        if self.fps is not None:
            now = time.monotonic()
            due = int((now - self._t0) * self.fps)  # the newest frame already "captured"
            if due >= self._next:
                self.stats.frames_dropped += due - self._next
                self._next = due
            elif self._wake.wait(self._t0 + self._next / self.fps - now):
                return None
            if self._closed:
                return None
        scene = self.video.frame(self._next)
        self.last_scene = scene
        frame = _make_frame(self._next, self.source_id, scene.image)
        self._next += 1
        return frame


# --------------------------------------------------------------------------------------
# still images
# --------------------------------------------------------------------------------------
class ImageFilesSource(Source):
    """One image file, or the image files of a folder in sorted name order.

    ``seq`` is the image's index in that order (continuing across loops). Files whose
    extension is not in :data:`IMAGE_EXTENSIONS`, and images that fail to decode, are
    skipped, counted in ``stats.frames_skipped`` and logged.
    """

    def __init__(self, source_id: str, path: Path, *, max_frames: int | None = None, loop: bool = False) -> None:
        super().__init__(source_id, max_frames=max_frames)
        self.path = path
        self.loop = loop
        self._paths: list[Path] = []
        self._index = 0  # next position in self._paths
        self._seq_base = 0  # seq of position 0 in the current pass
        self._delivered_this_pass = 0
        self._first: Frame | None = None
        self._last_skip_reason = ""

    def _open(self) -> None:
        _limit_image_pixels()
        if self.path.is_dir():
            entries = sorted(self.path.iterdir(), key=lambda p: p.name)
            files = [p for p in entries if p.is_file()]
            self._paths = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            others = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if others:
                self.stats.frames_skipped += len(others)
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                log.warning("%s: skipped %d non-image file(s): %s", self.source_id, len(others), shown)
            if not self._paths:
                raise self._error(f"folder has no image files (expected extensions like .jpg, .png; found {len(files)} other file(s))")
        else:
            self._paths = [self.path]
        first = self._next_image()
        if first is None:
            if len(self._paths) == 1:
                raise self._error(f"the image could not be decoded ({self._last_skip_reason})")
            raise self._error(f"none of the {len(self._paths)} image files could be decoded")
        self._first = first

    def _read(self) -> Frame | None:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._next_image()

    def _next_image(self) -> Frame | None:
        while True:
            if self._index >= len(self._paths):
                if not self.loop or self._delivered_this_pass == 0:
                    return None
                self._seq_base += len(self._paths)
                self._index = 0
                self._delivered_this_pass = 0
            path = self._paths[self._index]
            seq = self._seq_base + self._index
            self._index += 1
            reason = "not a decodable image"
            try:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            except cv2.error as exc:  # e.g. a header declaring more than MAX_IMAGE_PIXELS
                image, reason = None, _cv2_reason(exc)
            if image is None or image.size == 0:
                self.stats.frames_skipped += 1
                self._last_skip_reason = reason
                log.warning("%s: skipped undecodable image %s (%s)", self.source_id, path.name, reason)
                continue
            self._delivered_this_pass += 1
            return _make_frame(seq, self.source_id, image)


# --------------------------------------------------------------------------------------
# video files
# --------------------------------------------------------------------------------------
def _open_capture_with_timeout(factory: Callable[[], "cv2.VideoCapture"], timeout: float) -> "cv2.VideoCapture | None":
    """Run ``factory`` in a helper thread; ``None`` if it did not return within ``timeout`` s.

    A capture that finishes opening after we gave up is released by the helper thread.
    Exceptions from ``factory`` (``cv2.error``) are re-raised here.
    """
    lock = threading.Lock()
    result: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            cap = factory()
        except Exception as exc:  # cv2.error, e.g. for unsupported params
            cap, result["error"] = None, exc
        with lock:
            if result.get("abandoned"):
                if cap is not None:
                    cap.release()
                return
            result["cap"] = cap
            done.set()

    threading.Thread(target=run, name="rtseg-open", daemon=True).start()
    if not done.wait(timeout):
        with lock:
            if not done.is_set():
                result["abandoned"] = True
                return None
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["cap"]  # type: ignore[return-value]


def _unreadable_reason(path: Path) -> str:
    """Why FFmpeg could not open ``path``: an MP4 whose index (``moov`` box) is missing is
    named as such; anything else is "not a readable video or image"."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) == 12 and head[4:8] == b"ftyp":
                f.seek(0)
                boxes = []
                size = os.fstat(f.fileno()).st_size
                offset = 0
                while offset + 8 <= size and len(boxes) < 64:
                    f.seek(offset)
                    header = f.read(16)
                    length, kind = int.from_bytes(header[:4], "big"), header[4:8]
                    if length == 1 and len(header) == 16:
                        length = int.from_bytes(header[8:16], "big")
                    elif length == 0:
                        length = size - offset
                    boxes.append(kind)
                    if length < 8:
                        break
                    offset += length
                if b"moov" not in boxes and b"moof" not in boxes:
                    return ("an MP4 without its index (no 'moov' box): the file was cut off before its writer "
                            "finished it (a crash, a kill, a full disk), and without the index no frame can be "
                            "located; a fragmented MP4 (as rtseg --record writes) survives that")
    except OSError:
        pass
    return "not a readable video or image (OpenCV could not open it)"


class VideoFileSource(Source):
    """Every frame of a video file, in order. ``seq`` = position of the frame in the file.

    A frame that fails to decode is skipped and counted (its position still advances
    ``seq``); ``stats.skipped_reasons`` says why. The end is a failed read at or past the
    container's frame count. A run of :data:`MAX_CONSECUTIVE_DECODE_FAILURES` failed reads
    before that count is not taken as the end, since the container says there is more: rtseg
    looks ahead (a second capture, seeking by frame index to 25, 50, 100, ... frames past the
    failures, then to the last frame) for a frame that decodes. When one does, reading goes
    on, sequentially where the decoder recovers by itself, else from that frame; the frames in
    between are counted as skipped. When none does (a truncated file, or a container without
    a frame count), the file ends there, logged as ``file ends after N of M frames``.
    """

    def __init__(self, source_id: str, path: Path, *, open_timeout: float = 10.0, max_frames: int | None = None, loop: bool = False) -> None:
        super().__init__(source_id, max_frames=max_frames)
        self.path = path
        self.open_timeout = open_timeout
        self.loop = loop
        self._io_lock = threading.Lock()  # close() from another thread waits for a read
        self._cap: cv2.VideoCapture | None = None
        self._frame_count: int | None = None
        self._position = 0  # frames consumed (decoded or failed) in the current pass
        self._seq_base = 0
        self._delivered_this_pass = 0
        self._first: Frame | None = None
        #: a second capture that decoded frame ``index`` past a run of failures:
        #: ``(index, capture, image)``; reading switches to it if the first does not recover
        self._ahead: tuple[int, cv2.VideoCapture, np.ndarray] | None = None

    def _new_capture(self) -> "cv2.VideoCapture":
        try:
            cap = _open_capture_with_timeout(lambda: cv2.VideoCapture(str(self.path)), self.open_timeout)
        except cv2.error as exc:
            raise self._error(f"OpenCV failed to open it ({str(exc).strip().splitlines()[-1]})") from None
        if cap is None:
            raise self._error(f"opening took longer than open_timeout={self.open_timeout:g}s")
        if not cap.isOpened():
            cap.release()
            raise self._error(_unreadable_reason(self.path))
        return cap

    def _open_capture(self) -> None:
        cap = self._new_capture()
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._cap = cap
        self._frame_count = count if count > 0 else None
        self._position = 0
        self._delivered_this_pass = 0

    def _open(self) -> None:
        self._open_capture()
        first = self._next_frame()
        if first is None:
            self._cap.release()
            self._cap = None
            raise self._error("no frame could be decoded")
        self._first = first

    def _read(self) -> Frame | None:
        with self._io_lock:
            if self._first is not None:
                first, self._first = self._first, None
                return first
            if self._cap is None:  # closed
                return None
            frame = self._next_frame()
            if frame is None and self.loop and self._delivered_this_pass > 0:
                self._seq_base += self._position
                self._cap.release()
                self._open_capture()
                frame = self._next_frame()
            return frame

    def _skip(self, n: int, reason: str) -> None:
        self.stats.frames_skipped += n
        self.stats.skipped_reasons[reason] = self.stats.skipped_reasons.get(reason, 0) + n

    def _deliver(self, image: np.ndarray) -> Frame:
        seq = self._seq_base + self._position
        self._position += 1
        self._delivered_this_pass += 1
        return _make_frame(seq, self.source_id, image)

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead[1].release()
            self._ahead = None

    def _next_frame(self) -> Frame | None:
        failures = 0
        while True:
            if self._ahead is not None and self._position >= self._ahead[0]:
                # the first capture did not recover by the frame the look-ahead decoded: go on from there
                index, cap, image = self._ahead
                self._ahead = None
                skipped = failures + index - self._position
                self._skip(skipped, "undecodable (damaged data, passed by seeking)")
                log.warning("%s: skipped %d undecodable frame(s) before position %d (continuing after a seek)",
                            self.source_id, skipped, index)
                self._cap.release()
                self._cap = cap
                self._position = index
                return self._deliver(image)
            try:
                ok, image = self._cap.read()
            except cv2.error as exc:  # a decoder failure OpenCV raises instead of reporting
                log.debug("%s: read failed at position %d: %s", self.source_id, self._position, _cv2_reason(exc))
                ok, image = False, None
            if ok and image is not None and image.size:
                if failures:
                    self._skip(failures, "undecodable")
                    log.warning("%s: skipped %d undecodable frame(s) before position %d", self.source_id, failures, self._position)
                self._drop_ahead()
                return self._deliver(image)
            if self._frame_count is not None and self._position >= self._frame_count:
                if failures:  # the container says these frames exist: they were undecodable
                    self._skip(failures, "undecodable")
                    log.warning("%s: skipped %d undecodable frame(s) at the end", self.source_id, failures)
                self._drop_ahead()
                return None
            failures += 1
            self._position += 1
            if failures >= MAX_CONSECUTIVE_DECODE_FAILURES and self._ahead is None:
                if self._frame_count is not None and self._position < self._frame_count:
                    self._ahead = self._look_ahead(self._position)
                if self._ahead is None:
                    self._position -= failures
                    if self._frame_count is not None:
                        log.warning(
                            "%s: file ends after %d of %d frames (truncated or corrupt: no later frame decodes)",
                            self.source_id, self._position, self._frame_count,
                        )
                    return None
                log.warning("%s: %d undecodable frame(s) from position %d; frame %d decodes again, reading on",
                            self.source_id, failures, self._position - failures, self._ahead[0])

    def _look_ahead(self, position: int) -> tuple[int, cv2.VideoCapture, np.ndarray] | None:
        """A second capture that decoded a frame after ``position``: seeks to ``position`` +
        25, 50, 100, ... and last to the final frame; ``None`` if no frame there decodes."""
        assert self._frame_count is not None
        last = self._frame_count - 1
        targets, step = [], MAX_CONSECUTIVE_DECODE_FAILURES
        while position + step < last:
            targets.append(position + step)
            step *= 2
        targets.append(last)
        for target in targets:
            try:
                cap = self._new_capture()
            except SourceError:
                return None
            try:
                found = cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                ok, image = cap.read() if found else (False, None)
                # OpenCV's seek can land elsewhere in damaged data; trust it only where it says target
                landed = int(round(cap.get(cv2.CAP_PROP_POS_FRAMES))) - 1
            except cv2.error:
                ok, image, landed = False, None, -1
            if ok and image is not None and image.size and landed == target:
                return target, cap, image
            cap.release()
        return None

    def _close(self) -> None:
        with self._io_lock:
            self._drop_ahead()
            if self._cap is not None:
                self._cap.release()
                self._cap = None
            self._first = None


# --------------------------------------------------------------------------------------
# live sources: cameras and network streams
# --------------------------------------------------------------------------------------
class _Connection:
    """One attempt at a live input: a daemon thread that opens a capture, reads frames
    until a read fails or the connection is abandoned, then releases the capture.

    The capture is created, read and released by this thread only. ``opened`` becomes
    true with the first frame. The owner's lock guards ``opened``, ``finished``,
    ``last_frame`` and ``first_frame_time``.
    """

    def __init__(self, name: str, open_capture: Callable[[], "cv2.VideoCapture"],
                 on_frame: Callable[["_Connection", np.ndarray, float], None], on_finished: Callable[["_Connection"], None]) -> None:
        self._open_capture = open_capture
        self._on_frame = on_frame
        self._on_finished = on_finished
        self.abandoned = threading.Event()
        self.opened = False
        self.finished = False
        self.error: str | None = None
        self.last_frame = time.monotonic()
        self.last_frame_time = time.time()  # wall clock of the newest frame, for gap records
        self.first_frame_time = 0.0
        #: the capture's nominal frame interval (s, from its fps), when it states one
        self.frame_interval: float | None = None
        #: until a frame arrives at the stream's own pace, frames come from FFmpeg's buffer
        #: (see LiveSource); the newest such frame waits here as ``(frame, pts_s, arrival)``
        self.catching_up = True
        self.pending: tuple[Frame, float, float] | None = None
        self.stale_seconds = 0.0  # stream time of the frames dropped as stale so far
        self.stale_frames = 0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        cap = None
        try:
            cap = self._open_capture()
            if not cap.isOpened():
                self.error = "could not be opened"
                return
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.frame_interval = 1.0 / fps if 1.0 <= fps <= 1000.0 else None
            while not self.abandoned.is_set():
                ok, image = cap.read()
                if not ok or image is None:
                    self.error = "a read failed" if self.opened else "opened, but the first frame could not be read"
                    return
                try:
                    pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                except cv2.error:
                    pts = -1.0
                self._on_frame(self, image, pts)
        except Exception as exc:  # cv2.error and friends: report, never kill the process
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            if cap is not None:
                cap.release()
            self._on_finished(self)


class LiveSource(Source):
    """A live input read by a capture thread that keeps only the newest frame.

    ``seq`` counts captured frames, so frames dropped because the consumer was slower
    than the input show as gaps. ``read()`` waits until a frame newer than the last one
    returned exists. No frame for ``read_timeout`` s (or a failed read) means the input
    is lost: a warning is logged and it is reopened after 0.5 s, 1 s, 2 s, 2 s, ... (at most
    2 s apart in the first minute of an outage, then at most 8 s apart;
    :func:`reconnect_delay`, each wait recorded in ``stats.reconnect_delays``) while
    ``read()`` keeps waiting, so a short outage costs at most one 2 s step more than the
    outage itself. Every reopening is counted in ``stats.reconnects`` and the outage
    recorded in ``stats.gaps``. After ``reconnect_timeout`` s without success, ``read()``
    raises :class:`SourceError`.

    Stale frames are **dropped**, not marked: a new connection (the first one and every
    reconnect) first delivers what FFmpeg buffered while probing the stream, about a
    second of frames in a burst (the first one 1.1 s old where steady state is 0.1 s).
    Until a frame arrives at the stream's own pace, frames that arrive faster than half
    their stream-time spacing are dropped and counted in ``stats.frames_stale`` (and
    ``frames_dropped``), at most :data:`STALE_CATCH_UP_MAX_S` of stream time. The first
    frame delivered is thus about as old as the stream's steady latency; a header field
    could only have said "stale" about frames no consumer should act on.
    """

    is_live = True

    def __init__(self, source_id: str, *, open_timeout: float, read_timeout: float,
                 reconnect_timeout: float, max_frames: int | None = None) -> None:
        super().__init__(source_id, max_frames=max_frames)
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.reconnect_timeout = reconnect_timeout
        self._cond = threading.Condition()
        self._conn: _Connection | None = None
        self._connections: list[_Connection] = []
        self._latest: Frame | None = None
        self._captured = 0
        self._fatal: str | None = None
        self._stopping = False
        self._supervisor: threading.Thread | None = None

    @abstractmethod
    def _create_capture(self) -> "cv2.VideoCapture":
        """Open the underlying capture (runs in the connection's thread)."""

    def _open_failure(self, error: str) -> str:
        """The reason shown when the first open fails."""
        return error

    # -- capture-thread callbacks --------------------------------------------------------
    def _on_frame(self, conn: _Connection, image: np.ndarray, pts: float) -> None:
        with self._cond:
            if conn.abandoned.is_set() or conn is not self._conn or self._stopping:
                return
            now = time.monotonic()
            if not conn.opened:
                conn.opened = True
                conn.first_frame_time = time.time()
            conn.last_frame = now
            conn.last_frame_time = time.time()
            frame = _make_frame(self._captured, self.source_id, image)
            self._captured += 1
            if conn.catching_up and not self._caught_up(conn, frame, pts, now):
                return
            if self._latest is not None:
                self.stats.frames_dropped += 1
            self._latest = frame
            self._cond.notify_all()

    def _caught_up(self, conn: _Connection, frame: Frame, pts: float, now: float) -> bool:
        """Whether ``frame`` (arrived at ``now``, stream time ``pts`` s) ends the catch-up
        of a new connection; if not it is held in ``conn.pending``. Called holding the lock.

        A frame read while a newer one was already waiting in FFmpeg's buffer is stale: the
        next read returns in far less than the stream time between the two (2 ms for 40 ms
        in the test stream). So the newest frame is held until the next shows the pace: if
        that one came sooner than half the stream time between them, the held one is dropped
        (``stats.frames_stale``); if it came at the stream's pace, the buffer is worked off and
        it is delivered. At most :data:`STALE_CATCH_UP_MAX_S` of stream time is dropped.
        """
        previous, conn.pending = conn.pending, (frame, pts, now)
        if previous is None:
            return False  # the pace is known only with the next frame
        _, previous_pts, previous_arrival = previous
        stream_step = pts - previous_pts if pts > previous_pts >= 0 else conn.frame_interval
        if stream_step is None:  # neither timestamps nor a frame rate: nothing to judge by
            conn.catching_up, conn.pending = False, None
            return True
        if now - previous_arrival < 0.5 * stream_step and conn.stale_seconds < STALE_CATCH_UP_MAX_S:
            conn.stale_seconds += stream_step
            conn.stale_frames += 1
            self.stats.frames_stale += 1
            self.stats.frames_dropped += 1
            return False
        conn.catching_up, conn.pending = False, None
        if conn.stale_seconds:
            log.info("%s: dropped %d stale frame(s) (%.2fs of the stream) buffered by the new connection",
                     self.source_id, conn.stale_frames, conn.stale_seconds)
        self.stats.frames_dropped += 1  # the held frame, replaced by this newer one
        return True

    def _on_finished(self, conn: _Connection) -> None:
        with self._cond:
            conn.finished = True
            if not conn.abandoned.is_set():
                self._deliver_pending(conn)
            self._cond.notify_all()

    def _deliver_pending(self, conn: _Connection) -> None:
        """A connection that ends (or stalls) while catching up: its held frame was the newest
        it had, so nothing newer was waiting; deliver it (e.g. a URL serving one image per
        connection). Called holding the lock."""
        if conn.pending is not None and conn is self._conn and not self._stopping:
            if self._latest is not None:
                self.stats.frames_dropped += 1
            self._latest, conn.pending = conn.pending[0], None
            conn.catching_up = False

    def _start_connection(self) -> _Connection:
        conn = _Connection(f"rtseg-capture {self.source_id}", self._create_capture, self._on_frame, self._on_finished)
        with self._cond:
            self._connections = [c for c in self._connections if c.thread.is_alive()]
            self._connections.append(conn)
            self._conn = conn
        conn.thread.start()
        return conn

    def _await_first_frame(self, conn: _Connection) -> bool:
        """Wait up to open_timeout for ``conn``'s first frame; abandon it if none came.

        Must be called holding ``self._cond``.
        """
        self._cond.wait_for(lambda: conn.opened or conn.finished or self._stopping, timeout=self.open_timeout)
        if conn.opened and not self._stopping:
            return True
        conn.abandoned.set()
        if conn.error is None:
            conn.error = f"no frame within open_timeout={self.open_timeout:g}s"
        return False

    # -- Source ----------------------------------------------------------------------------
    def _open(self) -> None:
        conn = self._start_connection()
        with self._cond:
            if not self._await_first_frame(conn):
                raise self._error("closed while opening" if self._stopping else self._open_failure(conn.error))
        self._supervisor = threading.Thread(target=self._supervise, name=f"rtseg-reconnect {self.source_id}", daemon=True)
        self._supervisor.start()

    def _read(self) -> Frame | None:
        # the supervisor bounds every wait; this deadline only guards against its failure
        deadline = time.monotonic() + self.read_timeout + self.reconnect_timeout + 2 * self.open_timeout + RECONNECT_MAX_DELAY_S
        with self._cond:
            while True:
                if self._latest is not None:
                    frame, self._latest = self._latest, None
                    return frame
                if self._fatal is not None:
                    raise SourceError(self._fatal)
                if self._stopping:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SourceError(f"source {self.source_id!r} delivered no frame for {self.read_timeout + self.reconnect_timeout:g}s")
                self._cond.wait(remaining)

    def _close(self) -> None:
        with self._cond:
            self._stopping = True
            connections = list(self._connections)
            for conn in connections:
                conn.abandoned.set()
            self._cond.notify_all()
        if self._supervisor is not None:
            self._supervisor.join()
        # a capture blocked in open or read returns within its own timeout at worst
        limit = time.monotonic() + max(self.open_timeout, self.read_timeout) + 1.0
        for conn in connections:
            conn.thread.join(max(0.0, limit - time.monotonic()))
            if conn.thread.is_alive():
                log.warning("%s: capture thread still blocked in OpenCV; leaving it to finish on its own", self.source_id)

    # -- reconnection ----------------------------------------------------------------------
    def _supervise(self) -> None:
        """Watch the current connection; when it fails or stalls, reconnect."""
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    conn = self._conn
                    if conn.finished:
                        reason = conn.error or "the input ended"
                        break
                    silent = time.monotonic() - conn.last_frame
                    if silent >= self.read_timeout:
                        reason = f"no frame for {self.read_timeout:g}s"
                        break
                    self._cond.wait(self.read_timeout - silent)
                self._deliver_pending(conn)
                conn.abandoned.set()
                outage_start = conn.last_frame_time  # the gap starts after the last frame seen
            log.warning("%s: input lost (%s); reconnecting", self.source_id, reason)
            if not self._reconnect(outage_start, reason):
                return

    def _reconnect(self, outage_start: float, reason: str) -> bool:
        started = time.monotonic()
        attempts = 0
        last_error = reason
        while True:
            elapsed = time.monotonic() - started
            delay = reconnect_delay(attempts + 1, elapsed)
            with self._cond:
                remaining = self.reconnect_timeout - elapsed
                if remaining > 0:
                    self.stats.reconnect_delays.append(min(delay, remaining))
                    self._cond.wait_for(lambda: self._stopping, timeout=min(delay, remaining))
                if self._stopping:
                    return False
                if time.monotonic() - started >= self.reconnect_timeout:
                    break
            attempts += 1
            conn = self._start_connection()
            with self._cond:
                if self._await_first_frame(conn):
                    self.stats.reconnects += 1
                    self.stats.gaps.append((outage_start, conn.first_frame_time))
                    log.info("%s: reconnected after %.1fs (attempt %d)", self.source_id, conn.first_frame_time - outage_start, attempts)
                    return True
                if self._stopping:
                    return False
                last_error = conn.error
            log.info("%s: reconnect attempt %d failed: %s", self.source_id, attempts, last_error)
        with self._cond:
            self.stats.gaps.append((outage_start, time.time()))
            self._fatal = (
                f"source {self.source_id!r} lost: no frame for {self.reconnect_timeout:g}s after "
                f"{attempts} reconnect attempt(s) (last error: {last_error})"
            )
            self._cond.notify_all()
        log.debug("%s", self._fatal)  # read() raises it: the caller reports it (once)
        return False


class CameraSource(LiveSource):
    """A local camera by index (``cv2.VideoCapture(index)``)."""

    def __init__(self, source_id: str, index: int, **kwargs: object) -> None:
        super().__init__(source_id, **kwargs)  # type: ignore[arg-type]
        self.index = index

    def _create_capture(self) -> "cv2.VideoCapture":
        return cv2.VideoCapture(self.index)

    def _open_failure(self, error: str) -> str:
        return f"no usable camera at index {self.index} ({error})"


class StreamSource(LiveSource):
    """A network stream (RTSP over TCP, HTTP) read with OpenCV's FFmpeg backend.

    Opening and reading use FFmpeg's own timeouts (``CAP_PROP_OPEN_TIMEOUT_MSEC``,
    ``CAP_PROP_READ_TIMEOUT_MSEC``) as well as the outer guards of :class:`LiveSource`.
    RTSP runs over TCP: unless the user has set ``OPENCV_FFMPEG_CAPTURE_OPTIONS``
    themselves, it is set to ``rtsp_transport;tcp`` (process-wide) before the first open,
    because OpenCV exposes no per-capture switch for it.
    """

    def __init__(self, source_id: str, url: str, **kwargs: object) -> None:
        super().__init__(source_id, **kwargs)  # type: ignore[arg-type]
        self.url = url

    def _open(self) -> None:
        if urlsplit(self.url).scheme.lower() in ("rtsp", "rtsps"):
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        super()._open()

    def _create_capture(self) -> "cv2.VideoCapture":
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout * 1000),
        ]
        return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------
_SYNTHETIC = re.compile(r"synthetic(?::(?P<seed>\d+)(?::(?P<w>\d+)x(?P<h>\d+))?)?(?:@(?P<fps>\d+(?:\.\d+)?))?")


def _redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for ids, logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_source(
    spec: str,
    *,
    open_timeout: float = 10.0,
    read_timeout: float = 5.0,
    max_frames: int | None = None,
    loop: bool = False,
    reconnect_timeout: float = 60.0,
) -> Source:
    """Make the :class:`Source` that ``spec`` names (see the module docstring).

    The source is not opened yet: use it as a context manager, or call ``open()`` (or just
    ``read()``, which opens on first use). Errors visible from the spec alone (a malformed
    spec, a missing path) raise :class:`SourceError` here; the rest on open.

    - ``open_timeout``: seconds an open may take, first frame included.
    - ``read_timeout``: seconds without a frame before a live input counts as lost.
    - ``max_frames``: stop (``read()`` returns ``None``) after this many frames.
    - ``loop``: files and folders start over at the end (ignored by other sources).
    - ``reconnect_timeout``: seconds a lost live input is retried before giving up.
    """
    if not isinstance(spec, str) or not spec:
        raise SourceError(f"source must be a non-empty string (path, URL, camera index or 'synthetic'), got {spec!r}")
    for name, value in (("open_timeout", open_timeout), ("read_timeout", read_timeout), ("reconnect_timeout", reconnect_timeout)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise SourceError(f"{name} must be a number of seconds > 0, got {value!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 0):
        raise SourceError(f"max_frames must be None or an int >= 0, got {max_frames!r}")

    if spec == "synthetic" or spec.startswith("synthetic:"):
        match = _SYNTHETIC.fullmatch(spec)
        if match is None or (match["w"] is not None and (int(match["w"]) < 16 or int(match["h"]) < 16)):
            raise SourceError(f"cannot open source {spec!r}: expected synthetic[:SEED[:WxH]][@FPS], e.g. synthetic:3:640x480 "
                              f"or synthetic:3@15 (W, H >= 16, FPS > 0)")
        if match["w"] is not None and max(int(match["w"]), int(match["h"])) > MAX_SYNTHETIC_SIDE:
            raise SourceError(
                f"cannot open source {spec!r}: frame size {int(match['w'])}x{int(match['h'])} is too large "
                f"(expected W, H from 16 to {MAX_SYNTHETIC_SIDE}: one {MAX_SYNTHETIC_SIDE}x{MAX_SYNTHETIC_SIDE} "
                f"frame is already 192 MiB)"
            )
        size = (int(match["h"]), int(match["w"])) if match["w"] is not None else (480, 640)
        fps = float(match["fps"]) if match["fps"] is not None else None
        if fps is not None and not fps > 0:
            raise SourceError(f"cannot open source {spec!r}: expected FPS > 0 after '@', got {match['fps']}")
        return SyntheticSource(spec, seed=int(match["seed"] or 0), size=size, max_frames=max_frames, fps=fps)

    live = dict(open_timeout=float(open_timeout), read_timeout=float(read_timeout),
                reconnect_timeout=float(reconnect_timeout), max_frames=max_frames)
    if spec.isdigit() and spec.isascii():
        return CameraSource(spec, int(spec), **live)
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else None
    if scheme is not None:
        source_id = _redact(spec)
        if scheme not in NETWORK_SCHEMES:
            raise SourceError(f"cannot open source {source_id!r}: unsupported URL scheme {scheme!r} (expected one of {', '.join(NETWORK_SCHEMES)})")
        return StreamSource(source_id, spec, **live)

    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"cannot open source {spec!r}: no such file or directory")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFilesSource(spec, path, max_frames=max_frames, loop=loop)
    return VideoFileSource(spec, path, open_timeout=float(open_timeout), max_frames=max_frames, loop=loop)
