"""CenterMask's test pipeline as pure torch functions: detectron2 ``ResizeShortestEdge.get_output_shape``
+ ``ResizeTransform`` (PIL bilinear on uint8), ``GeneralizedRCNN.preprocess_image`` (``(x - mean) / std``,
BGR) and ``ImageList.from_tensors`` (zero padding bottom/right to a multiple of 32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtseg.families.centermask.network import CenterMaskConfig
from rtseg.postprocess import TORCH_OPS, PostprocessOps
from rtseg.postprocess.resize import InputGeometry, keep_ratio_geometry, resize_uint8, shortest_edge_size


def input_geometry(cfg: CenterMaskConfig, image_size: tuple[int, int],
                   canvas: tuple[int, int] | None = None) -> InputGeometry:
    """Where an ``(H, W)`` frame goes in the network input.

    ``keep_ratio`` (official variants): detectron2's ``ResizeShortestEdge.get_output_shape(h, w,
    min_size_test, max_size_test)`` (:func:`~rtseg.postprocess.resize.shortest_edge_size`),
    padded to a multiple of 32 as ``ImageList.from_tensors(size_divisibility=32)``. With a
    ``canvas`` (rtseg's fixed-shape speed option): capped to fit it, padded to it (portrait
    frames then run at a smaller scale than upstream's). Without ``keep_ratio`` (rtseg's square
    model): stretched to the canvas (``cfg.input_size`` unless given), as it was trained.
    """
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive (H, W), got {image_size}")
    if not cfg.keep_ratio:
        target = tuple(canvas) if canvas is not None else tuple(cfg.input_size)
        return InputGeometry((h, w), target, target)  # type: ignore[arg-type]
    newh, neww = shortest_edge_size((h, w), cfg.min_size_test, cfg.max_size_test)
    resized = (max(newh, 1), max(neww, 1))
    return keep_ratio_geometry((h, w), resized, canvas)


def resized_size(image_size: tuple[int, int], cfg: CenterMaskConfig) -> tuple[int, int]:
    """``(h, w)`` of the content inside the fixed canvas ``cfg.input_size`` (:func:`input_geometry`
    with that canvas; what the CUDA preprocessing kernel reproduces)."""
    return input_geometry(cfg, image_size, cfg.input_size).resized


def preprocess(images: torch.Tensor, cfg: CenterMaskConfig, geometry: InputGeometry | None = None,
               ops: PostprocessOps = TORCH_OPS) -> torch.Tensor:
    """``uint8[B, H, W, 3]`` BGR -> ``float32[B, 3, *geometry.padded]`` BGR network input.

    Official variants (``keep_ratio``): the uint8 frame resized to ``geometry.resized`` with
    PIL's bilinear resize, exactly detectron2's ``ResizeTransform.apply_image``; rtseg's square
    model: torch's antialiased bilinear resize rounded to integers (how it was trained). Then
    ``(x - pixel_mean) / pixel_std`` per BGR channel and zero padding at the bottom and right
    (``ImageList.from_tensors`` pads the normalised image with 0). ``geometry=None``:
    :func:`input_geometry` with the fixed canvas ``cfg.input_size``. Output on the images' device.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        found = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor (B, H, W, 3) BGR, got {found}")
    h, w = int(images.shape[1]), int(images.shape[2])
    if geometry is None:
        geometry = input_geometry(cfg, (h, w), cfg.input_size)
    if ops.preprocess is not None and not cfg.keep_ratio and geometry.padded == tuple(cfg.input_size):
        return ops.preprocess(images, cfg)
    if not cfg.keep_ratio:
        return preprocess_float(images, cfg, geometry)
    x = resize_uint8(images, geometry.resized, "pil").permute(0, 3, 1, 2).float()
    return _normalise_and_pad(x, cfg, geometry)


def preprocess_float(images: torch.Tensor, cfg: CenterMaskConfig, geometry: InputGeometry | None = None) -> torch.Tensor:
    """:func:`preprocess` with torch's antialiased bilinear resize of the float frame, rounded to
    integers, instead of PIL's on uint8 (within a grey level of it): how rtseg's square model was
    trained and runs, and what the CUDA preprocessing kernel (``cuda/preprocess.cu``) computes."""
    h, w = int(images.shape[1]), int(images.shape[2])
    if geometry is None:
        geometry = input_geometry(cfg, (h, w), cfg.input_size)
    newh, neww = geometry.resized
    x = images.permute(0, 3, 1, 2).float()
    if (newh, neww) != (h, w):
        x = F.interpolate(x, (newh, neww), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255)
    return _normalise_and_pad(x, cfg, geometry)


def _normalise_and_pad(x: torch.Tensor, cfg: CenterMaskConfig, geometry: InputGeometry) -> torch.Tensor:
    newh, neww = geometry.resized
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    canvas_h, canvas_w = geometry.padded
    return F.pad(x, (0, canvas_w - neww, 0, canvas_h - newh)).contiguous()
