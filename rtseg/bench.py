"""``rtseg bench``: how fast each model runs here, per stage, with the spread.

For every combination of models x backends x frame sizes x precisions x batch sizes, the
same synthetic video (an MJPG file, so decoding is real work) is read, segmented, rendered
and published over ZeroMQ (loopback, nobody subscribed: the message is still encoded and
handed to ZeroMQ), one frame (or one batch) at a time:

    decode -> preprocess -> inference -> postprocess -> render -> publish

``--warmup`` frames first (not timed: kernel selection, allocator growth, lazy exports), then
``--frames`` timed frames. Pre-processing, inference and post-processing are one
``Segmenter.process_batch`` call, the one ``rtseg run`` makes (``--batch``, ``fp16`` =
``rtseg run --half``), and their times are the ones it reports: on a CUDA device CUDA events
on the worker's stream, read once the results are on the host (:mod:`rtseg.device`), so a
stage's time is the time its GPU work took, not the time to queue it, and nothing
synchronises the device to measure. Decode, render and publish are host work, timed by the
host clock. Reported per stage and end to end: mean, p50, p95, p99 milliseconds; FPS is
frames / the summed end-to-end time. With ``--batch`` above 1, each stage's per-frame time is
the batch's time / batch size and the end-to-end latency is the batch's time (what each
frame in it waits, not counting the wait for the batch to fill).

Then, for batch 1, the same frames go through the threaded pipeline (``rtseg run``'s
defaults: on a CPU two inference workers of cores / 2 threads each) doing the same work,
and its FPS is compared with the one-frame-at-a-time FPS measured above (``pipeline /
sequential``). ``--no-pipeline`` skips it.

The network's input size is part of the model variant (anchors, grids: ``rtseg models``);
``--sizes`` are the sizes of the video frames, which decoding, pre-processing, mask pasting,
rendering and publishing scale with.

The machine (CPU model and cores, GPU, library versions) and the date go with every result.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtseg.errors import ConfigError, RtsegError

log = logging.getLogger("rtseg.bench")

#: stages timed per frame, in pipeline order
STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "publish")
PRECISIONS = ("fp32", "fp16")

#: ``--models all``: the variants that run in real time on a CPU, one or more per family:
#: rtseg's 384-px models (the full-size official variants take 0.3-2.3 s per frame on 2 CPU
#: cores, BENCHMARKS.md, so all 26 at 50 frames x 2 backends would take hours there).
#: ``--models every`` is every listed variant (for a GPU).
def realtime_models() -> list[str]:
    from rtseg.models import MODELS

    return [name for name, cfg in MODELS.items() if max(cfg.input_size) <= 384]


BENCH_EXAMPLES = """\
models:
  all     the variants that run in real time on a CPU: rtseg's 384-px models, at least one
          per family (yolact_resnet18_half_384, yolact_resnet18_384,
          centermask_lite_vovnet19_quarter_384, solov2_light_resnet18_half_384)
  every   every variant 'rtseg models' lists (the full-size ones take 0.3-2.3 s a frame
          on a 2-core CPU: meant for a GPU)
  or a comma-separated list of names

examples:
  rtseg bench                                         default model, torch, 100 frames 480x640
  rtseg bench --models all --backends torch,onnxruntime --frames 50 --plot bench.png
  rtseg bench --models yolact_resnet18_half_384 --sizes 480x640,720x1280 --batch 1,4 --json out.json
  rtseg bench --device cuda --precisions fp32,fp16 --backends torch,onnxruntime
"""


# -- the machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What a figure was measured on: CPU, cores, memory, GPU, OS and library versions, and
    the load average when it was taken (the machine may be shared)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    versions = {d: _version(d) for d in ("rtseg", "torch", "torchvision", "onnxruntime", "opencv-python-headless",
                                         "opencv-python", "numpy", "pyzmq", "tensorrt")}
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": mem_gib, "gpu": gpu,
            "cuda": torch.version.cuda if gpu else None, "os": platform.platform(),
            "python": platform.python_version(), "load_average_1_5_15": load,
            "versions": {k: v for k, v in versions.items() if v is not None}}


# -- statistics ---------------------------------------------------------------------------------
def latency_stats(samples_ms: list[float] | np.ndarray) -> dict[str, float]:
    """mean, p50, p95, p99 (milliseconds) of latency samples; NaN when there are none."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {k: float("nan") for k in ("mean", "p50", "p95", "p99")}
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99))}


