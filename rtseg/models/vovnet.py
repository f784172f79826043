"""VoVNetV2 backbones (Lee & Park, CenterMask, CVPR 2020) with centermask2's parameter names.

Faithful to youngwanLEE/centermask2 ``centermask/modeling/backbone/vovnet.py``: the stage
specs (``_STAGE_SPECS``), the one-shot-aggregation (OSA) module with effective squeeze-excitation
(eSE) and identity mapping, and the key layout of the released checkpoints, which puts ``/`` in
module names (``add_module`` accepts any name without a ``.``)::

    stem.stem_1/conv.weight            stem.stem_1/norm.{weight,bias,running_mean,running_var}
    stage2.OSA2_1.layers.0.OSA2_1_0/conv.weight      (dw: .../dw_conv3x3, .../pw_conv1x1, .../pw_norm)
    stage3.OSA3_1.concat.OSA3_1_concat/conv.weight
    stage3.OSA3_1.ese.fc.{weight,bias}
    stage2.OSA2_1.conv_reduction.OSA2_1_reduction_0/conv.weight   (dw variants, when in != stage ch)

Per OSA module (``_OSA_module.forward``): the input and the output of every 3x3 layer are
concatenated, a 1x1 conv + norm + ReLU aggregates them to the stage's output width, eSE
rescales channels (``x * hsigmoid(fc(avgpool(x)))``, ``hsigmoid = relu6(x + 3) / 6``), and
every module but the first of a stage adds its input (identity). Stages 3-5 start with a
3x3 / stride-2 max pool with ``ceil_mode=True``; the stem has strides 2, 1, 2.

Norm layers are ``FrozenBN`` in every official config (``MODEL.VOVNET.NORM`` default,
``centermask/config/defaults.py``): buffers ``weight, bias, running_mean, running_var``,
no ``num_batches_tracked``. rtseg's own small models train from scratch and use
``BatchNorm2d`` instead (same keys plus ``num_batches_tracked``).

Deformable-conv stages (the ``*_dcn_*`` configs) are not built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import ConfigError


@dataclass(frozen=True)
class VoVNetSpec:
    """One VoVNet architecture (a row of centermask2's ``_STAGE_SPECS``).

    ``stem``: output channels of the three stem convs; ``stage_conv_ch``: width of the 3x3
    layers of stages 2-5; ``stage_out_ch``: output width of stages 2-5 (the 1x1 aggregation);
    ``layer_per_block``: 3x3 layers per OSA module; ``block_per_stage``: OSA modules per
    stage; ``depthwise``: 3x3 layers (and stem convs 2, 3) are depthwise-separable.
    """

    stem: tuple[int, int, int]
    stage_conv_ch: tuple[int, int, int, int]
    stage_out_ch: tuple[int, int, int, int]
    layer_per_block: int
    block_per_stage: tuple[int, int, int, int]
    depthwise: bool = False

    def __post_init__(self) -> None:
        if self.depthwise and not (self.stem[0] == self.stem[1] == self.stem[2]):
            raise ConfigError(f"a depthwise VoVNet needs equal stem widths (depthwise 3x3 keeps channels), got {self.stem}")
        if self.layer_per_block < 1 or min(self.block_per_stage) < 1:
            raise ConfigError(f"VoVNet needs >= 1 layer per block and block per stage, got {self.layer_per_block}, "
                              f"{self.block_per_stage}")


# centermask2 centermask/modeling/backbone/vovnet.py, _STAGE_SPECS (all with eSE)
VOVNET_SPECS: dict[str, VoVNetSpec] = {
    "V-19-slim-dw-eSE": VoVNetSpec((64, 64, 64), (64, 80, 96, 112), (112, 256, 384, 512), 3, (1, 1, 1, 1), True),
    "V-19-dw-eSE": VoVNetSpec((64, 64, 64), (128, 160, 192, 224), (256, 512, 768, 1024), 3, (1, 1, 1, 1), True),
    "V-19-slim-eSE": VoVNetSpec((64, 64, 128), (64, 80, 96, 112), (112, 256, 384, 512), 3, (1, 1, 1, 1)),
    "V-19-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 3, (1, 1, 1, 1)),
    "V-39-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 1, 2, 2)),
    "V-57-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 1, 4, 3)),
    "V-99-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 3, 9, 3)),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all buffers (detectron2
    ``layers/batch_norm.py``): ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    State: ``weight, bias, running_mean, running_var`` (float32 ``[C]``), as the checkpoints hold.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(norm: str, channels: int) -> nn.Module:
    """``"FrozenBN"`` (official checkpoints) or ``"BN"`` (training from scratch)."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    raise ConfigError(f"VoVNet norm must be 'FrozenBN' or 'BN', got {norm!r}")


def _conv(in_ch: int, out_ch: int, name: str, postfix: str, norm: str, stride: int = 1, kernel: int = 3) -> list:
    """``conv3x3`` / ``conv1x1`` of upstream: conv (no bias) -> norm -> ReLU, named ``{name}_{postfix}/...``."""
    return [
        (f"{name}_{postfix}/conv", nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)),
        (f"{name}_{postfix}/norm", make_norm(norm, out_ch)),
        (f"{name}_{postfix}/relu", nn.ReLU(inplace=True)),
    ]


