"""Does the threaded pipeline overlap capture, render and publish with inference?

Measures, in one run on the same video file and model:

* ``inference``: the time of ``Segmenter.process`` (preprocess + model + post-processing)
  per frame, on frames already decoded in memory, one after another;
* ``sequential``: decode + process + render + record + publish, one frame at a time;
* ``pipeline``: the same work through :class:`rtseg.pipeline.Pipeline` (capture, inference,
  render and publish threads), with one inference worker using every core for torch, and
  with ``--workers`` workers (default: one per core) each using ``cores / workers`` threads.

and prints ``pipeline FPS / (1 / inference time)``: 1.0 means capture, render and publish
cost nothing on top of inference (the inference time is the fastest one-frame-at-a-time
configuration: torch on every core). The issue's bar is 0.9. Each measurement is repeated
(``--repeats``) in interleaved order and the median is reported, since the machine is shared.

    python benchmarks/pipeline_overlap.py                 # built-in model, 150 frames
    python benchmarks/pipeline_overlap.py --model yolact_resnet50 --frames 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from rtseg.models import DEFAULT_MODEL
from rtseg.pipeline import Pipeline
from rtseg.publisher import Publisher
from rtseg.render import VideoRecorder, render
from rtseg.segmenter import Segmenter, configure_threads
from rtseg.sources import open_source

from common import cpu_model, free_port, write_video


def measure_inference(seg: Segmenter, images: list) -> float:
    t0 = time.perf_counter()
    for img in images:
        seg.process(img)
    return (time.perf_counter() - t0) / len(images)


def measure_sequential(seg: Segmenter, video: str, out: str, endpoint: str) -> float:
    source = open_source(video)
    recorder = VideoRecorder(out)
    with Publisher(endpoint, seg.class_names) as pub:
        t0 = time.perf_counter()
        n = 0
        while (frame := source.read()) is not None:
            frame.instances, _ = seg.process(frame.image)
            frame.rendered = render(frame.image, frame.instances, seg.class_names)
            recorder.write(frame.rendered)
            pub.publish(frame)
            n += 1
        elapsed = time.perf_counter() - t0
    recorder.close()
    source.close()
    return n / elapsed


def measure_pipeline(seg: Segmenter, video: str, out: str, endpoint: str, workers: int, threads: int) -> float:
    configure_threads(threads)
    recorder = VideoRecorder(out)
    with Publisher(endpoint, seg.class_names) as pub:
        summary = Pipeline(open_source(video), seg, publisher=pub, recorder=recorder, workers=workers).run()
    recorder.close()
    return summary.fps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--weights")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", default="480x640", help="HxW of the test video (default 480x640)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads of one-at-a-time inference (default: all cores)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="inference workers of the second pipeline run (default: one per core)")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)

    threads = configure_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    seg = Segmenter(args.model, weights=args.weights)
    seg.warmup()
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "bench.avi")
        write_video(video, args.frames, (h, w))
        images = [f.image for f in open_source(video)]
        inf, seq, pipe, pipe_w = [], [], [], []
        per_worker = max(1, threads // args.workers)  # the workers share this run's threads
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all of them
            configure_threads(threads)
            inf.append(measure_inference(seg, images))
            seq.append(measure_sequential(seg, video, os.path.join(tmp, "seq.avi"), f"tcp://127.0.0.1:{free_port()}"))
            pipe.append(measure_pipeline(seg, video, os.path.join(tmp, "pipe.avi"), f"tcp://127.0.0.1:{free_port()}",
                                         1, threads))
            pipe_w.append(measure_pipeline(seg, video, os.path.join(tmp, "pipe.avi"),
                                           f"tcp://127.0.0.1:{free_port()}", args.workers, per_worker))
    inference_ms = statistics.median(inf) * 1000
    result = {
        "model": args.model,
        "frames": args.frames,
        "video_size": [h, w],
        "torch_threads": threads,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "inference_ms_per_frame": inference_ms,
        "inference_bound_fps": 1000 / inference_ms,
        "sequential_fps": statistics.median(seq),
        "pipeline_fps": statistics.median(pipe),
        "workers": args.workers,
        "threads_per_worker": per_worker,
        "pipeline_workers_fps": statistics.median(pipe_w),
        "ratio_pipeline_to_inference_bound": statistics.median(pipe) * inference_ms / 1000,
        "ratio_pipeline_workers_to_inference_bound": statistics.median(pipe_w) * inference_ms / 1000,
        "ratio_pipeline_to_sequential": statistics.median(pipe) / statistics.median(seq),
        "runs": {"inference_ms": [v * 1000 for v in inf], "sequential_fps": seq, "pipeline_fps": pipe,
                 "pipeline_workers_fps": pipe_w},
    }
    print(f"model {args.model}, {args.frames} frames {w}x{h}, torch threads {threads}, {os.cpu_count()} cores")
    print(f"inference (pre+model+post) {inference_ms:8.1f} ms/frame -> bound {1000 / inference_ms:6.2f} FPS")
    print(f"sequential whole job       {result['sequential_fps']:8.2f} FPS")
    print(f"pipeline, 1 worker x {threads} threads    {result['pipeline_fps']:8.2f} FPS  "
          f"ratio to bound {result['ratio_pipeline_to_inference_bound']:.3f}")
    print(f"pipeline, {args.workers} workers x {per_worker} threads   {result['pipeline_workers_fps']:8.2f} FPS  "
          f"ratio to bound {result['ratio_pipeline_workers_to_inference_bound']:.3f}  (bar: >= 0.9)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
