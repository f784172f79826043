"""The three model families side by side: model ms, post-processing ms, end-to-end FPS.

For each family's built-in small model (or the models given with ``--models``), in one run
on the same frames:

* ``preprocess`` / ``model`` / ``postprocess``: median milliseconds per frame of
  ``Segmenter.process`` stages on frames already decoded in memory, one after another;
* ``end to end``: frames per second of the threaded pipeline (``rtseg run``'s defaults)
  reading, segmenting, rendering and publishing a synthetic video file over ZeroMQ.

Models are measured interleaved (``--repeats`` rounds), so drifts in machine load hit all
of them; medians are reported. Ratios are against the first model.

    python benchmarks/families.py
    python benchmarks/families.py --models yolact_resnet18_half_384,solov2_light_resnet18_half_384 --frames 60
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile

from common import free_port, hardware, write_video

from rtseg.families import FAMILIES
from rtseg.models import MODELS
from rtseg.pipeline import Pipeline
from rtseg.publisher import Publisher
from rtseg.segmenter import Segmenter, builtin_weights_path, configure_threads
from rtseg.sources import open_source


def default_models() -> list[str]:
    """One model per family: the variant with built-in weights, else the smallest input
    (rtseg's real-time CPU model of that family)."""
    chosen = []
    for family in FAMILIES:
        names = [n for n, c in MODELS.items() if c.family == family]
        built_in = [n for n in names if builtin_weights_path(n)]
        smallest = min(names, key=lambda n: MODELS[n].input_size[0] * MODELS[n].input_size[1])
        chosen.append(built_in[0] if built_in else smallest)
    return chosen


def stage_times(seg: Segmenter, images: list) -> dict[str, float]:
    pre, model, post = [], [], []
    for img in images:
        _, t = seg.process(img)
        pre.append(t.preprocess)
        model.append(t.inference)
        post.append(t.postprocess)
    return {"preprocess_ms": 1000 * statistics.median(pre), "model_ms": 1000 * statistics.median(model),
            "postprocess_ms": 1000 * statistics.median(post)}


def pipeline_fps(seg: Segmenter, video: str, workers: int) -> float:
    configure_threads(None, workers)
    with Publisher(f"tcp://127.0.0.1:{free_port()}", seg.class_names) as pub:
        summary = Pipeline(open_source(video), seg, publisher=pub, workers=workers).run()
    return summary.fps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated model names (default: each family's built-in model)")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", default="480x640", help="HxW of the test video (default 480x640)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="pipeline inference workers (default: one per core, as 'rtseg run' on a CPU)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                        help="weights for a model without built-in ones (repeatable)")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    weights = dict(w.split("=", 1) for w in args.weights)

    models = args.models.split(",") if args.models else default_models()
    h, w = (int(v) for v in args.size.split("x"))
    segs = {}
    for name in models:
        segs[name] = Segmenter(name, device=args.device, weights=weights.get(name))
        segs[name].warmup()
    runs: dict[str, dict[str, list[float]]] = {n: {} for n in models}
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "bench.avi")
        write_video(video, args.frames, (h, w))
        images = [f.image for f in open_source(video)]
        for _ in range(args.repeats):
            for name, seg in segs.items():
                configure_threads(None)
                for k, v in stage_times(seg, images).items():
                    runs[name].setdefault(k, []).append(v)
                runs[name].setdefault("end_to_end_fps", []).append(pipeline_fps(seg, video, args.workers))
    rows = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in runs.items()}
    first = rows[models[0]]["end_to_end_fps"]
    print(f"{args.frames} frames {w}x{h}, median of {args.repeats} interleaved rounds, "
          f"{hardware()['cpu']} ({os.cpu_count()} cores), GPU {hardware()['gpu']}, device {args.device}, "
          f"pipeline with {args.workers} workers")
    print(f"{'model':<38}{'family':<12}{'input':>10}{'pre ms':>9}{'model ms':>10}{'post ms':>9}{'e2e FPS':>9}{'ratio':>7}")
    for name, r in rows.items():
        cfg = MODELS[name]
        size = "x".join(map(str, cfg.input_size))
        print(f"{name:<38}{cfg.family:<12}{size:>10}{r['preprocess_ms']:>9.1f}{r['model_ms']:>10.1f}"
              f"{r['postprocess_ms']:>9.1f}{r['end_to_end_fps']:>9.2f}{r['end_to_end_fps'] / first:>7.2f}")
    if args.json:
        result = {"date": datetime.date.today().isoformat(), **hardware(), "frames": args.frames,
                  "video_size": [h, w], "device": args.device, "workers": args.workers, "medians": rows,
                  "runs": runs}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