# -- arguments ----------------------------------------------------------------------------------
def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_size(text: str) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (H x W), or :class:`ConfigError`."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--sizes takes HxW values like 480x640, got '{text}'") from None
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        raise ConfigError(f"--sizes needs 16 <= H, W <= 8192, got '{text}'")
    return h, w


def _int_arg(name: str, text: str, lo: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} takes an integer >= {lo}, got '{text}'") from None
    if value < lo:
        raise ConfigError(f"{name} takes an integer >= {lo}, got {value}")
    return value


@dataclass(frozen=True)
class BenchPlan:
    """Validated settings of one ``rtseg bench`` run."""

    models: list[str]
    backends: list[str]
    sizes: list[tuple[int, int]]
    precisions: list[str]
    batches: list[int]
    frames: int
    warmup: int
    device: str
    threads: int | None
    workers: int | None
    pipeline: bool
    weights: dict[str, str] = field(default_factory=dict)
    engines: dict[str, str] = field(default_factory=dict)
    score_threshold: float = 0.3


def _model_paths(items: list[str], option: str) -> dict[str, str]:
    """``--weights`` / ``--engine`` values, ``MODEL=PATH`` each, as ``{model: path}``; checked
    without torch (:data:`rtseg.preflight.MODEL_NAMES`)."""
    from rtseg.preflight import MODEL_NAMES

    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or model not in MODEL_NAMES or not path:
            raise ConfigError(f"{option} takes MODEL=PATH with a model from 'rtseg models', got '{item}'")
        if not os.path.isfile(path):
            raise ConfigError(f"{option} {item}: file '{path}' does not exist")
        out[model] = path
    return out


