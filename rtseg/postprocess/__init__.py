"""What the families' post-processing shares (each family's own is ``rtseg/families/<name>/postprocess.py``):
the ops that have a CUDA twin (:class:`PostprocessOps`), packing the masks where they are and the
copy of the result to the host (:func:`to_numpy_instances`), and the input resizing rules
(:mod:`rtseg.postprocess.resize`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from rtseg.structures import CompactMasks, Instances


class TensorResult(Protocol):
    """What every family's post-processing returns, still on the compute device:
    ``boxes float32[N, 4]`` xyxy image pixels, ``scores float32[N]``, ``class_ids int64[N]``,
    ``masks bool[N, H, W]``; optionally ``mask_scores float32[N]`` (box and mask score families)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class PostprocessOps:
    """The ops of the families' pre- and post-processing that have a CUDA twin.

    ``None`` means the torch op (the default everywhere); :func:`cuda_ops` fills in rtseg's
    CUDA kernels (:mod:`rtseg.kernels`), which take the same arguments and give the same
    results as their torch twins:

    - ``preprocess(images uint8[B, H, W, 3], cfg) -> float32[B, 3, h, w]`` (every family);
    - ``fast_nms`` (YOLACT), ``matrix_nms`` (SOLOv2), ``class_aware_nms`` (CenterMask);
    - ``yolact_masks(proto, coef, boxes, image_size) -> bool[N, H, W]``: assembly, crop, resize
      and threshold fused (YOLACT without mask re-scoring, which needs the soft masks);
    - ``paste_masks(masks, boxes, image_size, threshold) -> bool[N, H, W]`` (CenterMask);
    - ``encode_masks(masks bool[N, H, W]) -> EncodedMasks``: tight windows and packed bits
      (the wire's ``bitpacked-window`` form) made on the masks' device, used by
      :func:`to_numpy_instances` (:func:`pack_masks` when ``None``).
    """

    preprocess: Callable[..., Any] | None = None
    fast_nms: Callable[..., Any] | None = None
    matrix_nms: Callable[..., Any] | None = None
    class_aware_nms: Callable[..., Any] | None = None
    yolact_masks: Callable[..., Any] | None = None
    paste_masks: Callable[..., Any] | None = None
    encode_masks: Callable[..., Any] | None = None


#: every op in torch (the default)
TORCH_OPS = PostprocessOps()


def cuda_ops() -> PostprocessOps:
    """rtseg's CUDA kernels for every op that has one (see ``cuda/``)."""
    from rtseg.kernels import masks, nms

    return PostprocessOps(preprocess=masks.preprocess_cuda, fast_nms=nms.fast_nms, matrix_nms=nms.matrix_nms,
                          class_aware_nms=nms.greedy_nms, yolact_masks=masks.assemble_masks_cuda,
                          paste_masks=masks.paste_masks_cuda, encode_masks=masks.encode_masks_cuda)


#: bit weights of a byte, most significant first (the wire's bit order, ``numpy.packbits``)
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def mask_windows_torch(masks: torch.Tensor) -> torch.Tensor:
    """Tight windows of ``bool[N, H, W]`` masks as ``int32[N, 4]`` ``x0, y0, x1, y1`` on their
    device (``0, 0, 0, 0`` for an empty mask): :func:`rtseg.structures.dense_windows` in torch.
    ``argmax`` returns the first maximal index (torch documents it), so the first / last row
    and column holding a pixel."""
    n, h, w = masks.shape
    rows = masks.any(dim=2).to(torch.uint8)  # (N, H)
    cols = masks.any(dim=1).to(torch.uint8)  # (N, W)
    nonempty = rows.amax(dim=1, keepdim=True) if h else rows.new_zeros((n, 1))
    windows = torch.stack([cols.argmax(dim=1), rows.argmax(dim=1),
                           w - cols.flip(1).argmax(dim=1), h - rows.flip(1).argmax(dim=1)], dim=1)
    return (windows * nonempty).to(torch.int32)


def pack_masks(masks: torch.Tensor) -> CompactMasks:
    """``bool[N, H, W]`` masks on any device -> :class:`CompactMasks` on the host, packed on
    that device: only the windows (``N * 4`` integers, their size decides the rest) and then
    the packed bytes (about the windows' area / 8) cross to the host, never the full masks.

    On the CPU the tensor's memory is read in place by ``numpy.packbits``, window by window
    (one pass over each window). Elsewhere (a CUDA device under ``--postprocess torch``)
    torch ops gather each window's pixels (one small launch per mask: the CUDA twin,
    ``rtseg.kernels.masks.encode_masks_cuda``, does it in three launches) and pack them.
    Same bytes either way (tests/test_postprocess_masks.py)."""
    windows, offsets, blob = _pack_where_they_are(masks, TORCH_OPS)
    return CompactMasks(windows, offsets, blob.cpu().numpy(), _masks_size(masks))


def pack_masks_torch(masks: torch.Tensor) -> CompactMasks:
    """:func:`pack_masks` in torch ops on the masks' device, whatever it is (what it uses off
    the CPU; on the CPU, for the tests that compare it with the NumPy packing)."""
    _check_masks(masks)
    windows, offsets, blob = _pack_torch(masks.detach())
    return CompactMasks(windows, offsets, blob.cpu().numpy(), _masks_size(masks))


