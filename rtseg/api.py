"""The Python API over the pipeline: ``for frame in rtseg.stream(source): ...``.

:func:`stream` runs the same :class:`rtseg.pipeline.Pipeline` as ``rtseg run`` (capture,
inference workers, render, bounded queues, per-source overflow policy) in a background
thread and yields each finished :class:`rtseg.structures.Frame` as the pipeline makes it,
the ``stream=True`` idiom of other detection libraries::

    import rtseg

    for frame in rtseg.stream("video.mp4", model="yolact_resnet50", weights="yolact_resnet50_54_800000.pth"):
        print(frame.seq, len(frame.instances), frame.timings["end to end"])
        detections = frame.instances.to_supervision()  # supervision's annotators and zones

Between the pipeline and the loop is a queue of ``buffer`` frames. A file is processed
frame for frame at the pace of the loop (the pipeline waits for it); a live camera keeps
only its newest frame, so a slow loop sees fewer frames, never older ones.

Leaving the loop (``break``, an exception, or closing the generator) stops the pipeline:
capture ends, the frames already accepted are finished and discarded, every thread the run
started has ended before control returns (CPython closes a generator as soon as the loop
drops it; elsewhere use ``contextlib.closing``). Errors are rtseg's one-line errors
(:class:`rtseg.errors.SourceError`, :class:`~rtseg.errors.ConfigError`, ...), raised from
the loop.
"""

from __future__ import annotations

import queue
import threading
from contextlib import ExitStack
from typing import Any, Iterator, Sequence

from rtseg.defaults import DEFAULT_MODEL, DEFAULT_SCORE_THRESHOLD
from rtseg.errors import ConfigError
from rtseg.structures import Frame

_END = object()


