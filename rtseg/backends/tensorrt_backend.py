"""TensorRT backend: an engine from ``rtseg export --format engine`` (either flavour,
:mod:`rtseg.export.trt_flavour`) run on CUDA streams.

- One execution *slot* per worker stream (:class:`StreamSlots`): each slot has its own
  execution context and device buffers and is made the first time a stream calls (at most
  ``contexts``; the first is made at load, so an engine that cannot get a context fails
  there). A pipeline worker runs on its own stream (:func:`rtseg.device.on_worker_stream`),
  so its slot enqueues the copy in, ``execute_async_v3`` and the copies out directly on that
  stream: no waiting between streams, and workers run concurrently on the GPU.
- A caller on the default stream, or beyond ``contexts`` streams, gets a slot with a stream
  of its own (shared, in turn, between callers past the limit; a slot's lock serialises its
  users). Ordering then: the slot's stream first waits for the caller's current stream (the
  stream that produced the input), the caller's stream then waits for the slot's, and the
  outputs are recorded on the caller's stream for the allocator. Outputs are fresh tensors
  either way (the slot's buffers are reused by the next call).
- ``half=True`` (``rtseg run --half``) checks that the engine computes in float16 (built
  with ``--precision fp16`` or from a float16 graph) and refuses an fp32 one; the engine's
  input and output dtypes are its own, the copies convert (outputs to float32 for
  post-processing).
- Shapes: each call sets the input shape within the engine's optimisation profile (a
  dynamic-batch engine takes batch 1 as well as its opt); buffers are allocated once at the
  profile's max and viewed at the call's shape (:func:`buffer_view`).
- ``cuda_graph=True``: datacenter TensorRT captures ``execute_async_v3`` into a torch CUDA
  graph per input shape (after one plain run) and replays it; TensorRT-RTX captures whole
  graphs itself (``IRuntimeConfig.cuda_graph_strategy``).
- TensorRT-RTX: the JIT-compiled kernels are kept in a runtime cache beside the engine
  (``<engine>.runtime-cache``), read at start and written by :meth:`TensorRTBackend.close`.

Written against both flavours' APIs (names listed in :mod:`rtseg.export.engine`); the
builder runs in the default tests, this execution path needs a GPU (``-m tensorrt``,
``tools/gpu_check.py``) and has not run on one yet.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, Hashable, Iterator

import torch

from rtseg.errors import EngineError
from rtseg.export.engine import (MachineFacts, check_engine_manifest, rebuild_command, rtx_engine_validity,
                                 shape_in_profile, trt_logger)
from rtseg.export.trt_flavour import get_flavour


def buffer_view(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The first ``prod(shape)`` elements of a flat buffer allocated at the profile's max, as a
    contiguous tensor of ``shape`` (its address is the buffer's: what TensorRT binds)."""
    n = 1
    for s in shape:
        n *= int(s)
    assert n <= buffer.numel(), f"shape {list(shape)} exceeds its buffer ({buffer.numel()} elements)"
    return buffer.view(-1)[:n].view(tuple(int(s) for s in shape))


