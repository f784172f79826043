"""TensorRT engines: built from an ``rtseg export`` ONNX file, cached by what they depend on,
refused on a machine they were not built for.

Two flavours (:mod:`rtseg.export.trt_flavour`, which holds every API difference):

- ``tensorrt-rtx`` (TensorRT for RTX 1.7): builds here, without a GPU, for a list of
  compute-capability targets (``--gpu-targets``, default 8.0, 8.6, 8.9, 12.0). Networks are
  strongly typed: the precision is the ONNX's (``rtseg export --half`` for float16). The
  default tests build real engines with it.
- ``tensorrt`` (TensorRT 10): builds on the GPU it serves. ``fp32`` / ``fp16`` / ``int8`` are
  builder flags on a weakly typed network; ``int8`` calibrates with an entropy calibrator over
  a folder of images or a video (with a calibration profile of fixed shape when the input is
  dynamic), keeping the calibration cache beside the engine. ``strongly_typed=True`` builds a
  strongly typed network instead.

Input shapes: every symbolic dimension of the ONNX input (batch, and height / width once the
export makes them dynamic) gets a (min, opt, max) range in one optimisation profile
(:func:`profile_shapes`); the manifest records the three shapes.

Each engine ``<model>-<key>.engine`` has ``<model>-<key>.json`` beside it: flavour and version,
GPU name and compute capability (datacenter) or compute-capability targets (RTX), precision,
the input profile, the SHA-256 of the ONNX it came from, and the command that rebuilds it.
The key hashes those fields, so a cached engine is reused exactly while they stay the same.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from rtseg.errors import ConfigError, EngineError
from rtseg.export.onnx_export import read_manifest, sha256_file
from rtseg.export.trt_flavour import RTX_DEFAULT_TARGETS, RTX_TARGETS, TENSORRT_RTX, Flavour, resolve_flavour

log = logging.getLogger("rtseg.export")

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SCHEMA = "rtseg.engine/2"

#: TensorRT Python API names this module and the TensorRT backend use in both flavours, by owner
#: (``trt`` = the module). Checked against the TensorRT 10 stubs and the installed TensorRT-RTX.
TRT_API: dict[str, tuple[str, ...]] = {
    "trt": ("Logger", "Builder", "OnnxParser", "Runtime", "MemoryPoolType", "NetworkDefinitionCreationFlag",
            "TensorIOMode", "nptype", "__version__"),
    "Logger": ("WARNING", "INTERNAL_ERROR", "min_severity"),
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network"),
    "INetworkDefinition": ("num_inputs", "get_input"),
    "ITensor": ("name", "shape"),
    "OnnxParser": ("parse", "num_errors", "get_error"),
    "ParserError": ("desc", "func", "node", "node_name", "node_operator"),
    "IBuilderConfig": ("set_flag", "set_memory_pool_limit", "add_optimization_profile", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache"),
    "ITimingCache": ("serialize",),
    "IOptimizationProfile": ("set_shape",),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
    "MemoryPoolType": ("WORKSPACE",),
    "Runtime": ("deserialize_cuda_engine",),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                    "get_tensor_profile_shape", "create_execution_context", "create_runtime_config"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_shape"),
    "TensorIOMode": ("INPUT", "OUTPUT"),
}
#: names only datacenter TensorRT 10 has (precision flags, implicit INT8 calibration)
TRT_API_TENSORRT_ONLY: dict[str, tuple[str, ...]] = {
    "trt": ("BuilderFlag", "IInt8EntropyCalibrator2"),
    "BuilderFlag": ("FP16", "INT8"),
    "IBuilderConfig": ("int8_calibrator", "set_calibration_profile"),
    "IInt8EntropyCalibrator2": ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache"),
}
#: names only TensorRT-RTX has (compute-capability targets, runtime cache, engine validity, CUDA graphs)
TRT_API_RTX_ONLY: dict[str, tuple[str, ...]] = {
    "trt": ("ComputeCapability", "CudaGraphStrategy", "EngineValidity", "EngineInvalidityDiagnostics"),
    "IBuilderConfig": ("num_compute_capabilities", "set_compute_capability"),
    "IRuntimeConfig": ("create_runtime_cache", "set_runtime_cache", "get_runtime_cache", "cuda_graph_strategy"),
    "IRuntimeCache": ("serialize", "deserialize"),
    "Runtime": ("get_engine_validity",),
    "CudaGraphStrategy": ("WHOLE_GRAPH_CAPTURE",),
    "EngineValidity": ("VALID", "SUBOPTIMAL", "INVALID"),
    "EngineInvalidityDiagnostics": ("__members__",),
}

_LOGGERS: dict[Any, Any] = {}


def trt_logger(trt):
    """One logger per TensorRT library (TensorRT warns when a second one is passed)."""
    if trt not in _LOGGERS:
        _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt]


def import_tensorrt(flavour: str | Flavour | None = None):
    """The TensorRT library of ``flavour`` (default: :func:`resolve_flavour`), or
    :class:`EngineError` naming the extra to install."""
    if not isinstance(flavour, Flavour):
        flavour = resolve_flavour(flavour)
    return flavour.import_module()


def cuda_index(device) -> int:
    """The CUDA ordinal of ``device`` (``torch.device`` or string): ``cuda:1`` -> 1; a bare
    ``cuda`` means torch's current device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        raise EngineError(f"TensorRT engines run on a CUDA device, got '{device}'")
    return device.index if device.index is not None else torch.cuda.current_device()


