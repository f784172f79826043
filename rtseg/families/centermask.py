"""CenterMask / CenterMask-Lite as a :class:`~rtseg.families.base.Family`: network
(:mod:`rtseg.models.centermask`, VoVNet in :mod:`rtseg.models.vovnet`), pre/post-processing
(:mod:`rtseg.postprocess.centermask`) and loss (:mod:`rtseg.train.centermask_loss`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from rtseg.families.base import Family, InputGeometry
from rtseg.models.centermask import CenterMask, CenterMaskConfig
from rtseg.postprocess import centermask as post
from rtseg.postprocess import TORCH_OPS, PostprocessOps, to_numpy_instances
from rtseg.structures import Instances
from rtseg.train.centermask_loss import CenterMaskLossConfig, centermask_loss
from rtseg.train.init import init_convs

#: layers whose shapes depend on the number of classes: re-initialised when fine-tuning on other classes
CLASS_DEPENDENT_PREFIXES = (
    "proposal_generator.fcos_head.cls_logits.",
    "roi_heads.mask_head.predictor.",
    "roi_heads.maskiou_head.maskiou.",
)

#: focal-loss prior of the FCOS classifier bias (``MODEL.FCOS.PRIOR_PROB``, centermask2 ``config/defaults.py``)
PRIOR_PROB = 0.01


def postprocess(outputs: dict[str, torch.Tensor], net: CenterMask, cfg: CenterMaskConfig, image_size: tuple[int, int],
                score_threshold: float, ops: PostprocessOps = TORCH_OPS, geometry: InputGeometry | None = None) -> Instances:
    result = post.postprocess(outputs, net, cfg, image_size, score_threshold=score_threshold, ops=ops,
                              geometry=geometry)
    return to_numpy_instances(result, image_size, ops)


def loss(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], net: CenterMask, cfg: CenterMaskConfig,
         loss_config: CenterMaskLossConfig = CenterMaskLossConfig()) -> dict[str, torch.Tensor]:
    return centermask_loss(outputs, targets, net, cfg, loss_config)


def init_from_scratch(net: CenterMask) -> None:
    """rtseg's shared initialisation (:func:`rtseg.train.init.init_convs`: Kaiming inside the VoVNet,
    Xavier elsewhere, zero biases, norms at 1 / 0), then the heads as upstream initialises them:

    - FCOS head (``FCOSHead.__init__``): every conv N(0, 0.01), bias 0; ``cls_logits`` bias
      ``-log((1 - p) / p)`` with ``p = 0.01``; scales 1.
    - mask head (``SpatialAttentionMaskHead``, ``SpatialAttention``): ``mask_fcn*``, ``deconv`` and the
      attention conv ``c2_msra_fill`` (Kaiming normal, fan-out, ReLU; bias 0); ``predictor`` N(0, 0.001).
    - MaskIoU head (``MaskIoUHead``): convs and ``maskiou_fc1/2`` Kaiming normal (fan-out, ReLU),
      bias 0; ``maskiou`` N(0, 0.01), bias 0.
    """
    init_convs(net, net.backbone.bottom_up)
    head = net.proposal_generator.fcos_head
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
    nn.init.constant_(head.cls_logits.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
    for scale in head.scales:
        nn.init.ones_(scale.scale)
    mask_head = net.roi_heads.mask_head
    for module in mask_head.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.normal_(mask_head.predictor.weight, std=0.001)
    nn.init.zeros_(mask_head.predictor.bias)
    maskiou_head = getattr(net.roi_heads, "maskiou_head", None)
    if maskiou_head is not None:
        for module in maskiou_head.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(maskiou_head.maskiou.weight, std=0.01)
        nn.init.zeros_(maskiou_head.maskiou.bias)


CENTERMASK = Family(
    name="centermask",
    build=CenterMask,
    geometry=post.input_geometry,
    preprocess=post.preprocess,
    postprocess=postprocess,
    loss=loss,
    init_from_scratch=init_from_scratch,
    class_dependent_prefixes=CLASS_DEPENDENT_PREFIXES,
)
