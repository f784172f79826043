"""YOLACT / YOLACT++ as a :class:`~rtseg.families.base.Family`: network and config
(:mod:`~rtseg.families.yolact.network`), the official test pipeline
(:mod:`~rtseg.families.yolact.preprocess`), post-processing (:mod:`~rtseg.families.yolact.postprocess`),
the CUDA kernels' parameters (:mod:`~rtseg.families.yolact.ops`), the loss
(:mod:`~rtseg.families.yolact.loss`) and the variants.

Official variants keep upstream's names, input sizes and layer shapes exactly
(dbolya/yolact ``data/config.py``); the ``yolact_resnet18_*`` variants are rtseg's own small
models for real-time use on a CPU, trained on the synthetic shapes set.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rtseg.data.coco_classes import COCO_CLASSES
from rtseg.families.base import Family, InputGeometry, Stage2, TorchStage2
from rtseg.families.yolact import postprocess as post
from rtseg.families.yolact.loss import YolactLossConfig, yolact_loss
from rtseg.families.yolact.network import Yolact, YolactConfig
from rtseg.families.yolact.ops import preprocess_params
from rtseg.families.yolact import preprocess as pre
from rtseg.families.yolact.stage2 import YolactStage2
from rtseg.models.checkpoint import BUILTIN_WEIGHTS_MISSING
from rtseg.postprocess import TORCH_OPS, PostprocessOps, to_numpy_instances
from rtseg.structures import Instances
from rtseg.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES  # the classes of rtseg's own small models
from rtseg.train.init import init_convs

#: layers whose shapes depend on the number of classes: re-initialised when fine-tuning on other classes
CLASS_DEPENDENT_PREFIXES = (
    "prediction_layers.0.conf_layer.",
    "semantic_seg_conv.",
    "maskiou_net.maskiou_net.10.",
)


def build_stage2(net: Yolact, cfg: YolactConfig) -> YolactStage2 | None:
    """YOLACT++'s mask re-scoring (:class:`~rtseg.families.yolact.stage2.YolactStage2`); ``None``
    for YOLACT (no ``maskiou_net``) or without ``cfg.rescore_mask``."""
    if getattr(net, "maskiou_net", None) is None or not cfg.rescore_mask:
        return None
    return YolactStage2(net)


def postprocess_to_instances(outputs: dict[str, torch.Tensor], net: Yolact, cfg: YolactConfig,
                             image_size: tuple[int, int], score_threshold: float, ops: PostprocessOps = TORCH_OPS,
                             geometry: InputGeometry | None = None, stage2: Stage2 | None = None) -> Instances:
    if stage2 is None:
        module = build_stage2(net, cfg)
        stage2 = None if module is None else TorchStage2(module)
    result = post.postprocess(outputs, net.priors, cfg, image_size, score_threshold=score_threshold,
                              stage2=stage2, ops=ops)  # geometry: always S x S
    return to_numpy_instances(result, image_size, ops)


def loss_terms(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], net: Yolact, cfg: YolactConfig,
               loss_config: YolactLossConfig = YolactLossConfig()) -> dict[str, torch.Tensor]:
    maskiou_net = net.maskiou_net if cfg.use_maskiou else None
    return yolact_loss(outputs, targets, net.priors, cfg=loss_config, maskiou_net=maskiou_net)


def init_from_scratch(net: Yolact) -> None:
    """Upstream ``Yolact.init_weights`` outside the backbone, torchvision's ResNet init inside."""
    init_convs(net, net.backbone)


def training_preprocess(cfg: YolactConfig) -> None:
    """``None``: :class:`rtseg.data.coco.CocoInstanceDataset`'s own transform is YOLACT's
    :func:`~rtseg.families.yolact.preprocess.preprocess` of the image as it is (it resizes the
    image itself, exactly as at inference)."""
    return None


# file names from dbolya/yolact README.md (re-hosted on Hugging Face; cannot be fetched at run time)
_HF = "official checkpoint {name}_54_800000.pth (dbolya/yolact README): pass --weights PATH"
_R101 = dict(backbone_depth=101)
# YOLACT++ anchors: 3 scales per level, 2^(j/3) apart (yolact_plus_base_config)
_PLUS_SCALES = tuple(tuple(i * 2 ** (j / 3.0) for j in range(3)) for i in (24, 48, 96, 192, 384))
_PLUS = dict(use_maskiou=True, rescore_mask=True, use_square_anchors=False, pred_scales=_PLUS_SCALES)


def _scaled(size: int) -> tuple[tuple[float, ...], ...]:
    """Anchor scales of yolact_base rescaled to another input size, as upstream's
    ``yolact_im400`` / ``yolact_im700`` configs do: ``int(s / 550 * size)``."""
    return tuple((int(s / 550 * size),) for s in (24, 48, 96, 192, 384))


YOLACT_VARIANTS: tuple[YolactConfig, ...] = (
    YolactConfig(name="yolact_base", class_names=COCO_CLASSES, **_R101,
                     weights_source=_HF.format(name="yolact_base")),
        YolactConfig(name="yolact_im400", class_names=COCO_CLASSES, **_R101, max_size=400,
                     pred_scales=_scaled(400), weights_source="no official weights released; train or fine-tune"),
        YolactConfig(name="yolact_im700", class_names=COCO_CLASSES, **_R101, max_size=700,
                     pred_scales=_scaled(700), weights_source=_HF.format(name="yolact_im700")),
        YolactConfig(name="yolact_resnet50", class_names=COCO_CLASSES, backbone_depth=50,
                     weights_source=_HF.format(name="yolact_resnet50")),
        YolactConfig(name="yolact_plus_base", class_names=COCO_CLASSES, **_R101, dcn_layers=(0, 4, 23, 3),
                     dcn_interval=3, **_PLUS, weights_source=_HF.format(name="yolact_plus_base")),
        YolactConfig(name="yolact_plus_resnet50", class_names=COCO_CLASSES, backbone_depth=50,
                     dcn_layers=(0, 4, 6, 3), **_PLUS, weights_source=_HF.format(name="yolact_plus_resnet50")),
        # rtseg's own real-time CPU models (trained from scratch here: no ImageNet weights can be fetched)
        # R-18, 384 px, 128-channel FPN / protonet: for fine-tuning on your own data
        YolactConfig(name="yolact_resnet18_384", class_names=SYNTHETIC_CLASSES, backbone_depth=18, max_size=384,
                     fpn_features=128, proto_channels=128, pred_scales=_scaled(384),
                     weights_source="none built in: train with 'rtseg train' or pass --weights PATH"),
        # the built-in default: R-18 at half width (about 4x fewer backbone FLOPs), small enough to
        # ship its weights in the package and to run in real time on 2 CPU cores
        YolactConfig(name="yolact_resnet18_half_384", class_names=SYNTHETIC_CLASSES, backbone_depth=18,
                     backbone_width=0.5, max_size=384, fpn_features=96, proto_channels=96, pred_scales=_scaled(384),
                     weights_source=BUILTIN_WEIGHTS_MISSING),
)


YOLACT = Family(
    name="yolact",
    build=Yolact,
    geometry=pre.input_geometry,
    preprocess=pre.preprocess,
    postprocess=postprocess_to_instances,
    loss=loss_terms,
    init_from_scratch=init_from_scratch,
    class_dependent_prefixes=CLASS_DEPENDENT_PREFIXES,
    variants=YOLACT_VARIANTS,
    preprocess_params=preprocess_params,
    training_preprocess=training_preprocess,
    stage2=build_stage2,
)
