"""YOLACT (Bolya et al., ICCV 2019) and YOLACT++ (TPAMI 2020) as a PyTorch module.

Faithful to dbolya/yolact (``yolact.py``, ``backbone.py``, ``data/config.py``): module
names and parameter shapes equal the official checkpoints' key by key (tested against
``tests/fixtures/official/yolact_keys``), and the forward pass computes what the official
eval-mode forward computes up to (not including) ``Detect``:

- backbone ResNet -> C3, C4, C5 (``selected_layers = [1, 2, 3]``)
- FPN (``fpn.lat_layers`` 1x1, top-down bilinear upsampling, ``fpn.pred_layers`` 3x3 + ReLU,
  ``fpn.downsample_layers`` two stride-2 3x3 convs for P6, P7, no ReLU on those)
- protonet on P3: 3 x (conv3x3-256, ReLU), bilinear x2, ReLU, conv3x3-256, ReLU,
  conv1x1-k (k = 32), ReLU as prototype activation (``proto_net.{0,2,4,8,10}``)
- one prediction head shared by all five levels (``prediction_layers.0``):
  ``upfeature`` (conv3x3-256 + ReLU), then ``bbox_layer``, ``conf_layer``, ``mask_layer`` (3x3)
- YOLACT++: DCN in the backbone, 3 scales x 3 aspect ratios of anchors, and
  ``maskiou_net`` (fast mask re-scoring: 5 stride-2 3x3 convs + 1x1 to 80 classes, ReLU
  after each, global max pool)
- ``semantic_seg_conv`` (1x1 on P3 to 80 classes) exists for training only, as upstream.

The module returns named raw head outputs; decoding, NMS and mask assembly are pure
functions in :mod:`rtseg.families.yolact.postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from itertools import product
from math import sqrt

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.models.resnet import ResNetBackbone

#: BGR mean / std of the ImageNet-pretrained ResNets (dbolya/yolact ``data/config.py``)
YOLACT_MEANS_BGR = (103.94, 116.78, 123.68)
YOLACT_STD_BGR = (57.38, 57.12, 58.40)


@dataclass(frozen=True)
class YolactConfig:
    """Everything that defines one YOLACT variant.

    Defaults are ``yolact_base_config`` / ``coco_base_config`` of dbolya/yolact.
    """

    family: ClassVar[str] = "yolact"

    name: str
    class_names: tuple[str, ...]  #: foreground classes; the network adds background at index 0
    backbone_depth: int = 101
    backbone_width: float = 1.0  #: ResNet channel multiplier (1 for every official variant)
    max_size: int = 550  #: square input side (``preserve_aspect_ratio: False``)
    dcn_layers: tuple[int, int, int, int] = (0, 0, 0, 0)
    dcn_interval: int = 1
    fpn_features: int = 256
    proto_channels: int = 256
    mask_dim: int = 32  #: number of prototypes k
    #: anchor sizes in pixels at ``max_size`` per FPN level (P3..P7); one inner list per level
    pred_scales: tuple[tuple[float, ...], ...] = ((24,), (48,), (96,), (192,), (384,))
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    use_square_anchors: bool = True  #: upstream's backward-compatible bug: YOLACT anchors are square
    use_maskiou: bool = False  #: YOLACT++ fast mask re-scoring branch
    # post-processing defaults (coco_base_config / yolact_plus_base_config)
    nms_top_k: int = 200
    nms_conf_thresh: float = 0.05
    nms_thresh: float = 0.5
    max_num_detections: int = 100
    rescore_mask: bool = False
    #: BGR mean/std normalisation then BGR->RGB (resnet_transform); False: /255 RGB
    normalize: bool = True
    weights_source: str = ""  #: where official weights come from (shown by ``rtseg models``)

    @property
    def num_classes(self) -> int:
        """Classes including background (81 for COCO)."""
        return len(self.class_names) + 1

    @property
    def num_anchors(self) -> int:
        return len(self.pred_scales[0]) * len(self.aspect_ratios)

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.max_size, self.max_size)


def _level_sizes(max_size: int) -> list[tuple[int, int]]:
    """Conv output sizes of P3..P7 for a square input, as the ResNet/FPN arithmetic gives them."""
    def down(s: int, k: int, st: int, p: int) -> int:
        return (s + 2 * p - k) // st + 1

    s = down(max_size, 7, 2, 3)  # conv1
    s = down(s, 3, 2, 1)  # maxpool -> C2
    sizes = []
    for _ in range(3):  # C3, C4, C5 (3x3 stride-2 / 1x1 stride-2 both give ceil(s/2))
        s = down(s, 3, 2, 1)
        sizes.append(s)
    for _ in range(2):  # P6, P7: 3x3 stride 2 pad 1
        s = down(s, 3, 2, 1)
        sizes.append(s)
    return [(v, v) for v in sizes]


def make_priors(cfg: YolactConfig) -> torch.Tensor:
    """Anchor boxes ``float32[P, 4]`` as ``(cx, cy, w, h)`` relative to the input size.

    Same order as the head outputs and as ``PredictionModule.make_priors`` upstream: for each
    level, row-major over the grid, then scales, then aspect ratios, with
    ``use_pixel_scales=True`` and ``preapply_sqrt=False`` (so ``w = scale * sqrt(ar) / max_size``).
    """
    rows = []
    for (conv_h, conv_w), scales in zip(_level_sizes(cfg.max_size), cfg.pred_scales):
        for j, i in product(range(conv_h), range(conv_w)):
            x = (i + 0.5) / conv_w
            y = (j + 0.5) / conv_h
            for scale in scales:
                for ar in cfg.aspect_ratios:
                    ar = sqrt(ar)
                    w = scale * ar / cfg.max_size
                    h = scale / ar / cfg.max_size
                    if cfg.use_square_anchors:
                        h = w
                    rows.append((x, y, w, h))
    return torch.tensor(rows, dtype=torch.float32)


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017) as in dbolya/yolact ``FPN`` with
    ``use_conv_downsample=True, num_downsample=2, relu_pred_layers=True``.

    ``lat_layers`` / ``pred_layers`` are stored from the coarsest level to the finest
    (upstream's backward-compatible order); inputs and outputs go finest first.
    """

    def __init__(self, in_channels: list[int], features: int, num_downsample: int = 2) -> None:
        super().__init__()
        self.lat_layers = nn.ModuleList([nn.Conv2d(c, features, 1) for c in reversed(in_channels)])
        self.pred_layers = nn.ModuleList([nn.Conv2d(features, features, 3, padding=1) for _ in in_channels])
        self.downsample_layers = nn.ModuleList(
            [nn.Conv2d(features, features, 3, padding=1, stride=2) for _ in range(num_downsample)]
        )

    def forward(self, convouts: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(convouts)
        out: list[torch.Tensor] = [convouts[0]] * n
        x: torch.Tensor | None = None
        for i, lat in enumerate(self.lat_layers):
            j = n - 1 - i
            lateral = lat(convouts[j])
            if x is not None:
                x = F.interpolate(x, size=convouts[j].shape[-2:], mode="bilinear", align_corners=False)
                x = x + lateral
            else:
                x = lateral
            out[j] = x
        for i, pred in enumerate(self.pred_layers):
            j = n - 1 - i
            out[j] = F.relu(pred(out[j]))
        for down in self.downsample_layers:
            out.append(down(out[-1]))
        return out


class ProtoNet(nn.Sequential):
    """Prototype branch; indices match ``proto_net.{0,2,4,8,10}`` of the official checkpoints
    (``make_net`` puts a ReLU after every layer, the upsampling included, except the last)."""

    def __init__(self, in_channels: int, channels: int, mask_dim: int) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
            c = channels
        layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(channels, mask_dim, 1)]
        super().__init__(*layers)