def plan_from_args(args: argparse.Namespace) -> BenchPlan:
    """Check every option before any slow work; each problem is one :class:`ConfigError`.

    The output paths, model names and the device's spelling are checked before torch is
    imported (7-50 s on a busy machine), the rest after."""
    from rtseg.preflight import MODEL_NAMES, check_device_spelling, check_output_file

    for option, path in (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot)):
        if path:
            check_output_file(option, path)
    for m in _split(args.models):
        if m not in ("all", "every") and m not in MODEL_NAMES:
            raise ConfigError(f"unknown model '{m}' in --models, expected 'all', 'every' or names from 'rtseg models'")
    weights, engines = _model_paths(args.weights, "--weights"), _model_paths(args.engine, "--engine")
    check_device_spelling(args.device)
    if args.plot:
        _import_pyplot()  # fail now, not after the measurements

    from rtseg.backends import BACKENDS
    from rtseg.models import MODELS
    from rtseg.segmenter import parse_device

    names = _split(args.models)
    if names == ["all"]:
        models = realtime_models()
    elif names == ["every"]:
        models = list(MODELS)
    else:
        models = names
    if not models:
        raise ConfigError("--models needs at least one model name, 'all' or 'every'")
    for m in models:
        if m not in MODELS:
            raise ConfigError(f"unknown model '{m}' in --models, expected 'all', 'every' or names from 'rtseg models'")
    backends = _split(args.backends)
    for b in backends or [""]:
        if b not in BACKENDS:
            raise ConfigError(f"unknown backend '{b}' in --backends, expected a list of {', '.join(BACKENDS)}")
    precisions = _split(args.precisions)
    for p in precisions or [""]:
        if p not in PRECISIONS:
            raise ConfigError(f"unknown precision '{p}' in --precisions, expected a list of {', '.join(PRECISIONS)}")
    sizes = [parse_size(s) for s in _split(args.sizes)] or [parse_size(args.sizes)]
    batches = [_int_arg("--batch", b, 1) for b in _split(args.batch)] or [_int_arg("--batch", args.batch, 1)]
    frames = _int_arg("--frames", args.frames, 1)
    warmup = _int_arg("--warmup", args.warmup, 0)
    threads = _int_arg("--threads", args.threads, 1) if args.threads is not None else None
    workers = _int_arg("--workers", args.workers, 1) if args.workers is not None else None
    parse_device(args.device)

    return BenchPlan(models=models, backends=backends, sizes=sizes, precisions=precisions, batches=batches,
                     frames=frames, warmup=warmup, device=args.device, threads=threads, workers=workers,
                     pipeline=not args.no_pipeline, weights=weights, engines=engines)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on ``rtseg``'s sub-command parsers (or any ``add_subparsers()``)."""
    from rtseg.defaults import DEFAULT_MODEL

    p = subparsers.add_parser("bench", help="per-stage latency and FPS of models x backends x sizes on this machine",
                              description=__doc__, epilog=BENCH_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    # values are parsed in plan_from_args so that every mistake is one 'rtseg: error:' line
    p.add_argument("--models", default=DEFAULT_MODEL, help=f"'all', 'every' or names (default {DEFAULT_MODEL})")
    p.add_argument("--backends", default="torch", help="comma-separated: torch, onnxruntime, tensorrt (default torch)")
    p.add_argument("--sizes", default="480x640", help="video frame sizes HxW, comma-separated (default 480x640)")
    p.add_argument("--precisions", default="fp32",
                   help="fp32 and/or fp16 (fp16: CUDA only, as 'rtseg run --half': torch autocast, a float16 ONNX "
                        "graph, an fp16 engine) (default fp32)")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1; onnxruntime exports one "
                                                "graph per batch size; tensorrt uses the engine's)")
    p.add_argument("--frames", default="100", help="timed frames per combination (default 100)")
    p.add_argument("--warmup", default="5", help="untimed frames first (default 5)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", help="torch / ONNX Runtime CPU threads of the one-at-a-time runs (default: all cores)")
    p.add_argument("--workers", help="inference workers of the pipeline run (default as 'rtseg run': 2 on a CPU, 1 on a GPU)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the threaded-pipeline comparison")
    p.add_argument("--streams", type=int, metavar="N",
                   help="instead: N synthetic streams (the first --sizes) through the real multi-stream Pipeline, "
                        "batched as 'rtseg run' batches them; total FPS and per-stream p95 latency")
    p.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                   help="weights for a model (repeatable; default: built-in weights, else a random initialisation)")
    p.add_argument("--engine", action="append", default=[], metavar="MODEL=PATH",
                   help="a TensorRT engine (or, for onnxruntime, an .onnx file) for a model (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", metavar="FILE", help="write every result (all percentiles, the machine) as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one row per combination and stage as CSV")
    p.add_argument("--plot", metavar="PNG", help="draw FPS and the per-stage breakdown (needs matplotlib)")
    return p


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class CaseResult:
    """One model x backend x size x precision x batch combination."""

    model: str
    family: str
    backend: str
    frame_size: tuple[int, int]
    input_size: tuple[int, int]
    precision: str
    batch: int
    weights: str = ""
    threads: int = 0
    frames: int = 0
    skipped: str | None = None  #: why this combination was not measured
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    end_to_end_ms: dict[str, float] = field(default_factory=dict)
    fps: float = float("nan")
    instances_per_frame: float = float("nan")
    pipeline: dict[str, Any] | None = None

    def label(self) -> str:
        h, w = self.frame_size
        extra = "" if self.batch == 1 else f" b{self.batch}"
        return f"{self.model} {self.backend} {h}x{w} {self.precision}{extra}"


class _DiscardWindow:
    """A render target that keeps nothing: makes the pipeline render every frame (as the
    one-at-a-time loop does) without a display or a video encoder."""

    def show(self, image: np.ndarray) -> bool:
        return True


