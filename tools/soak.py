"""Soak run: the synthetic source through the built-in model, published to a subscriber in
another process, for a fixed time, sampling this process's memory, threads and open file
descriptors. Writes the samples as a table and says whether they stayed within bounds.

    .venv/bin/python tools/soak.py --seconds 600 --interval 30 --markdown docs/soak-table.md

Bounds (exit code 1 when one is broken):

- RSS: after warm-up (the first fifth of the run, at most 60 s) it grows by at most
  ``--rss-bound-mib`` (default 64 MiB) up to the last sample;
- threads and open file descriptors: constant (within 1) from warm-up to the end;
- after stop (pipeline joined, publisher closed, source closed): no thread named
  ``rtseg-*`` alive, and the thread and fd counts back at (or below) what they were
  before the pipeline and the publisher were made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Sample:
    seconds: float  #: since the pipeline started
    frames: int  #: processed so far
    published: int
    received: int  #: lines the subscriber printed so far
    rss_mib: float
    threads: int  #: OS threads of this process (/proc/self/task)
    fds: int  #: open file descriptors (/proc/self/fd); ZeroMQ sockets hold fds too


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f"{f.read().strip()}#{tid}")
        except OSError:
            pass
    return names


def _fd_targets() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(seconds: float, interval: float, model: str, source_spec: str) -> dict:
    from rtseg.cli import default_workers
    from rtseg.pipeline import Pipeline
    from rtseg.publisher import Publisher
    from rtseg.segmenter import Segmenter, configure_threads
    from rtseg.sources import open_source

    workers = default_workers("cpu")
    configure_threads(None, workers)
    segmenter = Segmenter(model)
    segmenter.warmup()
    # one short run first: OpenCV and torch create their worker pools on first use, once per
    # process; they belong in the baseline, not among the things a run leaves behind
    Pipeline(open_source(source_spec), segmenter, max_frames=4, workers=workers).run()
    before = {"threads": _threads(), "fds": _fds(), "rss_mib": _rss_mib(), "thread_names": _thread_names(),
              "fd_targets": _fd_targets()}

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    # closing waits (up to 10 s) until the subscriber has every queued message: the default 250 ms
    # linger can drop the last one on a loaded machine, a loss no publish_seq gap reveals
    publisher = Publisher(endpoint, segmenter.class_names, linger_ms=10_000)
    # the subscriber: another process running rtseg.subscribe (without rtseg's CLI, which
    # imports torch), printing one line per message
    # prints "<seq> <missed>": missed counts the publisher's messages it did not receive
    # just before this one (gaps in publish_seq)
    listen = ("import sys; from rtseg.subscriber import subscribe\n"
              "for m in subscribe(sys.argv[1], timeout=60): print(m.seq, m.missed, flush=True)")
    subscriber = subprocess.Popen([sys.executable, "-c", listen, endpoint], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    received = [0]
    missed = [0]

    def count_lines() -> None:
        for line in subscriber.stdout:
            received[0] += 1
            missed[0] += int(line.split()[1])

    counter = threading.Thread(target=count_lines, name="soak-subscriber-reader", daemon=True)
    counter.start()
    from rtseg.structures import Frame
    import numpy as np

    handshake = Frame(seq=0, source_id="soak warm-up", capture_time=time.time(), image=np.zeros((8, 8, 3), np.uint8))
    deadline = time.monotonic() + 120
    while received[0] == 0:  # until the subscriber has connected and received (slow joiner)
        if time.monotonic() > deadline or subscriber.poll() is not None:
            raise RuntimeError("the subscriber process did not receive anything within 120 s")
        publisher.publish(handshake)
        time.sleep(0.05)
    received[0] = missed[0] = 0

    source = open_source(source_spec)
    source.open()
    pipeline = Pipeline(source, segmenter, publisher=publisher, workers=workers)
    result: list = []
    runner = threading.Thread(target=lambda: result.append(pipeline.run()), name="soak-runner")
    t0 = time.monotonic()
    runner.start()
    samples: list[Sample] = []

    def sample() -> None:
        samples.append(Sample(round(time.monotonic() - t0, 1), pipeline.frames_processed, pipeline.frames_published,
                              received[0], round(_rss_mib(), 1), _threads(), _fds()))

    next_at = 0.0
    while True:
        now = time.monotonic() - t0
        if now >= next_at:
            sample()
            next_at += interval
        if now >= seconds or not runner.is_alive():
            break
        time.sleep(min(0.5, max(0.0, next_at - now)))
    if samples[-1].seconds < seconds - 1 and runner.is_alive():
        sample()
    t_stop = time.monotonic()
    pipeline.stop("soak done")
    runner.join()
    stop_seconds = time.monotonic() - t_stop
    publisher.close()
    source.close()
    subscriber.wait(timeout=120)  # it exits on its timeout once nothing arrives
    counter.join(timeout=10)
    subscriber.stdout.close()
    time.sleep(0.5)  # threads that were told to exit have exited
    rtseg_threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("rtseg"))
    after = {"threads": _threads(), "fds": _fds(), "rss_mib": _rss_mib(), "rtseg_threads": rtseg_threads,
             "thread_names": _thread_names(), "fd_targets": _fd_targets()}
    before_names = before.pop("thread_names")
    before_fds = before.pop("fd_targets")
    after["new_threads"] = sorted(set(after.pop("thread_names")) - set(before_names))
    after["new_fds"] = sorted(set(after.pop("fd_targets")) - set(before_fds))
    summary = result[0] if result else None

    warm = max(min(60.0, seconds / 5), interval)
    steady = [s for s in samples if s.seconds >= warm] or samples[-1:]
    rss_growth = steady[-1].rss_mib - steady[0].rss_mib
    return {
        "command": " ".join([Path(sys.executable).name, "tools/soak.py", *sys.argv[1:]]),
        "model": model,
        "source": source_spec,
        "workers": workers,
        "seconds": seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "samples": [asdict(s) for s in samples],
        "before": before,
        "after": after,
        "warm_up_seconds": warm,
        "rss_growth_mib": round(rss_growth, 1),
        "threads_range": max(s.threads for s in steady) - min(s.threads for s in steady),
        "fds_range": max(s.fds for s in steady) - min(s.fds for s in steady),
        "stop_seconds": round(stop_seconds, 2),
        "frames_processed": summary.frames_processed if summary else None,
        "frames_published": summary.frames_published if summary else None,
        "received": received[0],
        "missed": missed[0],  #: messages the subscriber did not receive (its gaps in publish_seq)
        "stopped_by": summary.stopped_by if summary else "pipeline failed",
    }


def verdict(report: dict, rss_bound_mib: float) -> list[str]:
    """The broken bounds (empty when all hold)."""
    problems = []
    if report["stopped_by"] != "soak done":
        problems.append(f"the pipeline ended early: {report['stopped_by']}")
    if report["rss_growth_mib"] > rss_bound_mib:
        problems.append(f"RSS grew {report['rss_growth_mib']} MiB after warm-up, bound {rss_bound_mib} MiB")
    if report["threads_range"] > 1:
        problems.append(f"thread count varied by {report['threads_range']} after warm-up")
    if report["fds_range"] > 1:
        problems.append(f"open fd count varied by {report['fds_range']} after warm-up")
    before, after = report["before"], report["after"]
    if after["rtseg_threads"]:
        problems.append(f"threads left after stop: {', '.join(after['rtseg_threads'])}")
    if after["threads"] > before["threads"]:
        problems.append(f"{after['threads'] - before['threads']} more thread(s) after stop than before start "
                        f"({', '.join(after['new_threads'])})")
    if after["fds"] > before["fds"]:
        problems.append(f"{after['fds'] - before['fds']} more open fd(s) after stop than before start "
                        f"({', '.join(after['new_fds'])})")
    return problems


def markdown(report: dict, problems: list[str], rss_bound_mib: float) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Model {report['model']}, source {report['source']}, {report['workers']} inference worker(s), "
        f"{report['machine']}; {report['seconds']:g} s.",
        "",
        "| s | frames processed | published | received by subscriber | RSS MiB | threads | open fds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["samples"]:
        lines.append(f"| {s['seconds']:g} | {s['frames']} | {s['published']} | {s['received']} | {s['rss_mib']:.1f} "
                     f"| {s['threads']} | {s['fds']} |")
    before, after = report["before"], report["after"]
    lines += [
        f"| before start | | | | {before['rss_mib']:.1f} | {before['threads']} | {before['fds']} |",
        f"| after stop | | | | {after['rss_mib']:.1f} | {after['threads']} | {after['fds']} |",
        "",
        f"After warm-up ({report['warm_up_seconds']:g} s): RSS growth {report['rss_growth_mib']} MiB "
        f"(bound {rss_bound_mib:g} MiB), thread count range {report['threads_range']}, fd range {report['fds_range']}. "
        f"Stop took {report['stop_seconds']} s; rtseg threads alive after stop: "
        f"{', '.join(after['rtseg_threads']) or 'none'}. Frames processed {report['frames_processed']}, published "
        f"{report['frames_published']}, received {report['received']} (missed by the subscriber {report['missed']}).",
        "",
        "Verdict: " + ("within bounds" if not problems else "; ".join(problems)) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--model", default="yolact_resnet18_half_384")
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--rss-bound-mib", type=float, default=64.0)
    parser.add_argument("--json", metavar="FILE", help="write the report (samples included) as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    report = run(args.seconds, args.interval, args.model, args.source)
    problems = verdict(report, args.rss_bound_mib)
    report["problems"] = problems
    text = markdown(report, problems, args.rss_bound_mib)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
