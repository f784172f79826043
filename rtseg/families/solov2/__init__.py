"""SOLOv2 as a :class:`~rtseg.families.base.Family`: network and config (:mod:`~rtseg.families.solov2.network`,
official key layouts in :mod:`~rtseg.families.solov2.checkpoints`), the official test pipeline
(:mod:`~rtseg.families.solov2.preprocess`), post-processing (:mod:`~rtseg.families.solov2.postprocess`),
the CUDA kernels' parameters (:mod:`~rtseg.families.solov2.ops`), the loss (:mod:`~rtseg.families.solov2.loss`)
and the variants."""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
from torch import nn

from rtseg.families.base import Family, InputGeometry
from rtseg.families.solov2 import postprocess as post
from rtseg.families.solov2.loss import Solov2LossConfig, solov2_loss
from rtseg.families.solov2.network import Solov2, Solov2Config
from rtseg.families.solov2.ops import preprocess_params
from rtseg.families.solov2 import preprocess as pre
from rtseg.models.checkpoint import BUILTIN_WEIGHTS_MISSING
from rtseg.postprocess import TORCH_OPS, PostprocessOps, to_numpy_instances
from rtseg.structures import Instances
from rtseg.train.init import init_convs

#: layers whose shapes depend on the number of classes: re-initialised when fine-tuning on other classes
CLASS_DEPENDENT_PREFIXES = ("bbox_head.solo_cate.",)

#: focal-loss prior: category biases start at ``-log((1 - p) / p)`` so every score starts near ``p``
#: (WXinlong/SOLO ``SOLOv2Head.init_weights``: ``bias_init_with_prob(0.01)``; AdelaiDet ``PRIOR_PROB``)
PRIOR_PROB = 0.01


def build_stage2(net: Solov2, cfg: Solov2Config) -> None:
    """``None``: SOLOv2 has no second stage (its dynamic convolution is a matrix product in post-processing)."""
    return None


def postprocess_to_instances(outputs: dict[str, torch.Tensor], net: Solov2, cfg: Solov2Config,
                             image_size: tuple[int, int], score_threshold: float, ops: PostprocessOps = TORCH_OPS,
                             geometry: InputGeometry | None = None, stage2: None = None) -> Instances:
    result = post.postprocess(outputs, cfg, image_size, score_threshold=score_threshold, ops=ops, geometry=geometry)
    return to_numpy_instances(result, image_size, ops)


def loss_terms(outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, Any]], net: Solov2, cfg: Solov2Config,
               loss_config: Solov2LossConfig = Solov2LossConfig()) -> dict[str, torch.Tensor]:
    return solov2_loss(outputs, targets, cfg, loss_config)


def init_from_scratch(net: Solov2) -> None:
    """rtseg's shared initialisation (:func:`rtseg.train.init.init_convs`: torchvision's ResNet
    init inside the backbone, Xavier elsewhere; deformable offsets stay zero), then upstream's
    ``normal_init(solo_cate, std=0.01, bias=bias_init_with_prob(0.01))`` on the category output."""
    init_convs(net, net.backbone, skip_suffixes=("conv_offset",))
    nn.init.normal_(net.bbox_head.solo_cate.weight, std=0.01)
    nn.init.constant_(net.bbox_head.solo_cate.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))


def training_preprocess(cfg: Solov2Config) -> functools.partial:
    """The family's :func:`~rtseg.families.solov2.preprocess.preprocess` with ``cfg`` bound (picklable
    for DataLoader workers); the dataset hands it square ``S x S`` images."""
    return functools.partial(pre.preprocess, cfg=cfg)


# -- the variants ----------------------------------------------------------------------------
# Official variants: WXinlong/SOLO configs/solov2/<config>.py (architecture, test_cfg,
# img_scale); checkpoint names from its README (hosted at huggingface.co/xinlongwang/SOLO, cannot
# be fetched at run time). Canvas = upstream img_scale padded up to a multiple of 32, landscape.
def _wx(files: str) -> str:
    return f"official checkpoint {files} (WXinlong/SOLO README): pass --weights PATH"


