"""What every benchmark script here shares: naming the hardware, a free port, a test video,
elliptical masks.

Scripts run as ``python benchmarks/<name>.py``, so this module is importable as ``common``.
"""

from __future__ import annotations

import socket

import numpy as np

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


def ellipse_masks(rng: np.random.Generator, n: int, size: tuple[int, int],
                  area: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` filled ellipses in a ``size = (H, W)`` image, each covering a fraction drawn from
    ``area`` of it: ``(masks bool[n, H, W], boxes float32[n, 4])``, boxes the masks' tight xyxy."""
    import cv2

    h, w = size
    masks = np.zeros((n, h, w), np.bool_)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        pixels = rng.uniform(*area) * h * w
        a = min(np.sqrt(pixels / np.pi * rng.uniform(0.5, 2.0)), w / 2 - 1)
        b = min(pixels / np.pi / a, h / 2 - 1)
        cx, cy = rng.uniform(a, w - a), rng.uniform(b, h - b)
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (int(cx), int(cy)), (max(1, int(a)), max(1, int(b))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        masks[i] = m.astype(bool)
        ys, xs = np.nonzero(masks[i])
        boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return masks, boxes
