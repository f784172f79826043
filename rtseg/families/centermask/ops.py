"""CenterMask's parameters of rtseg's generic CUDA kernels (``cuda/preprocess.cu`` through
:func:`rtseg.kernels.masks.preprocess_cuda`); plain Python, no GPU."""

from __future__ import annotations

from rtseg.families.centermask.network import CenterMaskConfig
from rtseg.families.centermask.preprocess import resized_size
from rtseg.kernels.masks import PreprocessParams


def preprocess_params(cfg: CenterMaskConfig, image_size: tuple[int, int]) -> PreprocessParams:
    """What the preprocessing kernel needs to compute :func:`rtseg.families.centermask.preprocess.preprocess_float`
    into the fixed canvas ``cfg.input_size`` for frames of ``image_size (H, W)``: BGR kept,
    ``cfg.pixel_mean`` / ``cfg.pixel_std``, torch's antialiased bilinear resize rounded to integers."""
    return PreprocessParams(resized_size(image_size, cfg), tuple(cfg.input_size), (0, 1, 2),  # type: ignore[arg-type]
                            tuple(float(v) for v in cfg.pixel_mean),  # type: ignore[arg-type]
                            tuple(float(v) for v in cfg.pixel_std), True)  # type: ignore[arg-type]
