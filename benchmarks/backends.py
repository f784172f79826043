"""torch vs ONNX Runtime on this machine's CPU, per model, side by side in one run.

For each model: the network alone (``Segmenter.infer``: the backend call on a preprocessed
batch) and the whole ``Segmenter.process`` (preprocess + backend + post-processing; only with trained weights), median
milliseconds over ``--frames`` synthetic frames, both backends measured interleaved in each
of ``--repeats`` rounds so load drifts hit both. The ratio is torch / ONNX Runtime (above 1:
ONNX Runtime is faster). Both use the same thread count (``--threads``, default all cores).

    python benchmarks/backends.py                         # every model rtseg lists
    python benchmarks/backends.py --models yolact_resnet18_half_384 --frames 50
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time

from common import hardware

from rtseg.models import MODELS
from rtseg.segmenter import Segmenter, configure_threads
from rtseg.synthetic import SyntheticVideo


def timed(fn, items) -> list[float]:
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated model names (default: every model)")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads for both backends (default: all cores)")
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                        help="weights for a model without built-in ones (repeatable)")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    weights = dict(w.split("=", 1) for w in args.weights)

    threads = configure_threads(args.threads)
    models = args.models.split(",") if args.models else list(MODELS)
    video = SyntheticVideo(seed=5, size=(480, 640))
    images = [video.frame(i).image for i in range(args.frames)]
    results = {}
    print(f"{hardware()['cpu']}, {threads} threads, {args.frames} frames 640x480, "
          f"median of {args.repeats} interleaved rounds")
    print(f"{'model':<38}{'input':>9}{'torch net ms':>14}{'ORT net ms':>12}{'ratio':>7}"
          f"{'torch all ms':>14}{'ORT all ms':>12}{'ratio':>7}")
    with tempfile.TemporaryDirectory() as cache:
        for name in models:
            segs = {"torch": Segmenter(name, score_threshold=0.3, weights=weights.get(name)),
                    "onnxruntime": Segmenter(name, score_threshold=0.3, weights=weights.get(name), backend="onnxruntime",
                                                  cache_dir=cache)}
            batches = [segs["torch"].preprocess(img) for img in images]
            for seg in segs.values():
                seg.warmup() if segs["torch"].weights_origin != "random initialisation" else seg.infer(batches[0])
            # with random weights post-processing sees meaningless candidates (SOLOv2: thousands),
            # so only the network is timed for such models
            trained = segs["torch"].weights_origin != "random initialisation"
            runs = {b: {"net": [], "all": []} for b in segs}
            for _ in range(args.repeats):
                for b, seg in segs.items():
                    runs[b]["net"].append(statistics.median(timed(seg.infer, batches)))
                    if trained:
                        runs[b]["all"].append(statistics.median(timed(seg.process, images)))
            med = {b: {k: statistics.median(v) if v else float("nan") for k, v in r.items()} for b, r in runs.items()}
            results[name] = {"medians_ms": med, "runs_ms": runs}
            t, o = med["torch"], med["onnxruntime"]
            size = "x".join(map(str, MODELS[name].input_size))
            print(f"{name:<38}{size:>9}{t['net']:>14.1f}{o['net']:>12.1f}{t['net'] / o['net']:>7.2f}"
                  f"{t['all']:>14.1f}{o['all']:>12.1f}{t['all'] / o['all']:>7.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.date.today().isoformat(), **hardware(), "threads": threads,
                       "frames": args.frames, "repeats": args.repeats, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