def _skip_reason(plan: BenchPlan, backend: str, precision: str, batch: int) -> str | None:
    cuda = plan.device.startswith("cuda")
    if precision == "fp16" and not cuda:
        return "fp16 is measured on CUDA devices only (CPU kernels would emulate it)"
    if backend == "tensorrt":
        if not cuda:
            return "tensorrt needs --device cuda"
    return None


def _onnx_path(seg: Any, cache_dir: str | None, batch: int, half: bool) -> str:
    """The cached export for this batch size and precision (``rtseg run``'s cache for b1 fp32)."""
    from rtseg.export.cache import cached_onnx, default_cache_dir, onnx_cache_key
    from rtseg.export.onnx_export import export_onnx

    if batch == 1 and not half:
        return cached_onnx(seg.net, seg.config, seg.weights_path, cache_dir)
    folder = cache_dir or default_cache_dir()
    key = onnx_cache_key(seg.config, seg.weights_path, batch=batch)
    path = os.path.join(folder, f"{seg.config.name}-{key}{'-fp16' if half else ''}.onnx")
    if not (os.path.isfile(path) and os.path.isfile(os.path.splitext(path)[0] + ".json")):
        log.info("exporting %s (batch %d%s) to %s", seg.config.name, batch, ", float16" if half else "", path)
        export_onnx(seg.net, seg.config, path, batch=batch, weights=seg.weights_path, half=half)
    return path


def make_segmenter(plan: BenchPlan, model: str, backend: str, precision: str, batch: int,
                   cache_dir: str | None = None) -> Any:
    """A :class:`Segmenter` for one combination (threads as currently configured)."""
    from rtseg.segmenter import Segmenter

    common = dict(weights=plan.weights.get(model), device=plan.device, score_threshold=plan.score_threshold)
    half = precision == "fp16"  # rtseg run --half
    if backend == "torch":
        return Segmenter(model, half=half, **common)
    if backend == "tensorrt":
        if model not in plan.engines:
            raise ConfigError(f"--backends tensorrt needs --engine {model}=PATH (build one with "
                              f"'rtseg export --model {model} --format engine --precision {precision}')")
        return Segmenter(model, backend="tensorrt", engine=plan.engines[model], half=half, **common)
    engine = plan.engines.get(model)
    if engine is None:
        torch_seg = Segmenter(model, **common)
        engine = _onnx_path(torch_seg, cache_dir, batch, half)
    return Segmenter(model, backend="onnxruntime", engine=engine, half=half, **common)


def _process_group(seg: Any, source: Any, batch: int, publisher: Any,
                   class_names: Any) -> tuple[list[float], int, int] | None:
    """One batch through every stage; returns (seconds per stage, frames, instances) or None at the end.

    The segmenter's three stages are one :meth:`Segmenter.process_batch` call, exactly what
    ``rtseg run`` runs, with its own stage times (each frame's share, summed back to the
    batch's); decode, render and publish are timed here on the host clock."""
    from rtseg.render import render

    t0 = time.perf_counter()
    frames = []
    for _ in range(batch):
        frame = source.read()
        if frame is None:
            break
        frames.append(frame)
    if not frames:
        return None
    t1 = time.perf_counter()
    results = seg.process_batch([f.image for f in frames])
    stages = [0.0, 0.0, 0.0]
    for f, (instances, times) in zip(frames, results):
        f.instances = instances
        stages[0] += times.preprocess
        stages[1] += times.inference
        stages[2] += times.postprocess
    t4 = time.perf_counter()
    for f in frames:
        f.rendered = render(f.image, f.instances, class_names)
    t5 = time.perf_counter()
    for f in frames:
        publisher.publish(f)
    t6 = time.perf_counter()
    return [t1 - t0, *stages, t5 - t4, t6 - t5], len(frames), sum(len(f.instances) for f in frames)


