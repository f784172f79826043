"""The one module that owns ``cuda/*.cu``: compiles each file once per device, loads it into
torch's CUDA context and launches its kernels on torch's current stream.

How an op module (``rtseg/kernels/nms.py``, ``rtseg/kernels/masks.py``) uses it::

    import numpy as np
    import torch
    from rtseg import kernels

    def scale(x: torch.Tensor, factor: float) -> torch.Tensor:
        kernels.check_tensor("x", x, dtype=torch.float32, shape=(None, 4), device=x.device)
        out = torch.empty_like(x)
        fn = kernels.function(kernels.module("scale", x.device), "scale_kernel")
        n = x.numel()
        fn.launch(grid=((n + 255) // 256,), block=(256,),
                  args=(x, out, np.int32(n), np.float32(factor)))   # on torch's current stream
        return out

- ``module(name, device)`` compiles ``cuda/<name>.cu`` (once per source change, cached on disk)
  and loads it on ``device`` (once per process and device); ``function(mod, "kernel")`` looks up
  an ``extern "C"`` kernel by name.
- ``KernelFunction.launch`` takes torch tensors (passed as device pointers; each must be on the
  module's device) and **numpy scalars** whose type is the kernel parameter's exact C type
  (``np.int32`` for ``int``, ``np.int64`` for ``long long``, ``np.float32`` for ``float``,
  ``np.float64`` for ``double``, ``np.uint64`` for ``unsigned long long``). Python ints and floats
  are refused: their width on the kernel side would be a guess.
- ``check_tensor`` is the argument check every op does first: one ``TypeError`` (not a tensor,
  wrong dtype) or ``ValueError`` (device, shape, contiguity) saying expected vs found.
- ``kernels_available(device)`` says whether ``module`` can work for a device (a CUDA device, a
  launcher, a compiler or a cached build); op wrappers fall back to the torch twins otherwise.

Compilation: ahead of time with nvcc into one fatbin per file for sm_75, sm_86, sm_89, sm_90 plus
compute_90 PTX (which newer GPUs JIT-compile), cached under ``$RTSEG_CUDA_CACHE`` (default
``$XDG_CACHE_HOME/rtseg/cuda`` or ``~/.cache/rtseg/cuda``) by a hash of the sources, the compiler
version and the flags. Without nvcc, NVRTC compiles the file for the device's own architecture at
run time (the NVRTC library ships with torch's CUDA wheels). Either way the compiler sees the real
path of the file (nvcc directly, NVRTC through a ``#line 1 "<path>"`` directive), so its errors
name ``cuda/<file>.cu(<line>)``; ``-lineinfo`` keeps line information in the binary for profilers.

Launching: pycuda when installed (the ``gpu`` extra), else CuPy; neither is imported before the
first ``module``/``launch`` call. Both use the *primary* context of the device, which is the one
torch's runtime uses, so pointers from torch tensors are valid in the kernels. Kernels run on
``torch.cuda.current_stream(device)``: CuPy wraps that handle directly; pycuda cannot launch on a
foreign stream handle, so when torch's current stream is not the legacy default stream the launch
goes to a pycuda stream ordered after torch's stream and torch's stream is ordered after it (two
event waits on the GPU, no host synchronisation).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sysconfig
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rtseg.errors import EngineError

__all__ = [
    "ARCHS", "CUDA_DIR", "KernelError", "KernelFunction", "KernelModule", "binary_for", "build_fatbin",
    "cache_dir", "check_tensor", "compile_nvrtc", "fatbin_targets", "function", "kernels_available",
    "launcher_name", "module", "nvcc_path", "pack_arguments", "source_path",
]


def _cuda_dir() -> Path:
    """Where the ``.cu`` sources are: ``$RTSEG_CUDA_DIR``; else ``cuda/`` beside the package (a
    source checkout or an editable install); else ``<prefix>/share/rtseg/cuda``, where a wheel
    install puts them (``[tool.setuptools.data-files]`` in pyproject.toml)."""
    if "RTSEG_CUDA_DIR" in os.environ:
        return Path(os.environ["RTSEG_CUDA_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "cuda"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "rtseg" / "cuda"


CUDA_DIR = _cuda_dir()

#: compute capabilities built ahead of time: Turing (T4), Ampere (A10, RTX 30), Ada (L4, RTX 40),
#: Hopper (H100); ``compute_90`` PTX is embedded too so newer GPUs can JIT it
ARCHS = (75, 86, 89, 90)

#: flags of every build (nvcc and NVRTC alike, where NVRTC has them)
_COMMON_FLAGS = ("-std=c++17", "-lineinfo")

_GPU_EXTRA_HINT = ("install the 'gpu' extra (pip install 'rtseg[gpu]', which brings pycuda) or CuPy "
                   "(pip install cupy-cuda13x) to launch rtseg's CUDA kernels")


class KernelError(EngineError):
    """A CUDA kernel cannot be compiled, loaded or launched here (no compiler, no launcher, no
    GPU, a compiler error in ``cuda/``)."""


# -- argument checks --------------------------------------------------------------------------------

def check_tensor(name: str, t: Any, *, dtype: torch.dtype | Sequence[torch.dtype] | None = None,
                 shape: Sequence[int | None] | None = None, device: torch.device | str | None = None,
                 contiguous: bool = True) -> torch.Tensor:
    """Check one kernel argument; raise ``TypeError`` / ``ValueError`` naming expected vs found.

    ``shape`` entries are sizes or ``None`` (any size); its length is the required rank.
    ``dtype`` may be a tuple of accepted dtypes. Returns ``t`` unchanged.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        accepted = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in accepted:
            want = " or ".join(str(d) for d in accepted)
            raise TypeError(f"{name} must have dtype {want}, got {t.dtype}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == f for s, f in zip(shape, t.shape))
        if not ok:
            want = "(" + ", ".join("_" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} must be on {torch.device(device)}, got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (row-major), got strides {t.stride()} for shape {tuple(t.shape)}")
    return t


def _cuda_device(device: torch.device | str | int | None) -> torch.device:
    if device is None:
        if not torch.cuda.is_available():
            raise KernelError("no CUDA device: rtseg's CUDA kernels need an NVIDIA GPU (use the torch post-processing)")
        return torch.device("cuda", torch.cuda.current_device())
    dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    if dev.type != "cuda":
        raise KernelError(f"CUDA kernels run on a CUDA device, got {dev}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


# -- compilers --------------------------------------------------------------------------------------

def nvcc_path() -> str | None:
    """nvcc on ``PATH``, else ``$CUDA_HOME/bin/nvcc`` or ``/usr/local/cuda/bin/nvcc``, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def cache_dir() -> Path:
    """Where compiled kernels live: ``$RTSEG_CUDA_CACHE``, else the user cache dir."""
    if os.environ.get("RTSEG_CUDA_CACHE"):
        return Path(os.environ["RTSEG_CUDA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rtseg" / "cuda"


def _include_flags(src: Path) -> list[str]:
    """``-I`` for the file's own folder and for ``cuda/`` (its shared ``*.cuh`` headers)."""
    dirs = dict.fromkeys([src.parent.resolve(), CUDA_DIR.resolve()])
    return [f"-I{d}" for d in dirs]


def _sources_digest(src: Path, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    # every header the file can include: beside it and in cuda/
    for path in sorted({src, *src.parent.glob("*.cuh"), *CUDA_DIR.glob("*.cuh")}):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


_nvcc_version_cache: dict[str, str] = {}


def _nvcc_version(nvcc: str) -> str:
    if nvcc not in _nvcc_version_cache:
        done = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
        _nvcc_version_cache[nvcc] = done.stdout.strip().splitlines()[-1] if done.stdout else "?"
    return _nvcc_version_cache[nvcc]


def nvcc_command(src: Path, out: Path, archs: Sequence[int] = ARCHS, nvcc: str | None = None) -> list[str]:
    """The nvcc command line that builds ``src`` into a fatbin at ``out`` for ``archs`` (the
    highest also as PTX)."""
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise KernelError("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    cmd = [nvcc, "-fatbin", *_COMMON_FLAGS, "-O3", *_include_flags(src)]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    top = max(archs)
    cmd += ["-gencode", f"arch=compute_{top},code=compute_{top}", "-o", str(out), str(src)]
    return cmd


def build_fatbin(src: Path | str, archs: Sequence[int] = ARCHS, *, cache: Path | None = None,
                 nvcc: str | None = None) -> Path:
    """Compile ``src`` ahead of time with nvcc; return the cached fatbin (built once per change).

    Raises :class:`KernelError` with the compiler's own messages (``<path>(<line>): error: ...``)
    when the build fails.
    """
    src = Path(src).resolve()
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise KernelError("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    digest = _sources_digest(src, f"{_nvcc_version(nvcc)}|{sorted(archs)}|{_COMMON_FLAGS}")
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{src.stem}-{digest}.fatbin"
    if out.exists():
        return out
    tmp = out.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    done = subprocess.run(nvcc_command(src, tmp, archs, nvcc), capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise KernelError(f"nvcc could not build {src}:\n{done.stderr.strip() or done.stdout.strip()}")
    tmp.replace(out)  # atomic: a parallel process never loads a half-written file
    return out


def _nvrtc_library() -> ctypes.CDLL | None:
    names = []
    found = ctypes.util.find_library("nvrtc")
    if found:
        names.append(found)
    torch_root = Path(torch.__file__).resolve().parent.parent
    for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
        names += [str(p) for p in sorted(torch_root.glob(pattern)) if "builtins" not in p.name and ".alt." not in p.name]
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            names += [str(p) for p in sorted((Path(root) / "lib64").glob("libnvrtc.so*"))]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def compile_nvrtc(src: Path | str, arch: int, *, cache: Path | None = None) -> Path:
    """Compile ``src`` at run time with NVRTC for compute capability ``arch`` (e.g. 86).

    Returns a cached cubin for ``sm_<arch>``, or PTX for ``compute_<arch>`` when this NVRTC can
    only emit PTX. Errors name the real file and line (the source is compiled under a
    ``#line 1 "<path>"`` directive).
    """
    src = Path(src).resolve()
    lib = _nvrtc_library()
    if lib is None:
        raise KernelError("neither nvcc nor the NVRTC library was found: cannot compile rtseg's CUDA kernels")
    version = (ctypes.c_int(), ctypes.c_int())
    lib.nvrtcVersion(ctypes.byref(version[0]), ctypes.byref(version[1]))
    digest = _sources_digest(src, f"nvrtc {version[0].value}.{version[1].value}|{arch}|{_COMMON_FLAGS}")
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for suffix in (".cubin", ".ptx"):
        if (cache / f"{src.stem}-{digest}{suffix}").exists():
            return cache / f"{src.stem}-{digest}{suffix}"

    text = f'#line 1 "{src}"\n' + src.read_text()
    prog = ctypes.c_void_p()
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), str(src).encode(), 0, None, None)
    if rc != 0:
        raise KernelError(f"NVRTC could not create a program for {src}: {lib.nvrtcGetErrorString(rc).decode()}")
    try:
        opts = [f"--gpu-architecture=sm_{arch}", "-std=c++17", "--generate-line-info", *_include_flags(src)]
        c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), c_opts)
        log_size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(log_size))
        log = ctypes.create_string_buffer(log_size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            raise KernelError(f"NVRTC could not compile {src}:\n{log.value.decode(errors='replace').strip()}")
        size = ctypes.c_size_t()
        suffix = ".cubin"
        if hasattr(lib, "nvrtcGetCUBINSize") and lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)) == 0 and size.value:
            image = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetCUBIN(prog, image)
        else:
            suffix = ".ptx"
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            image = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, image)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    out = cache / f"{src.stem}-{digest}{suffix}"
    tmp = out.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(image.raw[: size.value])
    tmp.replace(out)
    return out


