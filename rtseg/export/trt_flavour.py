"""The two TensorRT flavours rtseg builds and runs engines with, and every API difference
between them, in one place.

- ``tensorrt``: datacenter TensorRT 10 (``import tensorrt``; extra ``rtseg[tensorrt]``). It
  builds on the GPU it serves: an engine is bound to that GPU's name and compute capability.
  Weakly typed networks with builder precision flags (FP16 / INT8, implicit INT8 entropy
  calibration) or strongly typed ones.
- ``tensorrt-rtx``: TensorRT for RTX 1.7 (``import tensorrt_rtx_bindings``; extra
  ``rtseg[tensorrt-rtx]``, installable anywhere). It builds **without a GPU** (ahead of time,
  for a list of compute-capability targets; kernels are JIT-specialised on the device, kept
  in a *runtime cache*). Networks are always strongly typed: precision comes from the ONNX
  (``rtseg export --half`` for float16); there are no precision flags and no implicit INT8
  calibration (INT8 needs an ONNX with Q/DQ nodes). Its engines run on the targets' GPUs
  only: the published matrix is compute capability 7.5 / 8.0 / 8.6 / 8.9 / 12.0 / 12.1, so
  not 9.0 (H100 / H200) nor 10.x.

Facts read from the installed ``tensorrt_rtx_bindings`` 1.7.1.116 (``dir()`` of its module and
classes): ``ComputeCapability`` = NONE, CURRENT, SM75, SM80, SM86, SM89, SM120, SM121;
``IBuilderConfig.num_compute_capabilities`` / ``set_compute_capability``;
``ICudaEngine.create_runtime_config`` -> ``IRuntimeConfig`` (``create_runtime_cache``,
``set_runtime_cache``, ``cuda_graph_strategy``); ``BuilderFlag`` has no FP16 / INT8; a network
made with flags 0 reports ``STRONGLY_TYPED``; ``Runtime.get_engine_validity``.

The flavour is what ``--trt-flavour`` / ``$RTSEG_TRT_FLAVOUR`` names, else chosen by
:func:`resolve_flavour` from what is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

from rtseg.errors import ConfigError, EngineError

FLAVOURS = ("tensorrt", "tensorrt-rtx")
#: compute capabilities TensorRT-RTX 1.7 can target (its ``ComputeCapability`` enum)
RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
#: what an RTX engine targets unless told (the builder's documented default set)
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")


@dataclass(frozen=True)
class Flavour:
    """One TensorRT flavour: how to import it and what its builder can do."""

    name: str  #: "tensorrt" or "tensorrt-rtx"
    module: str  #: the Python module
    extra: str  #: the pip extra that installs it
    strongly_typed_only: bool  #: no builder precision flags (precision comes from the ONNX)
    implicit_int8: bool  #: INT8 by entropy calibration (builder flag + calibrator)
    builds_without_gpu: bool  #: ahead-of-time builds for compute-capability targets
    has_runtime_cache: bool  #: JIT-compiled kernels cached across runs (IRuntimeConfig)

    def installed(self) -> bool:
        """Whether the real library (not a stub-only package) is importable."""
        if importlib.util.find_spec(self.module) is None:
            return False
        try:
            trt = importlib.import_module(self.module)
        except (ImportError, OSError):
            return False
        return getattr(trt, "__file__", None) is not None and hasattr(trt, "Builder")

    def import_module(self) -> ModuleType:
        """The library, or :class:`EngineError` naming the extra that installs it."""
        if not self.installed():
            where = "on a machine with an NVIDIA GPU " if not self.builds_without_gpu else ""
            raise EngineError(f"{self.name} is not installed: pip install 'rtseg[{self.extra}]' {where}"
                              "(or use --backend onnxruntime / torch)")
        return importlib.import_module(self.module)

    def version(self, trt: ModuleType) -> str:
        """The version string an engine manifest records, flavour included
        (``tensorrt 10.13.0.35``, ``tensorrt-rtx 1.7.1.116``)."""
        return f"{self.name} {trt.__version__}"

    def create_network(self, trt: ModuleType, builder, strongly_typed: bool):
        """A network definition: RTX networks are always strongly typed (flags 0 already are)."""
        if self.strongly_typed_only or not strongly_typed:
            return builder.create_network(0)
        return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))

    def set_precision_flags(self, trt: ModuleType, config, precision: str) -> None:
        """Builder precision flags of a weakly typed network (datacenter TensorRT only)."""
        assert not self.strongly_typed_only, "RTX networks are strongly typed"
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)

    def set_targets(self, trt: ModuleType, config, targets: tuple[str, ...]) -> None:
        """The compute capabilities an RTX engine is built for (no-op for datacenter TensorRT,
        which builds for the GPU it runs on)."""
        if not self.builds_without_gpu:
            return
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)


TENSORRT = Flavour("tensorrt", "tensorrt", "tensorrt", strongly_typed_only=False, implicit_int8=True,
                   builds_without_gpu=False, has_runtime_cache=False)
TENSORRT_RTX = Flavour("tensorrt-rtx", "tensorrt_rtx_bindings", "tensorrt-rtx", strongly_typed_only=True,
                       implicit_int8=False, builds_without_gpu=True, has_runtime_cache=True)
_BY_NAME = {f.name: f for f in (TENSORRT, TENSORRT_RTX)}


def get_flavour(name: str) -> Flavour:
    """The flavour called ``name`` (``tensorrt`` / ``tensorrt-rtx``), or :class:`ConfigError`."""
    if name not in _BY_NAME:
        raise ConfigError(f"--trt-flavour must be one of {', '.join(FLAVOURS)}, got '{name}'")
    return _BY_NAME[name]


def choose_flavour(requested: str | None, installed: dict[str, bool], gpu_visible: bool) -> str:
    """Which flavour to use: ``requested`` if given; else datacenter TensorRT where it is
    installed and a GPU is visible (it builds for that GPU), else TensorRT-RTX where installed
    (it builds anywhere), else datacenter TensorRT (whose import then says what to install)."""
    if requested is not None:
        return get_flavour(requested).name
    if installed.get("tensorrt") and gpu_visible:
        return "tensorrt"
    if installed.get("tensorrt-rtx"):
        return "tensorrt-rtx"
    return "tensorrt"


def resolve_flavour(requested: str | None = None) -> Flavour:
    """The flavour for ``requested`` (a ``--trt-flavour`` value), ``$RTSEG_TRT_FLAVOUR``, or
    what is installed (:func:`choose_flavour`)."""
    requested = requested or os.environ.get("RTSEG_TRT_FLAVOUR") or None
    if requested is not None:
        return get_flavour(requested)
    installed = {f.name: f.installed() for f in (TENSORRT, TENSORRT_RTX)}
    gpu = False
    if installed["tensorrt"]:
        import torch

        gpu = torch.cuda.is_available()
    return get_flavour(choose_flavour(None, installed, gpu))


def parse_targets(text: str | None) -> tuple[str, ...]:
    """``--gpu-targets 8.6,12.0`` -> ``("8.6", "12.0")`` (TensorRT-RTX targets), checked."""
    if text is None:
        return RTX_DEFAULT_TARGETS
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in targets if t not in RTX_TARGETS]
    if not targets or bad:
        raise ConfigError(f"--gpu-targets takes compute capabilities from {', '.join(RTX_TARGETS)} "
                          f"(TensorRT-RTX 1.7's targets), got '{text}'")
    return targets
