"""YOLACT's test pipeline: where a frame goes in the network input and its preprocessing
(dbolya/yolact ``utils/augmentations.py`` ``FastBaseTransform``), as pure torch functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtseg.families.yolact.network import YOLACT_MEANS_BGR, YOLACT_STD_BGR, YolactConfig
from rtseg.postprocess import TORCH_OPS, PostprocessOps
from rtseg.postprocess.resize import InputGeometry


def input_geometry(cfg: YolactConfig, image_size: tuple[int, int], canvas: tuple[int, int] | None = None) -> InputGeometry:
    """YOLACT's input is always ``max_size x max_size`` (``FastBaseTransform`` stretches every
    frame to it; the priors are made for it): a ``canvas`` other than that is refused."""
    h, w = int(image_size[0]), int(image_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image size must be (H, W) with positive ints, got {image_size!r}")
    s = int(cfg.max_size)
    if canvas is not None and tuple(canvas) != (s, s):
        raise ValueError(f"model {cfg.name} always runs at {s}x{s} (upstream stretches every frame to it; its "
                         f"priors are made for it), so --canvas {canvas[0]}x{canvas[1]} cannot apply")
    return InputGeometry((h, w), (s, s), (s, s))


def preprocess(images: torch.Tensor, cfg: YolactConfig, geometry: InputGeometry | None = None,
               ops: PostprocessOps = TORCH_OPS) -> torch.Tensor:
    """``uint8[B, H, W, 3]`` BGR -> ``float32[B, 3, S, S]`` RGB network input.

    As ``FastBaseTransform``: square resize to ``cfg.max_size`` (aspect ratio not kept),
    bilinear on float with ``align_corners=False``, BGR mean/std normalisation, then BGR->RGB.
    ``geometry`` is always ``S x S`` (:func:`input_geometry`); ``ops.preprocess`` (the CUDA
    kernel) computes the same.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (B, H, W, 3) BGR, got {images.dtype} {tuple(images.shape)}")
    if ops.preprocess is not None:
        return ops.preprocess(images, cfg)
    x = images.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, (cfg.max_size, cfg.max_size), mode="bilinear", align_corners=False)
    if cfg.normalize:
        mean = torch.tensor(YOLACT_MEANS_BGR, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(YOLACT_STD_BGR, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    else:
        x = x / 255.0
    return x[:, [2, 1, 0]].contiguous()
