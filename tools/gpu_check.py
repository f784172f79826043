"""The one script a GPU session runs (about 6 minutes on one CUDA GPU): what rtseg's GPU paths
do on that GPU, written as a table to paste into BENCHMARKS.md.

    python tools/gpu_check.py [--out gpu_check_out] [--wheels DIR] [--minutes 6] [--no-install]
    bash tools/gpu_check.sh ...            # the same, with the checkout's .venv if there is one

Steps (each bounded; a step that fails is reported and the next one runs):

1. install what is missing: CuPy (the kernels' launcher) and TensorRT-RTX from ``--wheels``
   (local wheels, ``pip --no-index``) or else the package index; datacenter TensorRT
   (``tensorrt-cu12``) is tried and reported if it cannot be had;
2. ``pytest -m gpu`` (the CUDA kernels against torch, ``--postprocess cuda`` against torch per
   family) and ``pytest -m tensorrt``;
2b. the GPU path does not serialise (:mod:`rtseg.device`): (a) a two-stream, two-worker
   pipeline run with ``torch.cuda.synchronize`` and ``torch.cuda.Stream.synchronize`` counted
   through wrappers (device-wide synchronisations must be 0; stream ones are the per-frame
   ``to_host`` wait) and ``torch.cuda.set_sync_debug_mode("warn")``'s count of synchronising
   calls; (b) ``process_batch`` against ``process`` per image on CUDA (batch of one: bit
   equal; batch of three: same detections); (d) ``--half``: fp16 against fp32 per model
   (detections, stage times) and ``rtseg run --half --batch 2`` on two streams; (c)
   ``benchmarks/multistream.py --device cuda --postprocess cuda`` at 1 and 4 streams;
3. engines for the built-in models: exported, built with TensorRT-RTX (targets: this GPU's
   compute capability where TensorRT-RTX can target it) and datacenter TensorRT where
   installed, at batch 1 and 8, fp32 and fp16 (``--half`` export, strongly typed), run
   against torch (max relative error of every head output). The report says plainly whether
   TensorRT-RTX engines run on this GPU (an H200, compute capability 9.0, is outside
   TensorRT-RTX's published matrix): where rtseg's manifest check refuses an engine, the
   engine is handed to TensorRT-RTX itself (validity, deserialization, one execution), so the
   verdict is the library's;
4. FPS and per-stage latency (preprocess / inference / post-processing, median ms) of the
   built-in models for torch CUDA, torch + rtseg's CUDA kernels, and each engine;
5. the CUDA kernels against torch / torchvision at 100 / 1k / 10k candidates and 720p / 1080p
   (``benchmarks/kernels.py``).

Writes ``OUT/gpu_check.md`` (the tables, with the date and the GPU) and ``OUT/gpu_check.json``.
Without a CUDA GPU it prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ("yolact_resnet18_half_384", "solov2_light_resnet18_half_384", "centermask_lite_vovnet19_quarter_384")
NO_GPU_EXIT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check", description="rtseg's GPU paths on this GPU, in one run")
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="where the report goes")
    p.add_argument("--wheels", type=Path, help="a folder of wheels to install from first (pip --no-index)")
    p.add_argument("--minutes", type=float, default=6.0, help="time budget; steps past it are skipped")
    p.add_argument("--no-install", action="store_true", help="install nothing")
    p.add_argument("--models", default=",".join(BUILTIN), help="comma-separated models (default the built-in three)")
    p.add_argument("--frames", type=int, default=30, help="timed frames per configuration")
    p.add_argument("--device", default="cuda:0")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.frames < 1:
        p.error("--minutes must be > 0 and --frames >= 1")
    args.models = [m for m in args.models.split(",") if m]
    return args


def gpu_or_none(device: str) -> dict | None:
    """The GPU's facts, or None when torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    props = torch.cuda.get_device_properties(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda}


