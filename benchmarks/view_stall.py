"""Does a viewer that stops reading change a ``--view`` run's FPS? Both cases in one run.

    PYTHONPATH=. python benchmarks/view_stall.py [--phases 6] [--phase-frames 60] [--stalled 1]
        [--json benchmarks/results/view_stall_DATE.json]

One :class:`rtseg.pipeline.Pipeline` with a :class:`rtseg.view.ViewServer` (what ``rtseg run
--view`` builds) over the synthetic source at 640x480, not live (every frame is processed:
the model sets the pace), the built-in model, the CLI's default workers and threads. One
viewer reads the MJPEG stream the whole time. The run alternates phases of
``--phase-frames`` frames: *reading* (that viewer only) and *stalled* (``--stalled`` more
viewers that connect at the phase's start, with a 4 KiB receive buffer, ask for the stream
and never read; closed at its end). The send timeout is raised to 600 s so that stalled
viewers stay connected, blocked, for their whole phase (the default drops them after 10 s).
Interleaving the phases in one run puts both under the same machine load.

FPS of a phase: its frames after the first ``--settle`` (the stalled sockets fill their
buffers then) over the time between their outputs (the pipeline's ``on_frame``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time

from common import hardware

# this folder is sys.path[0] (python benchmarks/view_stall.py): its triton.py would shadow the
# triton package torch's compiler imports during the model load
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from rtseg.cli import default_workers
from rtseg.pipeline import Pipeline
from rtseg.segmenter import Segmenter, configure_threads
from rtseg.sources import open_source
from rtseg.view import BOUNDARY, ViewServer


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
    parser.add_argument("--phases", type=int, default=6, help="phases, alternating reading / stalled (default 6)")
    parser.add_argument("--phase-frames", type=int, default=60)
    parser.add_argument("--settle", type=int, default=10, help="frames at a phase's start left out of its FPS")
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

    kinds = ["reading" if i % 2 == 0 else "stalled" for i in range(args.phases)]
    done: list[float] = []  # output time of every frame
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
        t = done[i * args.phase_frames + args.settle:(i + 1) * args.phase_frames]
        got = [r for r in received if t[0] <= r <= t[-1]]
        phases.append({"phase": i, "kind": kind, "fps": (len(t) - 1) / (t[-1] - t[0]),
                       "reading_viewer_fps": (len(got) - 1) / (t[-1] - t[0]) if len(got) > 1 else 0.0})
    medians = {k: statistics.median(p["fps"] for p in phases if p["kind"] == k) for k in ("reading", "stalled")}
    viewer = {k: statistics.median(p["reading_viewer_fps"] for p in phases if p["kind"] == k)
              for k in ("reading", "stalled")}
    for p in phases:
        print(f"phase {p['phase']} {p['kind']:<8} run {p['fps']:6.2f} FPS, reading viewer {p['reading_viewer_fps']:6.2f} FPS")
    print(f"median run FPS: reading only {medians['reading']:.2f}, with {args.stalled} stalled viewer(s) "
          f"{medians['stalled']:.2f} (ratio {medians['stalled'] / medians['reading']:.3f}); frames processed "
          f"{summary.frames_processed}/{total}")
    print(f"stalled viewers: JPEGs written to each before it blocked: "
          f"{[v for m in marks for k, v in m['sent'].items() if k > 1]}")
    if args.json:
        result = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "hardware": hardware(),
                  "workers": workers, "threads": threads, "frames_processed": summary.frames_processed,
                  "frames_total": total, "phases": phases, "median_fps": medians, "reading_viewer_median_fps": viewer,
                  "stalled_marks": marks, "clients_dropped": view.clients_dropped, "stalled_per_phase": args.stalled}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
