"""CenterMask / CenterMask-Lite (Lee & Park, CVPR 2020) as a PyTorch module.

Faithful to youngwanLEE/centermask2 (detectron2): module names and parameter shapes equal the
released checkpoints' key by key (tested against ``tests/fixtures/official/centermask_keys``,
which were read off the official code, see ``tests/fixtures/official/CENTERMASK.md``):

- ``backbone.bottom_up``: VoVNetV2 with eSE (:mod:`rtseg.models.vovnet`) -> C3, C4, C5
- ``backbone.fpn_lateral{3,4,5}`` (1x1) / ``backbone.fpn_output{3,4,5}`` (3x3), top-down by
  nearest x2 upsampling and sum (detectron2 ``FPN``), ``backbone.top_block.p6`` /
  ``.p7`` (3x3 stride 2 from P5; ReLU between P6 and P7: ``LastLevelP6P7`` with ``in_feature="p5"``)
- ``proposal_generator.fcos_head``: FCOS head shared across P3-P7 (``centermask/modeling/fcos/fcos.py``):
  ``cls_tower`` / ``bbox_tower`` of ``n`` x (3x3 conv, GroupNorm(32), ReLU), ``cls_logits``,
  ``bbox_pred`` (times a learnt per-level ``scales.{l}.scale``, then ReLU), ``ctrness`` (on the
  box tower)
- ``roi_heads.mask_head``: spatial-attention-guided mask head (``sam.py``): ``mask_fcn{k}`` 3x3 +
  ReLU on 14x14 RoI features, ``spatialAtt.conv`` (3x3 over [channel mean, channel max],
  sigmoid gate), ``deconv`` 2x2 stride 2 + ReLU, ``predictor`` 1x1 -> 28x28 per-class mask logits
- ``roi_heads.maskiou_head``: MaskIoU head (``maskiou_head.py``): the RoI features concatenated
  with the 2x2-max-pooled predicted mask, ``maskiou_fcn{k}`` 3x3 + ReLU (the last with stride
  2), ``maskiou_fc1``, ``maskiou_fc2`` (+ ReLU), ``maskiou`` -> per-class mask IoU.

**Two stages, two static graphs.** The mask head runs on the boxes that FCOS decoding, NMS and
top-k choose, a data-dependent set. ``forward(x)`` is the dense, static part only: backbone,
FPN and FCOS head, returning the flattened FCOS outputs plus the P3-P5 features the RoI heads
pool from. Decoding, NMS, RoI level assignment, RoIAlign and the two RoI heads are applied by
:func:`rtseg.families.centermask.postprocess.postprocess` (the ``net`` argument of the family's
``postprocess`` gives it ``net.roi_heads``). Why not a fixed top-k inside ``forward``: it would
put NMS (ONNX ``NonMaxSuppression``, a TensorRT plugin) into the exported graph and run the
mask head on ``POST_NMS_TOPK`` padded boxes even when the frame has three objects, which on a
CPU costs more than the whole dense network of the small model. ``roi_heads`` is itself a
static module (``[N, C, 14, 14]`` in, dynamic ``N`` only), so it exports as a second graph.

Input shape: as upstream, each frame size is resized to a shortest side (800 full / 600 Lite)
capped by a longest side (1333 / 1000) and padded to a multiple of 32
(:func:`rtseg.families.centermask.preprocess.input_geometry`), a different shape per aspect ratio; the
network takes any such shape. ``input_height`` / ``input_width`` (800 x 1344 full, 608 x 1024
Lite) are the fixed canvas of rtseg's ``--canvas`` speed option and of training: there the
resize is additionally capped to fit the canvas (portrait images get a smaller scale than
upstream's), and the eSE pooling and GroupNorm see the extra padding, so outputs differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import CheckpointError, ConfigError
from rtseg.models.vovnet import VOVNET_SPECS, VoVNet, VoVNetSpec

#: detectron2 ``config/defaults.py``: BGR order, std 1 (the VoVNet ImageNet weights absorb it)
DETECTRON2_PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)
DETECTRON2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)
#: ImageNet std in BGR order, quoted in the same file as the one to use for other backbones;
#: rtseg's own from-scratch models use it so that the input is of order 1
IMAGENET_PIXEL_STD_BGR = (57.375, 57.12, 58.395)

#: FCOS strides of P3..P7 (``MODEL.FCOS.FPN_STRIDES``)
FPN_STRIDES = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class CenterMaskConfig:
    """Everything that defines one CenterMask variant.

    Defaults are centermask2's ``configs/centermask/Base-CenterMask-VoVNet.yaml`` over
    ``centermask/config/defaults.py`` over detectron2's ``config/defaults.py``; the Lite
    variants override what ``Base-CenterMask-Lite-VoVNet.yaml`` overrides.
    """

    family: ClassVar[str] = "centermask"

    name: str
    class_names: tuple[str, ...]  #: foreground classes (sigmoid classifiers, no background)
    vovnet: VoVNetSpec = VOVNET_SPECS["V-39-eSE"]  #: ``MODEL.VOVNET.CONV_BODY``
    vovnet_norm: str = "FrozenBN"  #: ``MODEL.VOVNET.NORM``; ``"BN"`` to train from scratch
    fpn_channels: int = 256  #: ``MODEL.FPN.OUT_CHANNELS`` (Lite: 128)
    fcos_num_convs: int = 4  #: ``MODEL.FCOS.NUM_CLS_CONVS`` = ``NUM_BOX_CONVS`` (Lite: 2)
    fcos_group_norm: bool = True  #: ``MODEL.FCOS.NORM = "GN"`` (32 groups)
    mask_num_conv: int = 4  #: ``ROI_MASK_HEAD.NUM_CONV`` (Lite: 2)
    mask_conv_dim: int = 256  #: ``ROI_MASK_HEAD.CONV_DIM`` (Lite: 128)
    pooler_resolution: int = 14  #: ``ROI_MASK_HEAD.POOLER_RESOLUTION``; masks are twice this
    pooler_sampling_ratio: int = 0  #: ``ROI_MASK_HEAD.POOLER_SAMPLING_RATIO`` (0: adaptive)
    use_maskiou: bool = True  #: ``MODEL.MASKIOU_ON``
    maskiou_num_conv: int = 4  #: ``ROI_MASKIOU_HEAD.NUM_CONV`` (Lite: 2)
    maskiou_conv_dim: int = 256  #: ``ROI_MASKIOU_HEAD.CONV_DIM`` (Lite: 128)
    maskiou_fc_dim: int = 1024  #: hard-coded 1024 upstream (``MaskIoUHead``); smaller for rtseg's own
    # -- input (the fixed canvas is rtseg's; see the module docstring) ------------------------
    input_height: int = 800  #: fixed network input height (multiple of 32)
    input_width: int = 1344  #: fixed network input width (multiple of 32)
    min_size_test: int = 800  #: ``INPUT.MIN_SIZE_TEST`` (Lite: 600)
    max_size_test: int = 1333  #: ``INPUT.MAX_SIZE_TEST`` (Lite: 1000)
    keep_ratio: bool = True  #: False: plain resize to the canvas (rtseg's small models)
    pixel_mean: tuple[float, float, float] = DETECTRON2_PIXEL_MEAN_BGR  #: BGR
    pixel_std: tuple[float, float, float] = DETECTRON2_PIXEL_STD_BGR  #: BGR
    # -- post-processing (centermask/config/defaults.py, Base-CenterMask*.yaml) -----------------
    score_thresh: float = 0.05  #: ``FCOS.INFERENCE_TH_TEST``, on sigmoid(cls) (``THRESH_WITH_CTR=False``)
    pre_nms_topk: int = 1000  #: ``FCOS.PRE_NMS_TOPK_TEST``, per level
    nms_thresh: float = 0.6  #: ``FCOS.NMS_TH``, class-aware
    post_nms_topk: int = 50  #: ``FCOS.POST_NMS_TOPK_TEST`` = 50 in every CenterMask config (default 100)
    mask_threshold: float = 0.5  #: detectron2 ``detector_postprocess`` / ``paste_masks_in_image``
    #: clamp the regressed maskiou to [0, 1] in ``mask_scores`` (upstream does not; rtseg's own small
    #: model keeps the clamp its published held-out mask AP was measured with)
    clamp_maskiou: bool = False
    #: training: foreground RoIs per image for the mask losses, drawn at random
    #: (``ROI_HEADS.BATCH_SIZE_PER_IMAGE`` x ``POSITIVE_FRACTION`` = 512 x 0.25)
    train_mask_rois_per_image: int = 128
    weights_source: str = ""  #: where weights come from (shown by ``rtseg models``)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ConfigError(f"model {self.name!r}: class_names must name at least one class, got none")
        for what, value in (("input_height", self.input_height), ("input_width", self.input_width)):
            if value < 32 or value % 32:
                raise ConfigError(f"model {self.name!r}: {what} must be a positive multiple of 32 (FPN "
                                  f"top-down needs exact x2 sizes down to stride 32), got {value}")
        if self.fcos_group_norm and self.fpn_channels % 32:
            raise ConfigError(f"model {self.name!r}: fpn_channels must be a multiple of 32 for GroupNorm(32), "
                              f"got {self.fpn_channels}")
        p7_h, p7_w = _level_sizes(self.input_height, self.input_width)[-1]
        if self.fcos_group_norm and (self.fpn_channels // 32) * p7_h * p7_w < 2:
            raise ConfigError(f"model {self.name!r}: GroupNorm(32) in the FCOS head needs more than one value per "
                              f"group on P7 ({p7_h} x {p7_w} at input {self.input_height} x {self.input_width}, "
                              f"{self.fpn_channels} channels): use a larger input or more FPN channels")
        if self.mask_num_conv < 1 or self.maskiou_num_conv < 1:
            raise ConfigError(f"model {self.name!r}: mask_num_conv and maskiou_num_conv must be >= 1, got "
                              f"{self.mask_num_conv}, {self.maskiou_num_conv}")
        if self.pooler_resolution % 2:
            raise ConfigError(f"model {self.name!r}: pooler_resolution must be even (MaskIoU halves it), "
                              f"got {self.pooler_resolution}")

    @property
    def num_classes(self) -> int:
        """Foreground classes (80 for COCO)."""
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.input_height, self.input_width)

    @property
    def mask_size(self) -> int:
        """Side of the predicted RoI masks (28)."""
        return 2 * self.pooler_resolution


def _level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """``(H, W)`` of P3..P7: every stride-2 step (3x3 pad-1 convs, ceil-mode max pools) gives ``ceil(s / 2)``."""
    sizes = []
    h, w = height, width
    for level in range(1, 8):
        h, w = -(-h // 2), -(-w // 2)
        if level >= 3:
            sizes.append((h, w))
    return sizes


def make_locations(input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """FCOS locations of every output position (``FCOS.compute_locations``).

    Returns ``locations float32[P, 2]`` (x, y) in input pixels, ``stride // 2 + stride * index``
    per level, row-major, P3 first; ``strides float32[P]``; the ``(H, W)`` of each level.
    """
    locs, strides = [], []
    sizes = _level_sizes(*input_size)
    for (h, w), s in zip(sizes, FPN_STRIDES):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) * s, torch.arange(w, dtype=torch.float32) * s,
                                indexing="ij")
        locs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1) + s // 2)
        strides.append(torch.full((h * w,), float(s)))
    return torch.cat(locs), torch.cat(strides), sizes


class FPNBackbone(nn.Module):
    """detectron2 ``FPN`` over VoVNet with FCOS's ``LastLevelP6P7`` on P5; registration order
    (``fpn_*``, ``top_block``, ``bottom_up``) gives upstream's state_dict order.

    ``forward(x float32[B, 3, H, W]) -> [P3, P4, P5, P6, P7]``, each ``float32[B, C, H/s, W/s]``.
    """

    def __init__(self, bottom_up: VoVNet, channels: int) -> None:
        super().__init__()
        for stage, in_ch in zip((3, 4, 5), bottom_up.out_channels):
            self.add_module(f"fpn_lateral{stage}", nn.Conv2d(in_ch, channels, 1))
            self.add_module(f"fpn_output{stage}", nn.Conv2d(channels, channels, 3, padding=1))
        self.top_block = nn.Module()
        self.top_block.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.top_block.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.bottom_up = bottom_up

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3, c4, c5 = self.bottom_up(x)
        prev = self.fpn_lateral5(c5)
        p5 = self.fpn_output5(prev)
        prev = self.fpn_lateral4(c4) + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        p4 = self.fpn_output4(prev)
        prev = self.fpn_lateral3(c3) + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        p3 = self.fpn_output3(prev)
        p6 = self.top_block.p6(p5)
        p7 = self.top_block.p7(F.relu(p6))
        return [p3, p4, p5, p6, p7]


class Scale(nn.Module):
    """A learnt scalar multiplier (``scale float32[1]``), one per FCOS level."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """FCOS head shared by all levels (``FCOSHead``, ``USE_SCALE=True``, ReLU on box distances)."""

    def __init__(self, channels: int, num_classes: int, num_convs: int, group_norm: bool) -> None:
        super().__init__()
        for head in ("cls", "bbox", "share"):  # share_tower: NUM_SHARE_CONVS = 0, no parameters
            tower: list[nn.Module] = []
            for _ in range(num_convs if head != "share" else 0):
                tower.append(nn.Conv2d(channels, channels, 3, padding=1))
                if group_norm:
                    tower.append(nn.GroupNorm(32, channels))
                tower.append(nn.ReLU())
            self.add_module(f"{head}_tower", nn.Sequential(*tower))
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in FPN_STRIDES])

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``feats`` P3..P7 -> ``cls_logits [B, P, K]``, ``bbox_reg [B, P, 4]``, ``ctrness_logits [B, P]``."""
        logits, regs, ctrs = [], [], []
        for level, feat in enumerate(feats):
            feat = self.share_tower(feat)
            cls_t = self.cls_tower(feat)
            box_t = self.bbox_tower(feat)
            logits.append(self.cls_logits(cls_t).flatten(2).transpose(1, 2))
            ctrs.append(self.ctrness(box_t).flatten(1))
            regs.append(F.relu(self.scales[level](self.bbox_pred(box_t))).flatten(2).transpose(1, 2))
        return torch.cat(logits, 1), torch.cat(regs, 1), torch.cat(ctrs, 1)


