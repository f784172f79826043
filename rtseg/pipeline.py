"""The threaded pipeline: capture -> inference -> render -> publish.

Four threads joined by bounded queues, so every stage works on a different frame at once
and the slow one (inference) sets the pace instead of the sum of all of them::

    capture ──q_infer──► inference ×N ──q_render──► render ──q_publish──► publish

With ``workers > 1`` several inference threads take frames from ``q_infer`` (each running
torch with ``cores / workers`` threads) and the render stage puts their results back into
the order they were taken in. On a small CPU this frame-level parallelism beats one model
call using every core, because the other stages no longer preempt a thread that all of
torch's threads wait for (see ``benchmarks/pipeline_overlap.py``).

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
      gaps in the headers' ``publish_seq`` (``rtseg.publish.GapCounter``); the others
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
        if self.stages_ms:
            lines.append(f"{'stage':<14}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}")
        for name, p in self.stages_ms.items():
            lines.append(f"{name:<14}{p['mean']:>10.1f}{p['p50']:>10.1f}{p['p95']:>10.1f}")
        return "\n".join(lines)


class Pipeline:
    """Runs ``segmenter`` over ``source`` on four threads.

    Args:
        source: an opened :mod:`rtseg.sources` source.
        segmenter: a :class:`rtseg.segmenter.Segmenter` (anything with ``process(image)`` and ``class_names``).
        publisher: a :class:`rtseg.publish.Publisher`, or None.
        recorder: a :class:`rtseg.render.VideoRecorder`, or None.
        window: a :class:`rtseg.render.Window`, or None.
        max_frames: stop after this many captured frames.
        on_frame: called from the publish thread with every finished :class:`Frame` (for tests, tools).
        queue_size: capacity of ``q_render`` and ``q_publish`` (and of ``q_infer`` for non-live sources).
        workers: inference threads; results keep the order frames were taken in. The caller
            sets torch's thread count (``rtseg.segmenter.configure_threads``).
    """

    def __init__(self, source: FrameSource, segmenter: Any, *, publisher: Any = None, recorder: Any = None,
                 window: Any = None, max_frames: int | None = None,
                 on_frame: Callable[[Frame], None] | None = None, queue_size: int = 4, workers: int = 1) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._take_lock = threading.Lock()  # frames are numbered in the order workers take them
        self._taken = 0
        self.source = source
        self.segmenter = segmenter
        self.publisher = publisher
        self.recorder = recorder
        self.window = window
        self.max_frames = max_frames
        self.on_frame = on_frame
        live = bool(getattr(source, "is_live", False))
        self.q_infer: queue.Queue = queue.Queue(maxsize=1 if live else queue_size)
        self.q_render: queue.Queue = queue.Queue(maxsize=queue_size)
        self.q_publish: queue.Queue = queue.Queue(maxsize=queue_size)
        self._live = live
        self._stop = threading.Event()
        self._stopped_by = "end of input"
        self._requests: list[str] = []  # stop / abandon asked for, not yet acted on (see run())
        self._abandon = False
        self.frames_abandoned = 0
        self.result: Summary | None = None  #: the summary of the last run(), also when it raised
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.frames_read = 0
        self.frames_processed = 0
        self.frames_published = 0
        self.dropped_stale = 0
        self.dropped_backend = 0
        self.stages = {name: StageStats() for name in
                       ("capture", "queue wait", "preprocess", "inference", "postprocess", "render", "publish", "end to end")}
        self._t_run = 0.0  # when run() started
        self._t_first: float | None = None
        self._t_last: float | None = None
        self._fps: float | None = None
        self._out_times: deque = deque(maxlen=31)  # the last 31 render times: FPS over 30 intervals

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
                if not self._abandon:
                    waiting = self.q_infer.qsize()
                    log.warning("stopping now: %d frame(s) not yet segmented are dropped, the ones being segmented "
                                "(at most %d) are finished", waiting, self.workers)
                self._abandon = True
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
            self.source.close()

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
    def _capture(self) -> None:
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and self.frames_read >= self.max_frames:
                    self._stopped_by = f"max frames ({self.max_frames})"
                    break
                t0 = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    break
                # read + decode (for a live source: also the wait for a frame newer than the last)
                frame.timings["capture"] = time.perf_counter() - t0
                if frame.capture_monotonic and frame.capture_monotonic < self._t_run:
                    # read ahead by source.open() before the run (while the model loaded): its
                    # latency starts with the run
                    frame.capture_monotonic = self._t_run
                self.frames_read += 1
                if self._t_first is None:
                    self._t_first = frame.capture_monotonic or time.perf_counter()
                if self._live:
                    try:
                        self.q_infer.put_nowait(frame)
                    except queue.Full:
                        try:
                            self.q_infer.get_nowait()  # an unprocessed, now stale frame
                            self.dropped_stale += 1
                        except queue.Empty:
                            pass
                        self._put(self.q_infer, frame)
                else:
                    self._put(self.q_infer, frame)
        except BaseException as exc:  # noqa: BLE001 - surfaced by run()
            self._fail(exc)
        finally:
            for _ in range(self.workers):
                self._put_end(self.q_infer)

    def _put_end(self, q: queue.Queue) -> None:
        try:
            self._put(q, _END)
        except RuntimeError:
            pass

    def _inference(self) -> None:
        try:
            while True:
                with self._take_lock:
                    frame = self.q_infer.get()
                    # decided under the lock, so the frames segmented are those taken before
                    # abandon(): no gap in the order that the render stage would wait on
                    abandoned = frame is not _END and self._abandon
                    if not abandoned:
                        order = self._taken
                        self._taken += 1
                if frame is _END:
                    break
                if abandoned:
                    with self._lock:
                        self.frames_abandoned += 1
                    continue
                now = time.perf_counter()
                if frame.capture_monotonic:
                    self.stages["queue wait"].add(now - frame.capture_monotonic)
                try:
                    instances, times = self.segmenter.process(frame.image)
                except FrameDropped as exc:  # a remote backend gave up on it: counted, the stream goes on
                    with self._lock:
                        self.dropped_backend += 1
                    log.debug("frame %s dropped by the backend: %s", frame.seq, exc)
                    self._put(self.q_render, (order, None))  # keeps the order of the frames after it
                    continue
                frame.instances = instances
                frame.timings.update(preprocess=times.preprocess, inference=times.inference,
                                     postprocess=times.postprocess)
                with self._lock:
                    self.frames_processed += 1
                self._put(self.q_render, (order, frame))
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self._put_end(self.q_render)

    def _in_order(self) -> Iterator[Frame]:
        """Frames from ``q_render`` in the order the workers took them, until every worker ended."""
        pending: dict[int, Frame] = {}
        next_order = 0
        ended = 0
        while ended < self.workers:
            item = self.q_render.get()
            if item is _END:
                ended += 1
                continue
            order, frame = item
            pending[order] = frame
            while next_order in pending:
                yield pending.pop(next_order)
                next_order += 1
        for order in sorted(pending):  # only after a worker failed mid-frame: a gap in the order
            yield pending.pop(order)

    def _render(self) -> None:
        try:
            for frame in self._in_order():
                if frame is None:  # dropped by the backend
                    continue
                if self.recorder is not None or self.window is not None:
                    t0 = time.perf_counter()
                    self._update_fps(t0)
                    frame.rendered = draw(frame.image, frame.instances, self.segmenter.class_names, fps=self._fps)
                    if self.recorder is not None:
                        self.recorder.write(frame.rendered)
                    if self.window is not None and not self.window.show(frame.rendered):
                        self.stop("window closed")
                    frame.timings["render"] = time.perf_counter() - t0
                self._put(self.q_publish, frame)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self._put_end(self.q_publish)

    def _update_fps(self, now: float) -> None:
        """Output rate over the last 30 frames: a window, not the last interval, because
        several inference workers deliver results in bursts."""
        self._out_times.append(now)
        if len(self._out_times) > 1 and now > self._out_times[0]:
            self._fps = (len(self._out_times) - 1) / (now - self._out_times[0])

    def _publish(self) -> None:
        try:
            while True:
                frame = self.q_publish.get()
                if frame is _END:
                    break
                if self.publisher is not None:
                    t0 = time.perf_counter()
                    self.publisher.publish(frame)  # never blocks, never refused (see rtseg.publish)
                    self.frames_published += 1
                    frame.timings["publish"] = time.perf_counter() - t0
                done = time.perf_counter()
                self._t_last = done
                for name in ("capture", "preprocess", "inference", "postprocess", "render", "publish"):
                    if name in frame.timings:
                        self.stages[name].add(frame.timings[name])
                if frame.capture_monotonic:
                    frame.timings["end to end"] = done - frame.capture_monotonic
                    self.stages["end to end"].add(frame.timings["end to end"])
                if self.on_frame is not None:
                    self.on_frame(frame)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> Summary:
        """Run to the end of input / ``max_frames`` / :meth:`stop`; returns the summary.

        Re-raises the first error any stage hit (user errors keep their type, so the CLI
        prints them as one line)."""
        stages = [("capture", self._capture)]
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
                self.source.close()
                break
            except KeyboardInterrupt:
                pass
        self.result = self.summary(time.perf_counter() - t_start)
        if self._errors:
            raise self._errors[0]
        return self.result

    def summary(self, wall: float) -> Summary:
        stats = getattr(self.source, "stats", None)
        span = (self._t_last - self._t_first) if (self._t_first is not None and self._t_last is not None) else 0.0
        processed = self.frames_processed
        # throughput between the first capture and the last output (includes the first frame's latency)
        fps = processed / span if span > 0 else 0.0
        gaps = [(float(a), float(b)) for a, b in getattr(stats, "gaps", [])]
        return Summary(
            source=self.source.source_id,
            frames_read=self.frames_read,
            frames_processed=processed,
            frames_published=self.frames_published,
            dropped_source=int(getattr(stats, "frames_dropped", 0)),
            dropped_stale=self.dropped_stale,
            skipped_corrupt=int(getattr(stats, "frames_skipped", 0)),
            reconnects=int(getattr(stats, "reconnects", 0)),
            wall_seconds=wall,
            fps=fps,
            stages_ms={k: v.percentiles_ms() for k, v in self.stages.items() if v.samples},
            stopped_by=self._stopped_by,
            gaps=gaps,
            outage_seconds=float(sum(b - a for a, b in gaps)),
            dropped_backend=self.dropped_backend,
            abandoned=self.frames_abandoned,
            error=str(self._errors[0]) if self._errors else None,
        )
