"""SOLOv2's test pipeline as pure torch functions: where a frame goes in the network input and its
preprocessing (``configs/solov2/*.py`` of WXinlong/SOLO and mmdetection 3: keep-ratio ``Resize``,
``Normalize``, ``Pad(size_divisor=32)``; AdelaiDet: ``ResizeShortestEdge``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtseg.families.solov2.network import CAFFE_MEAN_BGR, CAFFE_STD_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, Solov2Config
from rtseg.postprocess import TORCH_OPS, PostprocessOps
from rtseg.postprocess.resize import InputGeometry, keep_ratio_geometry, mmcv_rescale_size, resize_uint8, shortest_edge_size


def input_geometry(cfg: Solov2Config, image_size: tuple[int, int], canvas: tuple[int, int] | None = None) -> InputGeometry:
    """Where an ``(H, W)`` frame goes in the network input (:class:`~rtseg.families.base.InputGeometry`).

    ``keep_ratio`` (every official variant): the official test pipeline's size rule,
    ``cfg.preprocess_style`` ``"mmdet"`` (mmdetection 3 / WXinlong ``Resize(keep_ratio=True)``:
    :func:`~rtseg.postprocess.resize.mmcv_rescale_size` with ``img_scale = cfg.resize_max``) or
    ``"detectron2"`` (AdelaiDet: :func:`~rtseg.postprocess.resize.shortest_edge_size` with
    ``(min(resize_max), max(resize_max))``), padded up to a multiple of 32 as upstream. With a
    ``canvas`` (rtseg's fixed-shape speed option) the size is capped to fit it and the input is
    the canvas. Without ``keep_ratio`` (rtseg's square models): stretched to the canvas
    (``cfg.canvas`` unless given), as they were trained.
    """
    h, w = int(image_size[0]), int(image_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image size must be (H, W) with positive ints, got {image_size!r}")
    if not cfg.keep_ratio:
        target = tuple(canvas) if canvas is not None else tuple(cfg.canvas)
        return InputGeometry((h, w), target, target)  # type: ignore[arg-type]
    if cfg.preprocess_style == "detectron2":
        resized = shortest_edge_size((h, w), min(cfg.resize_max), max(cfg.resize_max))
    else:
        resized = mmcv_rescale_size((h, w), cfg.resize_max)
    return keep_ratio_geometry((h, w), resized, canvas)


def resized_shape(image_size: tuple[int, int], cfg: Solov2Config) -> tuple[int, int]:
    """``(Hr, Wr)`` of an ``(H, W)`` image inside the fixed canvas ``cfg.input_size``
    (:func:`input_geometry` with that canvas; what the CUDA preprocessing kernel reproduces)."""
    return input_geometry(cfg, image_size, cfg.input_size).resized


def preprocess(images: torch.Tensor, cfg: Solov2Config, geometry: InputGeometry | None = None,
               ops: PostprocessOps = TORCH_OPS) -> torch.Tensor:
    """``uint8[B, H, W, 3]`` BGR -> ``float32[B, 3, *geometry.padded]`` network input, on ``images``' device.

    Official variants (``keep_ratio``): resize the **uint8** frame to ``geometry.resized``
    exactly as upstream (``"mmdet"``: OpenCV ``INTER_LINEAR``, mmcv ``imresize``;
    ``"detectron2"``: PIL bilinear), then normalise (``rgb_imagenet``: BGR->RGB then ImageNet
    mean/std, mmdetection's ``DetDataPreprocessor``; ``bgr_caffe``: BGR, mean only, detectron2)
    and zero-pad bottom and right (upstream pads the normalised image with 0). rtseg's square
    models (no ``keep_ratio``): torch bilinear on float (``align_corners=False``, no
    antialiasing), as they were trained. ``geometry=None``: :func:`input_geometry` with the fixed
    canvas ``cfg.input_size``. ``ops.preprocess`` (the CUDA kernel) is used where it computes
    the same: the float path into the fixed canvas.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        found = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor (B, H, W, 3) BGR, got {found}")
    if geometry is None:
        geometry = input_geometry(cfg, (images.shape[1], images.shape[2]), cfg.input_size)
    if ops.preprocess is not None and not cfg.keep_ratio and geometry.padded == tuple(cfg.input_size):
        return ops.preprocess(images, cfg)
    if not cfg.keep_ratio:
        return preprocess_float(images, cfg, geometry)
    resampling = "pil" if cfg.preprocess_style == "detectron2" else "cv2"
    x = resize_uint8(images, geometry.resized, resampling).permute(0, 3, 1, 2).float()
    return _normalise_and_pad(x, cfg, geometry)


def preprocess_float(images: torch.Tensor, cfg: Solov2Config, geometry: InputGeometry | None = None) -> torch.Tensor:
    """:func:`preprocess` with a float resize instead of upstream's uint8 one: torch bilinear
    (``align_corners=False``, no antialiasing) on the float frame. How rtseg's square models
    were trained and run, and what the CUDA preprocessing kernel (``cuda/preprocess.cu``)
    computes; for official variants it differs from upstream by a grey level here and there."""
    if geometry is None:
        geometry = input_geometry(cfg, (images.shape[1], images.shape[2]), cfg.input_size)
    hr, wr = geometry.resized
    x = images.permute(0, 3, 1, 2).float()
    if (hr, wr) != tuple(x.shape[-2:]):
        x = F.interpolate(x, (hr, wr), mode="bilinear", align_corners=False)
    return _normalise_and_pad(x, cfg, geometry)


def _normalise_and_pad(x: torch.Tensor, cfg: Solov2Config, geometry: InputGeometry) -> torch.Tensor:
    hr, wr = geometry.resized
    ch, cw = geometry.padded
    if cfg.pixel_norm == "rgb_imagenet":
        x = x[:, [2, 1, 0]]
        mean, std = IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    else:
        mean, std = CAFFE_MEAN_BGR, CAFFE_STD_BGR
    x = (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    if (hr, wr) != (ch, cw):
        x = F.pad(x, (0, cw - wr, 0, ch - hr))
    return x.contiguous()
