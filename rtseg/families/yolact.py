"""YOLACT / YOLACT++ as a :class:`~rtseg.families.base.Family`: network
(:mod:`rtseg.models.yolact`), pre/post-processing (:mod:`rtseg.postprocess.yolact`) and
loss (:mod:`rtseg.train.yolact_loss`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rtseg.families.base import Family, InputGeometry
from rtseg.models.yolact import Yolact, YolactConfig
from rtseg.postprocess import yolact as post
from rtseg.postprocess import TORCH_OPS, PostprocessOps, to_numpy_instances
from rtseg.structures import Instances
from rtseg.train.init import init_convs
from rtseg.train.yolact_loss import YolactLossConfig, yolact_loss

#: layers whose shapes depend on the number of classes: re-initialised when fine-tuning on other classes
CLASS_DEPENDENT_PREFIXES = (
    "prediction_layers.0.conf_layer.",
    "semantic_seg_conv.",
    "maskiou_net.maskiou_net.10.",
)


def postprocess(outputs: dict[str, torch.Tensor], net: Yolact, cfg: YolactConfig, image_size: tuple[int, int],
                score_threshold: float, ops: PostprocessOps = TORCH_OPS, geometry: InputGeometry | None = None) -> Instances:
    maskiou = getattr(net, "maskiou_net", None)
    result = post.postprocess(outputs, net.priors, cfg, image_size, score_threshold=score_threshold,
                              maskiou_fn=maskiou, ops=ops)  # geometry: always S x S
    return to_numpy_instances(result, image_size, ops)


def loss(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], net: Yolact, cfg: YolactConfig,
         loss_config: YolactLossConfig = YolactLossConfig()) -> dict[str, torch.Tensor]:
    maskiou_net = net.maskiou_net if cfg.use_maskiou else None
    return yolact_loss(outputs, targets, net.priors, cfg=loss_config, maskiou_net=maskiou_net)


def init_from_scratch(net: Yolact) -> None:
    """Upstream ``Yolact.init_weights`` outside the backbone, torchvision's ResNet init inside."""
    init_convs(net, net.backbone)


YOLACT = Family(
    name="yolact",
    build=Yolact,
    geometry=post.input_geometry,
    preprocess=post.preprocess,
    postprocess=postprocess,
    loss=loss,
    init_from_scratch=init_from_scratch,
    class_dependent_prefixes=CLASS_DEPENDENT_PREFIXES,
)
