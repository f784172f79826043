"""ONNX Runtime backend: an ``rtseg export`` graph run by ``onnxruntime``.

Providers (:func:`choose_providers`): the CPU provider always; on a CUDA device first, where
installed, the TensorRT-RTX plugin EP (``onnxruntime-ep-nv-tensorrt-rtx``, registered with
``register_execution_provider_library`` and added per device), then the built-in
``NvTensorRTRTXExecutionProvider`` / ``TensorrtExecutionProvider`` / ``CUDAExecutionProvider``.
On a GPU provider the input and outputs stay on the device: IO binding to torch CUDA tensors
(no round trip through host memory). This GPU path has not run (no GPU where rtseg is
developed); the provider choice is tested on the CPU.
Intra-op threads follow torch's setting (``rtseg.segmenter.configure_threads``), so the
pipeline's worker split applies to both backends.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from rtseg.errors import EngineError
from rtseg.export.onnx_export import read_manifest

#: the TensorRT-RTX plugin EP's Python package (``pip install onnxruntime-ep-nv-tensorrt-rtx``)
RTX_EP_MODULE = "onnxruntime_ep_nv_tensorrt_rtx"
#: built-in GPU providers, best first
GPU_PROVIDERS = ("NvTensorRTRTXExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(device_type: str, available: list[str], rtx_plugin: bool) -> tuple[bool, list[str]]:
    """``(use the TensorRT-RTX plugin EP, built-in providers in order)`` for a session whose
    outputs go to ``device_type``: GPU providers only for a CUDA device, the CPU provider last."""
    if device_type != "cuda":
        return False, ["CPUExecutionProvider"]
    return rtx_plugin, [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def _register_rtx_plugin(ort) -> list:
    """Register the TensorRT-RTX plugin EP library once; its devices (empty when none is usable)."""
    import importlib

    ep = importlib.import_module(RTX_EP_MODULE)
    name = ep.get_ep_name()
    try:
        ort.register_execution_provider_library(name, ep.get_library_path())
    except Exception as exc:  # registered already in this process: fine; anything else: no plugin
        if "already" not in str(exc).lower():
            return []
    return [d for d in ort.get_ep_devices() if d.ep_name == name]


def _session(ort, path: str, device: torch.device, threads: int | None):
    """``(InferenceSession, provider names)`` for ``path``, preferring GPU providers for a CUDA ``device``."""
    import importlib.util

    plugin_installed = importlib.util.find_spec(RTX_EP_MODULE) is not None
    use_plugin, wanted = choose_providers(device.type, ort.get_available_providers(), plugin_installed)
    opts = ort.SessionOptions()
    plugin_devices = _register_rtx_plugin(ort) if use_plugin else []
    if plugin_devices:
        opts.add_provider_for_devices(plugin_devices, {})
    providers = (["TensorRT-RTX plugin EP"] if plugin_devices else []) + wanted
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads spin-wait after each run by default; that spinning takes the cores
    # from the torch post-processing that follows (measured: whole frame 0.92x of torch's
    # speed with spinning, see BENCHMARKS.md), so they sleep instead
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = (ort.InferenceSession(path, sess_options=opts) if plugin_devices
                   else ort.InferenceSession(path, sess_options=opts, providers=wanted))
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"ONNX Runtime cannot load '{path}': {first[:300]}") from None
    return session, providers



def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or one :class:`EngineError` naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise EngineError("--backend onnxruntime needs ONNX Runtime: pip install 'rtseg[onnx]'") from None
    return onnxruntime

class OnnxRuntimeBackend:
    """``backend(batch) -> {name: tensor}`` over an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file (with its manifest beside it).
        model: the model the segmenter runs; the manifest must name the same.
        device: where outputs are returned (and which providers are preferred).
    """

    name = "onnxruntime"

    def __init__(self, path: str, *, model: str, device: torch.device, threads: int | None = None) -> None:
        ort = import_onnxruntime()
        if not os.path.isfile(path):
            raise EngineError(f"ONNX file '{path}' not found")
        manifest = read_manifest(path)
        if manifest["model"] != model:
            raise EngineError(f"'{path}' was exported from model '{manifest['model']}', not '{model}'; "
                              f"export it with: rtseg export --model {model} --format onnx")
        self.manifest = manifest
        self.device = device
        self.session, self.providers = _session(ort, path, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape  # ints, or a string for a dynamic batch
        self.output_names = [o.name for o in self.session.get_outputs()]
        # IO binding where a GPU provider runs the graph (the session's first provider is not the CPU's)
        self.io_binding = device.type == "cuda" and self.session.get_providers()[0] != "CPUExecutionProvider"

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        expected = self.input_shape
        found = list(batch.shape)
        if len(found) != len(expected) or any(isinstance(e, int) and e != f for e, f in zip(expected, found)):
            raise EngineError(f"ONNX graph takes input {expected}, got {found}")
        dtype = torch.float16 if self.manifest["input"].get("dtype") == "float16" else torch.float32
        if self.io_binding:
            return self._run_on_device(batch.to(self.device, dtype).contiguous(), dtype)
        x = np.ascontiguousarray(batch.detach().to("cpu", dtype).numpy())
        outs = self.session.run(self.output_names, {self.input_name: x})
        # post-processing runs in float32 whatever precision the graph computed in
        return {n: torch.from_numpy(o).to(self.device, torch.float32) for n, o in zip(self.output_names, outs)}

    def _run_on_device(self, x: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """One run with the input and outputs bound to torch CUDA tensors (no host copies)."""
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        np_dtype = np.float16 if dtype == torch.float16 else np.float32
        outputs = {}
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", index, np_dtype, tuple(x.shape), x.data_ptr())
        allocated_by_ort = []
        for o in self.manifest["outputs"]:
            if all(isinstance(d, int) for d in o["shape"][1:]):  # known but for a symbolic batch: bind a torch tensor
                shape = [x.shape[0] if not isinstance(d, int) else d for d in o["shape"]]
                outputs[o["name"]] = torch.empty(shape, dtype=dtype, device=self.device)
                binding.bind_output(o["name"], "cuda", index, np_dtype, tuple(shape), outputs[o["name"]].data_ptr())
            else:  # symbolic height / width: ONNX Runtime sizes it on the device
                binding.bind_output(o["name"], "cuda", index)
                allocated_by_ort.append(o["name"])
        torch.cuda.current_stream(self.device).synchronize()  # ONNX Runtime runs on its own stream
        self.session.run_with_iobinding(binding)
        if allocated_by_ort:
            values = dict(zip(self.output_names, binding.get_outputs()))
            for name in allocated_by_ort:  # DLPack where this build has it (no copy), else through the host
                v = values[name]
                outputs[name] = (torch.from_dlpack(v.to_dlpack()) if hasattr(v, "to_dlpack")
                                 else torch.from_numpy(v.numpy()).to(self.device))
        return {n: outputs[n].float() for n in self.output_names}


class OnnxRuntimeStage2:
    """A family's second stage (``<stem>.stage2.onnx`` of ``rtseg export``) as the
    :data:`rtseg.families.base.Stage2` callable post-processing takes:
    ``stage2({name: tensor}) -> {name: tensor}``, outputs on ``device`` in float32.

    Inputs go through host memory (``K`` RoIs / detections per frame: small tensors); the IO
    binding of the stage-1 backend is not used here.
    """

    name = "onnxruntime"

    def __init__(self, path: str, *, model: str, device: torch.device, threads: int | None = None) -> None:
        ort = import_onnxruntime()
        from rtseg.export.onnx_export import STAGE2_SCHEMA

        if not os.path.isfile(path):
            raise EngineError(f"stage-2 ONNX file '{path}' not found: export the model with 'rtseg export "
                              f"--model {model} --format onnx' (it writes the stage-2 graph beside the stage-1 one)")
        manifest = read_manifest(path)
        if manifest.get("schema") != STAGE2_SCHEMA:
            raise EngineError(f"'{path}' is not a stage-2 graph (manifest schema {manifest.get('schema')!r}, "
                              f"expected {STAGE2_SCHEMA!r})")
        if manifest["model"] != model:
            raise EngineError(f"'{path}' was exported from model '{manifest['model']}', not '{model}'; "
                              f"export it with: rtseg export --model {model} --format onnx")
        self.manifest = manifest
        self.device = device
        self.session, self.providers = _session(ort, path, device, threads)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise EngineError(f"stage 2 takes inputs {list(self.input_names)}, got {sorted(inputs)}")
        feed = {n: np.ascontiguousarray(inputs[n].detach().cpu().numpy()) for n in self.input_names}
        outs = self.session.run(list(self.output_names), feed)
        return {n: torch.from_numpy(o).to(self.device, torch.float32) for n, o in zip(self.output_names, outs)}
