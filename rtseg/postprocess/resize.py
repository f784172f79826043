"""The official test pipelines' resize rules and uint8 resampling, shared by the families.

- :func:`mmcv_rescale_size`: mmcv ``rescale_size`` (mmcv 2.1 ``mmcv/image/geometric.py``), what
  mmdetection's ``Resize(scale=(1333, 800), keep_ratio=True)`` (and WXinlong/SOLO's mmdet 1.0
  ``Resize(keep_ratio=True)``) computes: one scale ``min(long_max / long, short_max / short)``,
  sizes ``int(x * scale + 0.5)``.
- :func:`shortest_edge_size`: detectron2 ``ResizeShortestEdge.get_output_shape`` (detectron2
  ``data/transforms/augmentation_impl.py``), as centermask2 and AdelaiDet test with it.
- :func:`resize_uint8`: the resampling those pipelines apply to the uint8 frame. ``"cv2"``:
  ``cv2.resize(..., INTER_LINEAR)`` (mmcv ``imresize``, backend ``cv2``); ``"pil"``:
  ``PIL.Image.resize(..., BILINEAR)`` (detectron2 ``ResizeTransform.apply_image`` for uint8).
  Both run on the host on uint8 and give exactly the upstream pixels; a float resize in torch
  differs by a grey level on a few percent of the values, which is enough to move scores.
  On a CUDA device the resampling still runs on the host (the exact pixels are those host
  libraries' own); what is avoided is copying the frame back: the segmenter registers the
  host frame an upload came from (:func:`host_twin`) and :func:`resize_uint8` reads that one.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

RESAMPLINGS = ("cv2", "pil")


#: every official test pipeline pads the resized image to a multiple of this (mmdetection
#: ``pad_size_divisor=32``, detectron2 ``size_divisibility`` = the FPN's largest input stride)
SIZE_DIVISOR = 32


@dataclass(frozen=True)
class InputGeometry:
    """Where one frame size goes in the network input, and back.

    - ``image_size (H, W)``: the frame;
    - ``resized (h, w)``: the frame's content after the family's resize (top-left of the input);
    - ``padded (Hp, Wp)``: the network input (zero padding bottom / right), a multiple of 32.

    A family computes it from the frame size alone (:attr:`Family.geometry`), so a stream of
    frames of one size has one geometry: the segmenter computes it once per frame size and
    both pre- and post-processing use it.
    """

    image_size: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(h / H, w / W)``: original pixels to input pixels, per axis."""
        return self.resized[0] / self.image_size[0], self.resized[1] / self.image_size[1]


def pad_to_divisor(size: tuple[int, int], divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``divisor`` (mmdetection / detectron2 padding)."""
    return tuple(-(-int(v) // divisor) * divisor for v in size)  # type: ignore[return-value]


def check_canvas(canvas: tuple[int, int] | None) -> tuple[int, int] | None:
    """A ``--canvas`` ``(H, W)``: positive multiples of 32, or ``ValueError`` saying so."""
    if canvas is None:
        return None
    try:
        h, w = (int(v) for v in canvas)
    except (TypeError, ValueError):
        raise ValueError(f"canvas must be (H, W), got {canvas!r}") from None
    if h < SIZE_DIVISOR or w < SIZE_DIVISOR or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(f"canvas must be H x W with both multiples of {SIZE_DIVISOR} (>= {SIZE_DIVISOR}), "
                         f"got {h}x{w}")
    return h, w


def mmcv_rescale_size(image_size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of an ``(H, W)`` image after mmcv's keep-ratio rescale to ``scale`` (long, short edge bounds)."""
    h, w = int(image_size[0]), int(image_size[1])
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def shortest_edge_size(image_size: tuple[int, int], short_edge: int, max_size: int) -> tuple[int, int]:
    """``(h, w)`` after detectron2's ``ResizeShortestEdge`` (test: one ``short_edge``, ``max_size`` cap)."""
    h, w = int(image_size[0]), int(image_size[1])
    size = float(short_edge)
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def fit_size(image_size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of an image scaled (keeping its ratio) to fit inside ``canvas``: rtseg's
    ``--canvas`` cap for sizes the official rule makes larger than the canvas."""
    h, w = int(image_size[0]), int(image_size[1])
    scale = min(canvas[0] / h, canvas[1] / w)
    return max(1, min(int(h * scale + 0.5), canvas[0])), max(1, min(int(w * scale + 0.5), canvas[1]))


def keep_ratio_geometry(image_size: tuple[int, int], resized: tuple[int, int],
                        canvas: tuple[int, int] | None) -> InputGeometry:
    """The geometry of a keep-ratio resize to ``resized``: padded to a multiple of 32 by
    default; with a fixed ``canvas``, the resize capped to fit it (:func:`fit_size`) and the
    padding to the canvas."""
    h, w = int(image_size[0]), int(image_size[1])
    if canvas is None:
        return InputGeometry((h, w), resized, pad_to_divisor(resized))
    if resized[0] > canvas[0] or resized[1] > canvas[1]:
        resized = fit_size((h, w), canvas)
    return InputGeometry((h, w), resized, (int(canvas[0]), int(canvas[1])))


_twins = threading.local()


@contextlib.contextmanager
def host_twin(device_images: torch.Tensor, host_images: np.ndarray) -> Iterator[None]:
    """For this block (and this thread), ``device_images`` (a device tensor) holds the same
    pixels as ``host_images`` (``uint8[B, H, W, C]``, the frame it was uploaded from): a
    :func:`resize_uint8` of exactly that tensor resamples the host array and makes no
    device->host copy. Any other tensor (e.g. one a family derived from it) is copied as before."""
    previous = getattr(_twins, "pair", None)
    _twins.pair = (device_images, host_images)
    try:
        yield
    finally:
        _twins.pair = previous


def _host_pixels(images: torch.Tensor) -> np.ndarray:
    pair = getattr(_twins, "pair", None)
    if pair is not None and pair[0] is images:
        return pair[1]
    # a device tensor with no host twin: the exact resamplers are host code (cv2, PIL), so the
    # pixels have to come to the host; this is a device->host copy and a wait for the stream
    return images.detach().cpu().numpy()


def resize_uint8(images: torch.Tensor, size: tuple[int, int], resampling: str) -> torch.Tensor:
    """``uint8[B, H, W, C]`` -> ``uint8[B, h, w, C]`` on the same device, resampled on the host
    exactly as the official pipelines (``"cv2"`` or ``"pil"``, see the module docstring)."""
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling must be one of {RESAMPLINGS}, got {resampling!r}")
    h, w = int(size[0]), int(size[1])
    if tuple(images.shape[1:3]) == (h, w):
        return images  # both libraries return a copy of the input at the same size
    host = _host_pixels(images)
    if resampling == "cv2":
        import cv2

        out = [cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_LINEAR) for img in host]
    else:
        from PIL import Image

        out = [np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.BILINEAR)) for img in host]
    out = [o[:, :, None] if o.ndim == 2 else o for o in out]
    from rtseg.device import upload

    return upload(np.stack(out), images.device)  # CUDA: pinned staging, asynchronous on the current stream