def write_video(path: str, size: tuple[int, int], frames: int, *, seed: int = 7, fps: float = 30.0) -> None:
    """An MJPG file of ``frames`` frames of the synthetic video (``seed``), ``size = (H, W)``."""
    import cv2

    from rtseg.synthetic import SyntheticVideo

    video = SyntheticVideo(seed=seed, size=size)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    if not writer.isOpened():
        raise ConfigError(f"cannot write the video '{path}': OpenCV's MJPG writer did not open it")
    for i in range(frames):
        writer.write(video.frame(i).image)
    writer.release()


def measure_case(plan: BenchPlan, result: CaseResult, seg: Any, video: str, publisher: Any,
                 progress: Any) -> None:
    """Warm-up, then the timed one-at-a-time run of one combination; fills ``result``."""
    from rtseg.sources import open_source

    for count, timed in ((plan.warmup, False), (plan.frames, True)):
        if count == 0:
            continue
        source = open_source(video, max_frames=count)
        per_stage: list[list[float]] = [[] for _ in STAGES]
        totals, done, found = [], 0, 0
        try:
            while (step := _process_group(seg, source, result.batch, publisher, seg.class_names)) is not None:
                seconds, n, inst = step
                done += n
                found += inst
                progress.update(n)
                if timed:
                    for i, s in enumerate(seconds):
                        per_stage[i].append(1000 * s / n)
                    totals.append(1000 * sum(seconds))
        finally:
            source.close()
    result.frames = done
    result.stages_ms = {name: latency_stats(v) for name, v in zip(STAGES, per_stage)}
    result.end_to_end_ms = latency_stats(totals)
    result.fps = 1000 * done / sum(totals) if totals else float("nan")
    result.instances_per_frame = found / done if done else float("nan")


def measure_pipeline(plan: BenchPlan, seg: Any, video: str, publisher: Any, workers: int, progress: Any) -> dict:
    """FPS and latency of the threaded pipeline doing the same work on the same video."""
    from rtseg.pipeline import Pipeline
    from rtseg.sources import open_source

    pipeline = Pipeline(open_source(video, max_frames=plan.frames), seg, publisher=publisher,
                        window=_DiscardWindow(), workers=workers, on_frame=lambda _f: progress.update(1))
    summary = pipeline.run()
    return {"fps": summary.fps, "frames": summary.frames_processed, "workers": workers,
            "end_to_end_ms": summary.stages_ms["end to end"]}


