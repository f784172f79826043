"""YOLACT's parameters of rtseg's generic CUDA kernels (``cuda/preprocess.cu`` through
:func:`rtseg.kernels.masks.preprocess_cuda`); plain Python, no GPU."""

from __future__ import annotations

from rtseg.families.yolact.network import YOLACT_MEANS_BGR, YOLACT_STD_BGR, YolactConfig
from rtseg.kernels.masks import PreprocessParams


def preprocess_params(cfg: YolactConfig, image_size: tuple[int, int]) -> PreprocessParams:
    """What the preprocessing kernel needs to compute :func:`rtseg.families.yolact.preprocess.preprocess`
    for frames of ``image_size (H, W)``: a square stretch to ``max_size`` (any frame size), BGR->RGB,
    then the BGR mean / std reordered to RGB (or ``/ 255`` without ``normalize``)."""
    s = int(cfg.max_size)
    if cfg.normalize:
        mean = tuple(float(YOLACT_MEANS_BGR[c]) for c in (2, 1, 0))
        std = tuple(float(YOLACT_STD_BGR[c]) for c in (2, 1, 0))
    else:
        mean, std = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)
    return PreprocessParams((s, s), (s, s), (2, 1, 0), mean, std, False)  # type: ignore[arg-type]
