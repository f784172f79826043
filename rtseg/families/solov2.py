"""SOLOv2 as a :class:`~rtseg.families.base.Family`: network (:mod:`rtseg.models.solov2`),
pre/post-processing (:mod:`rtseg.postprocess.solov2`) and loss (:mod:`rtseg.train.solov2_loss`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from rtseg.families.base import Family, InputGeometry
from rtseg.models.solov2 import Solov2, Solov2Config
from rtseg.postprocess import solov2 as post
from rtseg.postprocess import TORCH_OPS, PostprocessOps, to_numpy_instances
from rtseg.structures import Instances
from rtseg.train.init import init_convs
from rtseg.train.solov2_loss import Solov2LossConfig, solov2_loss

#: layers whose shapes depend on the number of classes: re-initialised when fine-tuning on other classes
CLASS_DEPENDENT_PREFIXES = ("bbox_head.solo_cate.",)

#: focal-loss prior: category biases start at ``-log((1 - p) / p)`` so every score starts near ``p``
#: (WXinlong/SOLO ``SOLOv2Head.init_weights``: ``bias_init_with_prob(0.01)``; AdelaiDet ``PRIOR_PROB``)
PRIOR_PROB = 0.01


def postprocess(outputs: dict[str, torch.Tensor], net: Solov2, cfg: Solov2Config, image_size: tuple[int, int],
                score_threshold: float, ops: PostprocessOps = TORCH_OPS, geometry: InputGeometry | None = None) -> Instances:
    result = post.postprocess(outputs, cfg, image_size, score_threshold=score_threshold, ops=ops, geometry=geometry)
    return to_numpy_instances(result, image_size, ops)


def loss(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], net: Solov2, cfg: Solov2Config,
         loss_config: Solov2LossConfig = Solov2LossConfig()) -> dict[str, torch.Tensor]:
    return solov2_loss(outputs, targets, cfg, loss_config)


def init_from_scratch(net: Solov2) -> None:
    """rtseg's shared initialisation (:func:`rtseg.train.init.init_convs`: torchvision's ResNet
    init inside the backbone, Xavier elsewhere; deformable offsets stay zero), then upstream's
    ``normal_init(solo_cate, std=0.01, bias=bias_init_with_prob(0.01))`` on the category output."""
    init_convs(net, net.backbone, skip_suffixes=("conv_offset",))
    nn.init.normal_(net.bbox_head.solo_cate.weight, std=0.01)
    nn.init.constant_(net.bbox_head.solo_cate.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))


SOLOV2 = Family(
    name="solov2",
    build=Solov2,
    geometry=post.input_geometry,
    preprocess=post.preprocess,
    postprocess=postprocess,
    loss=loss,
    init_from_scratch=init_from_scratch,
    class_dependent_prefixes=CLASS_DEPENDENT_PREFIXES,
)
