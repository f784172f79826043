"""CenterMask / CenterMask-Lite as a :class:`~rtseg.families.base.Family`: network and config
(:mod:`~rtseg.families.centermask.network`, VoVNet in :mod:`rtseg.models.vovnet`), the official test
pipeline (:mod:`~rtseg.families.centermask.preprocess`), post-processing
(:mod:`~rtseg.families.centermask.postprocess`), the CUDA kernels' parameters
(:mod:`~rtseg.families.centermask.ops`), the loss (:mod:`~rtseg.families.centermask.loss`) and the variants."""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
from torch import nn

from rtseg.data.coco_classes import COCO_CLASSES
from rtseg.families.base import Family, InputGeometry, Stage2
from rtseg.families.centermask import postprocess as post
from rtseg.families.centermask.loss import CenterMaskLossConfig, centermask_loss
from rtseg.families.centermask.network import IMAGENET_PIXEL_STD_BGR, CenterMask, CenterMaskConfig
from rtseg.families.centermask.ops import preprocess_params
from rtseg.families.centermask import preprocess as pre
from rtseg.families.centermask.stage2 import CenterMaskStage2
from rtseg.models.checkpoint import BUILTIN_WEIGHTS_MISSING
from rtseg.models.vovnet import VOVNET_SPECS, VoVNetSpec
from rtseg.postprocess import TORCH_OPS, PostprocessOps, to_numpy_instances
from rtseg.structures import Instances
from rtseg.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES  # rtseg's synthetic shapes
from rtseg.train.init import init_convs

#: layers whose shapes depend on the number of classes: re-initialised when fine-tuning on other classes
CLASS_DEPENDENT_PREFIXES = (
    "proposal_generator.fcos_head.cls_logits.",
    "roi_heads.mask_head.predictor.",
    "roi_heads.maskiou_head.maskiou.",
)

#: focal-loss prior of the FCOS classifier bias (``MODEL.FCOS.PRIOR_PROB``, centermask2 ``config/defaults.py``)
PRIOR_PROB = 0.01


def build_stage2(net: CenterMask, cfg: CenterMaskConfig) -> CenterMaskStage2:
    """The RoI mask head and MaskIoU head (:class:`~rtseg.families.centermask.stage2.CenterMaskStage2`)."""
    return CenterMaskStage2(net)


def postprocess_to_instances(outputs: dict[str, torch.Tensor], net: CenterMask, cfg: CenterMaskConfig,
                             image_size: tuple[int, int], score_threshold: float, ops: PostprocessOps = TORCH_OPS,
                             geometry: InputGeometry | None = None, stage2: Stage2 | None = None) -> Instances:
    result = post.postprocess(outputs, net, cfg, image_size, score_threshold=score_threshold, ops=ops,
                              geometry=geometry, stage2=stage2)
    return to_numpy_instances(result, image_size, ops)


def loss_terms(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], net: CenterMask,
               cfg: CenterMaskConfig, loss_config: CenterMaskLossConfig = CenterMaskLossConfig()) -> dict[str, torch.Tensor]:
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


def training_preprocess(cfg: CenterMaskConfig) -> functools.partial:
    """The family's :func:`~rtseg.families.centermask.preprocess.preprocess` with ``cfg`` bound (picklable
    for DataLoader workers); the dataset hands it square ``S x S`` images."""
    return functools.partial(pre.preprocess, cfg=cfg)


# -- variants ------------------------------------------------------------------------------------

_DROPBOX = "official checkpoint {file} (youngwanLEE/centermask2 README, Dropbox): pass --weights PATH"
_LITE = dict(fpn_channels=128, fcos_num_convs=2, mask_num_conv=2, mask_conv_dim=128, maskiou_num_conv=2,
             maskiou_conv_dim=128, input_height=608, input_width=1024, min_size_test=600, max_size_test=1000)