@dataclass(frozen=True)
class MachineFacts:
    """What an engine is bound to, or where one is about to run.

    ``gpu`` / ``compute_capability`` are ``None`` for a TensorRT-RTX build without a GPU.
    """

    tensorrt: str  #: flavour and version, e.g. ``tensorrt-rtx 1.7.1.116``
    gpu: str | None
    compute_capability: str | None
    flavour: str = "tensorrt"

    @classmethod
    def here(cls, flavour: str | Flavour | None = None, device=None, *, need_gpu: bool | None = None) -> "MachineFacts":
        """This machine: the flavour's version and the GPU ``device`` (default the current CUDA
        device). ``need_gpu`` defaults to what the flavour needs to build (datacenter: yes)."""
        if not isinstance(flavour, Flavour):
            flavour = resolve_flavour(flavour)
        trt = flavour.import_module()
        import torch

        need_gpu = (not flavour.builds_without_gpu) if need_gpu is None else need_gpu
        if not torch.cuda.is_available():
            if need_gpu:
                raise EngineError(f"{flavour.name} engines need an NVIDIA GPU to {'run' if flavour.builds_without_gpu else 'build and run'}; "
                                  "none is visible to torch here"
                                  + ("" if flavour.builds_without_gpu else " (--trt-flavour tensorrt-rtx builds without one)"))
            return cls(flavour.version(trt), None, None, flavour.name)
        index = cuda_index(device if device is not None else "cuda")
        major, minor = torch.cuda.get_device_capability(index)
        return cls(flavour.version(trt), torch.cuda.get_device_name(index), f"{major}.{minor}", flavour.name)


Range = tuple[int, int, int]


