"""Key layouts of the official SOLOv2 checkpoints, converted to rtseg's (= WXinlong/SOLO's).

Three codebases release SOLOv2 weights; all compute the same network but name it differently:

- **WXinlong/SOLO** (mmdetection v1.0, the authors' code): ``backbone.*``, ``neck.*``,
  ``mask_feat_head.*``, ``bbox_head.*`` (``mmdet/models/detectors/single_stage_ins.py``).
  rtseg's :class:`~rtseg.families.solov2.network.Solov2` uses exactly these names: identity. Old mmdet
  DCN keys ``<conv>_offset.*`` are renamed to ``<conv>.conv_offset.*`` as upstream's
  ``DeformConvPack._load_from_state_dict`` does for checkpoints without version metadata.
- **mmdetection 2.x / 3.x** (``mmdet/models/dense_heads/solov2_head.py``): same backbone and
  neck; the heads live under ``mask_head``: ``cls_convs`` / ``kernel_convs``, ``conv_cls`` /
  ``conv_kernel``, ``mask_feature_head.convs_all_levels`` and ``mask_feature_head.conv_pred``
  (a ``ConvModule``, not a one-element ``Sequential``).
- **AdelaiDet** (detectron2; ``adet/modeling/solov2/solov2.py``): detectron2's ResNet-FPN
  (``backbone.bottom_up.stem.conv1[.norm]``, ``backbone.bottom_up.res{2..5}.{b}.conv{1,2,3}[.norm]``,
  ``...shortcut[.norm]``, ``backbone.fpn_lateral{2..5}``, ``backbone.fpn_output{2..5}``),
  ``ins_head.{cate,kernel}_tower.{k}`` (``Sequential`` of Conv, GroupNorm, ReLU: parameters at
  ``k = 3 i`` and ``3 i + 1``), ``ins_head.{cate,kernel}_pred``,
  ``mask_head.convs_all_levels.{l}.conv{j}.{0,1}`` and ``mask_head.conv_pred.{0,1}``. Its
  ResNets are caffe-style (detectron2 ``RESNETS.STRIDE_IN_1X1=True``) and expect BGR input
  with std 1, so they load only into the ``solov2_adet_*`` variants.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from rtseg.errors import CheckpointError

LAYOUTS = ("wxinlong", "mmdetection", "adelaidet")

_MMDET_RENAMES = (  # (mmdetection prefix, WXinlong prefix), first match wins
    ("mask_head.mask_feature_head.convs_all_levels.", "mask_feat_head.convs_all_levels."),
    ("mask_head.mask_feature_head.conv_pred.", "mask_feat_head.conv_pred.0."),
    ("mask_head.cls_convs.", "bbox_head.cate_convs."),
    ("mask_head.kernel_convs.", "bbox_head.kernel_convs."),
    ("mask_head.conv_cls.", "bbox_head.solo_cate."),
    ("mask_head.conv_kernel.", "bbox_head.solo_kernel."),
)

_ADET_RULES = (  # (pattern, replacement) on AdelaiDet keys, first match wins
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.(.+)$", "backbone.bn1.{1}"),
    (r"^backbone\.bottom_up\.stem\.conv1\.weight$", "backbone.conv1.weight"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(.+)$", "backbone.layer{r1}.{2}.bn{3}.{4}"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight$", "backbone.layer{r1}.{2}.conv{3}.weight"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(.+)$", "backbone.layer{r1}.{2}.downsample.1.{3}"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight$", "backbone.layer{r1}.{2}.downsample.0.weight"),
    (r"^backbone\.fpn_lateral(\d)\.(weight|bias)$", "neck.lateral_convs.{s2}.conv.{2}"),
    (r"^backbone\.fpn_output(\d)\.(weight|bias)$", "neck.fpn_convs.{s2}.conv.{2}"),
    (r"^ins_head\.cate_pred\.(weight|bias)$", "bbox_head.solo_cate.{1}"),
    (r"^ins_head\.kernel_pred\.(weight|bias)$", "bbox_head.solo_kernel.{1}"),
    (r"^mask_head\.convs_all_levels\.(\d)\.conv(\d)\.0\.weight$", "mask_feat_head.convs_all_levels.{1}.conv{2}.conv.weight"),
    (r"^mask_head\.convs_all_levels\.(\d)\.conv(\d)\.1\.(weight|bias)$", "mask_feat_head.convs_all_levels.{1}.conv{2}.gn.{3}"),
    (r"^mask_head\.conv_pred\.0\.weight$", "mask_feat_head.conv_pred.0.conv.weight"),
    (r"^mask_head\.conv_pred\.1\.(weight|bias)$", "mask_feat_head.conv_pred.0.gn.{1}"),
)
_ADET_TOWER = re.compile(r"^ins_head\.(cate|kernel)_tower\.(\d+)\.(weight|bias)$")


def detect_layout(keys: list[str]) -> str:
    """Which codebase saved a state_dict: one of :data:`LAYOUTS`, or :class:`CheckpointError`."""
    if any(k.startswith(("bbox_head.", "mask_feat_head.")) for k in keys):
        return "wxinlong"
    if any(k.startswith(("ins_head.", "backbone.bottom_up.")) for k in keys):
        return "adelaidet"
    if any(k.startswith(("mask_head.mask_feature_head.", "mask_head.conv_cls.")) for k in keys):
        return "mmdetection"
    shown = ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
    raise CheckpointError(
        "weights do not look like a SOLOv2 checkpoint: expected keys under bbox_head./mask_feat_head. "
        f"(WXinlong/SOLO), mask_head.mask_feature_head. (mmdetection) or ins_head. (AdelaiDet), found {shown}")


def _rename_legacy_dcn_offsets(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<conv>_offset.{weight,bias}`` -> ``<conv>.conv_offset.*`` (mmdet v1 ``DeformConvPack``
    version < 2), unless the new name is already there."""
    out = {}
    for k, v in state.items():
        prefix, _, leaf = k.rpartition(".")
        module = prefix.rpartition(".")[2]
        if leaf in ("weight", "bias") and module.endswith("_offset") and module != "conv_offset":
            new = f"{prefix[: -len('_offset')]}.conv_offset.{leaf}"
            if new not in state:
                k = new
        out[k] = v
    return out


