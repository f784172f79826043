"""Backends: given a preprocessed batch, return the network's named head outputs.

One interface for every runtime, so the pipeline, the benchmarks and the evaluation do not
care which one runs:

    backend(batch: float32[B, 3, H, W] torch tensor) -> {"name": torch tensor, ...}

- ``torch``: the PyTorch module itself (:class:`TorchBackend`).
- ``onnxruntime``: an exported ONNX graph under ONNX Runtime
  (:class:`rtseg.backends.onnxruntime_backend.OnnxRuntimeBackend`): CPU provider here,
  CUDA / TensorRT providers picked up where installed.
- ``tensorrt``: a TensorRT engine (:class:`rtseg.backends.tensorrt_backend.TensorRTBackend`).

Outputs come back as torch tensors on the device post-processing runs on.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

BACKENDS = ("torch", "onnxruntime", "tensorrt")


class Backend(Protocol):
    name: str

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...


class TorchBackend:
    """The network as it is (eval mode, no autograd)."""

    name = "torch"

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(batch)
