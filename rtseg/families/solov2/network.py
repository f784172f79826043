"""SOLOv2 (Wang et al., NeurIPS 2020) as a PyTorch module, configs and the official variants.

Faithful to the authors' code, WXinlong/SOLO (mmdetection v1.0): module names and parameter
shapes equal its checkpoints' keys, key for key and in order (tested against
``tests/fixtures/official/solov2_keys``, read off the official modules); the forward pass
computes what ``SingleStageInsDetector.simple_test`` computes before ``get_seg``:

- ``backbone``: ResNet (:class:`rtseg.models.mmdet_resnet.MMDetResNet`) -> C2..C5
- ``neck``: FPN P2..P6 (``neck.lateral_convs.{i}.conv`` 1x1, nearest x2 top-down,
  ``neck.fpn_convs.{i}.conv`` 3x3, no activation; P6 = ``max_pool2d(P5, 1, stride=2)``)
- ``mask_feat_head`` (``mmdet/models/mask_heads/mask_feat_head.py``): P2..P5 each to 1/4
  resolution by (conv3x3 + GN + ReLU, bilinear x2) stages, P5 with two CoordConv channels,
  summed, then a 1x1 conv + GN + ReLU to ``E`` channels: the unified mask features
- ``bbox_head`` (``mmdet/models/anchor_heads/solov2_head.py`` / ``solov2_light_head.py``):
  the five levels (P2 halved, P3, P4, P5, P6 resized to P5) with CoordConv, each resized to
  its ``S x S`` grid; a kernel tower (``kernel_convs``) and a category tower (``cate_convs``)
  of conv3x3 + GN + ReLU, then ``solo_kernel`` (``E`` dynamic 1x1-kernel weights per cell)
  and ``solo_cate`` (one sigmoid logit per foreground class and cell).

Why this layout and not mmdetection 2/3's (``mask_head.*``) or AdelaiDet's (``ins_head.*``):
WXinlong/SOLO is the authors' reference implementation and the only one that releases every
variant listed here (light-448 R-18/34/50 and light-512 DCN included); the other two layouts
are converted by :meth:`Solov2.load_official_state_dict`.

The module returns named raw head outputs (fixed shapes, no data-dependent control flow, so
it exports to ONNX); everything from the point NMS on lives in :mod:`rtseg.families.solov2.postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import ConfigError
from rtseg.models.mmdet_resnet import DCN_TYPES, MMDetResNet, make_conv

#: RGB mean / std of the torchvision ImageNet ResNets (WXinlong/SOLO ``img_norm_cfg``, ``to_rgb=True``)
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
#: BGR mean / std of detectron2's MSRA ResNets (detectron2 ``config/defaults.py`` ``PIXEL_MEAN`` /
#: ``PIXEL_STD``; AdelaiDet's SOLOv2 configs keep them)
CAFFE_MEAN_BGR = (103.53, 116.28, 123.675)
CAFFE_STD_BGR = (1.0, 1.0, 1.0)
PIXEL_NORMS = ("rgb_imagenet", "bgr_caffe")


@dataclass(frozen=True)
class Solov2Config:
    """Everything that defines one SOLOv2 variant.

    Defaults are WXinlong/SOLO ``configs/solov2/solov2_r50_fpn_8gpu_3x.py`` (``model``,
    ``test_cfg``, ``img_norm_cfg``); AdelaiDet ``adet/config/defaults.py`` ``MODEL.SOLOV2`` and
    mmdetection ``configs/solov2/solov2_r50_fpn_1x_coco.py`` give the same values.
    """

    family: ClassVar[str] = "solov2"

    name: str
    class_names: tuple[str, ...]  #: foreground classes, one sigmoid output each (no background)
    weights_source: str = ""  #: where weights come from (shown by ``rtseg models``)
    # -- input -----------------------------------------------------------------------
    #: ``(H, W)`` of the fixed training input, and the canvas of ``--canvas``-less fixed-shape
    #: exports. At inference official variants follow upstream instead: each frame size is
    #: resized by the official rule and padded to a multiple of 32 (``Pad(size_divisor=32)``);
    #: see :func:`rtseg.families.solov2.postprocess.geometry`.
    canvas: tuple[int, int] = (800, 1344)
    #: upstream ``img_scale`` (long edge, short edge) bound of the keep-ratio resize
    resize_max: tuple[int, int] = (1333, 800)
    keep_ratio: bool = True  #: False: stretch to the canvas (rtseg's square synthetic-set models)
    #: whose test pipeline the keep-ratio preprocessing reproduces: ``"mmdet"`` (mmcv rescale rule,
    #: OpenCV bilinear on uint8; WXinlong/SOLO and mmdetection) or ``"detectron2"``
    #: (``ResizeShortestEdge``, PIL bilinear on uint8; AdelaiDet)
    preprocess_style: str = "mmdet"
    pixel_norm: str = "rgb_imagenet"  #: ``"rgb_imagenet"`` (WXinlong, mmdet) or ``"bgr_caffe"`` (AdelaiDet)
    # -- backbone ---------------------------------------------------------------------
    backbone_depth: int = 50
    backbone_width: float = 1.0  #: channel multiplier (1 for every official variant)
    backbone_style: str = "pytorch"  #: ``"caffe"``: stride in the first 1x1 conv (detectron2 MSRA)
    backbone_dcn: str | None = None  #: ``"DCN"`` / ``"DCNv2"`` in stages 2-4 (``stage_with_dcn``)
    # -- FPN and heads ------------------------------------------------------------------
    fpn_channels: int = 256  #: ``neck.out_channels`` = ``bbox_head.in_channels``
    head_convs: int = 4  #: ``stacked_convs`` of each tower
    head_channels: int = 512  #: ``seg_feat_channels``
    head_dcn: str | None = None  #: ``type_dcn`` of the towers (``use_dcn_in_tower``)
    head_dcn_last_only: bool = False  #: ``SOLOv2LightHead``: DCN only in the last tower conv
    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)  #: per level; also the mask-area filter
    #: per level, the ``sqrt(box w * h)`` range (input pixels) of the objects it learns
    scale_ranges: tuple[tuple[int, int], ...] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    center_sigma: float = 0.2  #: ``sigma``: centre region = this fraction of the box, in grid cells
    mask_feat_channels: int = 128  #: ``MaskFeatHead.out_channels`` (its hidden width)
    mask_channels: int = 256  #: ``E``: mask-feature channels = dynamic kernel size (``ins_out_channels``)
    mask_feat_dcn: str | None = None  #: ``mask_feat_head.conv_cfg`` type (R-101-DCN: ``"DCNv2"``)
    gn_groups: int = 32  #: GroupNorm groups (``norm_cfg=dict(type='GN', num_groups=32)``)
    # -- post-processing (``test_cfg``) -------------------------------------------------------
    nms_pre: int = 500
    score_thr: float = 0.1  #: on the sigmoid category score after point NMS
    mask_thr: float = 0.5
    update_thr: float = 0.05  #: Matrix-NMS-decayed score threshold (mmdet: ``filter_thr``)
    nms_kernel: str = "gaussian"  #: Matrix NMS decay: ``"gaussian"`` or ``"linear"``
    nms_sigma: float = 2.0
    max_per_img: int = 100

    def __post_init__(self) -> None:
        def bad(what: str, expected: str, found: object) -> ConfigError:
            return ConfigError(f"SOLOv2 config {self.name!r}: {what} must be {expected}, got {found!r}")

        h, w = self.canvas
        if h < 32 or w < 32 or h % 32 or w % 32:
            raise bad("canvas (H, W)", "multiples of 32 (FPN strides up to 32, upstream pads to 32)", self.canvas)
        if len(self.resize_max) != 2 or min(self.resize_max) < 1:
            raise bad("resize_max", "(long edge, short edge) of positive ints", self.resize_max)
        if self.preprocess_style not in ("mmdet", "detectron2"):
            raise bad("preprocess_style", "'mmdet' or 'detectron2'", self.preprocess_style)
        if self.pixel_norm not in PIXEL_NORMS:
            raise bad("pixel_norm", f"one of {PIXEL_NORMS}", self.pixel_norm)
        n = len(self.num_grids)
        if n != 5 or len(self.strides) != n or len(self.scale_ranges) != n:
            raise bad("num_grids / strides / scale_ranges", "5 entries each (P2..P6)",
                      (len(self.num_grids), len(self.strides), len(self.scale_ranges)))
        if any(g < 2 for g in self.num_grids):
            raise bad("num_grids", "integers >= 2", self.num_grids)
        for dcn_name in ("backbone_dcn", "head_dcn", "mask_feat_dcn"):
            value = getattr(self, dcn_name)
            if value is not None and value not in DCN_TYPES:
                raise bad(dcn_name, f"None or one of {DCN_TYPES}", value)
        for ch_name in ("head_channels", "mask_feat_channels", "mask_channels"):
            if getattr(self, ch_name) % self.gn_groups:
                raise bad(ch_name, f"a multiple of gn_groups={self.gn_groups}", getattr(self, ch_name))
        if self.nms_kernel not in ("gaussian", "linear"):
            raise bad("nms_kernel", "'gaussian' or 'linear'", self.nms_kernel)
        if not self.class_names:
            raise bad("class_names", "a non-empty tuple", self.class_names)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the fixed training input (see ``canvas``)."""
        return self.canvas

    @property
    def num_classes(self) -> int:
        """Foreground classes (80 for COCO; sigmoid outputs, no background)."""
        return len(self.class_names)

    @property
    def num_cells(self) -> int:
        """Grid cells over all levels, ``sum(S_i ** 2)`` (3872 for the official grids)."""
        return sum(g * g for g in self.num_grids)