class StreamSlots:
    """At most ``size`` slots made by ``factory(index)``, one per caller key (a CUDA stream's
    handle), made the first time that key asks.

    :meth:`acquire` yields the key's slot under the slot's lock, so one slot serves one call
    at a time. A key that arrives when ``size`` slots exist shares one of them (in turn); a
    slot made by :meth:`prepare` (at load) goes to the first key that asks. ``owner`` of a slot
    is the first key it was given to (the stream it enqueues on directly)."""

    def __init__(self, factory: Callable[[int], Any], size: int) -> None:
        if size < 1:
            raise EngineError(f"a TensorRT backend needs at least 1 execution context, got {size}")
        self.factory = factory
        self.size = size
        self.slots: list[Any] = []
        self._by_key: dict[Hashable, Any] = {}
        self._unowned: list[Any] = []
        self._turn = 0
        self._lock = threading.Lock()

    def prepare(self) -> Any:
        """Make one slot now (errors at load, not at the first frame); the first key gets it."""
        with self._lock:
            slot = self._new()
            self._unowned.append(slot)
            return slot

    def _new(self) -> Any:
        slot = self.factory(len(self.slots))
        slot.lock = threading.Lock()
        slot.owner = None
        self.slots.append(slot)
        return slot

    def slot_for(self, key: Hashable) -> Any:
        with self._lock:
            slot = self._by_key.get(key)
            if slot is None:
                if self._unowned:
                    slot = self._unowned.pop(0)
                elif len(self.slots) < self.size:
                    slot = self._new()
                else:  # more streams than contexts: share, in turn
                    slot = self.slots[self._turn % len(self.slots)]
                    self._turn += 1
                if slot.owner is None:
                    slot.owner = key
                self._by_key[key] = slot
            return slot

    @contextlib.contextmanager
    def acquire(self, key: Hashable) -> Iterator[Any]:
        slot = self.slot_for(key)
        with slot.lock:
            yield slot


def engine_computes_in_half(precision: str | None) -> bool:
    """Whether an engine manifest's ``precision`` is float16 arithmetic: ``fp16`` or ``int8``
    (built with those flags; int8 falls back to fp16) or a strongly typed float16 graph."""
    return precision in ("fp16", "int8", "onnx-float16")