class Report:
    def __init__(self, out: Path, minutes: float) -> None:
        self.out = out
        self.deadline = time.monotonic() + minutes * 60
        self.data: dict = {"date": datetime.date.today().isoformat(), "steps": {}}
        self.lines: list[str] = []
        self.after_step = None  # called after every step (main: write the report so far)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, fn, *args):
        if self.left() <= 0:
            self.data["steps"][name] = {"skipped": "time budget spent"}
            print(f"gpu_check: {name}: skipped (time budget spent)", flush=True)
            return None
        print(f"gpu_check: {name} ...", flush=True)
        t = time.monotonic()
        try:
            result = fn(*args)
            self.data["steps"][name] = {"seconds": round(time.monotonic() - t, 1), "result": result}
            return result
        except Exception as exc:  # a failed step is a finding, not the end of the run
            self.data["steps"][name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            print(f"gpu_check: {name} failed: {type(exc).__name__}: {exc}", flush=True)
            return None
        finally:
            if self.after_step is not None:
                self.after_step()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu_check.md").write_text("\n".join(self.lines) + "\n")


def _pip(*args: str, timeout: float = 240) -> bool:
    cmd = [sys.executable, "-m", "pip", "install", "-q", *args]
    return subprocess.run(cmd, timeout=timeout, capture_output=True, text=True).returncode == 0


def install(args) -> dict:
    """Install what is missing; what was there, what got installed, what could not be had."""
    wanted = {"cupy": ["cupy-cuda12x"], "tensorrt_rtx_bindings": ["tensorrt-rtx-cu12-bindings>=1.7,<1.8",
                                                                 "tensorrt-rtx-cu12-libs>=1.7,<1.8"],
              "tensorrt": ["tensorrt-cu12>=10,<11"]}
    done = {}
    for module, packages in wanted.items():
        if importlib.util.find_spec(module) is not None:
            done[module] = "present"
            continue
        if args.no_install:
            done[module] = "absent (--no-install)"
            continue
        ok = args.wheels is not None and _pip("--no-index", "--find-links", str(args.wheels), *packages)
        ok = ok or _pip(*packages)
        done[module] = "installed" if ok else "could not be installed"
    importlib.invalidate_caches()
    return done


def pytest_marker(marker: str, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, "-o", "addopts=", "tests"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"summary": f"timed out after {timeout:.0f} s"}
    tail = proc.stdout.strip().splitlines()
    return {"returncode": proc.returncode, "summary": tail[-1] if tail else proc.stderr[-300:],
            "failures": [l for l in tail if l.startswith("FAILED")][:20]}


def _time_stages(seg, image, frames: int) -> dict:
    seg.warmup(3)
    stages = [seg.process(image)[1] for _ in range(frames)]
    pre = statistics.median(s.preprocess for s in stages) * 1e3
    inf = statistics.median(s.inference for s in stages) * 1e3
    post = statistics.median(s.postprocess for s in stages) * 1e3
    return {"preprocess_ms": round(pre, 2), "inference_ms": round(inf, 2), "postprocess_ms": round(post, 2),
            "fps": round(1e3 / (pre + inf + post), 1)}


def torch_rows(args) -> list[dict]:
    import numpy as np

    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import SyntheticVideo

    image = SyntheticVideo(seed=7, size=(720, 1280)).frame(3).image
    rows = []
    for name in args.models:
        for post in ("torch", "cuda"):
            label = "torch CUDA" if post == "torch" else "torch + CUDA kernels"
            try:
                seg = Segmenter(name, device=args.device, postprocess=post)
                rows.append({"model": name, "runtime": label, "batch": 1, "precision": "fp32",
                             **_time_stages(seg, np.ascontiguousarray(image), args.frames)})
            except Exception as exc:
                rows.append({"model": name, "runtime": label, "error": f"{type(exc).__name__}: {exc}"})
    return rows


class SyncCounter:
    """Counts ``torch.cuda.synchronize`` (device-wide) and ``torch.cuda.Stream.synchronize``
    calls, from every thread, while installed (a context manager)."""

    def __init__(self) -> None:
        import threading

        self.device = 0
        self.stream = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "SyncCounter":
        import torch

        self._device, self._stream = torch.cuda.synchronize, torch.cuda.Stream.synchronize
        counter, device_sync, stream_sync = self, self._device, self._stream

        def synchronize(*a, **k):
            with counter._lock:
                counter.device += 1
            return device_sync(*a, **k)

        def stream_synchronize(stream, *a, **k):
            with counter._lock:
                counter.stream += 1
            return stream_sync(stream, *a, **k)

        torch.cuda.synchronize = synchronize
        torch.cuda.Stream.synchronize = stream_synchronize
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.cuda.synchronize, torch.cuda.Stream.synchronize = self._device, self._stream


def hot_path_syncs(args) -> dict:
    """(a): a pipeline run (2 synthetic streams, 2 workers, --postprocess cuda where it loads)
    with every explicit synchronisation counted; device-wide ones must be 0."""
    import warnings

    import torch

    from rtseg.pipeline import Pipeline
    from rtseg.segmenter import Segmenter
    from rtseg.sources import open_source

    rows = []
    for name in args.models:
        for post in ("torch", "cuda"):
            row = {"model": name, "postprocess": post}
            try:
                seg = Segmenter(name, device=args.device, postprocess=post)
                seg.warmup(2, (480, 640))  # outside the count: one-time costs
                sources = [open_source(f"synthetic:{i}:640x480") for i in range(2)]
                pipeline = Pipeline(sources, seg, max_frames=args.frames, workers=2, batch=1)
                with warnings.catch_warnings(record=True) as caught, SyncCounter() as count:
                    warnings.simplefilter("always")
                    debug_mode = torch.cuda.is_available()  # (the CPU run of this code in testing has none)
                    if debug_mode:
                        torch.cuda.set_sync_debug_mode("warn")
                    try:
                        summary = pipeline.run()
                    finally:
                        if debug_mode:
                            torch.cuda.set_sync_debug_mode("default")
                frames = summary.frames_processed
                debug = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
                row.update(frames=frames, device_syncs=count.device, stream_syncs=count.stream,
                           stream_syncs_per_frame=round(count.stream / max(frames, 1), 2),
                           sync_debug_warnings=len(debug), sync_debug_per_frame=round(len(debug) / max(frames, 1), 2),
                           sync_debug_examples=sorted(set(debug))[:5], fps=round(summary.fps, 1),
                           ok=count.device == 0)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
    return {"rows": rows, "ok": _all_ok(rows)}


def _all_ok(rows: list[dict]) -> bool:
    """Every row that ran passed, and at least one ran."""
    ran = [r for r in rows if "error" not in r]
    return bool(ran) and all(r.get("ok") for r in ran)


def _same_instances(a, b, tol: float) -> tuple[bool, float]:
    import numpy as np

    if len(a) != len(b) or not np.array_equal(a.class_ids, b.class_ids):
        return False, float("inf")
    err = float(np.abs(a.boxes - b.boxes).max()) if len(a) else 0.0
    return err <= tol, err


def batch_equals_process(args) -> dict:
    """(b): per model, ``process_batch`` against ``process`` per image on CUDA: a batch of one
    must be bit-equal; a batch of three the same detections (class ids, boxes within 0.5 px:
    cuDNN may choose other kernels for another batch size)."""
    import numpy as np

    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import SyntheticVideo

    video = SyntheticVideo(seed=7, size=(480, 640))
    images = [np.ascontiguousarray(video.frame(i).image) for i in (3, 9, 15)]
    rows = []
    for name in args.models:
        for post in ("torch", "cuda"):
            row = {"model": name, "postprocess": post}
            try:
                seg = Segmenter(name, device=args.device, postprocess=post)
                seg.warmup(1, (480, 640))
                single = [seg.process(im)[0] for im in images]
                one = seg.process_batch(images[:1])[0][0]
                three = [r[0] for r in seg.process_batch(images)]
                row["batch_of_one_equal"] = (len(one) == len(single[0]) and np.array_equal(one.boxes, single[0].boxes)
                                             and one.masks == single[0].masks)
                checks = [_same_instances(x, y, 0.5) for x, y in zip(three, single)]
                row["batch_of_three_same"] = all(ok for ok, _ in checks)
                row["batch_of_three_max_box_err_px"] = max(err for _, err in checks)
                row["instances"] = [len(x) for x in single]
                row["ok"] = row["batch_of_one_equal"] and row["batch_of_three_same"]
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
    return {"rows": rows, "ok": _all_ok(rows)}


def half_rows(args) -> dict:
    """(d): ``Segmenter(half=True)`` against fp32 per model (detections, stage times), then
    ``rtseg run --half --batch 2`` on two synthetic streams (the CLI path end to end)."""
    import numpy as np

    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import SyntheticVideo

    image = np.ascontiguousarray(SyntheticVideo(seed=7, size=(720, 1280)).frame(3).image)
    rows = []
    for name in args.models:
        row = {"model": name}
        try:
            fp32 = Segmenter(name, device=args.device)
            fp16 = Segmenter(name, device=args.device, half=True)
            a, b = fp32.process(image)[0], fp16.process(image)[0]
            row["instances_fp32"], row["instances_fp16"] = len(a), len(b)
            row["same_classes"] = len(a) == len(b) and bool(np.array_equal(a.class_ids, b.class_ids))
            row["max_box_err_px"] = float(np.abs(a.boxes - b.boxes).max()) if row["same_classes"] and len(a) else None
            row["fp32"] = _time_stages(fp32, image, args.frames)
            row["fp16"] = _time_stages(fp16, image, args.frames)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
    cmd = [sys.executable, "-m", "rtseg", "-q", "run", "--source", "synthetic:0:640x480", "--source",
           "synthetic:1:640x480", "--device", args.device, "--half", "--batch", "2", "--max-frames", "10"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        cli = {"command": " ".join(cmd[2:]), "returncode": proc.returncode,
               "tail": (proc.stdout + proc.stderr).strip().splitlines()[-6:]}
    except subprocess.TimeoutExpired:
        cli = {"command": " ".join(cmd[2:]), "returncode": None, "tail": ["timed out after 120 s"]}
    return {"rows": rows, "cli": cli}


def multistream(args, timeout: float) -> dict:
    """(c): ``benchmarks/multistream.py --device cuda --postprocess cuda`` at 1 and 4 streams."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "multistream.py"), "--streams", "1", "4", "--frames", "30",
           "--fps", "30", "--device", args.device, "--postprocess", "cuda"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "table": f"timed out after {timeout:.0f} s"}
    return {"returncode": proc.returncode, "table": proc.stdout[-3000:], "stderr": proc.stderr[-1000:]}


def engine_rows(args, gpu: dict, folder: Path) -> dict:
    """Build and run engines: per (flavour, model, batch, precision) whether it built, ran,
    matched torch, and its latency."""
    import torch

    from rtseg.backends.tensorrt_backend import TensorRTBackend
    from rtseg.export.engine import BuildSettings, ensure_engine
    from rtseg.export.onnx_export import export_onnx
    from rtseg.export.trt_flavour import RTX_DEFAULT_TARGETS, RTX_TARGETS, TENSORRT, TENSORRT_RTX
    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import SyntheticVideo

    cc = gpu["compute_capability"]
    flavours = [f for f in (TENSORRT_RTX, TENSORRT) if f.installed()]
    rtx_targets = (cc,) if cc in RTX_TARGETS else RTX_DEFAULT_TARGETS
    rows, rtx_runs = [], []
    image = SyntheticVideo(seed=7, size=(720, 1280)).frame(3).image
    for name in args.models:
        seg = Segmenter(name, device=args.device)
        for batch in (1, 8):
            x = torch.cat([seg.preprocess(image)] * batch)
            with torch.inference_mode():
                ref = seg.net(x)
            for half in (False, True):
                onnx_path = folder / f"{name}-b{batch}{'-half' if half else ''}.onnx"
                if not onnx_path.exists():
                    export_onnx(seg.net, seg.config, str(onnx_path), batch=batch, weights=seg.weights_path, half=half)
                for flavour in flavours:
                    row = {"model": name, "runtime": flavour.name, "batch": batch, "precision": "fp16" if half else "fp32"}
                    if time.monotonic() > getattr(args, "deadline", float("inf")):
                        row["error"] = "skipped: time budget spent"
                        rows.append(row)
                        continue
                    settings = BuildSettings(flavour=flavour.name, gpu_targets=rtx_targets,
                                             strongly_typed=half or flavour.strongly_typed_only,
                                             precision=None if (half or flavour.strongly_typed_only) else "fp32")
                    built = None
                    try:
                        built = ensure_engine(str(onnx_path), str(folder / "engines"), settings)
                        row["build_s"] = round(built.seconds, 1)
                        backend = TensorRTBackend(built.path, model=name, device=torch.device(args.device))
                        got = backend(x)
                        row["max_rel_err"] = max(float((got[k].float() - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12))
                                                 for k in ref)
                        times = []
                        for _ in range(3):
                            backend(x)
                        torch.cuda.synchronize()
                        for _ in range(args.frames):
                            t = time.perf_counter()
                            backend(x)
                            torch.cuda.synchronize()
                            times.append(time.perf_counter() - t)
                        row["inference_ms"] = round(statistics.median(times) * 1e3, 2)
                        row["images_per_s"] = round(batch / statistics.median(times), 1)
                        backend.close()
                        if batch == 1:  # the whole frame: preprocess, the engine, post-processing
                            seg_trt = Segmenter(name, device=args.device, backend="tensorrt", engine=built.path)
                            row.update({k: v for k, v in _time_stages(seg_trt, image, args.frames).items()
                                        if k != "inference_ms"})
                        if flavour is TENSORRT_RTX:
                            rtx_runs.append(True)
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                        if flavour is TENSORRT_RTX:
                            # rtseg refused it (e.g. compute capability 9.0 is no RTX target): ask
                            # TensorRT-RTX itself, so the verdict is the library's, not the manifest's
                            raw = rtx_raw_attempt(built.path, x) if built is not None else None
                            rtx_runs.append(bool(raw and raw.get("ran")))
                            if raw is not None:
                                row["raw_attempt"] = raw
                    rows.append(row)
    verdict = rtx_verdict(TENSORRT_RTX in flavours, rtx_runs, gpu)
    return {"rows": rows, "rtx_verdict": verdict}


def rtx_raw_attempt(engine_path: str, x) -> dict:
    """Deserialize and run an RTX engine with TensorRT-RTX directly (no rtseg checks): what
    the library says about this GPU (validity, deserialization, one execution)."""
    import torch

    from rtseg.export.engine import rtx_engine_validity, trt_logger
    from rtseg.export.trt_flavour import TENSORRT_RTX

    trt = TENSORRT_RTX.import_module()
    blob = Path(engine_path).read_bytes()
    out: dict = {}
    try:
        out["validity"], out["diagnostics"] = rtx_engine_validity(blob)
        engine = trt.Runtime(trt_logger(trt)).deserialize_cuda_engine(blob)
        out["deserialized"] = engine is not None
        if engine is None:
            return out
        context = engine.create_execution_context()
        keep = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, tuple(x.shape))
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.float16 if engine.get_tensor_dtype(name) == trt.DataType.HALF else torch.float32
            buf = torch.zeros(tuple(context.get_tensor_shape(name)), dtype=dtype, device=x.device)
            keep.append(buf)
            context.set_tensor_address(name, int(buf.data_ptr()))
        stream = torch.cuda.Stream(x.device)
        out["ran"] = bool(context.execute_async_v3(stream.cuda_stream))
        stream.synchronize()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def rtx_verdict(installed: bool, runs: list[bool], gpu: dict) -> str:
    """The plain sentence on whether TensorRT-RTX engines run on this GPU."""
    from rtseg.export.trt_flavour import RTX_TARGETS

    cc, name = gpu["compute_capability"], gpu["name"]
    if not installed:
        return "TensorRT-RTX is not installed: its engines were not tried"
    if not runs:
        return "no TensorRT-RTX engine was tried (time budget or export failures)"
    where = f"this {name} (compute capability {cc}"
    outside = f", outside TensorRT-RTX 1.7's targets {', '.join(RTX_TARGETS)}" if cc not in RTX_TARGETS else ""
    if all(runs):
        return f"TensorRT-RTX engines RUN on {where}{outside})"
    if not any(runs):
        return f"TensorRT-RTX engines DO NOT RUN on {where}{outside})"
    return f"TensorRT-RTX engines run only in part on {where}{outside}): {sum(runs)} of {len(runs)}"


def kernels(args, timeout: float) -> dict:
    out = args.out / "kernels.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return {"returncode": proc.returncode, "table": proc.stdout[-6000:], "stderr": proc.stderr[-1000:]}


def _note(row: dict) -> str:
    note = row.get("error", "")[:120]
    raw = row.get("raw_attempt")
    if raw:  # what TensorRT-RTX itself did with the engine rtseg refused
        note += (f" · TensorRT-RTX itself: validity {raw.get('validity')} {','.join(raw.get('diagnostics') or [])}, "
                 f"deserialized {raw.get('deserialized')}, ran {raw.get('ran', False)}"
                 + (f", {raw['error'][:80]}" if raw.get("error") else ""))
    return note.replace("|", "/")


def _table(lines: list[str], title: str, columns: list[tuple[str, str]], rows: list[list]) -> None:
    """A titled Markdown table: ``columns`` (header, alignment) and a final ``note`` column; each row
    gives one value per column, its note last."""
    lines += ["", title, "", "| " + " | ".join(h for h, _ in columns) + " | note |",
              "| " + " | ".join(a for _, a in columns) + " | --- |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def markdown(report: Report, gpu: dict) -> None:
    d, lines = report.data, report.lines
    lines += [f"## GPU check {d['date']}: {gpu['name']} (compute capability {gpu['compute_capability']}, "
              f"{gpu['memory_gib']} GiB), torch {gpu['torch']}, CUDA {gpu['cuda']}", "",
              f"`python tools/gpu_check.py` on {platform.node() or 'this machine'}.", ""]
    steps = d["steps"]
    eng = (steps.get("engines") or {}).get("result") or {}
    if eng:
        lines += [f"**{eng['rtx_verdict']}.**", ""]
    for marker in ("pytest -m gpu", "pytest -m tensorrt"):
        r = (steps.get(marker) or {}).get("result") or steps.get(marker) or {}
        lines.append(f"- `{marker}`: {r.get('summary', r.get('error', r.get('skipped', '?')))}")
    lines += ["", "| model | runtime | batch | precision | preprocess ms | inference ms | post ms | FPS / images/s | max rel err | note |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in ((steps.get("torch stages") or {}).get("result") or []) + eng.get("rows", []):
        lines.append(f"| {row['model']} | {row['runtime']} | {row.get('batch', 1)} | {row.get('precision', '')} | "
                     f"{row.get('preprocess_ms', '')} | {row.get('inference_ms', '')} | {row.get('postprocess_ms', '')} | "
                     f"{row.get('fps', row.get('images_per_s', ''))} | "
                     f"{'%.1e' % row['max_rel_err'] if 'max_rel_err' in row else ''} | {_note(row)} |")
    sync = (steps.get("hot-path syncs") or {}).get("result")
    if sync:
        _table(lines, "Synchronisation on the hot path (pipeline, 2 streams x 2 workers; device-wide must be 0):",
               [("model", "---"), ("post", "---"), ("frames", "---:"), ("device syncs", "---:"),
                ("stream syncs / frame", "---:"), ("sync-debug warnings / frame", "---:"), ("FPS", "---:")],
               [[r["model"], r["postprocess"], r.get("frames", ""), r.get("device_syncs", ""),
                 r.get("stream_syncs_per_frame", ""), r.get("sync_debug_per_frame", ""), r.get("fps", ""), _note(r)]
                for r in sync["rows"]])
    eq = (steps.get("process_batch vs process") or {}).get("result")
    if eq:
        _table(lines, "`process_batch` against `process` per image (CUDA):",
               [("model", "---"), ("post", "---"), ("batch of 1 bit-equal", "---"),
                ("batch of 3 same detections", "---"), ("max box err px", "---:")],
               [[r["model"], r["postprocess"], r.get("batch_of_one_equal", ""), r.get("batch_of_three_same", ""),
                 r.get("batch_of_three_max_box_err_px", ""), _note(r)] for r in eq["rows"]])
    half = (steps.get("half") or {}).get("result")
    if half:
        def stages(d: dict | None) -> str:
            return "/".join(str(d.get(k, "")) for k in ("preprocess_ms", "inference_ms", "postprocess_ms")) if d else ""

        _table(lines, "`--half` (fp16 network) against fp32, 720p, median ms per stage:",
               [("model", "---"), ("instances fp32 / fp16", "---"), ("same classes", "---"), ("max box err px", "---:"),
                ("fp32 pre/inf/post", "---"), ("fp16 pre/inf/post", "---")],
               [[r["model"], f"{r.get('instances_fp32', '')} / {r.get('instances_fp16', '')}", r.get("same_classes", ""),
                 r.get("max_box_err_px", ""), stages(r.get("fp32")), stages(r.get("fp16")), _note(r)]
                for r in half["rows"]])
        cli = half.get("cli") or {}
        lines += ["", f"`{cli.get('command', '')}`: exit {cli.get('returncode')}"]
    ms = (steps.get("multistream") or {}).get("result")
    if ms:
        lines += ["", "`benchmarks/multistream.py --device cuda --postprocess cuda`:", "", "```", ms["table"].strip(), "```"]
    k = (steps.get("kernels") or {}).get("result")
    if k:
        lines += ["", "CUDA kernels vs torch / torchvision (`benchmarks/kernels.py`):", "", "```", k["table"].strip(), "```"]


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    gpu = gpu_or_none(args.device)
    if gpu is None:
        print("gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False): nothing was run")
        return NO_GPU_EXIT
    report = Report(args.out, args.minutes)
    report.data["gpu"] = gpu
    args.deadline = report.deadline
    report.after_step = lambda: (report.lines.clear(), markdown(report, gpu), report.write())  # a kill keeps what ran
    folder = args.out / "work"
    folder.mkdir(parents=True, exist_ok=True)
    report.step("install", install, args)
    report.step("pytest -m gpu", pytest_marker, "gpu", max(30.0, min(100.0, report.left() * 0.25)))
    report.step("pytest -m tensorrt", pytest_marker, "tensorrt", max(30.0, min(45.0, report.left() * 0.15)))
    report.step("hot-path syncs", hot_path_syncs, args)
    report.step("process_batch vs process", batch_equals_process, args)
    report.step("half", half_rows, args)
    report.step("multistream", multistream, args, max(30.0, min(150.0, report.left() * 0.5)))
    report.step("engines", engine_rows, args, gpu, folder)
    report.step("torch stages", torch_rows, args)
    report.step("kernels", kernels, args, max(30.0, report.left()))
    report.lines.clear()
    markdown(report, gpu)
    report.write()
    print("\n".join(report.lines))
    print(f"gpu_check: wrote {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
