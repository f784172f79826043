"""TensorRT backend: an engine from ``rtseg export --format engine`` run on one CUDA stream.

- Device buffers for every I/O tensor are allocated once (torch CUDA tensors: their
  addresses go to ``set_tensor_address``); a pinned host buffer takes the input when it
  arrives from the CPU.
- Copy in, ``execute_async_v3`` and post-processing run on the same stream; outputs stay
  on the GPU (as torch tensors) for the post-processing (torch ops or the CUDA kernels).
- ``cuda_graph=True`` captures copy-in + inference once (fixed shapes) and replays it.

Written against the TensorRT 10 API (names listed in :data:`rtseg.export.engine.TRT_API`);
not run on the machines rtseg is developed on (no TensorRT there).
"""

from __future__ import annotations

import os

import torch

from rtseg.errors import EngineError
from rtseg.export.engine import MachineFacts, check_engine_manifest, import_tensorrt


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: str, *, model: str, device: torch.device, cuda_graph: bool = False) -> None:
        trt = import_tensorrt()
        if device.type != "cuda":
            raise EngineError("--backend tensorrt runs on a GPU: pass --device cuda")
        if not os.path.isfile(path):
            raise EngineError(f"engine file '{path}' not found")
        manifest = check_engine_manifest(path, MachineFacts.here())
        if manifest["model"] != model:
            raise EngineError(f"engine '{path}' was built for model '{manifest['model']}', not '{model}'")
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize '{path}'; rebuild it: {manifest.get('rebuild', 'rtseg build-engine')}")
        self.context = self.engine.create_execution_context()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.buffers: dict[str, torch.Tensor] = {}
        shape = tuple(manifest["input"]["shape"])
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                self.context.set_input_shape(name, shape)
            else:
                self.outputs.append(name)
        for name in self.inputs + self.outputs:
            dims = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.buffers[name] = torch.empty(dims, dtype=dtype, device=device)
            self.context.set_tensor_address(name, int(self.buffers[name].data_ptr()))
        self.input_shape = shape
        self.host_input = torch.empty(shape, dtype=self.buffers[self.inputs[0]].dtype).pin_memory()
        self.graph: torch.cuda.CUDAGraph | None = None
        if cuda_graph:
            self._capture()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _capture(self) -> None:
        with torch.cuda.stream(self.stream):
            self._enqueue()  # one plain run first: TensorRT allocates lazily
            self.stream.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                self._enqueue()

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(batch.shape) != self.input_shape:
            raise EngineError(f"engine takes input {list(self.input_shape)}, got {list(batch.shape)}")
        dst = self.buffers[self.inputs[0]]
        with torch.cuda.stream(self.stream):
            if batch.device.type == "cpu":
                self.host_input.copy_(batch)
                dst.copy_(self.host_input, non_blocking=True)
            else:
                dst.copy_(batch, non_blocking=True)
            if self.graph is not None:
                self.graph.replay()
            else:
                self._enqueue()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        # copies: the buffers are reused by the next call, possibly from another pipeline worker
        return {name: self.buffers[name].clone() for name in self.outputs}


def _torch_dtype(np_dtype) -> torch.dtype:
    import numpy as np

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
            np.dtype(np.int8): torch.int8, np.dtype(np.bool_): torch.bool}[np.dtype(np_dtype)]