def fatbin_targets(path: Path | str) -> set[str]:
    """What a fatbin holds: ``{"sm_75", ..., "compute_90"}`` (``sm_*`` machine code, ``compute_*``
    PTX), read from its container headers (the layout ``cuobjdump`` reads)."""
    import struct

    data = Path(path).read_bytes()
    magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, 0)
    if magic != 0xBA55ED50:
        raise KernelError(f"{path} is not a CUDA fatbin (magic {magic:#x})")
    targets, offset = set(), header_size
    while offset < header_size + fat_size:
        kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, offset)
        arch = struct.unpack_from("<I", data, offset + 28)[0]
        targets.add(f"{'compute' if kind == 1 else 'sm'}_{arch}")
        offset += entry_header + size
    return targets


def source_path(name: str) -> Path:
    """``cuda/<name>.cu``; :class:`KernelError` when it does not exist."""
    src = CUDA_DIR / f"{name}.cu"
    if not src.is_file():
        raise KernelError(f"no kernel source {src} (expected {name}.cu in the checkout's cuda/ or, installed, in "
                          f"<prefix>/share/rtseg/cuda; set RTSEG_CUDA_DIR to the folder holding the .cu files)")
    return src


def binary_for(name: str, capability: tuple[int, int]) -> Path:
    """The compiled image of ``cuda/<name>.cu`` for a device of this compute capability: the
    nvcc fatbin when nvcc exists, else an NVRTC build for that architecture."""
    src = source_path(name)
    arch = capability[0] * 10 + capability[1]
    if nvcc_path() is not None:
        # machine code runs on later minor versions of its major version, PTX on anything newer;
        # other GPUs (e.g. an A100, 8.0) get a fatbin of their own, built once and cached
        covered = any(a // 10 == capability[0] and a % 10 <= capability[1] for a in ARCHS) or arch >= max(ARCHS)
        return build_fatbin(src, ARCHS if covered else (arch,))
    return compile_nvrtc(src, arch)


# -- launchers ---------------------------------------------------------------------------------------

def launcher_name() -> str:
    """``"pycuda"`` or ``"cupy"``, whichever imports first; :class:`KernelError` naming the extra otherwise."""
    try:
        import pycuda.driver  # noqa: F401  (imported where used, never at rtseg import)
        return "pycuda"
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401
        return "cupy"
    except ImportError:
        pass
    raise KernelError(f"neither pycuda nor CuPy is installed: {_GPU_EXTRA_HINT}")


def _launcher_importable() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("pycuda", "cupy"))