@dataclass(frozen=True)
class BuildSettings:
    """How to build. ``precision=None`` is the flavour's default: ``fp16`` for TensorRT 10,
    the ONNX's own for TensorRT-RTX (strongly typed)."""

    precision: str | None = None
    batch: Range | None = None  #: (min, opt, max) of a symbolic batch; None: the ONNX's fixed batch, or 1
    height: Range | None = None  #: (min, opt, max) of a symbolic height (issue 16's dynamic exports)
    width: Range | None = None
    strongly_typed: bool = False
    workspace_mib: int = 2048
    flavour: str | None = None  #: tensorrt / tensorrt-rtx; None: resolve_flavour()
    gpu_targets: tuple[str, ...] = field(default=RTX_DEFAULT_TARGETS)  #: TensorRT-RTX compute capabilities

    def check(self, flavour: Flavour | None = None) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        for what, rng in (("batch", self.batch), ("height", self.height), ("width", self.width)):
            if rng is not None:
                lo, opt, hi = rng
                if not 1 <= lo <= opt <= hi:
                    raise ConfigError(f"{what} profile must satisfy 1 <= min <= opt <= max, got {tuple(rng)}")
        if self.strongly_typed and self.precision not in (None, "fp32"):
            raise ConfigError("a strongly typed engine takes its precision from the ONNX file; "
                              "export it with 'rtseg export --half' for float16 instead of passing --precision")
        if self.workspace_mib < 64:
            raise ConfigError(f"workspace must be >= 64 MiB, got {self.workspace_mib}")
        bad = [t for t in self.gpu_targets if t not in RTX_TARGETS]
        if bad or not self.gpu_targets:
            raise ConfigError(f"GPU targets must be among {', '.join(RTX_TARGETS)} (TensorRT-RTX 1.7), "
                              f"got {', '.join(self.gpu_targets) or 'none'}")
        if flavour is not None and flavour.strongly_typed_only and self.precision in ("fp16", "int8"):
            hint = ("INT8 there needs an ONNX with QuantizeLinear / DequantizeLinear nodes; implicit INT8 "
                    "calibration is --trt-flavour tensorrt --precision int8 --calibration DATA"
                    if self.precision == "int8" else "export the model with 'rtseg export --half' for a float16 engine")
            raise ConfigError(f"--precision {self.precision}: TensorRT-RTX networks are strongly typed (precision "
                              f"comes from the ONNX, no builder precision flags); {hint}")

    def typed(self, flavour: Flavour) -> bool:
        return flavour.strongly_typed_only or self.strongly_typed


def profile_shapes(onnx_shape: list, settings: BuildSettings) -> tuple[list[int], list[int], list[int]]:
    """The (min, opt, max) input shapes of the optimisation profile for an ONNX input
    ``[N, C, H, W]`` whose dimensions are ints or symbolic names.

    A symbolic dimension takes its range from ``settings`` (batch defaults to 1; height and
    width must be given); a fixed dimension must not be given a different range.
    """
    if len(onnx_shape) != 4 or not isinstance(onnx_shape[1], int):
        raise EngineError(f"engine input must be [N, C, H, W] with a fixed channel count, the ONNX has {onnx_shape}")
    lo, opt, hi = [], [], []
    for axis, (what, rng) in enumerate((("batch", settings.batch), ("channels", None),
                                        ("height", settings.height), ("width", settings.width))):
        dim = onnx_shape[axis]
        if isinstance(dim, int):
            if rng is not None and tuple(rng) != (dim, dim, dim):
                raise ConfigError(f"the ONNX has a fixed {what} of {dim}, got a {what} profile {','.join(map(str, rng))}; "
                                  f"export with a dynamic {what} for a range")
            rng = (dim, dim, dim)
        elif rng is None:
            if what != "batch":
                raise ConfigError(f"the ONNX has a dynamic {what} ('{dim}'): pass --dynamic-{what} MIN,OPT,MAX")
            rng = (1, 1, 1)
        lo.append(rng[0])
        opt.append(rng[1])
        hi.append(rng[2])
    return lo, opt, hi


def shape_in_profile(shape: tuple[int, ...], profile: dict[str, list[int]]) -> str | None:
    """Why ``shape`` is outside the engine's profile (``None`` when it fits)."""
    lo, hi = profile["min"], profile["max"]
    if len(shape) != len(lo):
        return f"engine takes a {len(lo)}-d input, got {list(shape)}"
    for axis, (s, a, b) in enumerate(zip(shape, lo, hi)):
        if not a <= s <= b:
            return f"engine takes input {_describe_profile(profile)}, got {list(shape)} (axis {axis} outside {a}..{b})"
    return None


def _describe_profile(profile: dict[str, list[int]]) -> str:
    return "[" + ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in zip(profile["min"], profile["max"])) + "]"


