"""Torch wrappers of the mask and preprocessing kernels (``cuda/mask_assembly.cu``,
``cuda/mask_paste.cu``, ``cuda/preprocess.cu``, ``cuda/mask_encode.cu``).

Each wrapper checks its arguments (``TypeError`` / ``ValueError`` naming expected vs found),
allocates its outputs on the inputs' CUDA device and launches on torch's current stream through
:mod:`rtseg.kernels`; nothing is copied to the host except where a docstring says so. The torch
reference twins, which these reproduce (see each ``.cu`` file's header for the exactness
argument), are:

- :func:`assemble_masks_cuda`: :func:`rtseg.families.yolact.postprocess.assemble_masks` +
  :func:`rtseg.families.yolact.postprocess.masks_to_image`;
- :func:`paste_masks_cuda`: :func:`rtseg.families.centermask.postprocess.paste_masks`;
- :func:`preprocess_cuda`: each family's ``preprocess`` (parameters from the family,
  :func:`preprocess_params`);
- :func:`encode_masks_cuda`: :meth:`rtseg.structures.CompactMasks.from_dense` (:func:`rtseg.structures.dense_windows`
  and the bit packing), what ``to_numpy_instances`` uses under ``--postprocess cuda``.

:func:`preprocess_params` is plain Python (no GPU) so the host-built kernels in the tests use the
very parameters the GPU path does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rtseg import kernels

__all__ = [
    "EncodedMasks", "PreprocessParams", "assemble_masks_cuda", "encode_masks_cuda", "paste_masks_cuda",
    "preprocess_cuda", "preprocess_params",
]

_BLOCK = 256
#: CUDA's limit on grid dimension y, which indexes instances (or frames) in these launches
_MAX_GRID_Y = 65535
#: antialiased resizing keeps at most 32 taps per axis (RTSEG_AA_CAPACITY in cuda/preprocess.cu)
_MAX_AA_DOWNSCALE = 15.0


def _blocks(count: int) -> int:
    return (count + _BLOCK - 1) // _BLOCK


def _image_size(image_size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W) with positive ints, got {image_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be (H, W) with positive ints, got {image_size!r}")
    return h, w


def _check_count(what: str, count: int) -> None:
    if count > _MAX_GRID_Y:
        raise ValueError(f"at most {_MAX_GRID_Y} {what} per launch, got {count}")


def _cuda_tensor(name: str, t: Any) -> torch.device:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{name} must be on a CUDA device (the kernels run there), got {t.device}")
    return t.device


# -- YOLACT mask assembly ----------------------------------------------------------------------------

def assemble_masks_cuda(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                        threshold: float = 0.5) -> torch.Tensor:
    """``masks_to_image(assemble_masks(proto, coef, boxes), image_size, threshold)`` in two launches.

    Args:
        proto: ``float32[h, w, k]`` prototypes of one image (the network's ``proto`` output).
        coef: ``float32[N, k]`` coefficients of the kept detections.
        boxes: ``float32[N, 4]`` relative ``x1, y1, x2, y2`` (the decoded boxes, not clipped).
        image_size: ``(H, W)`` of the frame.

    Returns ``bool[N, H, W]`` on the inputs' device. The only intermediate is ``float32[N, h, w]``
    (prototype resolution); no full-size float mask is written.
    """
    dev = _cuda_tensor("proto", proto)
    kernels.check_tensor("proto", proto, dtype=torch.float32, shape=(None, None, None), device=dev)
    h, w, k = (int(s) for s in proto.shape)
    if h < 1 or w < 1 or k < 1:
        raise ValueError(f"proto must have shape (h, w, k) with positive sizes, got {tuple(proto.shape)}")
    kernels.check_tensor("coef", coef, dtype=torch.float32, shape=(None, k), device=dev)
    n = int(coef.shape[0])
    kernels.check_tensor("boxes", boxes, dtype=torch.float32, shape=(n, 4), device=dev)
    height, width = _image_size(image_size)
    _check_count("instances", n)
    masks = torch.empty((n, height, width), dtype=torch.bool, device=dev)
    if n == 0:
        return masks
    soft = torch.empty((n, h, w), dtype=torch.float32, device=dev)
    mod = kernels.module("mask_assembly", dev)
    kernels.function(mod, "mask_assembly_proto").launch(
        grid=(_blocks(h * w), n), block=(_BLOCK,),
        args=(proto, coef, boxes, np.int32(n), np.int32(h), np.int32(w), np.int32(k), soft))
    kernels.function(mod, "mask_assembly_upsample").launch(
        grid=(_blocks(height * width), n), block=(_BLOCK,),
        args=(soft, np.int32(n), np.int32(h), np.int32(w), np.int32(height), np.int32(width), np.float32(threshold),
              masks))
    return masks


# -- CenterMask paste ----------------------------------------------------------------------------------

def paste_masks_cuda(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                     threshold: float = 0.5) -> torch.Tensor:
    """``paste_masks(masks, boxes, image_size, threshold)`` in one launch for all instances.

    ``masks float32[N, M, M]`` RoI probabilities; ``boxes float32[N, 4]`` xyxy frame pixels
    -> ``bool[N, H, W]``, set where the bilinearly sampled value is ``>= threshold``.
    """
    dev = _cuda_tensor("masks", masks)
    kernels.check_tensor("masks", masks, dtype=torch.float32, shape=(None, None, None), device=dev)
    n, mh, mw = (int(s) for s in masks.shape)
    if mh != mw or mh < 1:
        raise ValueError(f"masks must have shape (N, M, M) with M >= 1, got {tuple(masks.shape)}")
    kernels.check_tensor("boxes", boxes, dtype=torch.float32, shape=(n, 4), device=dev)
    height, width = _image_size(image_size)
    _check_count("instances", n)
    out = torch.empty((n, height, width), dtype=torch.bool, device=dev)
    if n == 0:
        return out
    fn = kernels.function(kernels.module("mask_paste", dev), "mask_paste")
    fn.launch(grid=(_blocks(height * width), n), block=(_BLOCK,),
              args=(masks, boxes, np.int32(n), np.int32(mh), np.int32(mw), np.int32(height), np.int32(width),
                    np.float32(threshold), out))
    return out


# -- preprocessing ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreprocessParams:
    """What ``cuda/preprocess.cu`` needs to reproduce one family's ``preprocess``.

    ``resized (hr, wr)``: the image content after resizing; ``canvas (hc, wc)``: the network input
    (zero padding bottom / right); ``src_channels``: the BGR channel each output channel reads;
    ``mean`` / ``std``: per output channel, ``(x - mean) / std``; ``antialias``: torch's
    antialiased bilinear resize rounded to integers (CenterMask) instead of plain bilinear.
    """

    resized: tuple[int, int]
    canvas: tuple[int, int]
    src_channels: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    antialias: bool


def preprocess_params(cfg: Any, image_size: tuple[int, int]) -> PreprocessParams:
    """The kernel parameters of ``cfg``'s family for frames of ``image_size (H, W)``: the family's
    own ``Family.preprocess_params`` (``rtseg/families/<name>/ops.py``); ``ValueError`` for a
    config of no known family."""
    from rtseg.families import FAMILIES

    h, w = _image_size(image_size)
    family = FAMILIES.get(getattr(cfg, "family", None))  # type: ignore[arg-type]
    if family is None:
        raise ValueError(f"cfg must be the config of a model family ({', '.join(FAMILIES)}), "
                         f"got family {getattr(cfg, 'family', None)!r}")
    return family.preprocess_params(cfg, (h, w))


def preprocess_cuda(images: torch.Tensor, cfg: Any, *, half: bool = False) -> torch.Tensor:
    """Each family's ``preprocess`` in one launch: ``uint8[B, H, W, 3]`` BGR on a CUDA device
    -> ``float32[B, 3, hc, wc]`` (``float16`` with ``half``), the network input of ``cfg``."""
    dev = _cuda_tensor("images", images)
    kernels.check_tensor("images", images, dtype=torch.uint8, shape=(None, None, None, 3), device=dev)
    b, h, w = (int(s) for s in images.shape[:3])
    if h < 1 or w < 1:
        raise ValueError(f"images must have shape (B, H, W, 3) with H, W >= 1, got {tuple(images.shape)}")
    _check_count("frames", b)
    p = preprocess_params(cfg, (h, w))
    if p.antialias and max(h / p.resized[0], w / p.resized[1]) > _MAX_AA_DOWNSCALE:
        raise ValueError(f"antialiased resizing handles downscaling by at most {_MAX_AA_DOWNSCALE:g}x, "
                         f"got {(h, w)} -> {p.resized}")
    hc, wc = p.canvas
    out = torch.empty((b, 3, hc, wc), dtype=torch.float16 if half else torch.float32, device=dev)
    if b == 0:
        return out
    fn = kernels.function(kernels.module("preprocess", dev), "preprocess_frames")
    fn.launch(grid=(_blocks(hc * wc), b), block=(_BLOCK,),
              args=(images, np.int32(b), np.int32(h), np.int32(w), np.int32(p.resized[0]), np.int32(p.resized[1]),
                    np.int32(hc), np.int32(wc), *(np.int32(c) for c in p.src_channels),
                    *(np.float32(v) for v in p.mean), *(np.float32(v) for v in p.std), np.int32(p.antialias),
                    np.int32(half), out))
    return out


# -- mask encoding ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodedMasks:
    """Masks in the wire format's ``bitpacked-window`` form (docs/wire-format.md, section 4).

    ``windows int64[N, 4]`` ``x0, y0, x1, y1`` (``0, 0, 0, 0`` for an empty mask) and
    ``offsets`` / ``lengths int64[N]`` (bytes into ``blob``) on the host; ``blob uint8[total]`` on
    the masks' device (``.cpu().numpy().tobytes()`` is part 2 of the message).
    """

    windows: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    blob: torch.Tensor


def encode_masks_cuda(masks: torch.Tensor) -> EncodedMasks:
    """Bit-pack ``bool[N, H, W]`` masks on their CUDA device, exactly as ``encode_message``.

    Three launches; between the second and the third, **one deliberate device-to-host copy** of
    the windows and byte lengths (``N * 5`` integers: the header needs them, and the blob's size
    depends on them). The caller copies only ``blob`` (about ``sum(window areas) / 8`` bytes).
    """
    dev = _cuda_tensor("masks", masks)
    kernels.check_tensor("masks", masks, dtype=torch.bool, shape=(None, None, None), device=dev)
    n, h, w = (int(s) for s in masks.shape)
    if h < 1 or w < 1:
        raise ValueError(f"masks must have shape (N, H, W) with H, W >= 1, got {tuple(masks.shape)}")
    if n == 0:
        zeros = torch.zeros(0, dtype=torch.int64)
        return EncodedMasks(zeros.reshape(0, 4), zeros, zeros.clone(), torch.zeros(0, dtype=torch.uint8, device=dev))
    mod = kernels.module("mask_encode", dev)
    row_lo = torch.empty((n, h), dtype=torch.int32, device=dev)
    row_hi = torch.empty((n, h), dtype=torch.int32, device=dev)
    windows = torch.empty((n, 4), dtype=torch.int32, device=dev)
    lengths = torch.empty(n, dtype=torch.int64, device=dev)
    rows_per_block = _BLOCK // 32
    kernels.function(mod, "mask_row_extents").launch(
        grid=((n * h + rows_per_block - 1) // rows_per_block,), block=(_BLOCK,),
        args=(masks, np.int32(n), np.int32(h), np.int32(w), row_lo, row_hi))
    kernels.function(mod, "mask_windows_from_rows").launch(
        grid=((n + 127) // 128,), block=(128,),
        args=(row_lo, row_hi, np.int32(n), np.int32(h), np.int32(w), windows, lengths))
    host = torch.cat([windows.to(torch.int64), lengths[:, None]], dim=1).cpu()  # the one D2H copy
    windows_h, lengths_h = host[:, :4].contiguous(), host[:, 4].contiguous()
    offsets_h = torch.cumsum(lengths_h, 0) - lengths_h
    total = int(lengths_h.sum())
    blob = torch.empty(total, dtype=torch.uint8, device=dev)
    if total:
        offsets = offsets_h.to(dev)
        kernels.function(mod, "mask_pack_bits").launch(
            grid=(_blocks(total),), block=(_BLOCK,),
            args=(masks, np.int32(n), np.int32(h), np.int32(w), windows, offsets, np.int64(total), blob))
    return EncodedMasks(windows_h, offsets_h, lengths_h, blob)
