"""One batched process against N separate `rtseg run` processes, for 1, 2, 4, 8 streams.

    PYTHONPATH=. python benchmarks/multistream.py [--streams 1 2 4 8] [--frames 40] [--fps 5]
        [--device cuda] [--postprocess cuda] [--half]

``--device``, ``--postprocess`` and ``--half`` are passed to every ``rtseg run`` (on a GPU the
separate processes share it; ``tools/gpu_check.py`` runs this with ``--device cuda
--postprocess cuda``).

Each stream is a live synthetic camera (``synthetic:SEED:320x240@FPS``: newest frame only,
so latency cannot build up and the figures are steady-state ones). Batched: one
``rtseg run`` with every stream, ``--batch N`` (default: streams / workers), default workers
and threads. Separate: N ``rtseg run`` processes started together, each ``--workers 1
--threads max(1, cores // N)`` so that together they use the cores once, not N times.
Reports total processed FPS and the worst per-stream p95 end-to-end latency, from each
run's ``--summary-json``. (The RTSP-kill case needs the GStreamer RTSP server of
tests/rtsp_server.py: asserted by tests/test_multistream.py, measured by
benchmarks/stream_kill.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

RTSEG = [sys.executable, "-m", "rtseg", "-q", "run"]
EXTRA: list[str] = []  # --device / --postprocess / --half, for every run


def _summary(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def batched(n: int, frames: int, fps: float, tmp: str) -> tuple[float, float]:
    out = os.path.join(tmp, f"batched{n}.json")
    cmd = RTSEG + sum((["--source", f"synthetic:{i}:320x240@{fps:g}"] for i in range(n)), [])
    subprocess.run(cmd + EXTRA + ["--max-frames", str(frames), "--summary-json", out], check=True, capture_output=True)
    s = _summary(out)
    streams = s["streams"] or {"0": {"latency_ms": s["stages_ms"]["end to end"]}}
    return s["fps"], max(p["latency_ms"]["p95"] for p in streams.values())


def separate(n: int, frames: int, fps: float, tmp: str) -> tuple[float, float]:
    threads = max(1, (os.cpu_count() or 1) // n)
    outs = [os.path.join(tmp, f"sep{n}-{i}.json") for i in range(n)]
    procs = [subprocess.Popen(RTSEG + ["--source", f"synthetic:{i}:320x240@{fps:g}", "--max-frames", str(frames),
                                       "--workers", "1", "--threads", str(threads), "--summary-json", out, *EXTRA],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, out in enumerate(outs)]
    for p in procs:
        p.wait()
    sums = [_summary(o) for o in outs]
    return sum(s["fps"] for s in sums), max(s["stages_ms"]["end to end"]["p95"] for s in sums)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--frames", type=int, default=40, help="frames per stream (default 40)")
    ap.add_argument("--fps", type=float, default=5.0, help="rate of each synthetic camera (default 5)")
    ap.add_argument("--device", default="cpu", help="passed to rtseg run (default cpu)")
    ap.add_argument("--postprocess", default="torch", help="passed to rtseg run: torch (default) or cuda")
    ap.add_argument("--half", action="store_true", help="passed to rtseg run: float16 network (CUDA)")
    args = ap.parse_args()
    EXTRA[:] = ["--device", args.device, "--postprocess", args.postprocess] + (["--half"] if args.half else [])
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'streams':>7} {'batched FPS':>12} {'batched p95 ms':>15} {'separate FPS':>13} {'separate p95 ms':>16}")
        for n in args.streams:
            b = batched(n, args.frames, args.fps, tmp)
            s = separate(n, args.frames, args.fps, tmp)
            print(f"{n:>7} {b[0]:>12.2f} {b[1]:>15.0f} {s[0]:>13.2f} {s[1]:>16.0f}", flush=True)


if __name__ == "__main__":
    main()