def stream(source: str | Sequence[str], model: Any = DEFAULT_MODEL, *, weights: str | None = None,
           device: str = "cpu", score_threshold: float = DEFAULT_SCORE_THRESHOLD, backend: str = "torch",
           engine: str | None = None, track: bool | str = False, render: bool = False,
           max_frames: int | None = None, loop: bool = False, names: Sequence[str] | None = None,
           workers: int = 1, batch: int | None = None, buffer: int = 4,
           open_timeout: float = 10.0, read_timeout: float = 5.0, reconnect_timeout: float = 60.0) -> Iterator[Frame]:
    """Segment ``source`` and yield each finished frame (``frame.instances`` set) in order.

    Args:
        source: what ``rtseg run --source`` takes (a file, folder, camera index, URL,
            ``"synthetic"``), or a list of them (several streams, batched across streams).
        model: a model name (``rtseg models``) or an already made :class:`rtseg.Segmenter`
            (``weights``, ``device``, ``score_threshold``, ``backend`` and ``engine`` are then its own).
        track: persistent object ids per stream, ``frame.instances.track_ids`` (``rtseg run
            --track``): True (ByteTrack) or a tracker name (``bytetrack``, ``ocsort``, ``sort``).
        render: also draw each frame (``frame.rendered``, as ``rtseg run --record`` writes it).
        max_frames: stop each stream after this many frames.
        loop: restart a file or folder at its end.
        names: one stream name per source (``frame.stream``; default "0", "1", ...).
        workers: inference threads (see ``rtseg run --workers``); torch's thread count is left
            as the calling program has it.
        batch: most frames in one model call (default: streams / workers, rounded up).
        buffer: finished frames waiting for the loop, at most (>= 1).

    The options are checked here, at the call; the source opens and the model loads when the
    loop asks for the first frame.
    """
    sources = [source] if isinstance(source, str) else list(source)
    if not sources or not all(isinstance(s, str) and s for s in sources):
        raise ConfigError(f"source must be a non-empty string or a list of them, got {source!r}")
    if not isinstance(buffer, int) or buffer < 1:
        raise ConfigError(f"buffer must be an int >= 1, got {buffer!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
    tracker = None
    if track:  # as rtseg run --track [NAME]: True is its default tracker
        from rtseg.track import DEFAULT_TRACKER, check_tracker

        tracker = DEFAULT_TRACKER if track is True else track
        if not isinstance(tracker, str):
            raise ConfigError(f"track must be False, True or a tracker name, got {track!r}")
        check_tracker(tracker)  # unknown name, or the trackers package missing: one line
    if isinstance(model, str):
        from rtseg.preflight import check_device_spelling, check_model_name

        check_model_name(model)
        check_device_spelling(device)
    return _frames(sources, model, tracker, dict(weights=weights, device=device, score_threshold=score_threshold,
                                                  backend=backend, engine=engine),
                   render=render, max_frames=max_frames, loop=loop, names=names, workers=workers, batch=batch,
                   buffer=buffer, open=dict(open_timeout=open_timeout, read_timeout=read_timeout,
                                            reconnect_timeout=reconnect_timeout))


class _Show:
    """A per-stream 'window' that shows nothing: makes the pipeline's render stage draw every frame."""

    def show(self, image: Any) -> bool:
        return True

    def close(self) -> None:
        pass


def _frames(sources: list[str], model: Any, tracker: str | None, segmenter_options: dict[str, Any], *,
            render: bool, max_frames: int | None, loop: bool, names: Sequence[str] | None, workers: int,
            batch: int | None, buffer: int, open: dict[str, float]) -> Iterator[Frame]:
    from rtseg.pipeline import Pipeline
    from rtseg.sources import open_source

    results: queue.Queue = queue.Queue(maxsize=buffer)
    closed = threading.Event()  # the loop has left: finished frames are discarded, nothing waits for it
    failure: list[BaseException] = []

    def on_frame(frame: Frame) -> None:  # in the pipeline's publish thread: back-pressure, unless closed
        while not closed.is_set():
            try:
                results.put(frame, timeout=0.1)
                return
            except queue.Full:
                continue

    with ExitStack() as cleanup:
        opened = []
        for spec in sources:
            src = open_source(spec, loop=loop, **open)
            cleanup.callback(src.close)
            src.open()  # a missing file or dead camera fails here, before the model loads
            opened.append(src)
        if isinstance(model, str):
            from rtseg.segmenter import Segmenter

            segmenter = Segmenter(model, **segmenter_options)
        else:
            segmenter = model
        stream_names = list(names) if names is not None else [str(i) for i in range(len(opened))]
        windows = {n: _Show() for n in stream_names} if render else None
        trackers = None
        if tracker is not None:  # one per stream, at the stream's frame rate (as rtseg run --track)
            from rtseg.track import InstanceTracker

            fps_of = {n: getattr(src, "fps", None) for n, src in zip(stream_names, opened)}
            trackers = lambda n: InstanceTracker(tracker, frame_rate=float(fps_of[n] or 30.0))  # noqa: E731
        pipeline = Pipeline(opened, segmenter, names=stream_names, window=windows, max_frames=max_frames,
                            on_frame=on_frame, workers=workers, batch=batch or -(-len(opened) // workers),
                            tracker=trackers)

        def run() -> None:
            try:
                pipeline.run()
            except BaseException as exc:  # noqa: BLE001 - raised from the loop
                failure.append(exc)
            finally:
                while not closed.is_set():
                    try:
                        results.put(_END, timeout=0.1)
                        break
                    except queue.Full:
                        continue

        thread = threading.Thread(target=run, name="rtseg-stream", daemon=True)
        thread.start()
        try:
            while True:
                item = results.get()
                if item is _END:
                    break
                yield item
            thread.join()
            if failure:
                raise failure[0]
        finally:  # the loop ended, broke out, raised, or the generator was closed
            closed.set()
            pipeline.stop("the loop over rtseg.stream() ended")
            while thread.is_alive():
                thread.join(timeout=0.1)
