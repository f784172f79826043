"""Pipelines against one local Triton server vs the same pipelines with local backends (issue 19).

One run measures, on this machine:

* **1, 2, 4 pipelines** (real ``rtseg run`` subprocesses on ``synthetic:SEED``, ``rtseg
  run``'s defaults otherwise) feeding one ``rtseg serve`` (PyTriton, ONNX Runtime inside,
  dynamic batching with the default 2 ms queue delay), then the same pipelines with
  ``--backend onnxruntime`` each running the network itself. Total FPS counts the frames
  published by all streams while **all** of them were running (first frame of the last
  stream to start to the last frame of the first stream to end), so start-up is left out;
  per-stream latency is each run's end-to-end (capture -> published) p50 / p95 from its
  summary. Triton's own statistics give the mean batch per execution.
* **per-request overhead at batch 1**: one image at a time, in this process, the mean time
  of a ``TritonBackend(batch)`` call (gRPC + system shared memory, and with ``shm=off`` the
  tensors inside the gRPC messages) minus the compute time Triton's own statistics give for
  those requests (input + infer + output, which includes PyTriton's hop from its stub to the
  ``rtseg serve`` process): what the remote call adds. A local ``OnnxRuntimeBackend`` on the
  server's graph is timed too, for scale (two processes' sessions on a loaded machine do not
  give a clean difference).

On one machine the server and the pipelines share the same cores, so this shows the cost of
the remote call and what batching across streams does, not a gain: the gain comes when the
server is another machine (or a GPU). ::

    python benchmarks/triton_serving.py                          # 40 frames per stream
    python benchmarks/triton_serving.py --frames 60 --json benchmarks/results/triton_DATE.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# this file's name is the issue's, but it shadows the `triton` package torch probes for
# (torch._dynamo imports `triton.language` when `import triton` works): take its folder off
# sys.path and load common.py from it by path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if True:  # noqa: E702 - the import must follow the path fix
    import importlib.util

    _spec = importlib.util.spec_from_file_location("common", os.path.join(_HERE, "common.py"))
    _common = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_common)
    free_port, hardware = _common.free_port, _common.hardware

MODEL = "yolact_resnet18_half_384"
RTSEG = [sys.executable, "-m", "rtseg"]


def start_server(port: int, cache: str, log_path: str) -> subprocess.Popen:
    import tritonclient.grpc as grpcclient

    log = open(log_path, "w")
    proc = subprocess.Popen([*RTSEG, "serve", "--model", MODEL, "--port", str(port), "--http-port", str(free_port()),
                             "--metrics-port", str(free_port())], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "RTSEG_CACHE": cache}, start_new_session=True)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"rtseg serve ended: see {log_path}")
        try:
            if client.is_model_ready(MODEL, client_timeout=2):
                return proc
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    sys.exit("rtseg serve not ready in 300 s")


def statistics_of(port: int) -> dict:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(f"127.0.0.1:{port}").get_inference_statistics(MODEL, as_json=True)
    s = stats["model_stats"][0]
    return {"inference_count": int(s.get("inference_count", 0)), "execution_count": int(s.get("execution_count", 0))}


def _collect(endpoint: str, times: list, ready: threading.Event, count: int) -> None:
    """Arrival times of ``count`` messages; returns while the publisher is still up (its
    last frame), so the subscriber never has to handle its publisher going away."""
    from rtseg.subscriber import subscribe

    gen = subscribe(endpoint, timeout=600)
    ready.set()
    try:
        for _ in gen:
            times.append(time.monotonic())
            if len(times) >= count:
                break
    finally:
        gen.close()


def run_streams(n: int, backend: str, frames: int, cache: str, tmp: str) -> dict:
    """``n`` pipelines at once; total FPS while all run, per-stream end-to-end latency."""
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(n)]
    times: list[list[float]] = [[] for _ in range(n)]
    subs = []
    for endpoint, box in zip(endpoints, times):
        ready = threading.Event()
        t = threading.Thread(target=_collect, args=(endpoint, box, ready, frames), daemon=True)
        t.start()
        ready.wait(10)
        subs.append(t)
    summaries = [os.path.join(tmp, f"{backend.split(':')[0]}-{n}-{i}.json") for i in range(n)]
    procs = [subprocess.Popen([*RTSEG, "-q", "run", "--source", f"synthetic:{i + 1}", "--max-frames", str(frames),
                               "--backend", backend, "--publish", endpoints[i], "--summary-json", summaries[i]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RTSEG_CACHE": cache}) for i in range(n)]
    ended = None
    while any(t.is_alive() for t in subs):  # normally they end at each stream's last frame
        if ended is None and all(p.poll() is not None for p in procs):
            ended = time.monotonic()
        if ended is not None and time.monotonic() - ended > 5:
            break  # a subscriber missed a message: count what it has
        time.sleep(0.1)
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            sys.exit(f"rtseg run --backend {backend} failed: {err.strip().splitlines()[-1:]}")
    start = max(box[0] for box in times)
    end = min(box[-1] for box in times)
    overlap = sum(sum(start <= x <= end for x in box) for box in times)
    runs = [json.load(open(s)) for s in summaries]
    e2e = [r["stages_ms"]["end to end"] for r in runs]
    return {
        "streams": n, "backend": "triton" if backend.startswith("triton://") else backend,
        "frames_per_stream": frames, "published": [len(b) for b in times],
        "total_fps": (overlap - n) / (end - start) if end > start else float("nan"),
        "overlap_seconds": end - start,
        "latency_p50_ms": statistics.mean(x["p50"] for x in e2e), "latency_p95_ms": max(x["p95"] for x in e2e),
        "inference_ms": statistics.mean(r["stages_ms"]["inference"]["p50"] for r in runs),
        "dropped_backend": sum(r.get("dropped_backend", 0) for r in runs),
    }


def _server_ns(port: int) -> dict:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(f"127.0.0.1:{port}").get_inference_statistics(MODEL, as_json=True)
    inf = stats["model_stats"][0]["inference_stats"]
    return {k: int(inf.get(k, {}).get("ns", 0)) for k in ("success", "queue", "compute_input", "compute_infer",
                                                          "compute_output")} | \
        {"count": int(inf.get("success", {}).get("count", 0))}


def per_request_overhead(port: int, cache: str, calls: int) -> dict:
    """Batch-1 calls one at a time: the client's round trip against what Triton itself spent on
    each request (its statistics: queue + compute), with shared memory and with the tensors in
    the gRPC messages; and, for scale, a local ONNX Runtime session on the server's graph."""
    import numpy as np
    import torch

    from rtseg.backends.onnxruntime_backend import OnnxRuntimeBackend
    from rtseg.segmenter import Segmenter
    from rtseg.serve import dynamic_batch_onnx
    from rtseg.synthetic import SyntheticVideo

    torch.set_num_threads(os.cpu_count() or 1)  # what the server's session gets (rtseg serve's default)
    url = f"triton://127.0.0.1:{port}/{MODEL}"
    seg = Segmenter(MODEL, backend=url)
    seg_wire = Segmenter(MODEL, backend=url + "?shm=off")
    local = OnnxRuntimeBackend(dynamic_batch_onnx(seg, cache), model=MODEL, device=torch.device("cpu"))
    batch = seg.preprocess(SyntheticVideo(seed=1).frame(3).image)
    out: dict = {"calls": calls}
    for name, fn in (("local onnxruntime", local), ("triton shared memory", seg.backend),
                     ("triton gRPC payload", seg_wire.backend)):
        for _ in range(3):
            fn(batch)
        before = _server_ns(port) if name.startswith("triton") else None
        wall = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn(batch)
            wall.append(time.perf_counter_ns() - t0)
        row = {"client_mean_ms": float(np.mean(wall)) / 1e6, "client_median_ms": float(np.median(wall)) / 1e6}
        if before is not None:
            after = _server_ns(port)
            n = after["count"] - before["count"]
            per = {k: (after[k] - before[k]) / n / 1e6 for k in after if k != "count"}
            row |= {"server_request_ms": per["success"], "server_queue_ms": per["queue"],
                    "server_compute_ms": per["compute_input"] + per["compute_infer"] + per["compute_output"],
                    "overhead_ms": row["client_mean_ms"] - per["compute_input"] - per["compute_infer"]
                    - per["compute_output"]}
        out[name] = row
    out["shm_used"] = seg.backend.stats.shm_used
    seg.backend.close()
    seg_wire.backend.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=40, help="frames per stream (default 40)")
    ap.add_argument("--streams", default="1,2,4", help="pipeline counts (default 1,2,4)")
    ap.add_argument("--calls", type=int, default=30, help="batch-1 calls per backend for the overhead (default 30)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    counts = [int(x) for x in args.streams.split(",")]
    tmp = tempfile.mkdtemp(prefix="rtseg-bench-triton-")
    cache = os.environ.get("RTSEG_CACHE") or os.path.abspath("engines")
    port = free_port()
    server = start_server(port, cache, os.path.join(tmp, "serve.log"))
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]), "model": MODEL,
               "hardware": hardware(), "rounds": []}
    try:
        results["overhead"] = per_request_overhead(port, cache, args.calls)
        for n in counts:
            before = statistics_of(port)
            r = run_streams(n, f"triton://127.0.0.1:{port}/{MODEL}", args.frames, cache, tmp)
            after = statistics_of(port)
            execs = after["execution_count"] - before["execution_count"]
            r["mean_batch"] = (after["inference_count"] - before["inference_count"]) / execs if execs else float("nan")
            results["rounds"].append(r)
            print(json.dumps(r), flush=True)
            r = run_streams(n, "onnxruntime", args.frames, cache, tmp)
            results["rounds"].append(r)
            print(json.dumps(r), flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    o = results["overhead"]
    print(f"\nbatch 1, one request at a time, mean of {o['calls']} (overhead: client round trip minus Triton's compute):")
    for name in ("local onnxruntime", "triton shared memory", "triton gRPC payload"):
        r = o[name]
        extra = (f", Triton compute {r['server_compute_ms']:.1f} ms, queue {r['server_queue_ms']:.1f} ms, "
                 f"overhead {r['overhead_ms']:.1f} ms") if "overhead_ms" in r else ""
        print(f"  {name}: {r['client_mean_ms']:.1f} ms{extra}")
    print("| streams | backend | total FPS | per-stream p50 ms | worst p95 ms | mean batch |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in results["rounds"]:
        print(f"| {r['streams']} | {r['backend']} | {r['total_fps']:.1f} | {r['latency_p50_ms']:.0f} | "
              f"{r['latency_p95_ms']:.0f} | {r.get('mean_batch', float('nan')):.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
