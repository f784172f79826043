"""Where CenterMask's post-processing time goes, on the built-in model and synthetic frames.

``Segmenter.process``'s post-processing stage for CenterMask runs, per image: FCOS decoding
(``fcos_candidates``), class-aware NMS, the RoI heads on the kept boxes (``mask_head_outputs``:
RoIAlign, SAG-Mask, MaskIoU) and the paste into the frame (``paste_masks``). Each is timed
by wrapping the function in :mod:`rtseg.families.centermask.postprocess` for this run; the rest of
the stage (thresholds, sorting, conversion to numpy) is the remainder. Mean ms per frame
after ``--warmup`` frames.

    python benchmarks/centermask_post.py
    python benchmarks/centermask_post.py --frames 100 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import torch

import rtseg.families.centermask.postprocess as cm
from rtseg.segmenter import Segmenter
from rtseg.synthetic import SyntheticVideo

from common import hardware

STEPS = ("fcos_candidates", "class_aware_nms", "mask_head_outputs", "paste_masks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="centermask_lite_vovnet19_quarter_384")
    parser.add_argument("--weights", help="weights file (default: the built-in weights)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    seconds = dict.fromkeys(STEPS, 0.0)

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - t
        return wrapper

    for name in STEPS:
        setattr(cm, name, timed(name, getattr(cm, name)))
    seg = Segmenter(args.model, weights=args.weights)
    video = SyntheticVideo()
    for i in range(args.warmup):
        seg.process(video.frame(i).image)
    for name in STEPS:
        seconds[name] = 0.0
    post, instances = 0.0, 0
    for i in range(args.warmup, args.warmup + args.frames):
        inst, times = seg.process(video.frame(i).image)
        post += times.postprocess
        instances += len(inst)
    ms = {name: 1000.0 * s / args.frames for name, s in seconds.items()}
    ms["rest"] = 1000.0 * post / args.frames - sum(ms.values())
    ms["postprocess (whole stage)"] = 1000.0 * post / args.frames
    print(f"{args.model}, {args.frames} synthetic 640x480 frames, {instances / args.frames:.1f} instances a frame, "
          f"{args.threads} torch threads, {hardware()['cpu']}")
    for name, v in ms.items():
        print(f"{name:<28}{v:8.2f} ms")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": " ".join(sys.argv), "machine": hardware(), "model": args.model,
                       "frames": args.frames, "threads": args.threads,
                       "instances_per_frame": instances / args.frames, "ms": ms}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