_LIGHT_448 = dict(canvas=(448, 768), resize_max=(768, 448), head_convs=2, head_channels=256, mask_channels=128,
                  scale_ranges=((1, 56), (28, 112), (56, 224), (112, 448), (224, 896)))


def _official_variants() -> tuple[Solov2Config, ...]:
    from rtseg.data.coco_classes import COCO_CLASSES as coco

    return (
        # solov2_r50_fpn_8gpu_{1x,3x}.py (same architecture); mmdetection solov2_r50_fpn_{1x,ms-3x}_coco
        Solov2Config(name="solov2_r50_fpn", class_names=coco,
                     weights_source=_wx("SOLOv2_R50_3x.pth or SOLOv2_R50_1x.pth") + "; mmdetection's "
                     "solov2_r50_fpn_*_coco_*.pth load too"),
        Solov2Config(name="solov2_r101_fpn", class_names=coco, backbone_depth=101,
                     weights_source=_wx("SOLOv2_R101_3x.pth")),
        # solov2_r101_dcn_fpn_8gpu_3x.py: DCNv2 in backbone stages 2-4, every tower conv and the
        # whole mask-feature branch
        Solov2Config(name="solov2_r101_dcn_fpn", class_names=coco, backbone_depth=101, backbone_dcn="DCNv2",
                     head_dcn="DCNv2", mask_feat_dcn="DCNv2",
                     weights_source=_wx("SOLOv2_R101_DCN_3x.pth") + "; mmdetection's solov2_r101_dcn_fpn_3x_coco_*.pth"
                     " loads too"),
        # solov2_light_448_r{18,34,50}_fpn_8gpu_3x.py: SOLOv2Head, 2 x 256 towers, E = 128
        Solov2Config(name="solov2_light_448_r18", class_names=coco, backbone_depth=18, **_LIGHT_448,
                     weights_source=_wx("SOLOv2_LIGHT_448_R18_3x.pth") + "; mmdetection's "
                     "solov2_light_r18_fpn_3x_coco_*.pth loads too"),
        Solov2Config(name="solov2_light_448_r34", class_names=coco, backbone_depth=34, **_LIGHT_448,
                     weights_source=_wx("SOLOv2_LIGHT_448_R34_3x.pth")),
        Solov2Config(name="solov2_light_448_r50", class_names=coco, backbone_depth=50, **_LIGHT_448,
                     weights_source=_wx("SOLOv2_LIGHT_448_R50_3x.pth") + "; mmdetection's "
                     "solov2_light_r50_fpn_3x_coco_*.pth loads too"),
        # solov2_light_512_dcn_r50_fpn_8gpu_3x.py: DCN (v1) in backbone stages 2-4 and in the last of
        # 3 tower convs (SOLOv2LightHead), other scale ranges; no non-DCN light-512 model is released
        Solov2Config(name="solov2_light_512_dcn_r50", class_names=coco, canvas=(512, 864), resize_max=(852, 512),
                     backbone_depth=50, backbone_dcn="DCN", head_convs=3, head_channels=256, head_dcn="DCN",
                     head_dcn_last_only=True, mask_channels=128,
                     scale_ranges=((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)),
                     weights_source=_wx("SOLOv2_LIGHT_512_DCN_R50_3x.pth")),
        # mmdetection 3's solov2-light_r50-dcn_fpn_ms-3x_coco.py (no WXinlong twin: WXinlong's light-512 is
        # DCN v1 at 512): DCNv2 (27-channel conv_offset) in backbone stages 2-4 and in the last of 3 tower
        # convs (dcn_apply_to_all_conv=False), light-512's scale ranges, light-448's test scale (448, 768)
        Solov2Config(name="solov2_light_448_dcn_r50", class_names=coco, canvas=(448, 768), resize_max=(768, 448),
                     backbone_depth=50, backbone_dcn="DCNv2", head_convs=3, head_channels=256, head_dcn="DCNv2",
                     head_dcn_last_only=True, mask_channels=128,
                     scale_ranges=((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)),
                     weights_source="mmdetection config solov2-light_r50-dcn_fpn_ms-3x_coco (no checkpoint in its "
                     "metafile): pass --weights PATH"),
        # AdelaiDet (detectron2) re-implementation, configs/SOLOv2/R{50,101}_3x.yaml: the same
        # network on a caffe-style MSRA ResNet (stride in the 1x1 conv) with BGR input and std 1
        Solov2Config(name="solov2_adet_r50_fpn", class_names=coco, backbone_style="caffe", pixel_norm="bgr_caffe",
                     preprocess_style="detectron2",
                     weights_source="official checkpoint SOLOv2_R50_3x.pth of aim-uofa/AdelaiDet "
                     "(configs/SOLOv2/README.md): pass --weights PATH"),
        Solov2Config(name="solov2_adet_r101_fpn", class_names=coco, backbone_depth=101, backbone_style="caffe",
                     pixel_norm="bgr_caffe", preprocess_style="detectron2",
                     weights_source="official checkpoint SOLOv2_R101_3x.pth of "
                     "aim-uofa/AdelaiDet (configs/SOLOv2/README.md): pass --weights PATH"),
    )


