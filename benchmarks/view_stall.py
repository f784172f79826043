"""Does a viewer that stops reading change a ``--view`` run's FPS? Both cases in one run.

    PYTHONPATH=. python benchmarks/view_stall.py [--phases 24] [--phase-frames 24] [--stalled 1]
        [--json benchmarks/results/view_stall_DATE.json]

One :class:`rtseg.pipeline.Pipeline` with a :class:`rtseg.view.ViewServer` (what ``rtseg run
--view`` builds) over the synthetic source at 640x480, not live (every frame is processed:
the model sets the pace), the built-in model, the CLI's default workers and threads. One
viewer reads the MJPEG stream the whole time. The run alternates phases of
``--phase-frames`` frames: *reading* (that viewer only), *stalled* (``--stalled`` more
viewers that connect at the phase's start, with a 4 KiB receive buffer, ask for the stream
and never read; closed at its end), *reading* again, and *control* (a reading phase under
another name: what a phase between two reading ones differs by from noise alone). The send
timeout is raised to 600 s so that stalled viewers stay connected, blocked, for their whole
phase (the default drops them after 10 s).
Interleaving short phases in one run puts all under the same machine load; each stalled and
each control phase is compared with the mean of its two reading neighbours (the load drifts
on a shared machine).

FPS of a phase: its frames after the first ``--settle`` (the stalled sockets fill their
buffers then) over the time between their outputs (the pipeline's ``on_frame``). CPU per
frame: this process's CPU seconds (every thread: model, encoder, server) over the same
frames, which the other processes' load disturbs less than the FPS.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import sys
import threading
import time

from common import hardware

from rtseg.cli import default_workers
from rtseg.pipeline import Pipeline
from rtseg.segmenter import Segmenter, configure_threads
from rtseg.sources import open_source
from rtseg.view import BOUNDARY, ViewServer


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _read_mjpeg(sock: socket.socket, received: list[float]) -> None:
    """The reading viewer: appends the time of every JPEG part it receives, until EOF."""
    marker = f"--{BOUNDARY}".encode()
    f = sock.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            return
        if line.strip() == marker:
            received.append(time.perf_counter())


def _connect(view: ViewServer, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((view.host, view.port))
    sock.sendall(f"GET {view.stream_path('0')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=24,
                        help="phases, in turn reading, stalled, reading, control (default 24)")
    parser.add_argument("--phase-frames", type=int, default=24)
    parser.add_argument("--settle", type=int, default=6, help="frames at a phase's start left out of its FPS")
    parser.add_argument("--stalled", type=int, default=1, help="viewers that never read, in a stalled phase")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    workers = default_workers("cpu")
    threads = configure_threads(None, workers)
    segmenter = Segmenter()
    segmenter.warmup()
    view = ViewServer(["0"], segmenter.class_names, send_timeout=600.0).start()
    reader = _connect(view)
    received: list[float] = []
    reading = threading.Thread(target=_read_mjpeg, args=(reader, received), daemon=True)
    reading.start()

    # reading, stalled, reading, control (= reading, nothing changes): stalled and control phases
    # both sit between two reading phases, so the control's ratio shows what noise alone gives
    kinds = [("reading", "stalled", "reading", "control")[i % 4] for i in range(args.phases)]
    done: list[float] = []  # output time of every frame
    cpu: list[float] = []  # this process's CPU seconds at every frame's output
    stalled: list[socket.socket] = []
    marks: list[dict] = []  # per phase: view.sent of the stalled viewers at its end

    def begin(phase: int) -> None:
        if kinds[phase] == "stalled":
            stalled.extend(_connect(view, rcvbuf=4096) for _ in range(args.stalled))

    def end(phase: int) -> None:
        if kinds[phase] == "stalled":
            with view._cv:
                marks.append({"phase": phase, "watchers": view._slots["0"].watchers, "sent": dict(view.sent)})
            for s in stalled:
                s.close()
            stalled.clear()

    def on_frame(_frame) -> None:
        done.append(time.perf_counter())
        cpu.append(_cpu_seconds())
        n = len(done)
        if n % args.phase_frames == 0:
            end(n // args.phase_frames - 1)
            if n // args.phase_frames < args.phases:
                begin(n // args.phase_frames)

    begin(0)
    total = args.phases * args.phase_frames
    pipeline = Pipeline(open_source("synthetic"), segmenter, view=view, workers=workers, max_frames=total,
                        on_frame=on_frame)
    summary = pipeline.run()
    view.close()
    reading.join()
    reader.close()

    phases = []
    for i, kind in enumerate(kinds):
        first, last = i * args.phase_frames + args.settle, (i + 1) * args.phase_frames - 1
        t = done[first:last + 1]
        got = [r for r in received if t[0] <= r <= t[-1]]
        phases.append({"phase": i, "kind": kind, "fps": (len(t) - 1) / (t[-1] - t[0]),
                       "cpu_ms_per_frame": 1000.0 * (cpu[last] - cpu[first]) / (last - first),
                       "reading_viewer_fps": (len(got) - 1) / (t[-1] - t[0]) if len(got) > 1 else 0.0})
    kinds_seen = ("reading", "stalled", "control")
    medians = {k: statistics.median(p["fps"] for p in phases if p["kind"] == k) for k in kinds_seen}
    # the machine's load drifts during a run: each stalled / control phase against its reading neighbours
    ratios: dict[str, list[float]] = {"stalled": [], "control": []}
    for i, p in enumerate(phases):
        if p["kind"] in ratios:
            around = [phases[j]["fps"] for j in (i - 1, i + 1) if 0 <= j < len(phases)]
            ratios[p["kind"]].append(p["fps"] / statistics.mean(around))
    viewer = {k: statistics.median(p["reading_viewer_fps"] for p in phases if p["kind"] == k)
              for k in ("reading", "stalled", "control")}
    for p in phases:
        print(f"phase {p['phase']} {p['kind']:<8} run {p['fps']:6.2f} FPS, "
              f"reading viewer {p['reading_viewer_fps']:6.2f} FPS, CPU {p['cpu_ms_per_frame']:.0f} ms/frame")
    cpu_median = {k: statistics.median(p["cpu_ms_per_frame"] for p in phases if p["kind"] == k)
                  for k in ("reading", "stalled", "control")}
    print(f"median CPU per frame (this process, all threads): reading {cpu_median['reading']:.0f} ms, "
          f"stalled {cpu_median['stalled']:.0f} ms, control {cpu_median['control']:.0f} ms")
    print(f"median run FPS: reading only {medians['reading']:.2f}, with {args.stalled} stalled viewer(s) "
          f"{medians['stalled']:.2f}; frames processed {summary.frames_processed}/{total}")
    for kind, r in ratios.items():
        print(f"{kind} phase / its reading neighbours: median {statistics.median(r):.3f} (min {min(r):.3f}, "
              f"max {max(r):.3f}, {len(r)} phases)")
    stalled_sent = {k: v for k, v in view.sent.items() if k != 1}  # client 1: the reading viewer
    print(f"stalled viewers: JPEGs written to each before it blocked: {sorted(stalled_sent.values())}")
    if args.json:
        result = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "hardware": hardware(),
                  "workers": workers, "threads": threads, "frames_processed": summary.frames_processed,
                  "frames_total": total, "phases": phases, "median_fps": medians,
                  "median_cpu_ms_per_frame": cpu_median, "over_reading_neighbours": ratios,
                  "reading_viewer_median_fps": viewer, "stalled_marks": marks, "stalled_sent": stalled_sent,
                  "clients_dropped": view.clients_dropped, "stalled_per_phase": args.stalled}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