def coord_features(x: torch.Tensor) -> torch.Tensor:
    """CoordConv channels for ``x [B, C, H, W]``: ``float32[B, 2, H, W]``, x then y, each
    ``linspace(-1, 1)`` across the map (upstream ``forward_single`` / ``MaskFeatHead.forward``)."""
    b, _, h, w = x.shape
    if torch.jit.is_tracing():  # ONNX export with dynamic H / W: linspace would freeze the traced size
        xs = _traced_linspace(x.shape[3], x).view(1, 1, 1, -1).expand(b, 1, h, w)
        ys = _traced_linspace(x.shape[2], x).view(1, 1, -1, 1).expand(b, 1, h, w)
    else:
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    return torch.cat([xs, ys], dim=1)


def _traced_linspace(n, like: torch.Tensor) -> torch.Tensor:
    """``linspace(-1, 1, n)`` from a traced size ``n`` (a 0-d tensor under tracing), as
    ``arange`` arithmetic that the ONNX exporter keeps symbolic (equal to linspace within an ulp)."""
    i = torch.arange(n, device=like.device).to(like.dtype)
    return i * (2.0 / (n - 1).to(like.dtype)) - 1.0


class ConvModule(nn.Module):
    """mmdet's ``ConvModule`` key layout: ``conv`` (+ ``gn``), then an optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
                 conv_type: str | None = None, gn_groups: int | None = None, relu: bool = True) -> None:
        super().__init__()
        self.conv = make_conv(conv_type, in_channels, out_channels, kernel_size, padding=padding,
                              bias=gn_groups is None)
        if gn_groups is not None:
            self.gn = nn.GroupNorm(gn_groups, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if hasattr(self, "gn"):
            x = self.gn(x)
        return F.relu(x) if self.relu else x


class FPN(nn.Module):
    """mmdet ``FPN`` with ``start_level=0, num_outs=5, add_extra_convs=False``: C2..C5 -> P2..P6."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1, relu=False) for c in in_channels])
        self.fpn_convs = nn.ModuleList(
            [ConvModule(out_channels, out_channels, 3, padding=1, relu=False) for _ in in_channels])

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        laterals = [lat(f) for lat, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            # upstream: scale_factor=2 'nearest'; the same for inputs that are multiples of 32
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class MaskFeatHead(nn.Module):
    """The unified mask-feature branch (``mask_feat_head``), P2..P5 -> ``[B, E, H/4, W/4]``."""

    def __init__(self, in_channels: int, channels: int, out_channels: int, gn_groups: int,
                 conv_type: str | None = None) -> None:
        super().__init__()
        self.convs_all_levels = nn.ModuleList()
        for i in range(4):
            level = nn.Sequential()
            if i == 0:
                level.add_module("conv0", ConvModule(in_channels, channels, 3, padding=1, conv_type=conv_type,
                                                     gn_groups=gn_groups))
            for j in range(i):
                c_in = (in_channels + 2 if i == 3 else in_channels) if j == 0 else channels
                level.add_module(f"conv{j}", ConvModule(c_in, channels, 3, padding=1, conv_type=conv_type,
                                                        gn_groups=gn_groups))
                level.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(level)
        self.conv_pred = nn.Sequential(ConvModule(channels, out_channels, 1, conv_type=conv_type, gn_groups=gn_groups))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = self.convs_all_levels[0](feats[0])
        for i in range(1, 4):
            x = feats[i]
            if i == 3:
                x = torch.cat([x, coord_features(x)], dim=1)
            out = out + self.convs_all_levels[i](x)
        return self.conv_pred(out)


class Solov2Head(nn.Module):
    """Category and kernel branches (``bbox_head``) shared over the five levels."""

    def __init__(self, cfg: Solov2Config) -> None:
        super().__init__()
        self.num_grids = cfg.num_grids
        self.cate_convs = nn.ModuleList()
        self.kernel_convs = nn.ModuleList()
        for i in range(cfg.head_convs):
            use_dcn = cfg.head_dcn is not None and (not cfg.head_dcn_last_only or i == cfg.head_convs - 1)
            conv_type = cfg.head_dcn if use_dcn else None
            c_in = cfg.fpn_channels if i == 0 else cfg.head_channels
            self.kernel_convs.append(ConvModule(c_in + (2 if i == 0 else 0), cfg.head_channels, 3, padding=1,
                                                conv_type=conv_type, gn_groups=cfg.gn_groups))
            self.cate_convs.append(ConvModule(c_in, cfg.head_channels, 3, padding=1, conv_type=conv_type,
                                              gn_groups=cfg.gn_groups))
        self.solo_cate = nn.Conv2d(cfg.head_channels, cfg.num_classes, 3, padding=1)
        self.solo_kernel = nn.Conv2d(cfg.head_channels, cfg.mask_channels, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """P2..P6 -> per level ``cate [B, C, S, S]`` logits and ``kernel [B, E, S, S]``."""
        p2, p3, p4, p5, p6 = feats
        # split_feats: P2 halved (bilinear, align_corners=False), P6 resized to P5
        levels = [F.interpolate(p2, size=(p2.shape[-2] // 2, p2.shape[-1] // 2), mode="bilinear", align_corners=False),
                  p3, p4, p5, F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False)]
        cates, kernels = [], []
        for x, grid in zip(levels, self.num_grids):
            x = torch.cat([x, coord_features(x)], dim=1)
            x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
            cate_feat = x[:, :-2]
            kernel_feat = x
            for conv in self.kernel_convs:
                kernel_feat = conv(kernel_feat)
            for conv in self.cate_convs:
                cate_feat = conv(cate_feat)
            kernels.append(self.solo_kernel(kernel_feat))
            cates.append(self.solo_cate(cate_feat))
        return cates, kernels


def _flatten_cells(per_level: list[torch.Tensor]) -> torch.Tensor:
    """``[B, K, S_i, S_i]`` per level -> ``[B, sum S_i^2, K]``, cells row-major within a level,
    levels in order (upstream ``get_seg``: ``permute(0, 2, 3, 1).view(-1, K)`` then ``cat``)."""
    return torch.cat([t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1]) for t in per_level], dim=1)


class Solov2(nn.Module):
    """SOLOv2 network.

    ``forward(x: float32[B, 3, H, W])`` (preprocessed, see :func:`rtseg.families.solov2.preprocess.preprocess`;
    ``H, W`` multiples of 32) returns a dict, with ``G = cfg.num_cells`` grid cells (levels in
    order, each row-major), ``C`` classes and ``E = cfg.mask_channels``:

    - eval mode: ``cate``: ``float32[B, G, C]`` category scores after sigmoid. Upstream's
      "point NMS" (keep a score only where it is the max of its 2x2 window) follows in
      post-processing (:func:`rtseg.families.solov2.postprocess.point_nms_cells`), not in the graph:
      an equality test between neighbouring scores flips on the last-bit differences between
      backends (ONNX Runtime, TensorRT FP16), so it must run on one set of numbers.
    - training mode: ``cate_logits``: ``float32[B, G, C]`` raw logits (what the loss reads)
    - ``kernel``: ``float32[B, G, E]`` dynamic 1x1 mask kernels, one per cell
    - ``mask_feat``: ``float32[B, E, H/4, W/4]`` unified mask features
    """

    def __init__(self, cfg: Solov2Config) -> None:
        super().__init__()
        self.cfg = cfg
        stage_with_dcn = (False, True, True, True) if cfg.backbone_dcn else (False, False, False, False)
        self.backbone = MMDetResNet(cfg.backbone_depth, dcn=cfg.backbone_dcn, stage_with_dcn=stage_with_dcn,
                                    style=cfg.backbone_style, width=cfg.backbone_width)
        self.neck = FPN(self.backbone.channels, cfg.fpn_channels)
        self.mask_feat_head = MaskFeatHead(cfg.fpn_channels, cfg.mask_feat_channels, cfg.mask_channels,
                                           cfg.gn_groups, cfg.mask_feat_dcn)
        self.bbox_head = Solov2Head(cfg)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.neck(self.backbone(x))
        mask_feat = self.mask_feat_head(feats[:4])
        cates, kernels = self.bbox_head(feats)
        out = {"kernel": _flatten_cells(kernels), "mask_feat": mask_feat}
        if self.training:
            out["cate_logits"] = _flatten_cells(cates)
        else:
            out["cate"] = _flatten_cells([torch.sigmoid(c) for c in cates])
        return out

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert a checkpoint of WXinlong/SOLO (identity), mmdetection 2.x/3.x or AdelaiDet
        to this module's key layout (see :mod:`rtseg.families.solov2.checkpoints`); loading is
        the caller's."""
        from rtseg.families.solov2.checkpoints import convert_state_dict

        return convert_state_dict(state_dict, self.cfg)