def kernels_available(device: torch.device | str | int | None) -> bool:
    """True when ``module`` can compile, load and launch kernels on ``device``: a CUDA device
    torch can use, pycuda or CuPy importable, and nvcc or NVRTC present. Compiles nothing."""
    try:
        dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    except (RuntimeError, TypeError):
        return False
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        return False
    return _launcher_importable() and (nvcc_path() is not None or _nvrtc_library() is not None)


@dataclass
class KernelModule:
    """One ``cuda/<name>.cu`` loaded on one device (use :func:`module`, not the constructor)."""

    name: str
    device: torch.device
    path: Path
    launcher: str
    handle: Any  # pycuda.driver.Module or cupy.RawModule
    context: Any = None  # pycuda: the retained primary context
    functions: dict[str, KernelFunction] = field(default_factory=dict)


@dataclass
class KernelFunction:
    """One ``extern "C" __global__`` kernel of a :class:`KernelModule`."""

    module: KernelModule
    name: str
    handle: Any

    def launch(self, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], *, shared_mem: int = 0) -> None:
        """Launch on ``torch.cuda.current_stream(device)``; asynchronous like any torch op.

        ``args``: torch tensors on this module's device (passed as pointers) and numpy scalars of
        the kernel parameters' exact types (see the module docstring).
        """
        dev = self.module.device
        grid3 = _dims("grid", grid)
        block3 = _dims("block", block)
        packed = pack_arguments(self.name, args, dev)
        if grid3[0] * grid3[1] * grid3[2] == 0:
            return  # nothing to cover; CUDA refuses an empty grid
        stream = torch.cuda.current_stream(dev)
        if self.module.launcher == "cupy":
            import cupy

            with cupy.cuda.Device(dev.index), cupy.cuda.ExternalStream(stream.cuda_stream, device_id=dev.index):
                self.handle(grid3, block3, tuple(packed), shared_mem=int(shared_mem))
            return
        ctx = self.module.context
        ctx.push()
        try:
            if stream.cuda_stream == 0:
                self.handle(*packed, grid=grid3[:2] if grid3[2] == 1 else grid3, block=block3,
                            shared=int(shared_mem), stream=None)
            else:
                side, side_torch = _pycuda_side_stream(dev)
                side_torch.wait_stream(stream)
                self.handle(*packed, grid=grid3[:2] if grid3[2] == 1 else grid3, block=block3,
                            shared=int(shared_mem), stream=side)
                stream.wait_stream(side_torch)
        finally:
            ctx.pop()

    __call__ = launch


