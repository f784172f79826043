"""What every benchmark script here shares: naming the hardware, a free port, a test video.

Scripts run as ``python benchmarks/<name>.py``, so this module is importable as ``common``.
"""

from __future__ import annotations

import socket

from rtseg.bench import cpu_model, machine_info  # noqa: F401  (cpu_model: re-exported for the scripts)
from rtseg.bench import write_video as bench_write_video


def hardware() -> dict:
    """The machine a figure was measured on, for the JSON results (``rtseg bench``'s record:
    CPU, cores, memory, GPU, library versions, load average), plus the flat keys older
    results used."""
    info = machine_info()
    return {**info, "torch": info["versions"].get("torch")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_video(path: str, frames: int, size: tuple[int, int]) -> None:
    """An MJPG file of ``frames`` frames of the synthetic video (seed 7), ``size = (H, W)``."""
    bench_write_video(path, size, frames)
