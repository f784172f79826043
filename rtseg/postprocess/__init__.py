"""Post-processing of each family as pure torch functions (``yolact``, ``solov2``,
``centermask``), plus the one step they share: the copy of the result to the host."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from rtseg.structures import Instances


class TensorResult(Protocol):
    """What every family's post-processing returns, still on the compute device:
    ``boxes float32[N, 4]`` xyxy image pixels, ``scores float32[N]``, ``class_ids int64[N]``,
    ``masks bool[N, H, W]``."""

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    masks: torch.Tensor


def to_numpy_instances(result: TensorResult, image_size: tuple[int, int]) -> Instances:
    """The one deliberate device->host copy: tensors -> :class:`rtseg.structures.Instances`."""
    if result.scores.shape[0] == 0:
        return Instances.empty((int(image_size[0]), int(image_size[1])))
    return Instances(
        boxes=result.boxes.detach().to("cpu", torch.float32).numpy().reshape(-1, 4),
        scores=result.scores.detach().to("cpu", torch.float32).numpy().reshape(-1),
        class_ids=result.class_ids.detach().to("cpu", torch.int64).numpy().reshape(-1),
        masks=np.ascontiguousarray(result.masks.detach().cpu().numpy()),
        image_size=(int(image_size[0]), int(image_size[1])),
    )
