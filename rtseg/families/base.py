"""The one interface every model family implements.

The segmenter, the trainer, the evaluation and the exporters only ever see a
:class:`ModelConfig` and a :class:`Family`; everything family-specific hides behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from rtseg.structures import Instances


class ModelConfig(Protocol):
    """What every family's frozen config dataclass provides."""

    name: str  #: variant name (``rtseg models``)
    family: str  #: key of :data:`rtseg.families.FAMILIES` (a ``ClassVar`` on the config class)
    class_names: tuple[str, ...]  #: foreground classes, index = ``Instances.class_ids``
    weights_source: str  #: where weights come from (shown by ``rtseg models``)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the network input (fixed: engines are built for it)."""
        ...


@dataclass(frozen=True)
class Family:
    """The callables that make one model family work end to end.

    - ``build(cfg) -> nn.Module``: the network. ``forward(x float32[B, 3, H, W])`` returns a
      dict of named raw head outputs (eval mode: what post-processing reads, the same for
      every backend; train mode: what ``loss`` reads). The module has
      ``load_official_state_dict(state) -> state`` converting the official checkpoints' key
      layout to its own (identity where they already match).
    - ``preprocess(images uint8[B, H, W, 3] BGR, cfg) -> float32[B, 3, *cfg.input_size]``
      on the images' device: resize, pad, normalise, channel order.
    - ``postprocess(outputs, net, cfg, image_size, score_threshold, ops=TORCH_OPS) -> Instances``:
      the outputs of one image (batch index 0) to host :class:`Instances` in original-image
      pixels; ``net`` gives access to parameter-carrying post-processing (mask re-scoring
      heads, anchors). Detections scoring ``<= score_threshold`` are dropped. ``ops``
      (:class:`rtseg.postprocess.PostprocessOps`) swaps in the CUDA kernels.
    - ``loss(outputs, targets, net, cfg) -> {"<term>": scalar, ..., "total": scalar}`` from
      train-mode outputs and ``targets`` as produced by
      :func:`rtseg.data.coco.collate` (``boxes`` relative xyxy, ``labels``, ``masks`` at
      input size, ``crowd``).
    - ``init_from_scratch(net)``: in-place initialisation for training without pretrained
      weights.
    - ``class_dependent_prefixes``: state_dict key prefixes whose shapes depend on the
      number of classes (re-initialised when fine-tuning on other classes).
    """

    name: str
    build: Callable[[Any], nn.Module]
    preprocess: Callable[[torch.Tensor, Any], torch.Tensor]
    postprocess: Callable[..., Instances]
    loss: Callable[[dict[str, torch.Tensor], Sequence[dict[str, Any]], nn.Module, Any], dict[str, torch.Tensor]]
    init_from_scratch: Callable[[nn.Module], None]
    class_dependent_prefixes: tuple[str, ...]