def pack_arguments(kernel: str, args: Sequence[Any], device: torch.device) -> list[np.generic]:
    """Kernel arguments as numpy scalars: tensors become ``uint64`` device pointers (each must be on
    ``device``), numpy scalars pass as they are; anything else is a ``TypeError``."""
    packed: list[np.generic] = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            if a.device != device:
                raise ValueError(f"argument {i} of {kernel} must be on {device}, got {a.device}")
            packed.append(np.uint64(a.data_ptr()))
        elif isinstance(a, np.generic) and a.dtype.kind in "iuf":
            packed.append(a)
        else:
            raise TypeError(f"argument {i} of {kernel} must be a torch.Tensor or a numpy scalar "
                            f"(np.int32, np.int64, np.float32, ...), got {type(a).__name__}")
    return packed


def _dims(what: str, dims: Sequence[int]) -> tuple[int, int, int]:
    d = tuple(int(x) for x in dims)
    if not 1 <= len(d) <= 3 or any(x < 0 for x in d):
        raise ValueError(f"{what} must be 1 to 3 non-negative sizes, got {tuple(dims)}")
    return (d + (1, 1))[:3]  # type: ignore[return-value]


#: per thread: one side stream per device. One per device for the whole process would put every
#: pipeline worker's kernels (each worker has its own torch stream, rtseg.device) on one stream,
#: serialising them again.
_side_streams = threading.local()