class _Slot:
    """One execution context with its stream, buffers, bound shape and CUDA graphs."""

    def __init__(self) -> None:
        self.context = None
        self.runtime_config = None
        self.stream: torch.cuda.Stream | None = None
        self.buffers: dict[str, torch.Tensor] = {}  # flat, sized for the profile's max
        self.views: dict[str, torch.Tensor] = {}  # the buffers at the bound shape
        self.shape: tuple[int, ...] | None = None
        self.graphs: dict[tuple[int, ...], torch.cuda.CUDAGraph] = {}
        self.host_input: torch.Tensor | None = None
        self.private: torch.cuda.Stream | None = None  # for callers that share this slot (not its owner)
        self.last_event: torch.cuda.Event | None = None  # after its last use, where it was used from two streams
        self.last_stream: torch.cuda.Stream | None = None
        self.lock = None  # set by StreamSlots: one call at a time
        self.owner = None  # set by StreamSlots: the stream handle the slot enqueues on directly


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: str, *, model: str, device: torch.device, cuda_graph: bool = False,
                 contexts: int = 4, half: bool = False) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise EngineError("--backend tensorrt runs on a GPU: pass --device cuda")
        if not os.path.isfile(path):
            raise EngineError(f"engine file '{path}' not found")
        from rtseg.export.onnx_export import read_manifest

        flavour = get_flavour(read_manifest(path).get("flavour", "tensorrt"))
        trt = flavour.import_module()
        machine = MachineFacts.here(flavour, device, need_gpu=True)  # the GPU this backend runs on, not device 0
        manifest = check_engine_manifest(path, machine)
        if manifest["model"] != model:
            raise EngineError(f"engine '{path}' was built for model '{manifest['model']}', not '{model}'")
        if half and not engine_computes_in_half(manifest.get("precision")):
            raise EngineError(f"--half needs an engine that computes in float16, '{path}' has precision "
                              f"'{manifest.get('precision')}': rtseg export --model {model} --half, then build it "
                              "(rtseg build-engine --strongly-typed, or --precision fp16)")
        with open(path, "rb") as f:
            blob = f.read()
        if flavour.builds_without_gpu:  # TensorRT-RTX's own verdict for this GPU, before deserializing
            validity, why = rtx_engine_validity(blob)
            if validity == "INVALID":
                raise EngineError(f"TensorRT-RTX cannot run '{path}' on {machine.gpu} (compute capability "
                                  f"{machine.compute_capability}): {', '.join(why) or 'no reason given'}; "
                                  f"rebuild it: {rebuild_command(manifest, machine)}")
        self.trt = trt
        self.flavour = flavour
        self.device = device
        self.manifest = manifest
        self.cuda_graph = cuda_graph
        self.profile = manifest["input"]["profile"]
        self.input_shape = tuple(manifest["input"]["shape"])  # the profile's opt shape
        self.logger = trt_logger(trt)
        with torch.cuda.device(device):
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(blob)
            if self.engine is None:
                raise EngineError(f"{flavour.name} could not deserialize '{path}'; rebuild it: "
                                  f"{rebuild_command(manifest, machine)}")
            self.inputs: list[str] = []
            self.outputs: list[str] = []
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                (self.inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(name)
            if len(self.inputs) != 1:
                raise EngineError(f"engine '{path}' has {len(self.inputs)} inputs; rtseg engines take one (the images)")
            self.runtime_cache_path = os.path.splitext(path)[0] + ".runtime-cache"
            self.runtime_cache = None
            self.pool = StreamSlots(self._make_slot, contexts)
            self.pool.prepare()

    # -- slots ---------------------------------------------------------------------------------------
    def _make_slot(self, index: int) -> _Slot:
        trt, slot = self.trt, _Slot()
        if self.flavour.has_runtime_cache:
            runtime_config = self.engine.create_runtime_config()
            if self.runtime_cache is None:  # one cache for every context: kernels compiled once
                self.runtime_cache = runtime_config.create_runtime_cache()
                if os.path.isfile(self.runtime_cache_path):
                    with open(self.runtime_cache_path, "rb") as f:
                        self.runtime_cache.deserialize(f.read())
            runtime_config.set_runtime_cache(self.runtime_cache)
            if self.cuda_graph:
                runtime_config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            slot.runtime_config = runtime_config
            slot.context = self.engine.create_execution_context(runtime_config)
        else:
            slot.context = self.engine.create_execution_context()
        if slot.context is None:
            raise EngineError(f"{self.flavour.name} could not create execution context {index} (GPU memory?)")
        slot.stream = None  # the owner's stream, set at its first call (see __call__)
        name = self.inputs[0]
        # buffers at the profile's max shape, viewed at each call's shape
        slot.context.set_input_shape(name, tuple(self.profile["max"]))
        for io in self.inputs + self.outputs:
            dims = tuple(slot.context.get_tensor_shape(io))
            if any(d < 0 for d in dims):
                raise EngineError(f"engine output '{io}' has a data-dependent shape {list(dims)}; rtseg engines have none")
            dtype = _torch_dtype(trt.nptype(self.engine.get_tensor_dtype(io)))
            numel = 1
            for d in dims:
                numel *= d
            slot.buffers[io] = torch.empty(numel, dtype=dtype, device=self.device)
        slot.host_input = torch.empty(slot.buffers[name].numel(), dtype=slot.buffers[name].dtype).pin_memory()
        return slot

    def _bind(self, slot: _Slot, shape: tuple[int, ...]) -> None:
        """Set the input shape (within the profile) and bind every buffer at the resulting shapes."""
        if slot.shape == shape:
            return
        name = self.inputs[0]
        if not slot.context.set_input_shape(name, shape):
            raise EngineError(f"TensorRT refused input shape {list(shape)} (profile {self.profile})")
        for io in self.inputs + self.outputs:
            view = buffer_view(slot.buffers[io], tuple(slot.context.get_tensor_shape(io)))
            slot.views[io] = view
            slot.context.set_tensor_address(io, int(view.data_ptr()))
        slot.shape = shape

    def _enqueue(self, slot: _Slot, stream: torch.cuda.Stream) -> None:
        if not slot.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _run(self, slot: _Slot, shape: tuple[int, ...], stream: torch.cuda.Stream) -> None:
        """Inference on ``stream`` (the slot's owner's, or its private one): plain, or a CUDA
        graph replay (datacenter TensorRT). Only the thread holding the slot enqueues on that
        stream while a graph is captured: the owner's worker (it is in this call) or, for a
        shared slot, its private stream."""
        if not self.cuda_graph or self.flavour.has_runtime_cache:  # RTX captures graphs itself
            self._enqueue(slot, stream)
            return
        graph = slot.graphs.get(shape)
        if graph is None:
            self._enqueue(slot, stream)  # one plain run first: TensorRT allocates lazily
            # once per shape, not per frame: the capture must not start while that run is in flight
            # (torch.cuda.graph's entry also synchronises the device once, torch/cuda/graphs.py)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: another worker's CUDA calls during this capture are not an error
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                self._enqueue(slot, stream)
            slot.graphs[shape] = graph
        graph.replay()  # on the current stream: `stream` (see __call__)

    # -- the backend interface -----------------------------------------------------------------------
    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        shape = tuple(int(s) for s in batch.shape)
        why = shape_in_profile(shape, self.profile)
        if why is not None:
            raise EngineError(why)
        producer = torch.cuda.current_stream(self.device)
        key = producer.cuda_stream
        with self.pool.acquire(key) as slot:
            if slot.stream is None:
                # the worker's own stream: enqueue on it directly. The default stream cannot be
                # captured into a CUDA graph and is shared by everyone: a stream of the slot's own.
                own = producer if producer != torch.cuda.default_stream(self.device) else None
                slot.stream = own if own is not None else torch.cuda.Stream(self.device)
            if key == slot.owner:
                stream = slot.stream
            else:  # sharing another stream's slot (more streams than contexts): never enqueue on its stream
                if slot.private is None:
                    slot.private = torch.cuda.Stream(self.device)
                    slot.private.wait_stream(slot.stream)  # the owner's calls queued so far are done first
                stream = slot.private
            if slot.last_event is not None and slot.last_stream != stream:
                stream.wait_event(slot.last_event)  # the slot's buffers are free: its last use (elsewhere) is done
            direct = stream == producer  # the worker's stream: no ordering between streams needed
            if not direct:
                stream.wait_stream(producer)  # the input is complete before the copy reads it
            with torch.cuda.device(self.device), torch.cuda.stream(stream):
                self._bind(slot, shape)
                dst = slot.views[self.inputs[0]]
                if batch.device.type == "cpu":
                    host = buffer_view(slot.host_input, shape)
                    # a host input (not the segmenter's path: it uploads first): the previous
                    # call's copy out of this pinned buffer must be done before it is refilled
                    stream.synchronize()
                    host.copy_(batch)
                    dst.copy_(host, non_blocking=True)
                else:
                    if not direct:
                        batch.record_stream(stream)  # the allocator keeps the input alive until the copy ran
                    dst.copy_(batch, non_blocking=True)
                self._run(slot, shape, stream)
                # copies: the buffers serve the next call; made on the slot's stream, used on the caller's
                # (float32 whatever the engine computed in: post-processing runs in float32)
                outputs = {io: slot.views[io].float() if slot.views[io].dtype == torch.float16 else slot.views[io].clone()
                           for io in self.outputs}
                if slot.private is not None:  # only a slot used from two streams needs to know where it was last
                    slot.last_event = torch.cuda.Event()
                    slot.last_event.record(stream)
                    slot.last_stream = stream
            if not direct:
                producer.wait_stream(stream)
                for out in outputs.values():
                    out.record_stream(producer)
        return outputs

    def close(self) -> None:
        """Keep TensorRT-RTX's JIT-compiled kernels for the next start (the runtime cache)."""
        if self.runtime_cache is not None:
            blob = self.runtime_cache.serialize()
            with open(self.runtime_cache_path + ".tmp", "wb") as f:
                f.write(bytes(blob))
            os.replace(self.runtime_cache_path + ".tmp", self.runtime_cache_path)


def _torch_dtype(np_dtype) -> torch.dtype:
    import numpy as np

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
            np.dtype(np.int8): torch.int8, np.dtype(np.bool_): torch.bool}[np.dtype(np_dtype)]