class PredictionHead(nn.Module):
    """The head shared across FPN levels (``share_prediction_module=True``)."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, mask_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.mask_dim = mask_dim
        self.upfeature = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, num_anchors * mask_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        x = self.upfeature(x)
        loc = self.bbox_layer(x).permute(0, 2, 3, 1).reshape(b, -1, 4)
        conf = self.conf_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
        coef = torch.tanh(self.mask_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.mask_dim))
        return loc, conf, coef


class FastMaskIoUNet(nn.Module):
    """YOLACT++ mask re-scoring: predicts the mask IoU per class from a cropped soft mask.

    ``forward(masks: float32[N, 1, h, w]) -> float32[N, C-1]`` (``maskiou_net.{0,2,...,10}``).
    """

    def __init__(self, num_fg_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for out_c in (8, 16, 32, 64, 128):
            layers += [nn.Conv2d(c, out_c, 3, stride=2), nn.ReLU(inplace=True)]
            c = out_c
        layers += [nn.Conv2d(c, num_fg_classes, 1), nn.ReLU(inplace=True)]
        self.maskiou_net = nn.Sequential(*layers)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        x = self.maskiou_net(masks)
        return torch.amax(x, dim=(2, 3))


class Yolact(nn.Module):
    """YOLACT / YOLACT++ network.

    ``forward(x: float32[B, 3, S, S])`` (preprocessed, see :func:`rtseg.families.yolact.preprocess.preprocess`)
    returns a dict:

    - ``loc``: ``float32[B, P, 4]`` box regressions relative to :func:`make_priors` anchors
    - ``conf``: ``float32[B, P, C]`` class probabilities (softmax, background at 0); in
      training mode the logits
    - ``coef``: ``float32[B, P, k]`` mask coefficients (tanh)
    - ``proto``: ``float32[B, S/4, S/4, k]`` prototypes (ReLU), channels last as upstream
    - ``segm`` (training only): ``float32[B, C-1, S/8, S/8]`` semantic segmentation logits
    """

    def __init__(self, cfg: YolactConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetBackbone(cfg.backbone_depth, cfg.dcn_layers, cfg.dcn_interval, cfg.backbone_width)
        c3_c5 = self.backbone.channels[1:]
        self.proto_net = ProtoNet(cfg.fpn_features, cfg.proto_channels, cfg.mask_dim)
        if cfg.use_maskiou:
            self.maskiou_net = FastMaskIoUNet(cfg.num_classes - 1)
        self.fpn = FPN(list(c3_c5), cfg.fpn_features)
        self.prediction_layers = nn.ModuleList(
            [PredictionHead(cfg.fpn_features, cfg.num_anchors, cfg.num_classes, cfg.mask_dim)]
        )
        self.semantic_seg_conv = nn.Conv2d(cfg.fpn_features, cfg.num_classes - 1, 1)
        self.register_buffer("priors", make_priors(cfg), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c2, c3, c4, c5 = self.backbone(x)
        feats = self.fpn([c3, c4, c5])
        proto = F.relu(self.proto_net(feats[0])).permute(0, 2, 3, 1).contiguous()
        head = self.prediction_layers[0]
        locs, confs, coefs = zip(*(head(f) for f in feats))
        out = {"loc": torch.cat(locs, 1), "conf": torch.cat(confs, 1), "coef": torch.cat(coefs, 1), "proto": proto}
        if self.training:
            out["segm"] = self.semantic_seg_conv(feats[0])
        else:
            out["conf"] = F.softmax(out["conf"], dim=-1)
        return out

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply upstream's ``Yolact.load_weights`` clean-up (drop legacy ``backbone.layerN`` keys and
        unused ``fpn.downsample_layers``) and return the cleaned dict; loading is the caller's."""
        n_down = len(self.fpn.downsample_layers)
        cleaned = {}
        for k, v in state_dict.items():
            if k.startswith("backbone.layer") and not k.startswith("backbone.layers"):
                continue
            if k.startswith("fpn.downsample_layers.") and int(k.split(".")[2]) >= n_down:
                continue
            cleaned[k] = v
        return cleaned