def _convert_mmdet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for old, new in _MMDET_RENAMES:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def _convert_adet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        new = _adet_key(k)
        if new in out:
            raise CheckpointError(f"AdelaiDet checkpoint: keys map twice onto {new!r} (second from {k!r})")
        out[new] = v
    return out


def _adet_key(k: str) -> str:
    m = _ADET_TOWER.match(k)
    if m:
        branch, idx, leaf = m.group(1), int(m.group(2)), m.group(3)
        conv, part = divmod(idx, 3)  # Conv2d, GroupNorm, ReLU per tower layer
        if part == 0 and leaf == "weight":
            return f"bbox_head.{branch}_convs.{conv}.conv.weight"
        if part == 1:
            return f"bbox_head.{branch}_convs.{conv}.gn.{leaf}"
        raise CheckpointError(f"AdelaiDet checkpoint key {k!r}: expected Conv2d (no bias) at tower index 3i and "
                              "GroupNorm at 3i+1 (MODEL.SOLOV2.NORM='GN')")
    for pattern, template in _ADET_RULES:
        m = re.match(pattern, k)
        if m:
            groups = m.groups()
            extra = {}
            if "{r1}" in template:  # detectron2 res2..res5 -> layer1..layer4
                extra["r1"] = int(groups[0]) - 1
            if "{s2}" in template:  # FPN stage 2..5 -> index 0..3
                extra["s2"] = int(groups[0]) - 2
            return template.format(None, *groups, **extra)
    return k  # left as is: the strict check names it as unexpected


def convert_state_dict(state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """An official SOLOv2 state_dict (any of :data:`LAYOUTS`) with rtseg's key names.

    ``cfg`` (a :class:`~rtseg.families.solov2.network.Solov2Config`) is checked against the layout: an
    AdelaiDet checkpoint into a model whose backbone is not caffe-style raises
    :class:`CheckpointError` (the keys would fit but the outputs would be wrong). A
    WXinlong-layout file is accepted by every variant (rtseg's own training checkpoints use it).
    Shapes are not checked here; :func:`rtseg.models.checkpoint.load_weights` does that.
    """
    keys = list(state)
    layout = detect_layout(keys)
    if layout == "adelaidet" and cfg.backbone_style != "caffe":
        raise CheckpointError(
            f"an AdelaiDet SOLOv2 checkpoint (detectron2 caffe-style ResNet, BGR input, std 1) does not fit model "
            f"{cfg.name!r} (pytorch-style ResNet, {cfg.pixel_norm} input): use solov2_adet_r50_fpn or "
            "solov2_adet_r101_fpn")
    if layout == "mmdetection":
        state = _convert_mmdet(state)
    elif layout == "adelaidet":
        state = _convert_adet(state)
    return _rename_legacy_dcn_offsets(state)
