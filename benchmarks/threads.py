"""CPU thread scaling: the same model on 1 thread and on 2 (or ``--threads``), per stage.

``rtseg bench`` is the engine: for each thread count, each model and backend, one-frame-at-
a-time runs of decode, preprocess, inference, postprocess, render and publish on the same
synthetic video. Thread counts are measured interleaved in each of ``--repeats`` rounds, so
drifts in machine load hit all of them; medians of the per-round means are reported, and
the speed-up of every count over the first.

    python benchmarks/threads.py                                   # default model, torch + ONNX Runtime, 1 vs 2
    python benchmarks/threads.py --models all --frames 30 --json benchmarks/results/threads_DATE.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from rtseg.bench import STAGES, BenchPlan, realtime_models, run_bench
from rtseg.models import DEFAULT_MODEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODEL, help="comma-separated names, or 'all' (rtseg bench's)")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    models = realtime_models() if args.models == "all" else args.models.split(",")
    counts = [int(t) for t in args.threads.split(",")]
    weights = dict(w.split("=", 1) for w in args.weights)

    rounds: dict[tuple, list[dict]] = {}
    machine = None
    for _ in range(args.repeats):
        for n in counts:
            plan = BenchPlan(models=models, backends=args.backends.split(","), sizes=[(480, 640)], precisions=["fp32"],
                             batches=[1], frames=args.frames, warmup=3, device="cpu", threads=n, workers=None,
                             pipeline=False, weights=weights)
            report = run_bench(plan, progress=False)
            machine = machine or report["machine"]
            for r in report["results"]:
                rounds.setdefault((r["model"], r["backend"], n), []).append(r)
    rows = {}
    for (model, backend, n), runs in rounds.items():
        rows[f"{model}|{backend}|{n}"] = {
            "model": model, "backend": backend, "threads": n,
            "stage_mean_ms": {s: statistics.median(r["stages_ms"][s]["mean"] for r in runs) for s in STAGES},
            "end_to_end_mean_ms": statistics.median(r["end_to_end_ms"]["mean"] for r in runs),
            "end_to_end_p95_ms": statistics.median(r["end_to_end_ms"]["p95"] for r in runs),
            "fps": statistics.median(r["fps"] for r in runs),
            "runs_fps": [r["fps"] for r in runs],
        }
    print(f"{machine['cpu']} ({machine['cores']} cores), load average {machine['load_average_1_5_15']}, "
          f"{args.frames} frames 640x480, median of {args.repeats} interleaved rounds")
    print(f"{'model':<38}{'backend':<12}{'threads':>8}{'infer ms':>10}{'post ms':>9}{'e2e ms':>8}{'p95 ms':>8}"
          f"{'FPS':>7}{'speed-up':>9}")
    for model in models:
        for backend in args.backends.split(","):
            base = rows[f"{model}|{backend}|{counts[0]}"]["fps"]
            for n in counts:
                r = rows[f"{model}|{backend}|{n}"]
                print(f"{model:<38}{backend:<12}{n:>8}{r['stage_mean_ms']['inference']:>10.1f}"
                      f"{r['stage_mean_ms']['postprocess']:>9.1f}{r['end_to_end_mean_ms']:>8.1f}"
                      f"{r['end_to_end_p95_ms']:>8.1f}{r['fps']:>7.2f}{r['fps'] / base:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python benchmarks/threads.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "machine": machine, "frames": args.frames, "repeats": args.repeats, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
