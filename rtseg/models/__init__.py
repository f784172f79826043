"""The model variants rtseg knows, by name: a plain dict, no registry magic.

Official variants keep upstream's names, input sizes and layer shapes exactly
(dbolya/yolact ``data/config.py``); the ``yolact_resnet18_*`` variants are rtseg's own small
models for real-time use on a CPU, trained on the synthetic shapes set.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from rtseg.data.coco_classes import COCO_CLASSES
from rtseg.defaults import DEFAULT_MODEL  # what ``rtseg run`` uses without --model
from rtseg.errors import ConfigError
from rtseg.models.checkpoint import BUILTIN_WEIGHTS_MISSING
from rtseg.models.yolact import YolactConfig
from rtseg.models.centermask import CENTERMASK_VARIANTS
from rtseg.models.solov2 import SOLOV2_VARIANTS
from rtseg.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES  # the classes of rtseg's own small models

__all__ = ["DEFAULT_MODEL", "MODELS", "SYNTHETIC_CLASSES", "YOLACT_VARIANTS", "get_config"]

if TYPE_CHECKING:
    from rtseg.families.base import ModelConfig

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

#: every variant of every family, by name (configs are frozen dataclasses with a ``family``)
MODELS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        *YOLACT_VARIANTS,
        *CENTERMASK_VARIANTS,
        *SOLOV2_VARIANTS,
    )
}


def get_config(name: str) -> ModelConfig:
    """The config of a model variant; unknown names raise :class:`ConfigError` with suggestions."""
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(MODELS)}"
        raise ConfigError(f"unknown model '{name}'{hint} (see 'rtseg models')") from None
