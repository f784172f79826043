"""The threaded pipeline: capture -> inference -> render -> publish.

Four threads joined by bounded queues, so every stage works on a different frame at once
and the slow one (inference) sets the pace instead of the sum of all of them::

    capture ──q_infer──► inference ×N ──q_render──► render ──q_publish──► publish

With ``workers > 1`` several inference threads take frames from ``q_infer`` (each running
torch with ``cores / workers`` threads) and the render stage puts their results back into
the order they were taken in. On a small CPU this frame-level parallelism beats one model
call using every core, because the other stages no longer preempt a thread that all of
torch's threads wait for (see ``benchmarks/pipeline_overlap.py``).

Several streams: each source has its own capture thread and its own inference queue (the
overflow policy below holds per stream). An inference worker takes the newest unprocessed
frame of every ready stream, round robin, at most one per stream and at most ``batch``
frames, waiting at most ``batch_wait_ms`` for more streams to become ready, and runs them in
one ``segmenter.process_batch`` call; a stream with nothing ready is not waited for beyond
that. The render stage restores each stream's order (not a global one), so a slow stream
never holds back the others.

On a CUDA device each inference worker runs on a CUDA stream of its own
(:func:`rtseg.device.on_worker_stream`): stages are timed with events on it and nothing on
the path synchronises the device; the one wait per call is for the results' copy to the
host (:func:`rtseg.device.to_host`; the full list is in :mod:`rtseg.device`).

Overflow policy
    * ``q_infer`` for a **live** source (webcam, RTSP) holds one frame and a new frame
      replaces an unprocessed one (counted as ``dropped_stale``): results are always about
      the newest image and latency cannot build up. The source itself already keeps only
      its newest frame, so the camera is never blocked.
    * for **files, image folders and the synthetic source** every queue blocks the stage
      before it (back-pressure): every frame is processed, in order, none lost.
    * ``q_render`` and ``q_publish`` always block: a frame accepted by inference is never
      dropped. The publisher itself never blocks: ZeroMQ drops a message only for a
      subscriber whose queue is full, and that subscriber counts what it missed from the
      gaps in the headers' ``stream_seq`` (``rtseg.wire.GapCounter``); the others
      still get every frame.

Shutdown: end of input, ``max_frames``, or :meth:`Pipeline.stop` (Ctrl-C, SIGTERM) makes
capture push a sentinel that flows through every queue; each stage finishes the frames it
has already accepted and exits when the sentinel arrives. :meth:`Pipeline.abandon` (a second
Ctrl-C) is the fast way out: the frames still waiting for inference are dropped and counted
(``abandoned``), the ones being segmented and those after inference are finished, so a
recording is still closed properly. ``stop`` and ``abandon`` only set flags (safe from a
signal handler); :meth:`Pipeline.run`'s own thread does the rest. Whatever ends a run, an
error included, :attr:`Pipeline.result` then holds the summary of what was processed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from rtseg.errors import FrameDropped
from rtseg.render import render as draw
from rtseg.structures import Frame

log = logging.getLogger("rtseg.pipeline")

_END = object()  # sentinel that ends every stage

#: per-stage latency samples kept for the summary (the most recent ones; bounds memory on long runs)
MAX_SAMPLES = 20_000


class FrameSource(Protocol):  # what the pipeline needs of rtseg.sources
    source_id: str
    is_live: bool

    def read(self) -> Frame | None: ...
    def close(self) -> None: ...


@dataclass
class StageStats:
    """Latency samples (seconds) of one stage."""

    samples: deque = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def percentiles_ms(self) -> dict[str, float]:
        if not self.samples:
            return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan")}
        a = np.fromiter(self.samples, float) * 1000.0
        return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95))}


@dataclass
class Summary:
    """What a run did: counts, rate and per-stage latency (milliseconds)."""

    source: str
    frames_read: int
    frames_processed: int
    frames_published: int
    dropped_source: int  #: live source: frames replaced by newer ones before being read
    dropped_stale: int  #: live source: frames replaced in the inference queue
    skipped_corrupt: int  #: frames the source could not decode
    reconnects: int
    wall_seconds: float
    fps: float  #: processed frames / seconds between first capture and last output
    stages_ms: dict[str, dict[str, float]]
    stopped_by: str
    #: live source: outages as ``[start, end]`` wall-clock times (last frame before, first
    #: frame after; an outage that never ended ends when the source gave up)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    outage_seconds: float = 0.0  #: total length of ``gaps``
    #: frames a remote backend gave up on (``rtseg.backends.FrameDropped``: timeout, server down)
    dropped_backend: int = 0
    abandoned: int = 0  #: accepted frames dropped unsegmented by :meth:`Pipeline.abandon` (a second Ctrl-C)
    error: str | None = None  #: the error that ended the run (``stopped_by`` is then "error")
    #: several streams: name -> that stream's counts, ``fps`` and end-to-end ``latency_ms``
    #: (the fields above are then totals over the streams); empty for a single source
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    mean_batch: float = 0.0  #: frames per model call, on average

    @classmethod
    def nothing(cls, source: str, stopped_by: str) -> "Summary":
        """The summary of a run stopped before its first frame (e.g. a signal during the model load)."""
        return cls(source=source, frames_read=0, frames_processed=0, frames_published=0, dropped_source=0,
                   dropped_stale=0, skipped_corrupt=0, reconnects=0, wall_seconds=0.0, fps=0.0, stages_ms={},
                   stopped_by=stopped_by)

    def format(self) -> str:
        lines = [
            f"source {self.source}: read {self.frames_read}, processed {self.frames_processed}, "
            f"published {self.frames_published}, dropped {self.dropped_source + self.dropped_stale} "
            f"(source {self.dropped_source}, stale {self.dropped_stale}), corrupt skipped {self.skipped_corrupt}, "
            f"reconnects {self.reconnects}"
            + (f" ({len(self.gaps)} outage(s), {self.outage_seconds:.1f} s without frames)" if self.gaps else "")
            + (f", dropped by the backend {self.dropped_backend}" if self.dropped_backend else "")
            + (f", abandoned {self.abandoned} (not segmented: a second Ctrl-C or SIGTERM)" if self.abandoned else ""),
            f"{self.fps:.2f} FPS over {self.wall_seconds:.2f} s ({self.stopped_by})",
        ]
        if self.streams:
            lines[0] = f"{len(self.streams)} streams: " + lines[0].split(": ", 1)[1]
            lines[1] += f", {self.mean_batch:.2f} frames per model call"
            lines.append(f"{'stream':<14}{'FPS':>8}{'read':>7}{'done':>7}{'stale':>7}{'p50 ms':>9}{'p95 ms':>9}  source")
            for name, p in self.streams.items():
                lat = p["latency_ms"]
                lines.append(f"{name:<14}{p['fps']:>8.2f}{p['frames_read']:>7}{p['frames_processed']:>7}"
                             f"{p['dropped_stale']:>7}{lat['p50']:>9.1f}{lat['p95']:>9.1f}  {p['source']}"
                             + (f" (lost: {p['error']})" if p["error"] else ""))
        if self.stages_ms:
            lines.append(f"{'stage':<14}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}")
        for name, p in self.stages_ms.items():
            lines.append(f"{name:<14}{p['mean']:>10.1f}{p['p50']:>10.1f}{p['p95']:>10.1f}")
        return "\n".join(lines)


class _Stream:
    """One source's state in a run: its frames waiting for inference and its counters.

    Touched under :attr:`Pipeline._cv` (queue, order) or by one stage thread only (the rest)."""

    def __init__(self, name: str, source: FrameSource, capacity: int) -> None:
        self.name = name
        self.source = source
        self.live = bool(getattr(source, "is_live", False))
        self.capacity = 1 if self.live else capacity  # live: newest frame only
        self.waiting: deque = deque()  # frames read, not yet taken by an inference worker
        self.ended = False  # capture of this stream is over (end of input, max frames, stop, lost)
        self.taken = 0  # frames taken for inference: the per-stream order the render stage keeps
        self.frames_read = 0
        self.frames_processed = 0
        self.frames_published = 0
        self.dropped_stale = 0
        self.dropped_backend = 0
        self.abandoned = 0
        self.error: BaseException | None = None  # a lost live stream in a multi-stream run
        self.latency = StageStats()  # end to end
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.out_times: deque = deque(maxlen=31)  # render times: the FPS drawn on this stream's frames
        self.fps: float | None = None

    def summary(self) -> dict[str, Any]:
        stats = getattr(self.source, "stats", None)
        span = (self.t_last - self.t_first) if (self.t_first is not None and self.t_last is not None) else 0.0
        gaps = [(float(a), float(b)) for a, b in getattr(stats, "gaps", [])]
        return {
            "source": self.source.source_id,
            "frames_read": self.frames_read,
            "frames_processed": self.frames_processed,
            "frames_published": self.frames_published,
            "dropped_source": int(getattr(stats, "frames_dropped", 0)),
            "dropped_stale": self.dropped_stale,
            "skipped_corrupt": int(getattr(stats, "frames_skipped", 0)),
            "reconnects": int(getattr(stats, "reconnects", 0)),
            "dropped_backend": self.dropped_backend,
            "abandoned": self.abandoned,
            "fps": self.frames_processed / span if span > 0 else 0.0,
            "latency_ms": self.latency.percentiles_ms(),
            "gaps": gaps,
            "outage_seconds": float(sum(b - a for a, b in gaps)),
            "error": str(self.error) if self.error is not None else None,
        }


def _per_stream(value: Any, names: list[str], what: str) -> dict[str, Any]:
    """A recorder / window given for the run: one object (single stream) or a mapping name -> object."""
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{what} for unknown stream(s) {unknown}, expected names from {names}")
        return dict(value)
    if len(names) > 1:
        raise ValueError(f"{len(names)} streams need one {what} each: expected a dict name -> {what}, got one object")
    return {names[0]: value}


class Pipeline:
    """Runs ``segmenter`` over one or several sources.

    Args:
        source: an opened :mod:`rtseg.sources` source, or a list of them (several streams).
        segmenter: a :class:`rtseg.segmenter.Segmenter` (``process(image)``, ``class_names``,
            and ``process_batch(images)`` where ``batch > 1``).
        names: the stream names, one per source (default "0", "1", ... by position); set as
            ``frame.stream`` on every frame (the publisher's topic and header use it).
        publisher: a :class:`rtseg.publisher.Publisher`, or None.
        recorder: a :class:`rtseg.render.VideoRecorder`, or None; with several streams a dict
            stream name -> recorder (streams without one are not recorded).
        window: a :class:`rtseg.render.Window`, or None; with several streams a dict name -> window.
        view: a :class:`rtseg.view.ViewServer` (``rtseg run --view``), or None: every stream is then
            rendered, and each finished frame is offered to it (never blocks: newest frame only).
        max_frames: stop each stream after this many captured frames.
        on_frame: called from the publish thread with every finished :class:`Frame` (for tests, tools).
        queue_size: capacity of ``q_render`` and ``q_publish`` (and of each non-live stream's
            inference queue).
        workers: inference threads, each forming its own batches; results keep each stream's
            order. The caller sets torch's thread count (``rtseg.segmenter.configure_threads``).
        batch: most frames in one model call, at most one per stream (1: one frame per call).
        batch_wait_ms: how long a worker that has fewer ready streams than ``batch`` waits for
            more to become ready before it runs what it has.
        classes: keep only the instances of these class ids (``rtseg run --classes``); None keeps all.
        tracker: a factory ``(stream name) -> tracker`` (e.g. :class:`rtseg.track.InstanceTracker`):
            one tracker per stream, updated by the render stage in the stream's order (after
            the class filter), which sets ``instances.track_ids``; None: no tracking.
    """

    def __init__(self, source: FrameSource | list[FrameSource], segmenter: Any, *, names: list[str] | None = None,
                 publisher: Any = None, recorder: Any = None, window: Any = None, max_frames: int | None = None,
                 on_frame: Callable[[Frame], None] | None = None, queue_size: int = 4, workers: int = 1,
                 batch: int = 1, batch_wait_ms: float = 2.0, classes: Any = None,
                 tracker: Callable[[str], Any] | None = None, view: Any = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if not batch_wait_ms >= 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        if not sources:
            raise ValueError("expected at least one source, got none")
        names = [str(i) for i in range(len(sources))] if names is None else [str(n) for n in names]
        if len(names) != len(sources):
            raise ValueError(f"expected one name per source ({len(sources)}), got {len(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        self.workers = workers
        self.batch = batch
        self.batch_wait = batch_wait_ms / 1000.0
        self.sources = sources
        self.source = sources[0]
        self.streams = [_Stream(n, s, queue_size) for n, s in zip(names, sources)]
        self._by_name = {s.name: s for s in self.streams}
        self._multi = len(self.streams) > 1
        self._rr = 0  # round robin: the stream the next batch starts looking at
        self._cv = threading.Condition()  # guards every stream's waiting/ended/taken, and _abandon
        self.segmenter = segmenter
        self.publisher = publisher
        self.recorders = _per_stream(recorder, names, "recorder")
        self.windows = _per_stream(window, names, "window")
        self.recorder = recorder
        self.window = window
        self.view = view  # rtseg.view.ViewServer: offer(frame) from the publish thread
        self.max_frames = max_frames
        self.on_frame = on_frame
        self.q_render: queue.Queue = queue.Queue(maxsize=queue_size)
        self.classes = None if classes is None else np.asarray(sorted(set(int(c) for c in classes)), np.int64)
        self.trackers = {} if tracker is None else {n: tracker(n) for n in names}  #: stream name -> tracker
        self.q_publish: queue.Queue = queue.Queue(maxsize=queue_size)
        self._live = any(s.live for s in self.streams)
        self._stop = threading.Event()
        self._stopped_by = "end of input"
        self._requests: list[str] = []  # stop / abandon asked for, not yet acted on (see run())
        self._abandon = False
        self.result: Summary | None = None  #: the summary of the last run(), also when it raised
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.batch_sizes: deque = deque(maxlen=MAX_SAMPLES)  # frames per model call
        self.stages = {name: StageStats() for name in
                       ("capture", "queue wait", "preprocess", "inference", "postprocess", "track", "render", "publish",
                        "end to end")}
        self._t_run = 0.0  # when run() started
        self._t_first: float | None = None
        self._t_last: float | None = None

    # totals over the streams (the single-stream names tests and tools read)
    frames_read = property(lambda self: sum(s.frames_read for s in self.streams))
    frames_processed = property(lambda self: sum(s.frames_processed for s in self.streams))
    frames_published = property(lambda self: sum(s.frames_published for s in self.streams))
    dropped_stale = property(lambda self: sum(s.dropped_stale for s in self.streams))
    dropped_backend = property(lambda self: sum(s.dropped_backend for s in self.streams))
    frames_abandoned = property(lambda self: sum(s.abandoned for s in self.streams))

    # -- control ---------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask the pipeline to finish: capture stops, accepted frames are completed.

        Only records the request (no lock, no I/O), so a signal handler may call it; the
        thread in :meth:`run` acts on it within 0.1 s."""
        self._requests.append(reason)

    def abandon(self) -> None:
        """Stop, and drop the frames still waiting for inference (counted in ``abandoned``);
        frames being segmented, rendered or published are finished. Signal-safe like :meth:`stop`."""
        self._requests.append("")

    def _act_on_requests(self) -> None:
        """In :meth:`run`'s thread: carry out the :meth:`stop` / :meth:`abandon` calls so far."""
        while self._requests:
            reason = self._requests.pop(0)
            if not reason:
                with self._cv:
                    if not self._abandon:
                        waiting = sum(len(s.waiting) for s in self.streams)
                        log.warning("stopping now: %d frame(s) not yet segmented are dropped, the ones being "
                                    "segmented (at most %d) are finished", waiting, self.workers * self.batch)
                    self._abandon = True
                    self._cv.notify_all()
                reason = "abandoned"
            elif not self._stop.is_set():
                log.info("%s: finishing the frames already accepted (stop again to drop those not yet segmented)",
                         reason)
            self._begin_stop(reason)

    def _begin_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stopped_by = reason
            self._stop.set()
            # unblocks a capture thread waiting on a live source (outage, slow camera); a frame
            # being read is not accepted yet, so nothing accepted is lost
            for source in self.sources:
                source.close()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        self._begin_stop("error")

    def _put(self, q: queue.Queue, item: Any) -> None:
        """Blocking put that still notices a failure elsewhere (so no thread hangs forever)."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._errors:
                    raise RuntimeError("pipeline aborted") from None

    # -- stages ----------------------------------------------------------------------------
    def _capture(self, stream: _Stream) -> None:
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and stream.frames_read >= self.max_frames:
                    self._stopped_by = f"max frames ({self.max_frames})"
                    break
                t0 = time.perf_counter()
                frame = stream.source.read()
                if frame is None:
                    break
                # read + decode (for a live source: also the wait for a frame newer than the last)
                frame.timings["capture"] = time.perf_counter() - t0
                frame.stream = stream.name
                if frame.capture_monotonic and frame.capture_monotonic < self._t_run:
                    # read ahead by source.open() before the run (while the model loaded): its
                    # latency starts with the run
                    frame.capture_monotonic = self._t_run
                stream.frames_read += 1
                first = frame.capture_monotonic or time.perf_counter()
                if stream.t_first is None:
                    stream.t_first = first
                with self._cv:
                    if self._t_first is None:
                        self._t_first = first
                    if stream.live:
                        while len(stream.waiting) >= stream.capacity:
                            stream.waiting.popleft()  # an unprocessed, now stale frame
                            stream.dropped_stale += 1
                    else:  # back-pressure: wait for room
                        while len(stream.waiting) >= stream.capacity:
                            if self._errors:
                                raise RuntimeError("pipeline aborted")
                            self._cv.wait(0.1)
                    stream.waiting.append(frame)
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced by run()
            from rtseg.errors import SourceError

            if self._multi and isinstance(exc, SourceError) and stream.live:
                # a lost camera ends its own stream, not the others (reported at the end of the run)
                log.error("stream %s ended: %s", stream.name, exc)
                stream.error = exc
            else:
                self._fail(exc)
        finally:
            with self._cv:
                stream.ended = True
                self._cv.notify_all()

    def _take_batch(self) -> list[tuple[_Stream, int, Frame]] | None:
        """The newest unprocessed frame of up to ``batch`` ready streams (one per stream, round
        robin), or None when every stream has ended and nothing waits. A worker with fewer
        ready streams than ``batch`` waits at most ``batch_wait`` for more; a stream that
        delivers nothing is simply not in the batch."""
        with self._cv:
            deadline = None
            while True:
                if self._abandon:  # frames not taken yet are dropped, counted per stream
                    for s in self.streams:
                        s.abandoned += len(s.waiting)
                        s.waiting.clear()
                    self._cv.notify_all()
                ready = [s for s in self.streams if s.waiting]
                if not ready:
                    if all(s.ended for s in self.streams) or self._errors:
                        return None
                    self._cv.wait(0.1)
                    continue
                can_join = [s for s in self.streams if not s.waiting and not s.ended]
                if len(ready) >= self.batch or not can_join or self.batch_wait <= 0:
                    break
                now = time.perf_counter()
                if deadline is None:
                    deadline = now + self.batch_wait
                if now >= deadline:
                    break
                self._cv.wait(deadline - now)
            n = len(self.streams)
            taken: list[tuple[_Stream, int, Frame]] = []
            for k in range(n):
                s = self.streams[(self._rr + k) % n]
                if s.waiting and len(taken) < self.batch:
                    # live: the only (newest) frame; files: the oldest, so every frame goes in order
                    taken.append((s, s.taken, s.waiting.popleft()))
                    s.taken += 1
                    last = (self._rr + k) % n
            self._rr = (last + 1) % n  # the next batch starts after the last stream served
            self._cv.notify_all()  # room for back-pressured captures
            return taken

    def _segment(self, images: list[np.ndarray]) -> list[tuple[Any, Any]]:
        if len(images) == 1:
            return [self.segmenter.process(images[0])]
        return self.segmenter.process_batch(images)

    def _inference(self) -> None:
        from contextlib import nullcontext

        from rtseg.device import on_worker_stream

        try:
            device = getattr(self.segmenter, "device", None)  # a segmenter of the tests may have none
            # CUDA: this worker's own stream for all it does (rtseg.device), so workers overlap on
            # the GPU instead of queueing on the default stream; nothing on a CPU
            with on_worker_stream(device) if device is not None else nullcontext():
                self._inference_loop()
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self._put_end(self.q_render)

    def _inference_loop(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                break
            now = time.perf_counter()
            for _, _, frame in taken:
                if frame.capture_monotonic:
                    self.stages["queue wait"].add(now - frame.capture_monotonic)
            try:
                results = self._segment([frame.image for _, _, frame in taken])
            except FrameDropped as exc:  # a remote backend gave up on them: counted, the streams go on
                with self._lock:
                    for s, _, _ in taken:
                        s.dropped_backend += 1
                log.debug("%d frame(s) dropped by the backend: %s", len(taken), exc)
                for s, order, _ in taken:
                    self._put(self.q_render, (s.name, order, None))  # keeps the order of the frames after it
                continue
            with self._lock:
                self.batch_sizes.append(len(taken))
            for (s, order, frame), (instances, times) in zip(taken, results):
                frame.instances = instances
                frame.timings.update(preprocess=times.preprocess, inference=times.inference,
                                     postprocess=times.postprocess)
                with self._lock:
                    s.frames_processed += 1
                self._put(self.q_render, (s.name, order, frame))

    def _put_end(self, q: queue.Queue) -> None:
        try:
            self._put(q, _END)
        except RuntimeError:
            pass

    def _in_order(self) -> Iterator[tuple[_Stream, Frame | None]]:
        """Frames from ``q_render`` in each stream's order (the order the workers took them),
        until every worker ended. Streams do not wait for each other."""
        pending: dict[str, dict[int, Frame | None]] = {s.name: {} for s in self.streams}
        next_order = {s.name: 0 for s in self.streams}
        ended = 0
        while ended < self.workers:
            item = self.q_render.get()
            if item is _END:
                ended += 1
                continue
            name, order, frame = item
            waiting = pending[name]
            waiting[order] = frame
            while next_order[name] in waiting:
                yield self._by_name[name], waiting.pop(next_order[name])
                next_order[name] += 1
        for name, waiting in pending.items():  # only after a worker failed mid-frame: a gap in the order
            for order in sorted(waiting):
                yield self._by_name[name], waiting.pop(order)

    def _render(self) -> None:
        try:
            for stream, frame in self._in_order():
                if frame is None:  # dropped by the backend
                    continue
                self._filter_and_track(stream, frame)
                recorder = self.recorders.get(stream.name)
                window = self.windows.get(stream.name)
                if recorder is not None or window is not None or self.view is not None:
                    t0 = time.perf_counter()
                    self._update_fps(stream, t0)
                    frame.rendered = draw(frame.image, frame.instances, self.segmenter.class_names, fps=stream.fps)
                    if recorder is not None:
                        recorder.write(frame.rendered)
                    if window is not None and not window.show(frame.rendered):
                        self.stop("window closed")
                    frame.timings["render"] = time.perf_counter() - t0
                self._put(self.q_publish, frame)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self._put_end(self.q_publish)

    def _filter_and_track(self, stream: _Stream, frame: Frame) -> None:
        """``--classes`` and ``--track``: here, because frames reach the render stage in their
        stream's order (``_in_order``) and a tracker must see a stream's frames in order."""
        if frame.instances is None:
            return
        if self.classes is not None:
            frame.instances = frame.instances[np.isin(frame.instances.class_ids, self.classes)]
        tracker = self.trackers.get(stream.name)
        if tracker is not None:
            t0 = time.perf_counter()
            # a live stream drops frames: the tracker predicts over the real gap between captures
            stamp = frame.capture_monotonic if (stream.live and frame.capture_monotonic) else None
            frame.instances = tracker.update(frame.instances, timestamp=stamp)
            frame.timings["track"] = time.perf_counter() - t0

    @staticmethod
    def _update_fps(stream: _Stream, now: float) -> None:
        """Output rate over the stream's last 30 frames: a window, not the last interval, because
        several inference workers deliver results in bursts."""
        stream.out_times.append(now)
        if len(stream.out_times) > 1 and now > stream.out_times[0]:
            stream.fps = (len(stream.out_times) - 1) / (now - stream.out_times[0])

    def _publish(self) -> None:
        try:
            while True:
                frame = self.q_publish.get()
                if frame is _END:
                    break
                stream = self._by_name[frame.stream]
                if self.publisher is not None:
                    t0 = time.perf_counter()
                    self.publisher.publish(frame)  # never blocks, never refused (see rtseg.publisher)
                    stream.frames_published += 1
                    frame.timings["publish"] = time.perf_counter() - t0
                done = time.perf_counter()
                self._t_last = stream.t_last = done
                for name in ("capture", "preprocess", "inference", "postprocess", "track", "render", "publish"):
                    if name in frame.timings:
                        self.stages[name].add(frame.timings[name])
                if frame.capture_monotonic:
                    frame.timings["end to end"] = done - frame.capture_monotonic
                    self.stages["end to end"].add(frame.timings["end to end"])
                    stream.latency.add(frame.timings["end to end"])
                if self.view is not None:
                    self.view.offer(frame)  # stores a reference, never blocks (rtseg.view)
                if self.on_frame is not None:
                    self.on_frame(frame)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> Summary:
        """Run to the end of input / ``max_frames`` / :meth:`stop`; returns the summary.

        Re-raises the first error any stage hit (user errors keep their type, so the CLI
        prints them as one line). In a multi-stream run a live stream that is lost (its
        reconnect timeout ran out) ends alone; the others go on, and its error is raised
        once the run has ended."""
        stages: list[tuple[str, Callable[[], None]]] = []
        for s in self.streams:
            stages.append((f"capture-{s.name}" if self._multi else "capture", lambda s=s: self._capture(s)))
        stages += [(f"inference-{i}", self._inference) for i in range(self.workers)]
        stages += [("render", self._render), ("publish", self._publish)]
        threads = [threading.Thread(target=fn, name=f"rtseg-{name}", daemon=True) for name, fn in stages]
        t_start = self._t_run = time.perf_counter()
        self.result = None
        for t in threads:
            t.start()
        # This thread never leaves while a stage runs: a process that exits with a stage still
        # inside torch aborts ("terminate called without an active exception", SIGABRT), which
        # is what a second Ctrl-C raising KeyboardInterrupt here used to do. A Ctrl-C without
        # a handler of the caller's (rtseg run installs one) stops, a second one abandons.
        interrupts = 0
        for t in threads:
            while t.is_alive():
                try:
                    self._act_on_requests()
                    t.join(timeout=0.1)
                except KeyboardInterrupt:
                    interrupts += 1
                    if interrupts == 1:
                        self.stop("interrupted (Ctrl-C)")
                    else:
                        self.abandon()
        while True:  # every stage has ended: nothing is left to abandon
            try:
                self._act_on_requests()
                for source in self.sources:
                    source.close()
                break
            except KeyboardInterrupt:
                pass
        lost = [s.error for s in self.streams if s.error is not None]
        if lost and not self._errors:
            self._errors.append(lost[0])
            if len(lost) == len(self.streams):
                self._stopped_by = "error"
        self.result = self.summary(time.perf_counter() - t_start)
        if self._errors:
            raise self._errors[0]
        return self.result

    def summary(self, wall: float) -> Summary:
        per_stream = {s.name: s.summary() for s in self.streams}
        span = (self._t_last - self._t_first) if (self._t_first is not None and self._t_last is not None) else 0.0
        processed = self.frames_processed
        # throughput between the first capture and the last output (includes the first frame's latency)
        fps = processed / span if span > 0 else 0.0
        gaps = [g for p in per_stream.values() for g in p["gaps"]]
        total = lambda key: sum(p[key] for p in per_stream.values())  # noqa: E731
        return Summary(
            source=", ".join(s.source.source_id for s in self.streams),
            frames_read=self.frames_read,
            frames_processed=processed,
            frames_published=self.frames_published,
            dropped_source=total("dropped_source"),
            dropped_stale=total("dropped_stale"),
            skipped_corrupt=total("skipped_corrupt"),
            reconnects=total("reconnects"),
            wall_seconds=wall,
            fps=fps,
            stages_ms={k: v.percentiles_ms() for k, v in self.stages.items() if v.samples},
            stopped_by=self._stopped_by,
            gaps=gaps,
            outage_seconds=float(sum(b - a for a, b in gaps)),
            dropped_backend=total("dropped_backend"),
            abandoned=total("abandoned"),
            error=str(self._errors[0]) if self._errors else None,
            streams=per_stream if self._multi else {},
            mean_batch=float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0,
        )