def engine_manifest(onnx_path: str, onnx_manifest: dict[str, Any], settings: BuildSettings, machine: MachineFacts,
                    input_shape: list[int] | None = None, *, profile: tuple[list[int], ...] | None = None,
                    flavour: Flavour | None = None) -> dict[str, Any]:
    """The manifest written beside an engine (and compared on load)."""
    if flavour is None:
        from rtseg.export.trt_flavour import get_flavour

        flavour = get_flavour(machine.flavour)
    if profile is None:
        profile = profile_shapes(onnx_manifest["input"]["shape"], settings) if input_shape is None else \
            (list(input_shape), list(input_shape), list(input_shape))
    lo, opt, hi = profile
    typed = settings.typed(flavour)
    rtx = flavour.builds_without_gpu
    return {
        "schema": ENGINE_SCHEMA,
        "model": onnx_manifest["model"],
        "family": onnx_manifest.get("family"),
        "flavour": flavour.name,
        "tensorrt": machine.tensorrt,
        # RTX engines are built without a GPU, for targets; datacenter ones for the GPU they were built on
        "gpu": None if rtx else machine.gpu,
        "compute_capability": None if rtx else machine.compute_capability,
        "gpu_targets": list(settings.gpu_targets) if rtx else [machine.compute_capability],
        # strongly typed: the precision is the graph's own (float16 after 'rtseg export --half')
        "precision": (f"onnx-{onnx_manifest['input'].get('dtype', 'float32')}" if typed
                      else (settings.precision or "fp16")),
        "strongly_typed": typed,
        "input": {"name": onnx_manifest["input"]["name"], "shape": list(opt),
                  "profile": {"min": list(lo), "opt": list(opt), "max": list(hi)}},
        "onnx": os.path.abspath(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
    }


#: manifest fields an engine is bound to: a difference in any of them means a rebuild
BINDING_FIELDS = ("flavour", "tensorrt", "gpu", "compute_capability", "gpu_targets", "precision", "strongly_typed",
                  "input", "onnx_sha256")


def engine_cache_key(manifest: dict[str, Any]) -> str:
    """A short hash of the fields an engine depends on (its file name in the cache)."""
    blob = json.dumps({k: manifest.get(k) for k in BINDING_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rebuild_command(manifest: dict[str, Any], here: MachineFacts | None = None) -> str:
    """The ``rtseg build-engine`` command that rebuilds ``manifest``'s engine (for the GPU of
    ``here`` when given: an RTX engine gets that GPU's compute capability as target, or the
    datacenter flavour where TensorRT-RTX cannot target it)."""
    flavour = manifest.get("flavour", "tensorrt")
    cmd = f"rtseg build-engine --onnx {manifest.get('onnx', '<model.onnx>')}"
    cc = here.compute_capability if here is not None else None
    if flavour == "tensorrt-rtx" and cc is not None and cc not in RTX_TARGETS:
        flavour = "tensorrt"  # e.g. an H200 (9.0): TensorRT-RTX has no target for it
    cmd += f" --trt-flavour {flavour}"
    if flavour == "tensorrt-rtx":
        targets = list(manifest.get("gpu_targets") or RTX_DEFAULT_TARGETS)
        if cc is not None and cc not in targets:
            targets.append(cc)
        if tuple(targets) != RTX_DEFAULT_TARGETS:
            cmd += f" --gpu-targets {','.join(targets)}"
    elif manifest.get("strongly_typed"):
        cmd += " --strongly-typed"
    else:
        precision = manifest.get("precision", "fp16")
        precision = "fp16" if str(precision).startswith("onnx-") else precision
        cmd += f" --precision {precision}"
        if precision == "int8":
            cmd += " --calibration <images or video>"
    prof = (manifest.get("input") or {}).get("profile")
    if prof:
        for axis, what in ((0, "batch"), (2, "height"), (3, "width")):
            a, b, c = prof["min"][axis], prof["opt"][axis], prof["max"][axis]
            if not a == b == c:
                cmd += f" --dynamic-{what} {a},{b},{c}"
    return cmd


def manifest_mismatches(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"field: engine has X, here Y"`` for every binding field that differs."""
    return [f"{k}: engine has {saved.get(k)!r}, here {wanted.get(k)!r}"
            for k in BINDING_FIELDS if saved.get(k) != wanted.get(k)]


def runtime_mismatches(saved: dict[str, Any], machine: MachineFacts) -> list[str]:
    """Why an engine with manifest ``saved`` cannot run on ``machine`` (empty when it can)."""
    out = []
    flavour = saved.get("flavour", "tensorrt")
    if flavour != machine.flavour:
        out.append(f"flavour: engine is for {flavour!r}, here {machine.flavour!r}")
    if saved.get("tensorrt") != machine.tensorrt:
        out.append(f"tensorrt: engine has {saved.get('tensorrt')!r}, here {machine.tensorrt!r}")
    if flavour == "tensorrt-rtx":
        targets = saved.get("gpu_targets") or []
        if machine.compute_capability is not None and machine.compute_capability not in targets:
            out.append(f"compute_capability: engine targets {', '.join(targets)}, here {machine.compute_capability!r}"
                       + ("" if machine.compute_capability in RTX_TARGETS
                          else f" (TensorRT-RTX 1.7 cannot target {machine.compute_capability})"))
    else:
        for k in ("gpu", "compute_capability"):
            if saved.get(k) != getattr(machine, k):
                out.append(f"{k}: engine has {saved.get(k)!r}, here {getattr(machine, k)!r}")
    return out


def check_engine_manifest(engine_path: str, machine: MachineFacts) -> dict[str, Any]:
    """The engine's manifest, or :class:`EngineError` when it was built for another flavour,
    TensorRT version or GPU (what differs, and the command that rebuilds it)."""
    saved = read_manifest(engine_path)
    if saved.get("schema") != ENGINE_SCHEMA:
        raise EngineError(f"'{engine_path}' has no {ENGINE_SCHEMA} engine manifest (schema {saved.get('schema')!r}); "
                          f"rebuild it: {rebuild_command(saved, machine)}")
    diff = runtime_mismatches(saved, machine)
    if diff:
        raise EngineError(f"engine '{engine_path}' was built for another machine ({'; '.join(diff)}); "
                          f"rebuild it: {rebuild_command(saved, machine)}")
    return saved


def calibration_batches(source: str, preprocess: Callable[[np.ndarray], np.ndarray], batch: int,
                        limit: int = 512) -> Iterator[np.ndarray]:
    """``float32[batch, 3, H, W]`` batches for INT8 calibration from a folder of images or a
    video (anything :func:`rtseg.sources.open_source` opens), at most ``limit`` images."""
    from rtseg.sources import open_source

    frames: list[np.ndarray] = []
    src = open_source(source, max_frames=limit)
    try:
        for frame in src:
            frames.append(preprocess(frame.image))
            if len(frames) == batch:
                yield np.ascontiguousarray(np.concatenate(frames, 0), np.float32)
                frames = []
    finally:
        src.close()


def parser_errors(trt, parser) -> list[str]:
    """The ONNX parser's errors, each as ``Operator (node 'name'): description``."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        op, node, desc, func = err.node_operator(), err.node_name(), str(err.desc()), err.func()
        if len(desc) < 12 and func:  # e.g. "false": the check that failed says more
            desc = f"{desc} (in {func})"
        out.append(f"{op} (node '{node}'): {desc}" if op else desc)
    return out


@dataclass(frozen=True)
class EngineBuild:
    """What :func:`ensure_engine` did."""

    path: str
    manifest: dict[str, Any]
    built: bool  #: False: a matching engine was already in the cache
    seconds: float
    #: the second stage's engine (``<stem>.stage2.engine``), where the ONNX has a stage 2 beside it
    stage2: EngineBuild | None = None


def stage2_engine_path_for(engine_path: str) -> str:
    """``<stem>.stage2.engine`` beside the stage-1 engine ``<stem>.engine``."""
    return os.path.splitext(engine_path)[0] + ".stage2.engine"


def ensure_engine(onnx_path: str, out_dir: str, settings: BuildSettings, *, calibration: str | None = None,
                  preprocess: Callable[[np.ndarray], np.ndarray] | None = None, rebuild: bool = False) -> EngineBuild:
    """Build (or find in ``out_dir``) the engine of ``onnx_path`` for this machine.

    The engine is named by :func:`engine_cache_key` of its manifest, so an engine built with
    the same ONNX, settings, flavour, version and GPU (targets) is reused; a timing cache
    (``out_dir/timing-tensorrt.cache``, datacenter TensorRT) speeds up rebuilds. Where the
    family's second stage was exported beside the ONNX (``<stem>.stage2.onnx``), its engine is
    built (or found) too, as ``<engine stem>.stage2.engine`` (:func:`ensure_stage2_engine`).
    """
    from rtseg.export.onnx_export import stage2_path_for

    first = _ensure_stage1_engine(onnx_path, out_dir, settings, calibration=calibration, preprocess=preprocess,
                                  rebuild=rebuild)
    stage2_onnx = stage2_path_for(onnx_path)
    if not os.path.isfile(stage2_onnx):
        return first
    stage2_settings = dataclasses.replace(settings, precision=None if settings.precision == "int8" else settings.precision,
                                          batch=None, height=None, width=None)
    second = ensure_stage2_engine(stage2_onnx, out_dir, stage2_settings, path=stage2_engine_path_for(first.path),
                                  rebuild=rebuild)
    return dataclasses.replace(first, stage2=second)


def _parsed_network(trt: Any, flavour: Any, settings: Any, onnx_path: str, typed: bool) -> tuple[Any, Any, Any, Any]:
    """``(builder, network, config, parser)``: ``onnx_path`` parsed by ``flavour``'s ONNX parser and a
    builder config with the workspace, GPU targets and (for a weakly typed network) precision flags
    of ``settings``; the parser is returned because the network refers to its weights. A graph the
    parser refuses is one :class:`EngineError` with its first errors (and the way out for
    deformable convolution)."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = flavour.create_network(trt, builder, settings.strongly_typed)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = parser_errors(trt, parser)
            hint = ("; re-export with 'rtseg export --dcn decomposed' (deformable convolution as standard operators)"
                    if any("DeformConv" in e for e in errors) else "")
            raise EngineError(f"{flavour.name} cannot parse '{onnx_path}': {'; '.join(errors[:3])}{hint}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    flavour.set_targets(trt, config, tuple(settings.gpu_targets))
    if not typed:
        flavour.set_precision_flags(trt, config, settings.precision or "fp16")
    return builder, network, config, parser


def _ensure_stage1_engine(onnx_path: str, out_dir: str, settings: BuildSettings, *, calibration: str | None,
                          preprocess: Callable[[np.ndarray], np.ndarray] | None, rebuild: bool) -> EngineBuild:
    """:func:`ensure_engine` for the stage-1 graph."""
    from rtseg.export.trt_flavour import get_flavour

    flavour = resolve_flavour(settings.flavour)
    settings.check(flavour)
    if settings.precision == "int8" and (calibration is None or preprocess is None):
        raise ConfigError("INT8 needs calibration data: --calibration FOLDER_OR_VIDEO")
    onnx_manifest = read_manifest(onnx_path)
    machine = MachineFacts.here(flavour)
    trt = flavour.import_module()
    lo, opt, hi = profile_shapes(list(onnx_manifest["input"]["shape"]), settings)
    manifest = engine_manifest(onnx_path, onnx_manifest, settings, machine, profile=(lo, opt, hi),
                               flavour=get_flavour(flavour.name))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{onnx_manifest['model']}-{engine_cache_key(manifest)}")
    path = stem + ".engine"
    if os.path.isfile(path) and os.path.isfile(stem + ".json") and not rebuild:
        saved = read_manifest(path)
        if not manifest_mismatches(saved, manifest):
            log.info("engine %s is cached (same ONNX, settings, %s and GPU targets)", path, machine.tensorrt)
            return EngineBuild(path, saved, False, 0.0)

    start = time.perf_counter()
    builder, network, config, parser = _parsed_network(trt, flavour, settings, onnx_path, settings.typed(flavour))
    inp = network.get_input(0)
    dynamic = any(not isinstance(d, int) for d in onnx_manifest["input"]["shape"])
    if dynamic:  # symbolic dimensions: one optimisation profile over their ranges
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    if settings.precision == "int8":
        calib_cache = stem + ".calib"
        config.int8_calibrator = make_entropy_calibrator(
            calibration_batches(calibration, preprocess, opt[0]), calib_cache, tuple(opt))
        if dynamic:  # calibration runs at one fixed shape: the profile's opt
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(inp.name, tuple(opt), tuple(opt), tuple(opt))
            config.set_calibration_profile(calib_profile)
    timing_path = os.path.join(out_dir, f"timing-{flavour.name}.cache")
    if not flavour.builds_without_gpu:  # TensorRT-RTX times nothing at build (its timing cache is a no-op)
        timing_blob = open(timing_path, "rb").read() if os.path.isfile(timing_path) else b""
        config.set_timing_cache(config.create_timing_cache(timing_blob), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{flavour.name} could not build an engine from '{onnx_path}' (see the TensorRT log above)")
    with open(path + ".tmp", "wb") as f:
        f.write(serialized)
    os.replace(path + ".tmp", path)
    if not flavour.builds_without_gpu:
        with open(timing_path + ".tmp", "wb") as f:
            f.write(config.get_timing_cache().serialize())
        os.replace(timing_path + ".tmp", timing_path)
    seconds = time.perf_counter() - start
    manifest["built"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["build_seconds"] = round(seconds, 2)
    manifest["rebuild"] = rebuild_command(manifest)
    with open(stem + ".json.tmp", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    os.replace(stem + ".json.tmp", stem + ".json")
    return EngineBuild(path, manifest, True, seconds)


def build_engine(onnx_path: str, out_dir: str, settings: BuildSettings, *, calibration: str | None = None,
                 preprocess: Callable[[np.ndarray], np.ndarray] | None = None, rebuild: bool = False) -> str:
    """:func:`ensure_engine`, returning the engine's path."""
    return ensure_engine(onnx_path, out_dir, settings, calibration=calibration, preprocess=preprocess,
                         rebuild=rebuild).path


def make_entropy_calibrator(batches: Iterator[np.ndarray], cache_path: str, shape: tuple[int, ...] | None = None):
    """An ``IInt8EntropyCalibrator2`` (datacenter TensorRT) feeding ``batches`` through one
    device buffer, keeping its calibration cache in ``cache_path`` (reused when present: no
    data is read then). Every batch must have ``shape`` (the calibration profile's)."""
    from rtseg.export.trt_flavour import TENSORRT

    trt = TENSORRT.import_module()
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = batches
            self._buffer: torch.Tensor | None = None
            self._batch_size = shape[0] if shape else 1

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names):  # -> list of device pointers, or None when the data is exhausted
            batch = next(self._batches, None)
            if batch is None:
                return None
            if shape is not None and tuple(batch.shape) != tuple(shape):
                raise EngineError(f"calibration batch has shape {list(batch.shape)}, the calibration profile "
                                  f"takes {list(shape)}")
            self._batch_size = batch.shape[0]
            self._buffer = torch.from_numpy(batch).cuda()
            return [int(self._buffer.data_ptr())]

        def read_calibration_cache(self):
            if os.path.isfile(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache) -> None:
            with open(cache_path, "wb") as f:
                f.write(bytes(cache))

    return EntropyCalibrator()


def rtx_engine_validity(engine_bytes: bytes) -> tuple[str, list[str]]:
    """TensorRT-RTX's own verdict on an engine for the GPU here: ``("VALID" | "SUBOPTIMAL" |
    "INVALID", [diagnostics])`` (needs a CUDA driver: without one it reads INVALID)."""
    trt = TENSORRT_RTX.import_module()
    runtime = trt.Runtime(trt_logger(trt))
    validity, diag = runtime.get_engine_validity(engine_bytes)
    flags = [name for name, member in trt.EngineInvalidityDiagnostics.__members__.items() if int(diag) & int(member)]
    return validity.name, flags


STAGE2_ENGINE_SCHEMA = "rtseg.engine.stage2/1"


def ensure_stage2_engine(onnx_path: str, out_dir: str, settings: BuildSettings, *,
                         k: Range | None = None, rebuild: bool = False, path: str | None = None) -> EngineBuild:
    """Build (or find in ``out_dir``) the engine of a family's second stage, ``<stem>.stage2.onnx``
    (:func:`rtseg.export.onnx_export.export_stage2_onnx`): one optimisation profile in which every
    input's first axis, the number of RoIs / detections ``K``, ranges over ``k`` (min, opt, max;
    default ``(1, min(16, max_k), max_k)`` with the export's ``max_k``), the other axes fixed.

    Named and cached like :func:`ensure_engine` (manifest beside it, schema
    :data:`STAGE2_ENGINE_SCHEMA`; bound to the ONNX's SHA-256, flavour, version, targets and ``K``
    range). float32 (the stage-2 graph's own precision; strongly typed on TensorRT-RTX).
    ``path``: write the engine there instead (:func:`ensure_engine` puts it beside stage 1's).
    """
    from rtseg.export.onnx_export import STAGE2_SCHEMA
    from rtseg.export.trt_flavour import get_flavour

    flavour = resolve_flavour(settings.flavour)
    settings.check(flavour)
    onnx_manifest = read_manifest(onnx_path)
    if onnx_manifest.get("schema") != STAGE2_SCHEMA:
        raise EngineError(f"'{onnx_path}' is not a stage-2 graph (manifest schema {onnx_manifest.get('schema')!r}, "
                          f"expected {STAGE2_SCHEMA!r})")
    max_k = int(onnx_manifest["max_k"])
    k = tuple(k) if k is not None else (1, min(16, max_k), max_k)
    if len(k) != 3 or not 1 <= k[0] <= k[1] <= k[2]:
        raise ConfigError(f"the K profile must satisfy 1 <= min <= opt <= max, got {k}")
    machine = MachineFacts.here(flavour)
    trt = flavour.import_module()
    typed = settings.typed(flavour)
    shapes = {i["name"]: {which: [n, *i["shape"][1:]] for which, n in zip(("min", "opt", "max"), k)}
              for i in onnx_manifest["inputs"]}
    rtx = get_flavour(flavour.name).builds_without_gpu
    manifest: dict[str, Any] = {
        "schema": STAGE2_ENGINE_SCHEMA,
        "model": onnx_manifest["model"],
        "family": onnx_manifest.get("family"),
        "stage": 2,
        "flavour": flavour.name,
        "tensorrt": machine.tensorrt,
        "gpu": None if rtx else machine.gpu,
        "compute_capability": None if rtx else machine.compute_capability,
        "gpu_targets": list(settings.gpu_targets) if rtx else [machine.compute_capability],
        "precision": "onnx-float32" if typed else (settings.precision or "fp16"),
        "strongly_typed": typed,
        "input": {"names": [i["name"] for i in onnx_manifest["inputs"]], "k": list(k), "profile": shapes},
        "outputs": onnx_manifest["outputs"],
        "onnx": os.path.abspath(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
    }
    os.makedirs(out_dir, exist_ok=True)
    if path is None:
        path = os.path.join(out_dir, f"{onnx_manifest['model']}-stage2-{engine_cache_key(manifest)}.engine")
    stem = os.path.splitext(path)[0]
    if os.path.isfile(path) and os.path.isfile(stem + ".json") and not rebuild:
        saved = read_manifest(path)
        if not manifest_mismatches(saved, manifest):
            return EngineBuild(path, saved, False, 0.0)

    start = time.perf_counter()
    builder, network, config, parser = _parsed_network(trt, flavour, settings, onnx_path, typed)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = shapes[inp.name]
        profile.set_shape(inp.name, tuple(shape["min"]), tuple(shape["opt"]), tuple(shape["max"]))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{flavour.name} could not build an engine from '{onnx_path}' (see the TensorRT log above)")
    with open(path + ".tmp", "wb") as f:
        f.write(serialized)
    os.replace(path + ".tmp", path)
    seconds = time.perf_counter() - start
    manifest["built"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["build_seconds"] = round(seconds, 2)
    with open(stem + ".json.tmp", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    os.replace(stem + ".json.tmp", stem + ".json")
    return EngineBuild(path, manifest, True, seconds)