def _pycuda_side_stream(dev: torch.device) -> tuple[Any, Any]:
    """This thread's pycuda stream on ``dev`` and torch's view of it (for ordering with torch's stream)."""
    streams = getattr(_side_streams, "by_device", None)
    if streams is None:
        streams = _side_streams.by_device = {}
    if dev.index not in streams:
        import pycuda.driver as cuda

        side = cuda.Stream()
        streams[dev.index] = (side, torch.cuda.ExternalStream(side.handle, device=dev))
    return streams[dev.index]


_modules: dict[tuple[str, int], KernelModule] = {}
_lock = threading.Lock()


def module(name: str, device: torch.device | str | int | None = None) -> KernelModule:
    """``cuda/<name>.cu`` compiled and loaded on ``device`` (default: torch's current CUDA device);
    compiled once per source change, loaded once per process and device."""
    dev = _cuda_device(device)
    key = (name, dev.index)
    with _lock:
        if key in _modules:
            return _modules[key]
        launcher = launcher_name()
        torch.cuda.init()
        path = binary_for(name, torch.cuda.get_device_capability(dev))
        if launcher == "cupy":
            import cupy

            with cupy.cuda.Device(dev.index):
                handle = cupy.RawModule(path=str(path))
            mod = KernelModule(name, dev, path, launcher, handle)
        else:
            import pycuda.driver as cuda

            cuda.init()
            ctx = cuda.Device(dev.index).retain_primary_context()
            ctx.push()
            try:
                handle = cuda.module_from_file(str(path))
            finally:
                ctx.pop()
            mod = KernelModule(name, dev, path, launcher, handle, ctx)
        _modules[key] = mod
        return mod


def function(mod: KernelModule, name: str) -> KernelFunction:
    """The kernel ``name`` of ``mod``; :class:`KernelError` naming the file when it is not there."""
    fn = mod.functions.get(name)
    if fn is not None:
        return fn
    try:
        if mod.launcher == "cupy":
            import cupy

            with cupy.cuda.Device(mod.device.index):
                handle = mod.handle.get_function(name)
        else:
            mod.context.push()
            try:
                handle = mod.handle.get_function(name)
            finally:
                mod.context.pop()
    except Exception as err:  # pycuda LogicError / cupy CUDADriverError: one message for both
        raise KernelError(f"no kernel {name!r} in cuda/{mod.name}.cu ({mod.path.name}): {err}") from err
    fn = KernelFunction(mod, name, handle)
    mod.functions[name] = fn
    return fn
