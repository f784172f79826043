"""How well ``rtseg run --track`` keeps identities: the synthetic video's known objects
against the ids the trackers give, scored by the ``trackers`` library's MOT metrics.

The synthetic video (:class:`rtseg.synthetic.SyntheticVideo`, the ``synthetic`` source)
knows which object every ground-truth instance is (``Scene.object_ids``, stable over
frames). Each tracker of :data:`rtseg.track.TRACKERS` (library defaults) runs over two
detection sets of the same frames:

* ``model``: the built-in model's detections (``rtseg run``'s defaults: the default model,
  score threshold 0.3), i.e. what ``rtseg run --source synthetic --track`` tracks;
* ``truth``: the ground truth itself as detections (score 1): the tracker alone, no
  detector errors.

Metrics (``rtseg.track.mot_metrics``, i.e. ``trackers.eval``, TrackEval's definitions; box
IoU, match at 0.5): HOTA / DetA / AssA, MOTA, IDF1, IDSW (identity switches against the
generator's objects), ids given out, and the tracker's update time per frame (median ms).

    python benchmarks/tracking.py
    python benchmarks/tracking.py --frames 500 --json benchmarks/results/tracking.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from common import hardware

from rtseg.synthetic import SyntheticVideo
from rtseg.track import TRACKERS, InstanceTracker, mot_metrics


def _detections(scenes, model: str, score_threshold: float) -> list:
    from rtseg.segmenter import Segmenter

    seg = Segmenter(model, score_threshold=score_threshold)
    seg.warmup()
    out = []
    for i, scene in enumerate(scenes):
        out.append(seg.process(scene.image)[0])
        if (i + 1) % 50 == 0:
            print(f"segmented {i + 1}/{len(scenes)} frames", file=sys.stderr, flush=True)
    return out


def score(name: str, scenes, detections) -> dict:
    tracker = InstanceTracker(name)
    tracked, times = [], []
    for inst in detections:
        t0 = time.perf_counter()
        tracked.append(tracker.update(inst))
        times.append(time.perf_counter() - t0)
    keep = [t.track_ids >= 0 for t in tracked]
    m = mot_metrics([s.object_ids for s in scenes], [s.boxes for s in scenes],
                    [t.track_ids[k] for t, k in zip(tracked, keep)], [t.boxes[k] for t, k in zip(tracked, keep)])
    m["update_ms_p50"] = 1000.0 * statistics.median(times)
    m["retained_at_end"] = tracker.retained()
    return m


def main(argv=None) -> int:
    from rtseg.defaults import DEFAULT_MODEL, DEFAULT_SCORE_THRESHOLD

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="synthetic video seed (rtseg run's 'synthetic' is 0)")
    ap.add_argument("--size", default="480x640", help="HxW (rtseg run's 'synthetic' is 480x640)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD)
    ap.add_argument("--trackers", default=",".join(TRACKERS))
    ap.add_argument("--json", help="write the figures and the hardware here")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    video = SyntheticVideo(seed=args.seed, size=(h, w))
    scenes = [video.frame(i) for i in range(args.frames)]
    sets = {"truth": [s.to_instances() for s in scenes],
            "model": _detections(scenes, args.model, args.score_threshold)}
    results = {}
    print(f"{args.frames} frames of synthetic:{args.seed}:{w}x{h}, {len(set(np.concatenate([s.object_ids for s in scenes]).tolist()))} objects")
    print(f"{'detections':<11}{'tracker':<11}{'HOTA':>7}{'DetA':>7}{'AssA':>7}{'MOTA':>7}{'IDF1':>7}{'IDSW':>6}{'ids':>5}"
          f"{'ms/frame':>10}")
    for set_name, dets in sets.items():
        for name in args.trackers.split(","):
            m = score(name, scenes, dets)
            results[f"{set_name}/{name}"] = m
            print(f"{set_name:<11}{name:<11}{m['HOTA']:>7.3f}{m['DetA']:>7.3f}{m['AssA']:>7.3f}{m['MOTA']:>7.3f}"
                  f"{m['IDF1']:>7.3f}{m['IDSW']:>6}{m['track_ids']:>5}{m['update_ms_p50']:>10.3f}")
    if args.json:
        from importlib.metadata import version

        with open(args.json, "w") as f:
            json.dump({"frames": args.frames, "seed": args.seed, "size": [h, w], "model": args.model,
                       "score_threshold": args.score_threshold, "trackers_version": version("trackers"),
                       "supervision_version": version("supervision"), "results": results, "hardware": hardware()},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
