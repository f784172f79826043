"""TensorRT engines: built from an ``rtseg export`` ONNX file, cached by what they depend on,
refused on a machine they were not built for.

Written against the TensorRT 10 Python API (every name used is listed in
:data:`TRT_API` and checked against the ``tensorrt-stubs`` package by the tests). TensorRT is
not installed on the machines rtseg is developed on, so this path has not been run; what can
be checked without it is: manifests, cache keys, the mismatch refusal, and the error paths.

Precision:

- ``fp32`` / ``fp16`` / ``int8`` are builder flags on a weakly typed network (TensorRT 10);
  ``int8`` calibrates with an entropy calibrator over a folder of images or a video, and
  keeps the calibration cache beside the engine.
- ``strongly_typed=True`` builds a strongly typed network
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): precision is what the ONNX carries
  (export the model in fp16 for an fp16 engine). This is the only mode TensorRT 11 keeps.

Each engine ``<name>.engine`` has ``<name>.json`` beside it: TensorRT version, GPU name and
compute capability, precision, input shapes (optimisation profile), the SHA-256 of the ONNX
it came from, and the command that rebuilds it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from rtseg.errors import ConfigError, EngineError
from rtseg.export.onnx_export import read_manifest, sha256_file

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SCHEMA = "rtseg.engine/1"

#: every TensorRT 10 Python API name this module and the TensorRT backend use, by owner
#: (``trt`` = the module). Checked against ``tensorrt-stubs`` in the tests.
TRT_API: dict[str, tuple[str, ...]] = {
    "trt": ("Logger", "Builder", "OnnxParser", "Runtime", "BuilderFlag", "MemoryPoolType",
            "NetworkDefinitionCreationFlag", "IInt8EntropyCalibrator2", "TensorIOMode", "nptype", "__version__"),
    "Logger": ("WARNING",),
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
                "platform_has_fast_fp16", "platform_has_fast_int8"),
    "INetworkDefinition": ("num_inputs", "get_input"),
    "ITensor": ("name", "shape"),
    "OnnxParser": ("parse", "num_errors", "get_error"),
    "ParserError": ("desc", "node"),
    "IBuilderConfig": ("set_flag", "set_memory_pool_limit", "add_optimization_profile", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache", "int8_calibrator"),
    "ITimingCache": ("serialize",),
    "IOptimizationProfile": ("set_shape",),
    "BuilderFlag": ("FP16", "INT8"),
    "MemoryPoolType": ("WORKSPACE",),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
    "Runtime": ("deserialize_cuda_engine",),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype",
                    "create_execution_context"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_shape"),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "IInt8EntropyCalibrator2": ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache"),
}


def import_tensorrt():
    """``import tensorrt``, or :class:`EngineError` naming the extra to install.

    A stub-only install (``tensorrt-stubs``, type hints without the library) is a namespace
    package without ``__file__``; it counts as missing.
    """
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    if trt is None or getattr(trt, "__file__", None) is None or not hasattr(trt, "Builder"):
        raise EngineError("TensorRT is not installed: pip install 'rtseg[gpu]' on a machine with an NVIDIA GPU "
                          "(or use --backend onnxruntime / torch)")
    return trt


@dataclass(frozen=True)
class MachineFacts:
    """What an engine is bound to."""

    tensorrt: str
    gpu: str
    compute_capability: str

    @classmethod
    def here(cls) -> "MachineFacts":
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise EngineError("TensorRT engines need an NVIDIA GPU; none is visible to torch here")
        major, minor = torch.cuda.get_device_capability(0)
        return cls(trt.__version__, torch.cuda.get_device_name(0), f"{major}.{minor}")


@dataclass(frozen=True)
class BuildSettings:
    precision: str = "fp16"
    batch: tuple[int, int, int] = (1, 1, 1)  #: optimisation profile (min, opt, max) of the batch dimension
    strongly_typed: bool = False
    workspace_mib: int = 2048

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.batch}")
        if self.strongly_typed and self.precision != "fp32":
            raise ConfigError("a strongly typed engine takes its precision from the ONNX file; "
                              "export it with 'rtseg export --half' for float16 instead of passing --precision")
        if self.workspace_mib < 64:
            raise ConfigError(f"workspace must be >= 64 MiB, got {self.workspace_mib}")


def engine_manifest(onnx_path: str, onnx_manifest: dict[str, Any], settings: BuildSettings, machine: MachineFacts,
                    input_shape: list[int]) -> dict[str, Any]:
    """The manifest written beside an engine (and compared on load)."""
    return {
        "schema": ENGINE_SCHEMA,
        "model": onnx_manifest["model"],
        "family": onnx_manifest.get("family"),
        "tensorrt": machine.tensorrt,
        "gpu": machine.gpu,
        "compute_capability": machine.compute_capability,
        # strongly typed: the precision is the graph's own (float16 after 'rtseg export --half')
        "precision": (f"onnx-{onnx_manifest['input'].get('dtype', 'float32')}" if settings.strongly_typed
                      else settings.precision),
        "strongly_typed": settings.strongly_typed,
        "input": {"name": onnx_manifest["input"]["name"], "shape": input_shape, "batch_profile": list(settings.batch)},
        "onnx": os.path.abspath(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
    }


#: manifest fields an engine is bound to: a difference in any of them means a rebuild
BINDING_FIELDS = ("tensorrt", "gpu", "compute_capability", "precision", "strongly_typed", "input", "onnx_sha256")


def engine_cache_key(manifest: dict[str, Any]) -> str:
    """A short hash of the fields an engine depends on (its file name in the cache)."""
    blob = json.dumps({k: manifest.get(k) for k in BINDING_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rebuild_command(manifest: dict[str, Any]) -> str:
    prec = "" if manifest.get("strongly_typed") else f" --precision {manifest.get('precision', 'fp16')}"
    if manifest.get("precision") == "int8":
        prec += " --calibration <images or video>"
    typed = " --strongly-typed" if manifest.get("strongly_typed") else ""
    return f"rtseg build-engine --onnx {manifest.get('onnx', '<model.onnx>')}{prec}{typed}"


def manifest_mismatches(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"field: engine has X, this machine/request has Y"`` for every binding field that differs."""
    out = []
    for k in BINDING_FIELDS:
        if saved.get(k) != wanted.get(k):
            out.append(f"{k}: engine has {saved.get(k)!r}, here {wanted.get(k)!r}")
    return out


