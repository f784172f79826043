"""What refused CURVE subscribers cost a publisher: CPU seconds of the publishing process
and handshakes it refused, while ``--clients`` ``rtseg subscribe`` processes with a key the
publisher does not allow keep trying for ``--seconds``.

The publisher is :class:`rtseg.publisher.Publisher` with keys from ``rtseg keys generate``
(its ZAP thread included: this process hosts nothing else); each client is a real
``python -m rtseg subscribe ENDPOINT --curve-keys STRANGER --timeout SECONDS`` process. Run
it once with each tree on ``PYTHONPATH`` to compare, e.g.:

    PYTHONPATH=/path/to/rtseg python benchmarks/refused_subscribers.py --clients 4 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import hardware

import rtseg
from rtseg.keys import generate_keys
from rtseg.publisher import Publisher


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rtseg-refused-"))
    try:
        keys, other, stranger = work / "keys", work / "other", work / "stranger"
        generate_keys(keys)
        generate_keys(other)
        stranger.mkdir()
        for name in ("client.key", "client.key_secret"):
            shutil.copy(other / name, stranger / name)
        shutil.copy(keys / "server.key", stranger / "server.key")
        with Publisher("tcp://127.0.0.1:*", ["x"], curve_keys=str(keys)) as publisher:
            command = [sys.executable, "-m", "rtseg", "subscribe", publisher.endpoint, "--curve-keys", str(stranger),
                       "--timeout", str(args.seconds)]
            clients = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                       for _ in range(args.clients)]
            time.sleep(1.0)  # the clients start (Python, numpy, zmq imports) and begin trying
            cpu0, rejected0, t0 = cpu_seconds(), publisher.stats.rejected_clients, time.monotonic()
            time.sleep(max(0.0, args.seconds - 2.0))
            cpu1, rejected1, t1 = cpu_seconds(), publisher.stats.rejected_clients, time.monotonic()
            log_lines = [len(c.communicate(timeout=120)[1].splitlines()) for c in clients]
        window = t1 - t0
        result = {
            "rtseg": os.path.dirname(rtseg.__file__),
            "machine": hardware(),
            "clients": args.clients,
            "window_s": round(window, 2),
            "publisher_cpu_fraction_of_a_core": round((cpu1 - cpu0) / window, 3),
            "refused_handshakes_per_s": round((rejected1 - rejected0) / window, 1),
            "client_log_lines_each": log_lines,
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
