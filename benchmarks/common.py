"""What every benchmark script here shares: naming the hardware, a free port, a test video.

Scripts run as ``python benchmarks/<name>.py``, so this module is importable as ``common``.
"""

from __future__ import annotations

import os
import platform
import socket

import cv2
import torch

from rtseg.synthetic import SyntheticVideo


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """The machine a figure was measured on, for the JSON results."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_video(path: str, frames: int, size: tuple[int, int]) -> None:
    """An MJPG file of ``frames`` frames of the synthetic video (seed 7), ``size = (H, W)``."""
    video = SyntheticVideo(seed=7, size=size)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (size[1], size[0]))
    for i in range(frames):
        writer.write(video.frame(i).image)
    writer.release()