def _dw_conv(in_ch: int, out_ch: int, name: str, postfix: str, norm: str, stride: int = 1) -> list:
    """``dw_conv3x3`` of upstream: depthwise 3x3 -> pointwise 1x1 -> norm -> ReLU (no norm between)."""
    return [
        (f"{name}_{postfix}/dw_conv3x3", nn.Conv2d(in_ch, out_ch, 3, stride, 1, groups=out_ch, bias=False)),
        (f"{name}_{postfix}/pw_conv1x1", nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False)),
        (f"{name}_{postfix}/pw_norm", make_norm(norm, out_ch)),
        (f"{name}_{postfix}/pw_relu", nn.ReLU(inplace=True)),
    ]


def _sequential(named: list) -> nn.Sequential:
    seq = nn.Sequential()
    for name, module in named:
        seq.add_module(name, module)
    return seq


class ESEModule(nn.Module):
    """Effective squeeze-excitation: ``x * relu6(fc(avgpool(x)) + 3) / 6`` (``eSEModule``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3), keepdim=True))
        return x * (F.relu6(w + 3.0) / 6.0)


class OSAModule(nn.Module):
    """One-shot aggregation module (``_OSA_module``): ``float32[B, in, H, W] -> [B, concat, H, W]``."""

    def __init__(self, in_ch: int, stage_ch: int, concat_ch: int, layer_per_block: int, name: str, norm: str,
                 identity: bool = False, depthwise: bool = False) -> None:
        super().__init__()
        self.identity = identity
        self.layers = nn.ModuleList()  # registered first: its keys precede conv_reduction's, as upstream
        self.reduce = depthwise and in_ch != stage_ch
        if self.reduce:
            self.conv_reduction = _sequential(_conv(in_ch, stage_ch, f"{name}_reduction", "0", norm, kernel=1))
        c = in_ch
        for i in range(layer_per_block):
            if depthwise:
                self.layers.append(_sequential(_dw_conv(stage_ch, stage_ch, name, str(i), norm)))
            else:
                self.layers.append(_sequential(_conv(c, stage_ch, name, str(i), norm)))
            c = stage_ch
        self.concat = _sequential(_conv(in_ch + layer_per_block * stage_ch, concat_ch, name, "concat", norm, kernel=1))
        self.ese = ESEModule(concat_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        y = self.conv_reduction(x) if self.reduce else x
        for layer in self.layers:
            y = layer(y)
            outputs.append(y)
        out = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return out + x if self.identity else out


class OSAStage(nn.Sequential):
    """``_OSA_stage``: (max pool for stages 3-5) then ``OSA{n}_1 .. OSA{n}_k``."""

    def __init__(self, in_ch: int, stage_ch: int, concat_ch: int, blocks: int, layer_per_block: int, stage_num: int,
                 norm: str, depthwise: bool) -> None:
        super().__init__()
        if stage_num != 2:
            self.add_module("Pooling", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
        for i in range(blocks):
            name = f"OSA{stage_num}_{i + 1}"
            self.add_module(name, OSAModule(in_ch if i == 0 else concat_ch, stage_ch, concat_ch, layer_per_block,
                                            name, norm, identity=i > 0, depthwise=depthwise))


class VoVNet(nn.Module):
    """VoVNetV2 body: ``forward(x float32[B, 3, H, W]) -> [stage3, stage4, stage5]`` at strides
    8, 16, 32 with ``spec.stage_out_ch[1:]`` channels (centermask2's ``OUT_FEATURES``)."""

    def __init__(self, spec: VoVNetSpec, norm: str = "FrozenBN") -> None:
        super().__init__()
        make = _dw_conv if spec.depthwise else _conv
        stem = _conv(3, spec.stem[0], "stem", "1", norm, stride=2)
        stem += make(spec.stem[0], spec.stem[1], "stem", "2", norm, stride=1)
        stem += make(spec.stem[1], spec.stem[2], "stem", "3", norm, stride=2)
        self.stem = _sequential(stem)
        in_chs = (spec.stem[2], *spec.stage_out_ch[:-1])
        for i in range(4):
            self.add_module(f"stage{i + 2}", OSAStage(in_chs[i], spec.stage_conv_ch[i], spec.stage_out_ch[i],
                                                      spec.block_per_stage[i], spec.layer_per_block, i + 2, norm,
                                                      spec.depthwise))
        self.out_channels = tuple(spec.stage_out_ch[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage2(self.stem(x))
        c3 = self.stage3(x)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return [c3, c4, c5]
