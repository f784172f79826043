"""The GPU path's plumbing: stage clocks, one CUDA stream per worker thread, pinned host
staging for uploads, and the one deliberate device->host copy of a frame's results.

Everything here runs unchanged on a CPU: the clock reads ``time.perf_counter``, there is no
stream (``worker_stream`` returns ``None``), uploads are ``torch.from_numpy`` and
:func:`to_host` returns host tensors as they are.

On a CUDA device
    * :func:`stage_clock` times stages with CUDA events recorded on the current stream. The
      events are read lazily (:meth:`CudaEventClock.seconds`), once the frame's results are on
      the host: by then the stream has passed every event, so reading them waits for nothing.
      Nothing synchronises the device to take a time.
    * :func:`worker_stream` gives each thread its own stream on each device (thread-local,
      made on first use), and :func:`on_worker_stream` makes it the current stream, so that
      the pipeline's inference workers overlap on the GPU instead of queueing behind each
      other on the default stream. A new stream first waits for the stream current at its
      creation (the default stream, where the model's parameters and buffers were uploaded).
    * :class:`PinnedRing` stages frames in a few reused page-locked buffers per shape, so the
      upload is an asynchronous copy on the worker's stream (a pageable ``.to(device)``
      blocks the host until the copy is done).
    * :func:`to_host` copies several tensors into pinned host buffers with ``non_blocking``
      copies on the current stream and synchronises that one stream once.

The synchronisations that remain, and why each is there (none is device-wide):

1. :func:`to_host`: one ``stream.synchronize()`` of the worker's stream per frame. The
   results must be on the host (``Instances`` holds numpy arrays, render and publish read
   them); waiting once for all copies is the least waiting there can be.
2. :meth:`PinnedRing.stage`: a pinned buffer is refilled only once the copy that last read it
   is done. The ring grows (up to ``max_slots`` buffers per shape) rather than wait, so the
   host waits only when ``max_slots`` uploads of one shape are all still in flight.
3. :meth:`CudaEventClock.seconds`: if an event has not completed when it is read (only when
   nothing in the frame copied results to the host first) it is waited for, as reading it
   requires; in the segmenter the results are always on the host first.
4. ``rtseg.kernels.nms``: ``fast_nms`` and ``greedy_nms`` read one integer, the number of
   detections, which sizes every tensor after them (see the comments there).
5. ``rtseg.backends.onnxruntime_backend``: ONNX Runtime runs on a stream of its own, so the
   worker's stream is synchronised before the session reads the input.
6. ``rtseg.backends.tensorrt_backend``: once per input shape, before capturing a CUDA graph.

``tools/gpu_check.py`` counts ``torch.cuda.synchronize`` calls during a pipeline run on a GPU
(there must be none) and compares ``process_batch`` with ``process`` per image there.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

__all__ = ["StageClock", "HostClock", "CudaEventClock", "stage_clock", "worker_stream", "on_worker_stream",
           "PinnedRing", "upload", "to_host"]


# -- stage clocks ------------------------------------------------------------------------------------

class StageClock(Protocol):
    """Marks between stages; :meth:`seconds` gives each stage's duration.

    ``mark("start")``, then ``mark(stage)`` at the end of each stage: ``seconds()`` returns
    ``{stage: seconds since the mark before it}`` in mark order (the first mark names the
    start and has no duration)."""

    def mark(self, name: str) -> None: ...
    def seconds(self) -> dict[str, float]: ...


class HostClock:
    """:class:`StageClock` on ``time.perf_counter`` (CPU devices: the work is done when the call returns)."""

    def __init__(self) -> None:
        self._marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        self._marks.append((name, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        return {name: t - t_prev for (_, t_prev), (name, t) in zip(self._marks, self._marks[1:])}


class CudaEventClock:
    """:class:`StageClock` on CUDA events recorded on the current stream of ``device``.

    Each mark records a timing event on the current stream and reads the host clock. A stage
    whose end mark is followed by more device work is timed by its events (when the stream
    reached them: the device's time, or the host's enqueue time where the host was slower).
    The last stage ends on the host (after the results were copied back), so it is timed as
    the host time from the first mark to the last minus the stages before it: the stages add
    up to the host's wall time of the whole call. ``seconds()`` must be called after the
    results of the marked work are on the host (see the module docstring, item 3)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._marks: list[tuple[str, torch.cuda.Event, float]] = []

    def mark(self, name: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        self._marks.append((name, event, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        if len(self._marks) < 2:
            return {}
        out: dict[str, float] = {}
        for (_, start, _), (name, end, _) in zip(self._marks[:-1], self._marks[1:-1]):
            if not end.query():
                end.synchronize()  # item 3 of the module docstring: not reached in the segmenter
            out[name] = start.elapsed_time(end) / 1000.0
        total = self._marks[-1][2] - self._marks[0][2]
        out[self._marks[-1][0]] = max(0.0, total - sum(out.values()))
        return out


def stage_clock(device: torch.device | str) -> StageClock:
    """A :class:`CudaEventClock` on a CUDA device, else a :class:`HostClock`."""
    device = torch.device(device)
    return CudaEventClock(device) if device.type == "cuda" else HostClock()


# -- one stream per worker thread ------------------------------------------------------------------

_local = threading.local()


def worker_stream(device: torch.device | str) -> "torch.cuda.Stream | None":
    """This thread's own CUDA stream on ``device`` (made on first use), or ``None`` on a CPU.

    A new stream waits for the stream current when it is made (normally the default stream,
    where the model was uploaded), so work queued on it sees the parameters complete."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    streams = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = streams.get(index)
    if stream is None:
        stream = torch.cuda.Stream(device=index)
        stream.wait_stream(torch.cuda.current_stream(index))
        streams[index] = stream
    return stream


@contextlib.contextmanager
def on_worker_stream(device: torch.device | str) -> "Iterator[torch.cuda.Stream | None]":
    """Make this thread's :func:`worker_stream` current on ``device`` for the block (nothing on a CPU)."""
    stream = worker_stream(device)
    if stream is None:
        yield None
        return
    if torch.cuda.current_stream(stream.device) == stream:  # nested: already there
        yield stream
        return
    with torch.cuda.device(stream.device), torch.cuda.stream(stream):
        yield stream


# -- uploads through pinned buffers ----------------------------------------------------------------

class PinnedRing:
    """Host buffers per ``(shape, dtype)`` for uploads, reused in turn: ``slots`` to start with,
    growing up to ``max_slots`` while the oldest is still being read (a batch of many frames of
    one size), so that refilling normally waits for nothing.

    Page-locked where CUDA is available (an asynchronous copy can read them), plain host
    memory otherwise (the fallback: same behaviour, ordinary copies). One ring per thread
    (:func:`upload` keeps them thread-local): a buffer is refilled only by the thread whose
    stream reads it. At most ``max_shapes`` shapes are kept (the oldest is dropped)."""

    def __init__(self, slots: int = 3, max_shapes: int = 8, max_slots: int = 16) -> None:
        if slots < 1 or max_shapes < 1 or max_slots < slots:
            raise ValueError(f"expected 1 <= slots <= max_slots and max_shapes >= 1, got slots {slots}, "
                             f"max_slots {max_slots}, max_shapes {max_shapes}")
        self.slots = slots
        self.max_slots = max_slots
        self.max_shapes = max_shapes
        self.pinned = torch.cuda.is_available()
        # (shape, dtype) -> [next index, [[buffer, event of the copy that last read it or None], ...]]
        self._rings: dict[tuple, list] = {}

    def _new_buffer(self, shape: tuple, dtype: np.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=self.pinned)

    def stage(self, array: np.ndarray) -> tuple[torch.Tensor, int]:
        """Copy ``array`` into the next buffer of its shape; returns ``(buffer, slot index)``."""
        array = np.asarray(array)
        key = (tuple(array.shape), array.dtype.str)
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= self.max_shapes:
                self._rings.pop(next(iter(self._rings)))
            ring = self._rings[key] = [0, [[self._new_buffer(array.shape, array.dtype), None]
                                           for _ in range(self.slots)]]
        i, entries = ring
        event = entries[i][1]
        if event is not None and not event.query() and len(entries) < self.max_slots:
            # the oldest buffer is still being read: one more buffer rather than a wait
            entries.insert(i, [self._new_buffer(array.shape, array.dtype), None])
            event = None
        ring[0] = (i + 1) % len(entries)
        if event is not None:
            event.synchronize()  # item 2 of the module docstring: the copy `max_slots` uploads ago
            entries[i][1] = None
        buffer = entries[i][0]
        buffer.numpy()[...] = array
        return buffer, i

    def record(self, array_shape: tuple, dtype: np.dtype, index: int, stream: "torch.cuda.Stream | None" = None,
               event: object = None) -> None:
        """Remember that buffer ``index`` of that shape is being read: ``event`` (default: a CUDA
        event recorded on ``stream`` now, after the copy was queued) completes when it is free."""
        ring = self._rings.get((tuple(array_shape), np.dtype(dtype).str))
        if ring is None:
            return
        if event is None:
            event = torch.cuda.Event()
            event.record(stream)
        ring[1][index][1] = event


def _ring() -> PinnedRing:
    ring = getattr(_local, "ring", None)
    if ring is None:
        ring = _local.ring = PinnedRing()
    return ring


def upload(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array as a tensor on ``device``: on a CPU ``torch.from_numpy`` (shares the
    array's memory, no copy); on CUDA through this thread's :class:`PinnedRing`, an
    asynchronous copy on the current stream."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.from_numpy(np.asarray(array))
    ring = _ring()
    buffer, index = ring.stage(array)
    out = buffer.to(device, non_blocking=ring.pinned)
    ring.record(array.shape, array.dtype, index, torch.cuda.current_stream(device))
    return out


# -- the one copy back ----------------------------------------------------------------------------

def to_host(tensors: "Sequence[torch.Tensor | None]") -> "list[torch.Tensor | None]":
    """The deliberate device->host copy: every CUDA tensor of ``tensors`` into a pinned host
    tensor (``non_blocking`` copies on the current stream of its device), then one
    synchronisation of each stream used (one, in practice). Host tensors come back as they are
    (detached; they are on the host already), ``None`` stays ``None``; order is kept.

    The pinned buffers come from torch's caching host allocator (freed ones are reused once
    the copies that used them are done), so results kept by the caller are never overwritten."""
    out: list[torch.Tensor | None] = []
    streams: dict[int, torch.cuda.Stream] = {}
    for t in tensors:
        if t is None or t.device.type != "cuda":
            out.append(None if t is None else t.detach())
            continue
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t.detach(), non_blocking=True)
        stream = torch.cuda.current_stream(t.device)
        streams[stream.cuda_stream] = stream
        out.append(host)
    for stream in streams.values():
        stream.synchronize()  # item 1 of the module docstring: the frame's one wait
    return out