def bench_streams(plan: BenchPlan, n: int) -> int:
    """``rtseg bench --streams N``: N synthetic streams (non-live: every frame, back-pressure)
    through :class:`rtseg.pipeline.Pipeline` with ``rtseg run``'s default workers and batch
    (streams / workers, rounded up); prints total FPS, mean frames per model call, and each
    stream's FPS and p95 end-to-end latency."""
    from rtseg.cli import default_workers
    from rtseg.pipeline import Pipeline
    from rtseg.segmenter import configure_threads
    from rtseg.sources import open_source

    if n < 1:
        raise ConfigError(f"--streams must be >= 1, got {n}")
    model, backend = plan.models[0], plan.backends[0]
    reason = _skip_reason(plan, backend, plan.precisions[0], 1)
    if reason:
        raise ConfigError(f"--streams {n} with --backends {backend} --precisions {plan.precisions[0]}: {reason}")
    h, w = plan.sizes[0]
    workers = plan.workers or default_workers(plan.device)
    configure_threads(None, workers)
    seg = make_segmenter(plan, model, backend, plan.precisions[0], 1)  # fp16: as rtseg run --half
    seg.warmup()
    sources = [open_source(f"synthetic:{i}:{w}x{h}") for i in range(n)]
    pipeline = Pipeline(sources, seg, window=_DiscardWindow() if n == 1 else {str(i): _DiscardWindow() for i in range(n)},
                        max_frames=plan.frames, workers=workers, batch=-(-n // workers))
    s = pipeline.run()
    print(f"{model} {backend} {h}x{w} {plan.precisions[0]}, {n} stream(s), {workers} worker(s), batch {-(-n // workers)}: "
          f"{s.fps:.2f} FPS total, {s.mean_batch:.2f} frames per model call")
    rows = s.streams or {"0": {"fps": s.fps, "latency_ms": s.stages_ms["end to end"]}}
    for name, p in rows.items():
        print(f"  stream {name}: {p['fps']:.2f} FPS, p95 {p['latency_ms']['p95']:.0f} ms")
    return 0


def run_bench(plan: BenchPlan, *, progress: bool = True) -> dict[str, Any]:
    """Measure every combination of ``plan``; returns ``{"date", "machine", "settings", "results"}``."""
    import torch
    from tqdm import tqdm

    from rtseg.models import MODELS
    from rtseg.publisher import Publisher
    from rtseg.segmenter import configure_threads

    workers = plan.workers or (1 if plan.device.startswith("cuda") else min(2, os.cpu_count() or 1))
    cases = [(m, b, s, p, n) for m in plan.models for b in plan.backends for s in plan.sizes
             for p in plan.precisions for n in plan.batches]
    per_case = plan.warmup + plan.frames
    total = sum(per_case + (plan.frames if plan.pipeline and n == 1 else 0) for *_, n in cases)
    results: list[CaseResult] = []
    tmp = tempfile.mkdtemp(prefix="rtseg-bench-")
    bar = tqdm(total=total, unit="frame", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        videos = {}
        for size in plan.sizes:
            videos[size] = os.path.join(tmp, f"bench_{size[0]}x{size[1]}.avi")
            write_video(videos[size], size, max(plan.frames, plan.warmup))
        segs: dict[tuple, Any] = {}
        for model, backend, size, precision, batch in cases:
            cfg = MODELS[model]
            result = CaseResult(model=model, family=cfg.family, backend=backend, frame_size=size,
                                input_size=tuple(cfg.input_size), precision=precision, batch=batch)
            results.append(result)
            bar.set_description(result.label())
            reason = _skip_reason(plan, backend, precision, batch)
            if reason:
                result.skipped = reason
                bar.update(per_case + (plan.frames if plan.pipeline and batch == 1 else 0))
                continue
            threads = configure_threads(plan.threads)
            key = (model, backend, precision, batch if backend != "torch" else 1, "seq")
            if key not in segs:
                segs.clear()  # one model in memory at a time
                segs[key] = make_segmenter(plan, model, backend, precision, batch)
            seg = segs[key]
            result.weights = seg.weights_origin if seg.weights_origin in ("built-in", "random initialisation") \
                else os.path.basename(seg.weights_origin)
            result.threads = threads
            with Publisher("tcp://127.0.0.1:*", seg.class_names) as publisher:
                measure_case(plan, result, seg, videos[size], publisher, bar)
                if plan.pipeline and batch == 1:
                    configure_threads(None, workers)
                    # ONNX Runtime fixes its thread count when the session is made: a new one
                    pseg = seg
                    if backend != "torch":
                        pseg = make_segmenter(plan, model, backend, precision, 1)
                        pseg.warmup()
                    result.pipeline = measure_pipeline(plan, pseg, videos[size], publisher, workers, bar)
                    result.pipeline["threads_per_worker"] = torch.get_num_threads()
                    result.pipeline["sequential_fps"] = result.fps
                    result.pipeline["ratio_to_sequential"] = result.pipeline["fps"] / result.fps
            configure_threads(plan.threads)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    settings = {k: v for k, v in plan.__dict__.items() if k not in ("weights", "engines")}
    settings["weights"] = {k: os.path.basename(v) for k, v in plan.weights.items()}
    settings["pipeline_workers"] = workers
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
            "settings": settings, "results": [r.__dict__ for r in results]}


# -- reporting ----------------------------------------------------------------------------------
def _fmt(v: float, digits: int = 1) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """Two tables: end to end (latency percentiles, FPS, pipeline) and per-stage means."""
    m = report["machine"]
    load = m.get("load_average_1_5_15")
    lines = [f"{report['date']} · {m['cpu']} ({m['cores']} cores) · GPU {m['gpu'] or 'none'} · "
             f"torch {m['versions'].get('torch')} · onnxruntime {m['versions'].get('onnxruntime', '-')} · "
             f"load average {load[0] if load else '-'}",
             f"{report['settings']['frames']} timed frames after {report['settings']['warmup']} warm-up; "
             "milliseconds per frame"]
    head = (f"{'model':<38}{'backend':<12}{'frame':>9}{'prec':>5}{'b':>3}{'mean':>8}{'p50':>8}{'p95':>8}{'p99':>8}"
            f"{'FPS':>7}{'pipe FPS':>9}{'pipe/seq':>9}{'inst':>6}  weights")
    lines += ["", head, "-" * len(head)]
    for r in report["results"]:
        h, w = r["frame_size"]
        lead = f"{r['model']:<38}{r['backend']:<12}{f'{h}x{w}':>9}{r['precision']:>5}{r['batch']:>3}"
        if r["skipped"]:
            lines.append(f"{lead}  skipped: {r['skipped']}")
            continue
        e, p = r["end_to_end_ms"], r["pipeline"] or {}
        weights = "random init" if r["weights"] == "random initialisation" else r["weights"]
        lines.append(f"{lead}{_fmt(e['mean']):>8}{_fmt(e['p50']):>8}{_fmt(e['p95']):>8}{_fmt(e['p99']):>8}"
                     f"{_fmt(r['fps']):>7}{_fmt(p.get('fps', float('nan'))):>9}"
                     f"{_fmt(p.get('ratio_to_sequential', float('nan')), 2):>9}{_fmt(r['instances_per_frame']):>6}"
                     f"  {weights}")
    head2 = f"{'per-stage mean ms (p95)':<38}{'backend':<12}{'frame':>9}{'prec':>5}{'b':>3}" + \
        "".join(f"{s:>15}" for s in STAGES)
    lines += ["", head2, "-" * len(head2)]
    for r in report["results"]:
        if r["skipped"]:
            continue
        h, w = r["frame_size"]
        cells = "".join(f"{_fmt(r['stages_ms'][s]['mean']) + ' (' + _fmt(r['stages_ms'][s]['p95']) + ')':>15}"
                        for s in STAGES)
        lines.append(f"{r['model']:<38}{r['backend']:<12}{f'{h}x{w}':>9}{r['precision']:>5}{r['batch']:>3}{cells}")
    if any(r["weights"] == "random initialisation" for r in report["results"] if not r["skipped"]):
        lines += ["", "random init: no trained weights (pass --weights MODEL=PATH); the network's time is "
                      "real, post-processing sees untrained candidates"]
    return "\n".join(lines)


CSV_FIELDS = ("date", "model", "family", "backend", "frame_size", "input_size", "precision", "batch", "threads",
              "weights", "stage", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "fps", "frames", "skipped",
              "cpu", "cores", "gpu", "torch", "onnxruntime", "load_average_1m")


def write_csv(report: dict[str, Any], path: str) -> None:
    """One row per combination and stage (``decode`` .. ``publish``, ``end to end``,
    ``pipeline``); the machine on every row so a row stands on its own."""
    m = report["machine"]
    load = m.get("load_average_1_5_15")
    machine = {"date": report["date"], "cpu": m["cpu"], "cores": m["cores"], "gpu": m["gpu"] or "",
               "torch": m["versions"].get("torch", ""), "onnxruntime": m["versions"].get("onnxruntime", ""),
               "load_average_1m": load[0] if load else ""}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in report["results"]:
            base = {**machine, "model": r["model"], "family": r["family"], "backend": r["backend"],
                    "frame_size": "x".join(map(str, r["frame_size"])), "input_size": "x".join(map(str, r["input_size"])),
                    "precision": r["precision"], "batch": r["batch"], "threads": r["threads"],
                    "weights": r["weights"], "frames": r["frames"], "skipped": r["skipped"] or ""}
            if r["skipped"]:
                writer.writerow({**base, "stage": ""})
                continue
            for stage in STAGES:
                s = r["stages_ms"][stage]
                writer.writerow({**base, "stage": stage, **{f"{k}_ms": round(v, 4) for k, v in s.items()}})
            writer.writerow({**base, "stage": "end to end", "fps": round(r["fps"], 4),
                             **{f"{k}_ms": round(v, 4) for k, v in r["end_to_end_ms"].items()}})
            if r["pipeline"]:
                p = r["pipeline"]
                writer.writerow({**base, "stage": "pipeline", "fps": round(p["fps"], 4), "frames": p["frames"],
                                 "threads": p["threads_per_worker"],
                                 **{f"{k}_ms": round(v, 4) for k, v in p["end_to_end_ms"].items()}})


def _import_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib (or pip install 'rtseg[plot]')") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def write_plot(report: dict[str, Any], path: str) -> None:
    """A PNG: FPS (one at a time and pipelined) beside the per-stage latency breakdown."""
    plt = _import_pyplot()
    rows = [r for r in report["results"] if not r["skipped"]]
    labels = [CaseResult(**{k: r[k] for k in ("model", "family", "backend", "frame_size", "input_size",
                                                 "precision", "batch")}).label() for r in rows]
    y = np.arange(len(rows))
    fig, (ax_fps, ax_ms) = plt.subplots(1, 2, figsize=(14, 1.6 + 0.55 * max(len(rows), 1)), sharey=True,
                                        constrained_layout=True)
    seq = [r["fps"] for r in rows]
    pipe = [r["pipeline"]["fps"] if r["pipeline"] else 0.0 for r in rows]
    ax_fps.barh(y - 0.2, seq, height=0.4, label="one frame at a time", color="#4477aa")
    ax_fps.barh(y + 0.2, pipe, height=0.4, label="threaded pipeline", color="#ee6677")
    ax_fps.set_yticks(y, labels, fontsize=8)
    ax_fps.invert_yaxis()
    ax_fps.set_xlabel("frames per second")
    # legends below the axes: inside, they would cover the longest bars
    ax_fps.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    ax_fps.set_title("FPS")
    left = np.zeros(len(rows))
    colors = ("#bbbbbb", "#66ccee", "#4477aa", "#228833", "#ccbb44", "#aa3377")
    for stage, color in zip(STAGES, colors):
        v = np.array([r["stages_ms"][stage]["mean"] for r in rows])
        ax_ms.barh(y, v, left=left, height=0.6, label=stage, color=color)
        left += v
    ax_ms.set_xlabel("mean milliseconds per frame")
    ax_ms.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    ax_ms.set_title("where the time goes")
    m = report["machine"]
    fig.suptitle(f"rtseg bench {report['date'][:10]} · {m['cpu']} ({m['cores']} cores) · GPU {m['gpu'] or 'none'}",
                 fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    """``rtseg bench``: measure, print the tables, write ``--json`` / ``--csv`` / ``--plot``."""
    plan = plan_from_args(args)
    if getattr(args, "streams", None) is not None:
        return bench_streams(plan, args.streams)
    report = run_bench(plan, progress=not (args.no_progress or getattr(args, "quiet", False)))
    report["command"] = getattr(args, "command_line", None) or "rtseg " + " ".join(sys.argv[1:])
    if all(r["skipped"] for r in report["results"]):
        reasons = sorted({r["skipped"] for r in report["results"]})
        raise ConfigError(f"nothing could be measured with these settings: {'; '.join(reasons)}")
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.csv:
        write_csv(report, args.csv)
    if args.plot:
        write_plot(report, args.plot)
    written = [p for p in (args.json, args.csv, args.plot) if p]
    if written:
        print("wrote " + ", ".join(written))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rtseg.bench ...``: the same command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="rtseg")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(["bench", *argv])
    args.command_line = " ".join(["rtseg bench", *argv])
    logging.basicConfig(level=logging.INFO,
                        format="rtseg: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return cmd_bench(args)
    except RtsegError as exc:
        print(f"rtseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rtseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