#: rtseg's own small CPU model's backbone: VoVNet-19 (eSE) at a quarter of every width (V-19-slim,
#: upstream's thinnest dense variant, is half of V-19's stage widths). 1.38 GMACs for the whole
#: dense network at 384 x 384 against 3.65 for yolact_resnet18_half_384 (torch FlopCounterMode).
RTSEG_SMALL_VOVNET = VoVNetSpec(stem=(16, 16, 32), stage_conv_ch=(32, 40, 48, 56), stage_out_ch=(64, 128, 192, 256),
                                layer_per_block=3, block_per_stage=(1, 1, 1, 1))

CENTERMASK_VARIANTS: tuple[CenterMaskConfig, ...] = (
    CenterMaskConfig(name="centermask2_v39", class_names=COCO_CLASSES, vovnet=VOVNET_SPECS["V-39-eSE"],
                     weights_source=_DROPBOX.format(file="centermask2-V-39-eSE-FPN-ms-3x.pth")),
    CenterMaskConfig(name="centermask2_v57", class_names=COCO_CLASSES, vovnet=VOVNET_SPECS["V-57-eSE"],
                     weights_source=_DROPBOX.format(file="centermask2-V-57-eSE-FPN-ms-3x.pth")),
    CenterMaskConfig(name="centermask2_v99", class_names=COCO_CLASSES, vovnet=VOVNET_SPECS["V-99-eSE"],
                     weights_source=_DROPBOX.format(file="centermask2-V-99-eSE-FPN-ms-3x.pth")),
    CenterMaskConfig(name="centermask2_lite_v19", class_names=COCO_CLASSES, vovnet=VOVNET_SPECS["V-19-eSE"], **_LITE,
                     weights_source=_DROPBOX.format(file="centermask2-lite-V-19-eSE-FPN-ms-4x.pth")),
    CenterMaskConfig(name="centermask2_lite_v39", class_names=COCO_CLASSES, vovnet=VOVNET_SPECS["V-39-eSE"], **_LITE,
                     weights_source=_DROPBOX.format(file="centermask2-lite-V-39-eSE-FPN-ms-4x.pth")),
    CenterMaskConfig(name="centermask2_lite_v19_slim", class_names=COCO_CLASSES,
                     vovnet=VOVNET_SPECS["V-19-slim-eSE"], **_LITE,
                     weights_source=_DROPBOX.format(file="centermask-lite-V-19-eSE-slim-FPN-ms-4x.pth")),
    CenterMaskConfig(name="centermask2_lite_v19_slim_dw", class_names=COCO_CLASSES,
                     vovnet=VOVNET_SPECS["V-19-slim-dw-eSE"], **_LITE,
                     weights_source=_DROPBOX.format(file="centermask-lite-V-19-eSE-slim-dw-FPN-ms-4x.pth")),
    CenterMaskConfig(name="centermask_lite_vovnet19_quarter_384", class_names=SYNTHETIC_CLASSES,
                     vovnet=RTSEG_SMALL_VOVNET, vovnet_norm="BN", fpn_channels=64, fcos_num_convs=2,
                     mask_num_conv=2, mask_conv_dim=64, maskiou_num_conv=2, maskiou_conv_dim=64, maskiou_fc_dim=256,
                     input_height=384, input_width=384, min_size_test=384, max_size_test=384, keep_ratio=False,
                     pixel_std=IMAGENET_PIXEL_STD_BGR, train_mask_rois_per_image=16, clamp_maskiou=True,
                     weights_source=BUILTIN_WEIGHTS_MISSING),
)


CENTERMASK = Family(
    name="centermask",
    build=CenterMask,
    geometry=pre.input_geometry,
    preprocess=pre.preprocess,
    postprocess=postprocess_to_instances,
    loss=loss_terms,
    init_from_scratch=init_from_scratch,
    class_dependent_prefixes=CLASS_DEPENDENT_PREFIXES,
    variants=CENTERMASK_VARIANTS,
    preprocess_params=preprocess_params,
    training_preprocess=training_preprocess,
    stage2=build_stage2,
)
