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

from rtseg.postprocess.resize import SIZE_DIVISOR, InputGeometry, check_canvas, pad_to_divisor  # noqa: F401 (re-exported)


class ModelConfig(Protocol):
    """What every family's frozen config dataclass provides."""

    name: str  #: variant name (``rtseg models``)
    family: str  #: key of :data:`rtseg.families.FAMILIES` (a ``ClassVar`` on the config class)
    class_names: tuple[str, ...]  #: foreground classes, index = ``Instances.class_ids``
    weights_source: str  #: where weights come from (shown by ``rtseg models``)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the fixed training input (and of the ``--canvas``-less preprocessing
        called without a geometry). Official keep-ratio variants run each frame size at its
        own :class:`InputGeometry` instead."""
        ...


#: A family's second stage as a backend runs it: named input tensors -> named output tensors, on
#: the inputs' device, the first axis of every tensor the ``K`` RoIs / detections of one image.
Stage2 = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class TorchStage2:
    """A stage-2 module (``input_names``, ``output_names``, ``forward(*inputs) -> tuple``) as a
    :data:`Stage2` callable, run without autograd."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.input_names: tuple[str, ...] = tuple(module.input_names)
        self.output_names: tuple[str, ...] = tuple(module.output_names)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"stage 2 needs inputs {list(self.input_names)}, got {sorted(inputs)}")
        with torch.no_grad():
            outputs = self.module(*(inputs[n] for n in self.input_names))
        return dict(zip(self.output_names, outputs))


@dataclass(frozen=True)
class Family:
    """The callables that make one model family work end to end.

    - ``build(cfg) -> nn.Module``: the network. ``forward(x float32[B, 3, H, W])`` returns a
      dict of named raw head outputs (eval mode: what post-processing reads, the same for
      every backend; train mode: what ``loss`` reads). The module has
      ``load_official_state_dict(state) -> state`` converting the official checkpoints' key
      layout to its own (identity where they already match).
    - ``geometry(cfg, image_size, canvas=None) -> InputGeometry``: the official test
      pipeline's resize rule and pad-to-32 for a frame size; with ``canvas (H, W)`` (rtseg's
      fixed-shape speed option) the resize is capped to fit it and the input padded to it.
    - ``preprocess(images uint8[B, H, W, 3] BGR, cfg, geometry=None, ops=TORCH_OPS) ->
      float32[B, 3, *geometry.padded]`` on the images' device: resize (the official resampling),
      normalise, channel order, pad. ``geometry=None``: the geometry with ``canvas =
      cfg.input_size`` (the fixed training input).
    - ``postprocess(outputs, net, cfg, image_size, score_threshold, ops=TORCH_OPS, geometry=None,
      stage2=None) -> Instances``: the outputs of one image (batch index 0) to host :class:`Instances`
      in original-image pixels; ``net`` gives the anchors / locations; ``stage2`` (a :data:`Stage2`)
      runs the family's second stage (``None``: the torch module of ``net``, see ``stage2`` below). Detections scoring ``<= score_threshold`` are dropped. ``ops``
      (:class:`rtseg.postprocess.PostprocessOps`) swaps in the CUDA kernels; ``geometry`` must
      be the one the input was preprocessed with (``None``: as for ``preprocess``).
    - ``loss(outputs, targets, net, cfg) -> {"<term>": scalar, ..., "total": scalar}`` from
      train-mode outputs and ``targets`` as produced by
      :func:`rtseg.data.coco.collate` (``boxes`` relative xyxy, ``labels``, ``masks`` at
      input size, ``crowd``).
    - ``init_from_scratch(net)``: in-place initialisation for training without pretrained
      weights.
    - ``class_dependent_prefixes``: state_dict key prefixes whose shapes depend on the
      number of classes (re-initialised when fine-tuning on other classes).
    - ``variants``: the family's model variants (frozen configs whose ``family`` is ``name``);
      :data:`rtseg.models.MODELS` is the union over the families.
    - ``preprocess_params(cfg, image_size (H, W)) -> rtseg.kernels.masks.PreprocessParams``: what
      the generic preprocessing kernel (``cuda/preprocess.cu``) needs to compute ``preprocess``
      into the fixed canvas ``cfg.input_size`` (plain Python, no GPU).
    - ``stage2(net, cfg) -> nn.Module | None``: the second stage (RoI or re-scoring heads that run on
      the detections post-processing keeps; ``rtseg/families/<name>/stage2.py``) sharing ``net``'s
      parameters, with ``input_names`` / ``output_names``, ``forward(*inputs) -> tuple``,
      ``example_inputs(k, device)`` and ``max_k`` (the most detections post-processing hands it);
      the first axis of every input and output is the number of detections ``K``. ``None`` where
      the variant has none.
    - ``training_preprocess(cfg) -> callable | None``: the ``preprocess`` argument of
      :class:`rtseg.data.coco.CocoInstanceDataset` for training this family (a picklable
      ``uint8[1, S, S, 3]`` BGR -> ``float32[1, 3, S, S]``), or ``None`` for the dataset's own
      transform (YOLACT's, which resizes the image itself).
    """

    name: str
    build: Callable[[Any], nn.Module]
    geometry: Callable[..., InputGeometry]
    preprocess: Callable[..., torch.Tensor]
    postprocess: Callable[..., Instances]
    loss: Callable[[dict[str, torch.Tensor], Sequence[dict[str, Any]], nn.Module, Any], dict[str, torch.Tensor]]
    init_from_scratch: Callable[[nn.Module], None]
    class_dependent_prefixes: tuple[str, ...]
    variants: tuple[Any, ...]
    preprocess_params: Callable[[Any, tuple[int, int]], Any]
    training_preprocess: Callable[[Any], Callable[[torch.Tensor], torch.Tensor] | None]
    stage2: Callable[[nn.Module, Any], nn.Module | None]
