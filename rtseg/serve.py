"""``rtseg serve``: a Triton Inference Server for an rtseg model on this machine, through PyTriton.

For users without the NGC container (and for the tests): PyTriton (``nvidia-pytriton``)
ships a real ``tritonserver`` with its Python backend, which hands each batch to a Python
function in this process; here that function runs the model's network on ONNX Runtime (a
dynamic-batch export, cached like ``--backend onnxruntime``'s) or on torch, and returns the
named head outputs. Clients are rtseg pipelines with ``--backend triton://HOST:PORT/MODEL``
(:mod:`rtseg.backends.triton_backend`) or anything speaking Triton's gRPC / HTTP protocols.

- A family with a second stage (CenterMask's RoI heads, YOLACT++'s mask re-scoring) is served
  as a second model, ``<model>_stage2`` (:func:`rtseg.export.triton_repo.stage2_model_name`), on
  the same runtime: the ``<stem>.stage2.onnx`` exported beside the dynamic-batch graph, or the
  torch module. Batching is off for it (max_batch_size 0, ``K`` as a ``-1`` dimension): the
  first axis of its tensors is one frame's ``K`` RoIs, each request is run on its own.
- Binds ``127.0.0.1`` unless ``--host`` says otherwise. gRPC on ``--port``, HTTP on
  ``--http-port`` (default port + 1) and Prometheus metrics on ``--metrics-port``
  (default port + 2); a port already taken is one error line before anything starts.
- Dynamic batching is on: Triton's scheduler joins the requests of all clients that
  arrive within ``--queue-delay-us`` into one call of up to ``--max-batch`` images.
- PyTriton protects some endpoints with a generated access token. rtseg leaves inference,
  metadata, statistics (what ``get_inference_statistics`` reads) and, on a loopback bind,
  system shared memory (what a client on this machine uses to skip copying tensors through
  gRPC) open, and keeps model loading, tracing and logging protected. On a non-loopback
  bind shared memory stays protected too: only local processes could use it anyway.
- SIGINT / SIGTERM stop the server cleanly (PyTriton's ``serve()`` returns on
  ``KeyboardInterrupt``; SIGTERM is turned into one).
- PyTriton 0.7.0 pins ``numpy<2`` and its Python-backend stub (built against numpy 1's C
  API) returns every output tensor empty when it imports numpy 2 ("output tensor shape does
  not match size of output", checked here), while rtseg needs numpy 2 (OpenCV 5). So the stub
  gets an environment of its own: a bare venv (``python -m venv --without-pip``) whose
  site-packages hold ``numpy<2`` (installed once by pip into ``$RTSEG_CACHE/triton-stub-pyX.Y``,
  or the folder ``$RTSEG_TRITON_STUB_ENV`` names) and a ``.pth`` line adding this
  interpreter's site-packages after it (PyTriton's proxy modules, pyzmq). Tensors cross
  between the stub and this process as raw bytes (PyTriton's own shared memory), so the two
  numpy versions never meet. PyTriton takes the stub's environment from
  ``pytriton.server.triton_server.get_triton_python_backend_python_env`` (it puts that
  environment's ``bin`` first in the server's ``PATH``); rtseg points it at this one.
- pytriton#51: Triton's Python-backend stub must load the same libpython as this
  interpreter, else model loading fails with ``'_thread.RLock' object has no attribute
  '_recursion_count'``. For an interpreter built with a shared libpython outside the
  system's library path (pyenv, conda) the server process gets that folder
  (``sysconfig.get_config_var('LIBDIR')``) first in ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sysconfig
import threading
from dataclasses import dataclass

import numpy as np

from rtseg.errors import ConfigError, EngineError
from rtseg.export.triton_repo import stage2_model_name as stage2_name

log = logging.getLogger("rtseg.serve")

DEFAULT_GRPC_PORT = 8001
RUNTIMES = ("onnxruntime", "torch")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    model: str
    weights: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_GRPC_PORT
    http_port: int | None = None  #: default port + 1
    metrics_port: int | None = None  #: default port + 2
    runtime: str = "onnxruntime"
    max_batch_size: int = 8
    queue_delay_us: int = 2000
    instances: int = 1
    threads: int | None = None
    cache_dir: str | None = None

    def ports(self) -> dict[str, int]:
        return {"gRPC": self.port, "HTTP": self.http_port or self.port + 1,
                "metrics": self.metrics_port or self.port + 2}


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """One :class:`ConfigError` naming the first port that cannot be bound on ``host``."""
    for what, port in ports.items():
        if not 1 <= port <= 65535:
            raise ConfigError(f"{what} port must be in 1..65535, got {port}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise ConfigError(f"cannot serve {what} on {host}:{port}: {exc.strerror or exc} "
                                  f"(choose another with --{'port' if what == 'gRPC' else what.lower() + '-port'})") from None


def libpython_env_fix() -> str | None:
    """Prepend this interpreter's LIBDIR to ``LD_LIBRARY_PATH`` when it holds the shared
    libpython the Python-backend stub must load (pytriton#51); returns the folder, or None."""
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not ldlib.endswith(".so") and ".so." not in ldlib:
        return None
    if not os.path.isfile(os.path.join(libdir, ldlib)):
        return None
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = libdir + (":" + current if current else "")
    return libdir


def stub_env(cache_dir: str | None = None) -> str:
    """The Python-backend stub's environment (see the module docstring), made on first use."""
    import subprocess
    import sys

    given = os.environ.get("RTSEG_TRITON_STUB_ENV")
    if given:
        if not os.path.isdir(os.path.join(given, "bin")):
            raise ConfigError(f"RTSEG_TRITON_STUB_ENV='{given}' is not a virtual environment (no bin/ in it)")
        return given
    from rtseg.export.cache import default_cache_dir

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = os.path.abspath(os.path.join(cache_dir or default_cache_dir(), f"triton-stub-py{version}"))
    if os.path.isfile(os.path.join(env, "ready")):
        return env
    import shutil
    import site

    log.info("making the Triton Python-backend stub's environment (numpy<2, once) in %s", env)
    tmp = f"{env}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp], check=True, capture_output=True, timeout=120)
        sp = os.path.join(tmp, "lib", f"python{version}", "site-packages")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
                               "--target", sp, "numpy>=1.21,<2"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise EngineError(f"cannot install numpy<2 for Triton's Python-backend stub into {sp}: {last[:300]}; "
                              "make such an environment yourself and name it in RTSEG_TRITON_STUB_ENV")
        with open(os.path.join(sp, "zz_rtseg_parent_env.pth"), "w") as f:
            f.write("\n".join(site.getsitepackages()) + "\n")
        with open(os.path.join(tmp, "ready"), "w") as f:
            f.write("numpy<2 for the Triton Python-backend stub (rtseg.serve)\n")
        try:
            os.rename(tmp, env)
        except OSError:  # another server made it meanwhile
            if not os.path.isfile(os.path.join(env, "ready")):
                raise
    except subprocess.SubprocessError as exc:
        raise EngineError(f"cannot make the Triton stub environment {env}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return env


def _point_pytriton_at(env: str) -> None:
    import pathlib

    import pytriton.server.triton_server as triton_server

    triton_server.get_triton_python_backend_python_env = lambda: pathlib.Path(env)


def _make_infer(settings: ServeSettings):
    """The network as ``images float32[B, 3, H, W] numpy -> {name: float32 numpy}`` plus the
    (input shape, {output name: shape}) without the batch dimension, and the family's second
    stage (:class:`Stage2Serving`, ``None`` where it has none)."""
    import torch

    from rtseg.backends import TorchBackend
    from rtseg.segmenter import Segmenter, configure_threads

    configure_threads(settings.threads)
    seg = Segmenter(settings.model, weights=settings.weights)
    h, w = seg.input_size
    if settings.runtime == "onnxruntime":
        from rtseg.backends.onnxruntime_backend import OnnxRuntimeBackend

        onnx_path = dynamic_batch_onnx(seg, settings.cache_dir)
        backend = OnnxRuntimeBackend(onnx_path, model=settings.model, device=torch.device("cpu"))
    else:
        onnx_path = None
        backend = TorchBackend(seg.net)
    with torch.inference_mode():
        example = backend(torch.zeros(1, 3, h, w))
    output_shapes = {name: tuple(t.shape[1:]) for name, t in example.items()}

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = backend(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        return {name: t.detach().to("cpu", torch.float32).numpy() for name, t in out.items()}

    stage2 = None
    if seg.family.stage2(seg.net, seg.config) is not None:
        stage2 = _make_stage2(settings, seg, onnx_path)
    return run, (3, h, w), output_shapes, stage2


@dataclass(frozen=True)
class Stage2Serving:
    """The family's second stage as ``rtseg serve`` binds it (model ``<model>_stage2``): ``run``
    takes and returns ``{name: numpy}`` whose first axis is the ``K`` RoIs / detections of one
    frame; ``inputs`` / ``outputs`` are ``(name, numpy dtype, shape with -1 for K)``."""

    run: object
    inputs: tuple[tuple[str, type, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, type, tuple[int, ...]], ...]


def _make_stage2(settings: ServeSettings, seg, onnx_path: str | None) -> Stage2Serving:
    """Stage 2 on the same runtime as stage 1: the ``<stem>.stage2.onnx`` exported beside the
    dynamic-batch graph (ONNX Runtime) or the torch module sharing ``seg.net``'s parameters."""
    import torch

    from rtseg.families.base import TorchStage2

    module = seg.family.stage2(seg.net, seg.config)
    if settings.runtime == "onnxruntime":
        from rtseg.backends.onnxruntime_backend import OnnxRuntimeStage2
        from rtseg.export.onnx_export import stage2_path_for

        stage2 = OnnxRuntimeStage2(stage2_path_for(onnx_path), model=settings.model, device=torch.device("cpu"))
    else:
        stage2 = TorchStage2(module)
    example = dict(zip(module.input_names, module.example_inputs(2, "cpu")))
    with torch.inference_mode():
        example_out = stage2(example)

    def spec(tensors: dict) -> tuple:
        return tuple((n, t.detach().cpu().numpy().dtype.type, (-1, *t.shape[1:])) for n, t in tensors.items())

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = stage2({n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in inputs.items()})
        return {n: t.detach().to("cpu", torch.float32).numpy() for n, t in out.items()}

    return Stage2Serving(run, spec(example), spec({n: example_out[n].float() for n in module.output_names}))


def dynamic_batch_onnx(seg, cache_dir: str | None) -> str:
    """The model's ONNX export with a symbolic batch, cached beside ``--backend onnxruntime``'s."""
    from rtseg.export.cache import default_cache_dir, onnx_cache_key
    from rtseg.export.onnx_export import export_onnx

    folder = cache_dir or default_cache_dir()
    path = os.path.join(folder, f"{seg.config.name}-{onnx_cache_key(seg.config, seg.weights_path)}-dynbatch.onnx")
    from rtseg.export.onnx_export import stage2_path_for

    wanted = [path, os.path.splitext(path)[0] + ".json"]
    if seg.family.stage2(seg.net, seg.config) is not None:  # a cache from before stage 2 was exported lacks it
        wanted.append(stage2_path_for(path))
    if not all(os.path.isfile(p) for p in wanted):
        log.info("exporting %s with a dynamic batch to %s (once)", seg.config.name, path)
        export_onnx(seg.net, seg.config, path, dynamic_batch=True, weights=seg.weights_path)
    return path


def serve(settings: ServeSettings, *, on_ready=None) -> int:
    """Run the server until SIGINT / SIGTERM (or until Triton itself dies); returns the exit code."""
    if settings.runtime not in RUNTIMES:
        raise ConfigError(f"unknown serve runtime '{settings.runtime}', expected one of {', '.join(RUNTIMES)}")
    for what, value, lo in (("--max-batch", settings.max_batch_size, 1), ("--queue-delay-us", settings.queue_delay_us, 0),
                            ("--instances", settings.instances, 1)):
        if not isinstance(value, int) or value < lo:
            raise ConfigError(f"{what} must be an integer >= {lo}, got {value!r}")
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
    except ImportError as exc:
        raise EngineError(f"rtseg serve needs PyTriton ({exc.name or exc}): pip install 'rtseg[triton]'") from None
    ports = settings.ports()
    check_ports_free(settings.host, ports)
    run, input_shape, output_shapes, stage2 = _make_infer(settings)
    libpython_env_fix()
    _point_pytriton_at(stub_env(settings.cache_dir))

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        return run(images)

    def infer_stage2(requests) -> list[dict[str, np.ndarray]]:
        # no @batch: each request is one frame's K RoIs, run on its own (see the bind below)
        return [stage2.run({n: r[n] for n, _, _ in stage2.inputs}) for r in requests]

    restricted = ["model-repository", "trace", "logging"]
    if settings.host not in LOOPBACK:
        restricted.append("shared-memory")
    config = TritonConfig(grpc_address=settings.host, grpc_port=ports["gRPC"], http_address=settings.host,
                          http_port=ports["HTTP"], metrics_address=settings.host, metrics_port=ports["metrics"],
                          allow_metrics=True, exit_on_error=True, log_verbose=0)
    for name in ("pytriton", "pytriton.triton"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    stop = threading.Event()

    def on_term(*_):
        stop.set()
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=restricted)) as triton:
            triton.bind(model_name=settings.model, infer_func=[infer] * settings.instances,
                        inputs=[Tensor(name="images", dtype=np.float32, shape=input_shape)],
                        outputs=[Tensor(name=n, dtype=np.float32, shape=s) for n, s in output_shapes.items()],
                        config=ModelConfig(max_batch_size=settings.max_batch_size,
                                           batcher=DynamicBatcher(max_queue_delay_microseconds=settings.queue_delay_us)),
                        strict=True)
            if stage2 is not None:
                # batching off (max_batch_size 0, dims with K as -1): the first axis of a stage-2
                # tensor is one frame's K RoIs, not a batch of frames, and K differs per frame
                triton.bind(model_name=stage2_name(settings.model), infer_func=[infer_stage2] * settings.instances,
                            inputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in stage2.inputs],
                            outputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in stage2.outputs],
                            config=ModelConfig(batching=False), strict=True)
            served = settings.model + (f" and {stage2_name(settings.model)}" if stage2 is not None else "")
            message = (f"serving {served} ({settings.runtime}) on gRPC {settings.host}:{ports['gRPC']}, "
                       f"HTTP {settings.host}:{ports['HTTP']}, metrics {settings.host}:{ports['metrics']}; "
                       f"clients: --backend triton://{settings.host}:{ports['gRPC']}/{settings.model}")
            print(f"rtseg: {message}", flush=True)
            if on_ready is not None:
                on_ready()
            triton.serve()
        if not stop.is_set():
            raise EngineError(f"the Triton server process for {settings.model} ended by itself (killed, or out of memory?)")
    except KeyboardInterrupt:
        pass
    except EngineError:
        raise
    except Exception as exc:  # PyTriton raises its own types; one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"Triton server for {settings.model} failed: {first[:300]}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    left = _wait_for_children(timeout=30.0)
    if left:
        log.warning("Triton server processes %s still running 30 s after the stop", ", ".join(map(str, left)))
    print("rtseg: Triton server stopped", flush=True)
    return 0


def _children(pid: int, name: str = "tritonserver") -> list[int]:
    """Running processes whose parent is ``pid`` and whose command line holds ``name``
    (Linux /proc; empty elsewhere). multiprocessing's resource tracker, also a child, ends
    only after this process, so it is not waited for."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if name.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _wait_for_children(timeout: float) -> list[int]:
    """Wait until tritonserver (PyTriton's child) and its stubs have exited, so a stopped
    ``rtseg serve`` leaves nothing holding its ports; returns those still running."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = _children(os.getpid())
        if not left or time.monotonic() > deadline:
            return left
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
