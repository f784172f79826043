"""The pipeline under a live source faster than inference, and one slower than inference.

A live camera delivers frames at its own rate whatever the pipeline does. This script plays
one with the synthetic video: :class:`PacedCamera` makes frame ``k`` at ``t0 + k / fps`` and,
like rtseg's live sources, hands over only the newest frame when asked (older ones it
had to skip are counted). A frame's capture time is when the camera made it, so latency
includes any time it waited for the pipeline.

* **faster than inference** (``--fast-fps``, default 60): the latest-frame policy must keep
  end-to-end latency (camera -> published) flat however long it runs: stale frames are
  dropped, none queue up. The bar (issue 7): every window's p95 latency within 2x the
  single-frame processing time.
* **slower than inference** (default: half the frame rate the pipeline sustained in the fast
  run): no frame may be lost: read = processed = published, none dropped.

"Single-frame processing time": decode-free whole job of one frame (preprocess, inference,
postprocess, render, publish) one at a time, the median over ``--calibration`` frames
measured first in the same run, both with torch on every core and with the threads one
pipeline worker gets; the bar uses the smaller (the stricter). The pipeline runs with ``rtseg
run``'s defaults (on a CPU two inference workers of cores / 2 threads).

    python benchmarks/latency_load.py                         # 60 s each, built-in model
    python benchmarks/latency_load.py --seconds 300 --json benchmarks/results/latency_load_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import numpy as np

from common import free_port, hardware

from rtseg.models import DEFAULT_MODEL
from rtseg.pipeline import Pipeline
from rtseg.publisher import Publisher
from rtseg.render import render
from rtseg.segmenter import Segmenter, configure_threads
from rtseg.structures import Frame
from rtseg.synthetic import SyntheticVideo


class PacedCamera:
    """A live source at a fixed frame rate that keeps only its newest frame.

    ``read()`` returns the newest frame not yet handed out, waiting for the next one if
    there is none; frames made while nobody read are skipped (``dropped``). Images come
    from a small pre-rendered loop of the synthetic video, so making a frame costs nothing.
    """

    is_live = True

    def __init__(self, fps: float, size: tuple[int, int] = (480, 640), loop: int = 30) -> None:
        video = SyntheticVideo(seed=7, size=size)
        self.images = [video.frame(i).image for i in range(loop)]
        self.fps = fps
        self.source_id = f"paced-camera@{fps:g}fps"
        self.t0 = time.perf_counter()
        self.next_k = 0
        self.dropped = 0
        self._closed = threading.Event()

    def read(self) -> Frame | None:
        if self._closed.is_set():
            return None
        now = time.perf_counter()
        newest = int((now - self.t0) * self.fps)
        if newest < self.next_k:  # nothing new yet: wait for the next frame
            if self._closed.wait(self.t0 + self.next_k / self.fps - now):
                return None
            newest = self.next_k
        self.dropped += newest - self.next_k
        self.next_k = newest + 1
        made = self.t0 + newest / self.fps
        return Frame(seq=newest, source_id=self.source_id, capture_time=time.time() - (time.perf_counter() - made),
                     image=self.images[newest % len(self.images)], capture_monotonic=made)

    def close(self) -> None:
        self._closed.set()


def single_frame_ms(seg: Segmenter, images: list, endpoint: str) -> float:
    """Median milliseconds of the whole job for one frame, one frame at a time."""
    out = []
    with Publisher(endpoint, seg.class_names) as pub:
        for i, img in enumerate(images):
            t0 = time.perf_counter()
            inst, _ = seg.process(img)
            render(img, inst, seg.class_names)
            pub.publish(Frame(seq=i, source_id="calibration", capture_time=time.time(), image=img, instances=inst))
            out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


def run_live(seg: Segmenter, fps: float, seconds: float, workers: int, windows: int) -> dict:
    camera = PacedCamera(fps)
    samples: list[tuple[float, float]] = []  # (seconds since start, end-to-end ms)
    start = time.perf_counter()

    def on_frame(frame: Frame) -> None:
        samples.append((time.perf_counter() - start, 1000 * frame.timings["end to end"]))

    with Publisher(f"tcp://127.0.0.1:{free_port()}", seg.class_names) as pub:
        pipeline = Pipeline(camera, seg, publisher=pub, window=_Discard(), workers=workers, on_frame=on_frame)
        timer = threading.Timer(seconds, pipeline.stop, args=("time limit",))
        timer.start()
        try:
            summary = pipeline.run()
        finally:
            timer.cancel()
    lat = np.array([s[1] for s in samples])
    t = np.array([s[0] for s in samples])
    per_window = []
    for k in range(windows):  # latency over time: does it grow?
        sel = lat[(t >= seconds * k / windows) & (t < seconds * (k + 1) / windows)]
        if sel.size:
            per_window.append({"from_s": seconds * k / windows, "frames": int(sel.size),
                               "p50_ms": float(np.percentile(sel, 50)), "p95_ms": float(np.percentile(sel, 95)),
                               "max_ms": float(sel.max())})
    return {"camera_fps": fps, "seconds": seconds, "frames_made": camera.next_k, "camera_skipped": camera.dropped,
            "frames_read": summary.frames_read, "frames_processed": summary.frames_processed,
            "frames_published": summary.frames_published, "dropped_stale": summary.dropped_stale,
            "pipeline_fps": summary.fps, "latency_ms": {"p50": float(np.percentile(lat, 50)),
                                                         "p95": float(np.percentile(lat, 95)),
                                                         "p99": float(np.percentile(lat, 99)), "max": float(lat.max())},
            "windows": per_window, "stages_ms": summary.stages_ms}


class _Discard:
    """Render target that keeps nothing (the pipeline renders every frame, as a viewer would)."""

    def show(self, image: np.ndarray) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--weights")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each live run (default 60)")
    parser.add_argument("--fast-fps", type=float, default=60.0, help="camera rate above inference (default 60)")
    parser.add_argument("--slow-fps", type=float, help="camera rate below inference (default: half the fast run's FPS)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--windows", type=int, default=6, help="latency reported per this many time windows")
    parser.add_argument("--calibration", type=int, default=30, help="frames of the single-frame measurement")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)

    configure_threads(None)
    seg = Segmenter(args.model, weights=args.weights)
    seg.warmup()
    camera = PacedCamera(1.0)
    calibration = [camera.images[i % len(camera.images)] for i in range(args.calibration)]
    one_ms_all_cores = single_frame_ms(seg, calibration, f"tcp://127.0.0.1:{free_port()}")
    configure_threads(None, args.workers)
    one_ms_worker = single_frame_ms(seg, calibration, f"tcp://127.0.0.1:{free_port()}")
    one_ms = min(one_ms_all_cores, one_ms_worker)
    fast = run_live(seg, args.fast_fps, args.seconds, args.workers, args.windows)
    slow_fps = args.slow_fps or max(0.5, round(fast["pipeline_fps"] / 2, 1))
    slow = run_live(seg, slow_fps, args.seconds, args.workers, args.windows)
    worst_p95 = max(w["p95_ms"] for w in fast["windows"])
    fast["worst_window_p95_over_single_frame"] = worst_p95 / one_ms
    fast["bar_2x_single_frame_met"] = worst_p95 <= 2 * one_ms
    slow["no_frame_lost"] = (slow["frames_read"] == slow["frames_processed"] == slow["frames_published"]
                             and slow["dropped_stale"] == 0 and slow["camera_skipped"] == 0)
    hw = hardware()
    print(f"{hw['cpu']} ({hw['cores']} cores), load average {hw['load_average_1_5_15']}; model {args.model}; "
          f"{args.workers} workers")
    print(f"single-frame processing (pre + model + post + render + publish, one at a time): "
          f"{one_ms_all_cores:.1f} ms on every core, {one_ms_worker:.1f} ms on one worker's threads; bar uses {one_ms:.1f}")
    for name, r in (("faster", fast), ("slower", slow)):
        lat = r["latency_ms"]
        print(f"\ncamera {r['camera_fps']:g} FPS ({name} than inference), {r['seconds']:g} s: made {r['frames_made']}, "
              f"read {r['frames_read']}, processed {r['frames_processed']}, published {r['frames_published']}, "
              f"skipped by camera {r['camera_skipped']}, dropped stale {r['dropped_stale']}; "
              f"pipeline {r['pipeline_fps']:.2f} FPS")
        print(f"  end-to-end latency ms: p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
              f"max {lat['max']:.1f}")
        print("  per window:  " + "  ".join(f"[{w['from_s']:.0f}s] p50 {w['p50_ms']:.0f} p95 {w['p95_ms']:.0f}"
                                            for w in r["windows"]))
    print(f"\nfast camera: worst window p95 / single frame = {fast['worst_window_p95_over_single_frame']:.2f} "
          f"(bar <= 2): {'met' if fast['bar_2x_single_frame_met'] else 'NOT met'}")
    print(f"slow camera: no frame lost: {'yes' if slow['no_frame_lost'] else 'NO'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python benchmarks/latency_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "machine": hw, "model": args.model, "workers": args.workers,
                       "single_frame_ms": one_ms, "single_frame_ms_all_cores": one_ms_all_cores,
                       "single_frame_ms_worker_threads": one_ms_worker, "fast": fast, "slow": slow}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
