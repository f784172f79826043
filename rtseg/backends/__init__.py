"""Backends: given a preprocessed batch, return the network's named head outputs.

One interface for every runtime, so the pipeline, the benchmarks and the evaluation do not
care which one runs:

    backend(batch: float32[B, 3, H, W] torch tensor) -> {"name": torch tensor, ...}

- ``torch``: the PyTorch module itself (:class:`TorchBackend`).
- ``onnxruntime``: an exported ONNX graph under ONNX Runtime
  (:class:`rtseg.backends.onnxruntime_backend.OnnxRuntimeBackend`): CPU provider here,
  CUDA / TensorRT providers picked up where installed.
- ``tensorrt``: a TensorRT engine (:class:`rtseg.backends.tensorrt_backend.TensorRTBackend`).
- ``triton://HOST:PORT/MODEL``: a model on a Triton Inference Server
  (:class:`rtseg.backends.triton_backend.TritonBackend`). A remote backend may give up on
  a batch (timeout, server restarting) by raising :class:`FrameDropped`: the pipeline
  counts the frame as dropped (``Summary.dropped_backend``) and goes on with the next.

Outputs come back as torch tensors on the device post-processing runs on.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from rtseg.errors import FrameDropped  # noqa: F401 - part of the backend interface

BACKENDS = ("torch", "onnxruntime", "tensorrt")
#: prefix of the remote backend's URL form (``triton://HOST:PORT/MODEL``)
TRITON_SCHEME = "triton://"


class Backend(Protocol):
    name: str

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...


class TorchBackend:
    """The network as it is (eval mode, no autograd); ``half=True`` (CUDA only): under
    ``torch.autocast(float16)``, outputs cast back to float32 for post-processing."""

    name = "torch"

    def __init__(self, net: nn.Module, *, half: bool = False) -> None:
        self.net = net.eval()
        self.half = half

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.half:
            return self.net(batch)
        with torch.autocast(device_type=batch.device.type, dtype=torch.float16):
            out = self.net(batch)
        return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
