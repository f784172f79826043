"""What ``rtseg run`` tells the person at the terminal while it runs: where the results go,
progress and ETA through a file, and what was found in a single image.

Progress goes to stderr (stdout keeps the results and the summary): a tqdm bar when stderr
is a terminal, otherwise (a log file, CI, a pipe) one log line each time another tenth of
the frames is done, so a log holds at most ten of them whatever the length of the file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

log = logging.getLogger("rtseg")

#: non-terminal progress: a line each time another 1 / LOG_STEPS of the frames is done
LOG_STEPS = 10


def where_results_go(*, record: str | None, publish: str | None, display: bool, single_image: bool,
                     view: str | None = None) -> tuple[int, str]:
    """``(logging level, sentence)`` saying where ``rtseg run``'s results go, or that they go
    nowhere and which options send them somewhere."""
    places = []
    if record:
        places.append(f"rendered video to {record}")
    if publish:
        places.append(f"results published on {publish}")
    if display:
        places.append("rendered video in a window")
    if single_image:
        places.append("detections printed below")
    if view:
        places.append(f"rendered video in a browser at {view}")
    if places:
        return logging.INFO, "output: " + "; ".join(places)
    return logging.WARNING, ("results go nowhere: no --record FILE, --publish [ENDPOINT], --view PORT or --display given, "
                             "so only the summary is printed")


def describe_detections(name: str, instances: Any, class_names: Sequence[str]) -> str:
    """``NAME: N object(s)`` and one line per detection: class, score, box (x1 y1 x2 y2 pixels)."""
    n = len(instances)
    lines = [f"{name}: {n} object{'' if n == 1 else 's'}"]
    for box, score, cid in zip(instances.boxes, instances.scores, instances.class_ids):
        cid = int(cid)
        label = class_names[cid] if 0 <= cid < len(class_names) else str(cid)
        x1, y1, x2, y2 = (float(v) for v in box)
        lines.append(f"  {label:<12} {float(score):.2f}  box {x1:.0f},{y1:.0f} {x2:.0f},{y2:.0f}")
    return "\n".join(lines)


def frames_in_source(source: Any) -> int | None:
    """How many frames a file or folder source will deliver, when that is known up front
    (a video file's container frame count, a folder's image files); None for endless and
    live sources."""
    from rtseg.sources import IMAGE_EXTENSIONS, ImageFilesSource, VideoFileSource

    if getattr(source, "loop", False):
        return None
    if isinstance(source, ImageFilesSource):
        path = Path(source.path)
        if path.is_dir():
            return sum(1 for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return 1
    if isinstance(source, VideoFileSource):
        import cv2

        cap = cv2.VideoCapture(str(source.path))
        try:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        finally:
            cap.release()
        return count if count > 0 else None
    return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Frames done out of ``total`` (None: unknown), on ``stream``: a tqdm bar when the
    stream is a terminal (``tty`` overrides the guess), else :data:`LOG_STEPS` log lines.
    ``update()`` may be called from any one thread."""

    def __init__(self, total: int | None, *, desc: str = "", stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.total = total
        self.done = 0
        self._t0: float | None = None
        self._next_log = 1
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            try:  # a terminal that reports no size (0 columns) would get an empty bar from tqdm
                sized = os.get_terminal_size(self.stream.fileno()).columns > 0
            except (AttributeError, OSError, ValueError):
                sized = False
            self._bar = tqdm(total=total, desc=desc or None, unit="frame", file=self.stream, smoothing=0.1,
                             dynamic_ncols=sized, ncols=None if sized else 80)

    def update(self, n: int = 1) -> None:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.total:
            return
        step = self.done * LOG_STEPS // self.total
        if step >= self._next_log:
            self._next_log = step + 1
            elapsed = now - self._t0
            rate = (self.done - 1) / elapsed if elapsed > 0 and self.done > 1 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            log.info("progress: %d/%d frames (%d%%), %.1f FPS, ETA %s", self.done, self.total,
                     100 * self.done // self.total, rate, _duration(eta))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
