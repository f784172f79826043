"""ONNX Runtime backend: an ``rtseg export`` graph run by ``onnxruntime``.

Providers: the CPU provider always; ``CUDAExecutionProvider`` / ``TensorrtExecutionProvider``
first when the installed onnxruntime has them and the segmenter runs on a CUDA device.
Intra-op threads follow torch's setting (``rtseg.segmenter.configure_threads``), so the
pipeline's worker split applies to both backends.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from rtseg.errors import EngineError
from rtseg.export.onnx_export import read_manifest


class OnnxRuntimeBackend:
    """``backend(batch) -> {name: tensor}`` over an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file (with its manifest beside it).
        model: the model the segmenter runs; the manifest must name the same.
        device: where outputs are returned (and which providers are preferred).
    """

    name = "onnxruntime"

    def __init__(self, path: str, *, model: str, device: torch.device, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError("--backend onnxruntime needs ONNX Runtime: pip install 'rtseg[onnx]'") from None
        if not os.path.isfile(path):
            raise EngineError(f"ONNX file '{path}' not found")
        manifest = read_manifest(path)
        if manifest["model"] != model:
            raise EngineError(f"'{path}' was exported from model '{manifest['model']}', not '{model}'; "
                              f"export it with: rtseg export --model {model} --format onnx")
        self.manifest = manifest
        self.device = device
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if device.type == "cuda":
            wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + wanted
        self.providers = wanted
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's pool threads spin-wait after each run by default; that spinning takes the cores
        # from the torch post-processing that follows (measured: whole frame 0.92x of torch's
        # speed with spinning, see BENCHMARKS.md), so they sleep instead
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EngineError(f"ONNX Runtime cannot load '{path}': {first[:300]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape  # ints, or a string for a dynamic batch
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        expected = self.input_shape
        found = list(batch.shape)
        if len(found) != len(expected) or any(isinstance(e, int) and e != f for e, f in zip(expected, found)):
            raise EngineError(f"ONNX graph takes input {expected}, got {found}")
        dtype = torch.float16 if self.manifest["input"].get("dtype") == "float16" else torch.float32
        x = np.ascontiguousarray(batch.detach().to("cpu", dtype).numpy())
        outs = self.session.run(self.output_names, {self.input_name: x})
        # post-processing runs in float32 whatever precision the graph computed in
        return {n: torch.from_numpy(o).to(self.device, torch.float32) for n, o in zip(self.output_names, outs)}