class FCOS(nn.Module):
    """Holder giving the ``proposal_generator.fcos_head`` key prefix."""

    def __init__(self, channels: int, num_classes: int, num_convs: int, group_norm: bool) -> None:
        super().__init__()
        self.fcos_head = FCOSHead(channels, num_classes, num_convs, group_norm)


class SpatialAttention(nn.Module):
    """SAM (``sam.py``): ``x * sigmoid(conv3x3([mean_c(x), max_c(x)]))``, conv without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class SpatialAttentionMaskHead(nn.Module):
    """``forward(roi_feats float32[N, C, R, R]) -> mask logits float32[N, K, 2R, 2R]`` (class-specific)."""

    def __init__(self, in_channels: int, conv_dim: int, num_conv: int, num_classes: int) -> None:
        super().__init__()
        self.num_conv = num_conv
        for k in range(num_conv):
            self.add_module(f"mask_fcn{k + 1}", nn.Conv2d(in_channels if k == 0 else conv_dim, conv_dim, 3, padding=1))
        self.spatialAtt = SpatialAttention()
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(self.num_conv):
            x = F.relu(getattr(self, f"mask_fcn{k + 1}")(x))
        x = self.spatialAtt(x)
        return self.predictor(F.relu(self.deconv(x)))


class MaskIoUHead(nn.Module):
    """``forward(roi_feats float32[N, C, R, R], mask_probs float32[N, 1, 2R, 2R]) -> float32[N, K]``
    predicted IoU of each class's mask with its object."""

    def __init__(self, in_channels: int, conv_dim: int, num_conv: int, fc_dim: int, resolution: int,
                 num_classes: int) -> None:
        super().__init__()
        self.num_conv = num_conv
        for k in range(num_conv):
            stride = 2 if k + 1 == num_conv else 1
            self.add_module(f"maskiou_fcn{k + 1}",
                            nn.Conv2d(in_channels + 1 if k == 0 else conv_dim, conv_dim, 3, stride, 1))
        self.maskiou_fc1 = nn.Linear(conv_dim * (resolution // 2) ** 2, fc_dim)
        self.maskiou_fc2 = nn.Linear(fc_dim, fc_dim)
        self.maskiou = nn.Linear(fc_dim, num_classes)

    def forward(self, x: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, F.max_pool2d(mask_probs, 2, 2)], dim=1)
        for k in range(self.num_conv):
            x = F.relu(getattr(self, f"maskiou_fcn{k + 1}")(x))
        x = F.relu(self.maskiou_fc1(x.flatten(1)))
        x = F.relu(self.maskiou_fc2(x))
        return self.maskiou(x)


class CenterROIHeads(nn.Module):
    """Holder of the RoI heads (``roi_heads.mask_head``, ``roi_heads.maskiou_head``)."""

    def __init__(self, cfg: CenterMaskConfig) -> None:
        super().__init__()
        self.mask_head = SpatialAttentionMaskHead(cfg.fpn_channels, cfg.mask_conv_dim, cfg.mask_num_conv,
                                                  cfg.num_classes)
        if cfg.use_maskiou:
            # upstream feeds the pooled FPN features, declared with ROI_MASK_HEAD.CONV_DIM channels
            # (equal to FPN.OUT_CHANNELS in every config)
            self.maskiou_head = MaskIoUHead(cfg.fpn_channels, cfg.maskiou_conv_dim, cfg.maskiou_num_conv,
                                            cfg.maskiou_fc_dim, cfg.pooler_resolution, cfg.num_classes)


class CenterMask(nn.Module):
    """CenterMask network, dense part in ``forward`` (see the module docstring).

    ``forward(x float32[B, 3, H, W])`` with ``H, W`` multiples of 32 (preprocessed, see
    :func:`rtseg.families.centermask.preprocess.preprocess`) returns a dict, the same in train and
    eval mode (``P`` = locations over P3..P7, row-major per level, P3 first; ``K`` classes):

    - ``cls_logits``: ``float32[B, P, K]`` class logits (sigmoid classifiers)
    - ``bbox_reg``: ``float32[B, P, 4]`` distances (left, top, right, bottom) from the location
      to the box sides, **in units of the level's stride** (``>= 0``), as the head predicts them
    - ``ctrness_logits``: ``float32[B, P]`` centre-ness logits
    - ``p3``, ``p4``, ``p5``: ``float32[B, C, H/s, W/s]`` FPN features the RoI heads pool from

    Non-persistent buffers: ``locations float32[P, 2]`` (x, y input pixels) and
    ``location_strides float32[P]`` of the training input ``cfg.input_size``; ``level_sizes``
    lists each level's ``(H, W)`` there. :meth:`locations_for` gives them for another input size.
    """

    def __init__(self, cfg: CenterMaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = FPNBackbone(VoVNet(cfg.vovnet, cfg.vovnet_norm), cfg.fpn_channels)
        self.proposal_generator = FCOS(cfg.fpn_channels, cfg.num_classes, cfg.fcos_num_convs, cfg.fcos_group_norm)
        self.roi_heads = CenterROIHeads(cfg)
        locations, strides, sizes = make_locations(cfg.input_size)
        self.register_buffer("locations", locations, persistent=False)
        self.register_buffer("location_strides", strides, persistent=False)
        self.level_sizes: tuple[tuple[int, int], ...] = tuple(sizes)
        self._locations: dict[tuple, tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int], ...]]] = {}

    def locations_for(self, input_size: tuple[int, int], device: torch.device | str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int], ...]]:
        """:func:`make_locations` of an input size (``locations``, ``strides``, ``level_sizes``), on
        ``device`` (default: the buffers'), computed once per size (a stream has one)."""
        device = torch.device(device) if device is not None else self.locations.device
        size = (int(input_size[0]), int(input_size[1]))
        if size == tuple(self.cfg.input_size) and device == self.locations.device:
            return self.locations, self.location_strides, self.level_sizes
        key = (size, str(device))
        if key not in self._locations:
            if len(self._locations) >= 8:  # a few frame sizes at most in practice; stay bounded
                self._locations.clear()
            locs, strides, sizes = make_locations(size)
            self._locations[key] = (locs.to(device), strides.to(device), tuple(sizes))
        return self._locations[key]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2] % 32 or x.shape[-1] % 32 or min(x.shape[-2:]) < 32:
            raise ValueError(f"model {self.cfg.name!r} takes float input (B, 3, H, W) with H and W multiples of 32 "
                             f"(trained at {self.cfg.input_height} x {self.cfg.input_width}), got {tuple(x.shape)}")
        feats = self.backbone(x)
        cls_logits, bbox_reg, ctrness = self.proposal_generator.fcos_head(feats)
        return {"cls_logits": cls_logits, "bbox_reg": bbox_reg, "ctrness_logits": ctrness,
                "p3": feats[0], "p4": feats[1], "p5": feats[2]}

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A centermask2 checkpoint's ``model`` dict -> this module's keys.

        The layouts match key for key; detectron2 versions of 2020 (when the checkpoints were
        released) also saved the ``pixel_mean`` / ``pixel_std`` buffers of ``GeneralizedRCNN``
        (persistent until detectron2 commit 3c0509e6, 2021-02-25). They are dropped after
        checking that they agree with this config's normalisation.
        """
        cleaned = dict(state_dict)
        for key, expected in (("pixel_mean", self.cfg.pixel_mean), ("pixel_std", self.cfg.pixel_std)):
            value = cleaned.pop(key, None)
            if value is None:
                continue
            found = [round(float(v), 3) for v in value.reshape(-1)]
            if len(found) != 3 or any(abs(a - b) > 1e-3 for a, b in zip(found, expected)):
                raise CheckpointError(f"checkpoint {key} is {found}, model {self.cfg.name!r} normalises with "
                                      f"{list(expected)}: it was trained with another input normalisation")
        return cleaned
