"""Killing one camera of a multi-stream run: the other streams' frame rates before vs after.

    PYTHONPATH=. python benchmarks/stream_kill.py [--window 15] [--json out.json]

One ``rtseg run`` with four streams, publishing (wire format 1.3, topic ``rtseg/<stream>``):
``synthetic:1:320x240`` (stream 0), ``synthetic:2:320x240`` (1), a 320x240 MJPG file played
with ``--loop`` (2), and an RTSP camera (3): the real GStreamer RTSP server of
tests/rtsp_server.py (H.264 320x240 at 25 FPS; needs Debian's ``gir1.2-gst-rtsp-server-1.0``
for ``/usr/bin/python3``). The synthetic and file streams are not live: each reads its next
frame once inference has taken the previous one, so their rates are their share of the
machine's inference capacity; the camera is live (newest frame only).

One subscriber of every stream (``rtseg.subscribe``, real ZeroMQ) records each message's
stream and ``publish_time``. Once every stream has published, after ``--warmup`` seconds,
the script measures ``--window`` seconds, then SIGKILLs the RTSP server (the camera
vanishes; rtseg keeps trying to reopen it for ``--reconnect-timeout``, default 60 s),
waits 1 s, measures another ``--window`` seconds and ends the run with SIGTERM (a clean
stop: the run's summary is written). Per stream it reports the published frames per second
in each window, and the longest gap between two published frames of that stream from 2 s
before the kill to 5 s after it (a stall of the other streams while the camera dies would
show there), and the CPU the ``rtseg run`` process got in each window (the machine may be
shared: frames per CPU second compare the windows fairly). The run's own per-stream summary (``--summary-json``) is kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import free_port, hardware, write_video

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/rtsp_server.py: the real RTSP server the tests use

from rtsp_server import RtspServerProcess, rtsp_server_available  # noqa: E402

from rtseg.subscriber import subscribe  # noqa: E402

SIZE = (240, 320)  # H, W of every stream


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(times: list[float], start: float, end: float) -> float:
    return sum(start <= t < end for t in times) / (end - start)


def longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    edges = [start, *inside, end]
    return max(b - a for a, b in zip(edges, edges[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured before and after the kill (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after every stream's first frame before measuring")
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args()
    available, reason = rtsp_server_available()
    if not available:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="rtseg-stream-kill-") as tmp:
        clip = os.path.join(tmp, "clip.avi")
        write_video(clip, 50, SIZE)
        summary_path = os.path.join(tmp, "summary.json")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        camera = RtspServerProcess()
        camera.start()
        sources = [f"synthetic:1:{SIZE[1]}x{SIZE[0]}", f"synthetic:2:{SIZE[1]}x{SIZE[0]}", clip, camera.url]
        names = [str(i) for i in range(len(sources))]
        published: dict[str, list[float]] = {name: [] for name in names}
        stop = threading.Event()

        def listen() -> None:
            for message in subscribe(endpoint, timeout=300.0):
                published[message.stream].append(message.publish_time)
                if stop.is_set():
                    return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        command = [sys.executable, "-m", "rtseg", "-q", "run", "--loop", "--publish", endpoint,
                   "--summary-json", summary_path]
        for source in sources:
            command += ["--source", source]
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not all(published.values()):
                if run.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the run did not publish every stream: {run.communicate()[1][-2000:]}")
                time.sleep(0.1)
            time.sleep(args.warmup)
            t0, cpu0 = time.time(), cpu_seconds(run.pid)
            time.sleep(args.window)
            t_kill, cpu_kill = time.time(), cpu_seconds(run.pid)
            camera.kill()
            time.sleep(1.0)
            cpu_after0 = cpu_seconds(run.pid)
            time.sleep(args.window)
            t_end, cpu_end = time.time(), cpu_seconds(run.pid)
            run.send_signal(signal.SIGTERM)
            out, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            camera.stop()
        stop.set()
        listener.join(timeout=2)  # a daemon: it may still wait for messages that no longer come
        summary = json.loads(Path(summary_path).read_text()) if os.path.exists(summary_path) else None

    before = (t0, t_kill)
    after = (t_kill + 1.0, t_kill + 1.0 + args.window)
    rows = []
    for name, source in zip(names, sources):
        times = sorted(published[name])
        rows.append({
            "stream": name,
            "source": "file (--loop)" if source == clip else ("rtsp" if source.startswith("rtsp") else source),
            "fps_before": rate(times, *before),
            "fps_after": rate(times, *after),
            "longest_gap_s_around_kill": longest_gap(times, t_kill - 2.0, t_kill + 5.0),
            "published": len(times),
        })
    print(f"{'stream':<7}{'source':<22}{'FPS before':>11}{'FPS after':>11}{'ratio':>7}{'longest gap s':>15}")
    for r in rows:
        ratio = r["fps_after"] / r["fps_before"] if r["fps_before"] else float("nan")
        print(f"{r['stream']:<7}{r['source']:<22}{r['fps_before']:>11.2f}{r['fps_after']:>11.2f}{ratio:>7.2f}"
              f"{r['longest_gap_s_around_kill']:>15.2f}")
    total_before = sum(r["fps_before"] for r in rows)
    total_after = sum(r["fps_after"] for r in rows)
    # the machine is shared: the CPU the run got in each window, and frames per CPU second
    cores_before, cores_after = (cpu_kill - cpu0) / args.window, (cpu_end - cpu_after0) / args.window
    print(f"all streams: {total_before:.2f} FPS before, {total_after:.2f} after; the run used {cores_before:.2f} / "
          f"{cores_after:.2f} cores: {total_before / cores_before:.2f} / {total_after / cores_after:.2f} frames per CPU "
          f"second; run exit code {run.returncode}, stopped by {summary and summary.get('stopped_by')!r}")
    if args.json:
        result = {"command": " ".join(sys.argv), "hardware": hardware(), "window_s": args.window,
                  "warmup_s": args.warmup, "streams": rows, "run_cores_before": cores_before,
                  "run_cores_after": cores_after, "load_average_at_end": os.getloadavg(), "run_exit_code": run.returncode,
                  "run_summary": summary, "run_stderr_tail": err[-2000:]}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