def _check_masks(masks: Any) -> None:
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.dim() != 3:
        found = f"{masks.dtype} {tuple(masks.shape)}" if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise TypeError(f"masks must be a bool tensor of shape (N, H, W), got {found}")


def _masks_size(masks: torch.Tensor) -> tuple[int, int]:
    return int(masks.shape[1]), int(masks.shape[2])


def _pack_where_they_are(masks: torch.Tensor, ops: PostprocessOps) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Windows ``int32[N, 4]`` and offsets ``int64[N]`` on the host, the packed bits
    ``uint8[B]`` still on the masks' device (the caller copies them with the other fields)."""
    _check_masks(masks)
    masks = masks.detach()
    if masks.device.type == "cpu":
        compact = CompactMasks.from_dense(masks.numpy())
        return compact.windows, compact.offsets, torch.from_numpy(compact.blob)
    if ops.encode_masks is not None and masks.device.type == "cuda":
        encoded = ops.encode_masks(masks.contiguous())
        return (*_encoded_index(encoded), encoded.blob)
    return _pack_torch(masks)


def _pack_torch(masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    windows = mask_windows_torch(masks).cpu().numpy()  # deliberate: N * 4 int32, what sizes the blob
    lengths = ((windows[:, 2] - windows[:, 0]).astype(np.int64) * (windows[:, 3] - windows[:, 1]) + 7) // 8
    offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
    chunks = []
    for i, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        bits = (x1 - x0) * (y1 - y0)
        if bits:
            flat = masks[i, y0:y1, x0:x1].reshape(-1)
            chunks.append(flat)
            if bits % 8:
                chunks.append(flat.new_zeros(8 - bits % 8))  # each mask starts on a byte
    if not chunks:
        return windows, offsets, torch.zeros((0,), dtype=torch.uint8, device=masks.device)
    bits = torch.cat(chunks).view(-1, 8).to(torch.uint8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=masks.device)
    return windows, offsets, (bits * weights).sum(dim=1, dtype=torch.uint8)


def _encoded_index(encoded: Any) -> tuple[np.ndarray, np.ndarray]:
    """The windows ``int32[N, 4]`` and offsets ``int64[N]`` of an
    :class:`rtseg.kernels.masks.EncodedMasks` (on the host already) as :class:`CompactMasks` holds them."""
    return encoded.windows.cpu().numpy().astype(np.int32), encoded.offsets.cpu().numpy().astype(np.int64)


def compact_from_encoded(encoded: Any, image_size: tuple[int, int]) -> CompactMasks:
    """:class:`rtseg.kernels.masks.EncodedMasks` (windows, offsets on the host, blob on the
    device) -> :class:`CompactMasks`, copying only the blob to the host."""
    return CompactMasks(*_encoded_index(encoded), encoded.blob.cpu().numpy(), image_size)


def to_numpy_instances(result: TensorResult, image_size: tuple[int, int], ops: PostprocessOps = TORCH_OPS) -> Instances:
    """The one deliberate device->host copy: tensors -> :class:`rtseg.structures.Instances`.

    The masks are packed where they are (``ops.encode_masks``, the CUDA kernel under
    ``--postprocess cuda``; :func:`pack_masks` otherwise), so what crosses to the host is
    their compact form: 100 masks of objects covering a few percent of a 1080p frame are a
    few MB of bits instead of 207 MB of ``bool``. On a GPU that is two waits per frame: the
    windows (``N * 4`` integers: they size the packed bits) and then one
    :func:`rtseg.device.to_host` of the packed bits with the boxes, scores and class ids."""
    from rtseg import device as devices

    h, w = int(image_size[0]), int(image_size[1])
    mask_scores = getattr(result, "mask_scores", None)
    if result.scores.shape[0] == 0:
        empty = Instances.empty((h, w))
        if mask_scores is None:
            return empty
        return Instances(empty.boxes, empty.scores, empty.class_ids, empty.masks, empty.image_size,
                         mask_scores=np.zeros((0,), np.float32))
    if tuple(result.masks.shape[1:]) != (h, w):
        raise ValueError(f"masks must have shape (N, {h}, {w}) for image_size {(h, w)}, got {tuple(result.masks.shape)}")
    windows, offsets, blob = _pack_where_they_are(result.masks, ops)
    boxes, scores, class_ids, mask_scores, blob = devices.to_host([
        result.boxes.detach().to(torch.float32), result.scores.detach().to(torch.float32),
        result.class_ids.detach().to(torch.int64), None if mask_scores is None else mask_scores.detach().to(torch.float32),
        blob])
    return Instances(
        mask_scores=None if mask_scores is None else mask_scores.numpy().reshape(-1),
        boxes=boxes.numpy().reshape(-1, 4),
        scores=scores.numpy().reshape(-1),
        class_ids=class_ids.numpy().reshape(-1),
        masks=CompactMasks(windows, offsets, blob.numpy(), (h, w)),
        image_size=(h, w),
    )