def _rtseg_variants() -> tuple[Solov2Config, ...]:
    # the synthetic shape classes (rtseg.synthetic does not import rtseg.models: no import cycle)
    from rtseg.synthetic import CLASS_NAMES as synthetic

    return (
        # rtseg's own real-time CPU model, built in: trained here on the synthetic shapes, its backbone
        # started from the built-in YOLACT's (no ImageNet weights can be fetched here; see
        # docs/builtin-model.md): light-448's design scaled down to the budget of the built-in
        # yolact_resnet18_half_384 (3.8 M parameters, 3.7 GMAC; trains at ~1.3 it/s, batch 8, on 2
        # CPU cores per docs/builtin-model.md). This one: 3.8 M parameters, 3.3 GMAC at 384 x 384
        # (torch FlopCounterMode): backbone 1.4, FPN 0.5, mask branch 0.7, towers 0.8.
        # - square 384 stretched (keep_ratio=False), as the training data pipeline feeds square images
        # - half-width R-18 (C2..C5: 32/64/128/256 ch), FPN 64 ch, mask branch 64 ch, E = 64
        # - light-448's 2-conv towers at half width (128 ch)
        # - scale ranges: light-448's scaled by 384/448; grids (24, 20, 16, 12, 8) instead of 40..12:
        #   1440 cells instead of 3872 (the towers run per cell: 0.8 instead of 2 GMAC); level-0
        #   cells are 16 px, the synthetic shapes' radii 13-61 px (rtseg/synthetic.py) at 384 px
        Solov2Config(name="solov2_light_resnet18_half_384", class_names=synthetic, canvas=(384, 384),
                     resize_max=(384, 384), keep_ratio=False, backbone_depth=18, backbone_width=0.5,
                     fpn_channels=64, head_convs=2, head_channels=128, num_grids=(24, 20, 16, 12, 8),
                     scale_ranges=((1, 48), (24, 96), (48, 192), (96, 384), (192, 768)),
                     mask_feat_channels=64, mask_channels=64,
                     weights_source=BUILTIN_WEIGHTS_MISSING),
    )


SOLOV2_VARIANTS: tuple[Solov2Config, ...] = _official_variants() + _rtseg_variants()


SOLOV2 = Family(
    name="solov2",
    build=Solov2,
    geometry=pre.input_geometry,
    preprocess=pre.preprocess,
    postprocess=postprocess_to_instances,
    loss=loss_terms,
    init_from_scratch=init_from_scratch,
    class_dependent_prefixes=CLASS_DEPENDENT_PREFIXES,
    variants=SOLOV2_VARIANTS,
    preprocess_params=preprocess_params,
    training_preprocess=training_preprocess,
    stage2=build_stage2,
)