def check_engine_manifest(engine_path: str, machine: MachineFacts) -> dict[str, Any]:
    """The engine's manifest, or :class:`EngineError` when it was built for another TensorRT / GPU."""
    saved = read_manifest(engine_path)
    if saved.get("schema") != ENGINE_SCHEMA:
        raise EngineError(f"'{engine_path}' has no engine manifest (schema {saved.get('schema')!r}); "
                          f"rebuild it: {rebuild_command(saved)}")
    here = dict(saved, tensorrt=machine.tensorrt, gpu=machine.gpu, compute_capability=machine.compute_capability)
    diff = manifest_mismatches(saved, here)
    if diff:
        raise EngineError(f"engine '{engine_path}' was built for another machine ({'; '.join(diff)}); "
                          f"rebuild it: {rebuild_command(saved)}")
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


def build_engine(onnx_path: str, out_dir: str, settings: BuildSettings, *, calibration: str | None = None,
                 preprocess: Callable[[np.ndarray], np.ndarray] | None = None, rebuild: bool = False) -> str:
    """Build (or find in ``out_dir``) the engine of ``onnx_path`` for this machine; return its path.

    The engine is named by :func:`engine_cache_key` of its manifest, so an engine built with
    the same ONNX, settings, TensorRT version and GPU is reused; a timing cache
    (``out_dir/timing.cache``) speeds up rebuilds.
    """
    settings.check()
    if settings.precision == "int8" and (calibration is None or preprocess is None):
        raise ConfigError("INT8 needs calibration data: --calibration FOLDER_OR_VIDEO")
    onnx_manifest = read_manifest(onnx_path)
    machine = MachineFacts.here()
    trt = import_tensorrt()
    shape = list(onnx_manifest["input"]["shape"])
    shape[0] = settings.batch[1] if not isinstance(shape[0], int) else shape[0]
    manifest = engine_manifest(onnx_path, onnx_manifest, settings, machine, shape)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{onnx_manifest['model']}-{engine_cache_key(manifest)}.engine")
    if os.path.isfile(path) and not rebuild:
        return path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
            raise EngineError(f"TensorRT cannot parse '{onnx_path}': {'; '.join(errors[:3])}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.precision in ("fp16", "int8") and not settings.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    calib_cache = os.path.splitext(path)[0] + ".calib"
    if settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_entropy_calibrator(
            calibration_batches(calibration, preprocess, settings.batch[1]), calib_cache)
    inp = network.get_input(0)
    if not isinstance(onnx_manifest["input"]["shape"][0], int):  # dynamic batch: one optimisation profile
        profile = builder.create_optimization_profile()
        rest = tuple(shape[1:])
        lo, opt, hi = settings.batch
        profile.set_shape(inp.name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(profile)
    timing_path = os.path.join(out_dir, "timing.cache")
    timing_blob = open(timing_path, "rb").read() if os.path.isfile(timing_path) else b""
    config.set_timing_cache(config.create_timing_cache(timing_blob), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build an engine from '{onnx_path}' (see the TensorRT log above)")
    with open(path + ".tmp", "wb") as f:
        f.write(serialized)
    os.replace(path + ".tmp", path)
    with open(timing_path, "wb") as f:
        f.write(config.get_timing_cache().serialize())
    manifest["built"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["rebuild"] = rebuild_command(manifest)
    with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return path


def make_entropy_calibrator(batches: Iterator[np.ndarray], cache_path: str):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through one device buffer, keeping
    its calibration cache in ``cache_path`` (reused when present: no data is read then)."""
    trt = import_tensorrt()
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = batches
            self._buffer: torch.Tensor | None = None
            self._batch_size = 1

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names):  # -> list of device pointers, or None when the data is exhausted
            batch = next(self._batches, None)
            if batch is None:
                return None
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
