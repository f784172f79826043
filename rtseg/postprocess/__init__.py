"""What the families' post-processing shares (each family's own is ``rtseg/families/<name>/postprocess.py``):
the ops that have a CUDA twin (:class:`PostprocessOps`), the copy of the result to the host, and
the input resizing rules (:mod:`rtseg.postprocess.resize`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from rtseg.structures import Instances


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
    - ``paste_masks(masks, boxes, image_size, threshold) -> bool[N, H, W]`` (CenterMask).
    """

    preprocess: Callable[..., Any] | None = None
    fast_nms: Callable[..., Any] | None = None
    matrix_nms: Callable[..., Any] | None = None
    class_aware_nms: Callable[..., Any] | None = None
    yolact_masks: Callable[..., Any] | None = None
    paste_masks: Callable[..., Any] | None = None


#: every op in torch (the default)
TORCH_OPS = PostprocessOps()


def cuda_ops() -> PostprocessOps:
    """rtseg's CUDA kernels for every op that has one (see ``cuda/``)."""
    from rtseg.kernels import masks, nms

    return PostprocessOps(preprocess=masks.preprocess_cuda, fast_nms=nms.fast_nms, matrix_nms=nms.matrix_nms,
                          class_aware_nms=nms.greedy_nms, yolact_masks=masks.assemble_masks_cuda,
                          paste_masks=masks.paste_masks_cuda)


def to_numpy_instances(result: TensorResult, image_size: tuple[int, int]) -> Instances:
    """The one deliberate device->host copy: tensors -> :class:`rtseg.structures.Instances`."""
    mask_scores = getattr(result, "mask_scores", None)
    if result.scores.shape[0] == 0:
        empty = Instances.empty((int(image_size[0]), int(image_size[1])))
        if mask_scores is None:
            return empty
        return Instances(empty.boxes, empty.scores, empty.class_ids, empty.masks, empty.image_size,
                         mask_scores=np.zeros((0,), np.float32))
    return Instances(
        mask_scores=None if mask_scores is None else mask_scores.detach().to("cpu", torch.float32).numpy().reshape(-1),
        boxes=result.boxes.detach().to("cpu", torch.float32).numpy().reshape(-1, 4),
        scores=result.scores.detach().to("cpu", torch.float32).numpy().reshape(-1),
        class_ids=result.class_ids.detach().to("cpu", torch.int64).numpy().reshape(-1),
        masks=np.ascontiguousarray(result.masks.detach().cpu().numpy()),
        image_size=(int(image_size[0]), int(image_size[1])),
    )
