"""ResNet with the parameter names of mmdetection checkpoints (torchvision layout + mmdet DCN).

Key layout (WXinlong/SOLO ``mmdet/models/backbones/resnet.py``, the same in mmdetection 2.x /
3.x): stem ``conv1`` / ``bn1``, then ``layer1`` .. ``layer4``, each a ``Sequential`` of blocks
``{conv1, bn1, conv2, bn2[, conv3, bn3], downsample.{0,1}}`` — torchvision's names, so
torchvision's ImageNet weights load by dropping ``fc.*``.

Deformable convolutions replace ``conv2`` of every block of the stages named in
``stage_with_dcn`` (upstream ``stage_with_dcn=(False, True, True, True)``); their layout is
mmdet's ``*Pack`` modules (``mmdet/ops/dcn/deform_conv.py``): ``weight``, optional ``bias``
and ``conv_offset.{weight, bias}``, ``conv_offset`` predicting ``2 k k`` (DCN, Dai et al. 2017)
or ``3 k k`` (DCNv2, Zhu et al. 2019: offsets then modulation logits) channels. Offset channel
``2 t`` is the y and ``2 t + 1`` the x displacement of kernel tap ``t = i * k + j``
(``deform_conv_cuda_kernel.cu``: ``data_offset_h_ptr`` / ``data_offset_w_ptr``), which is
what ``torchvision.ops.deform_conv2d`` reads; the op exports to ONNX ``DeformConv``.

``style="caffe"`` puts a bottleneck's stride on its first 1x1 conv (mmdet ``style='caffe'``,
detectron2 ``RESNETS.STRIDE_IN_1X1=True``, the MSRA weights AdelaiDet starts from);
``"pytorch"`` on the 3x3 conv (torchvision, every mmdet SOLOv2 config). Same parameter shapes,
different outputs: the style must match the weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from rtseg.models import resnet

#: the deformable convolution types of mmdet's ``build_conv_layer`` registry
DCN_TYPES = ("DCN", "DCNv2")


class DeformConvPack(nn.Module):
    """DCN (v1) with mmdet's ``DeformConvPack`` parameters: ``weight [out, in, k, k]`` (no bias)
    and ``conv_offset`` (``k x k`` conv, ``2 k k`` offset channels, zero-initialised)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = False) -> None:
        super().__init__()
        if bias:
            raise ValueError("mmdet's DeformConv has no bias (it asserts `not bias`), got bias=True")
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.conv_offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        nn.init.zeros_(self.conv_offset.weight)  # starts as a plain convolution, as upstream
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.conv_offset(x), self.weight, None, stride=self.stride, padding=self.padding,
                             dilation=self.dilation)


class ModulatedDeformConvPack(nn.Module):
    """DCNv2 with mmdet's ``ModulatedDeformConvPack`` parameters: ``weight``, ``bias`` (only
    when ``bias=True``; every SOLOv2 use passes ``False``) and ``conv_offset`` (``3 k k``
    channels: ``o1, o2, mask = chunk(3)``, offsets ``cat(o1, o2)``, mask ``sigmoid``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(in_channels, 3 * kernel_size * kernel_size, kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset(x)
        n = out.shape[1] // 3
        return deform_conv2d(x, out[:, : 2 * n], self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=torch.sigmoid(out[:, 2 * n:]))


def make_conv(conv_type: str | None, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
              padding: int = 0, bias: bool = True) -> nn.Module:
    """mmdet's ``build_conv_layer``: ``None`` / ``"Conv"`` -> ``nn.Conv2d``, ``"DCN"`` ->
    :class:`DeformConvPack`, ``"DCNv2"`` -> :class:`ModulatedDeformConvPack`."""
    if conv_type in (None, "Conv"):
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
    if conv_type == "DCN":
        return DeformConvPack(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
    if conv_type == "DCNv2":
        return ModulatedDeformConvPack(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                       bias=bias)
    raise ValueError(f"conv type must be None, 'Conv', 'DCN' or 'DCNv2', got {conv_type!r}")


class BasicBlock(resnet.BasicBlock):
    """ResNet-18/34 block (mmdet ``BasicBlock``): rtseg's basic block, whose layers, key names
    and forward pass are the same, with mmdet's constructor arguments (no DCN upstream;
    ``style`` only moves the stride inside bottlenecks)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dcn: str | None = None, style: str = "pytorch") -> None:
        if dcn is not None:
            raise ValueError(f"DCN is only defined for Bottleneck ResNets (50/101) upstream, got {dcn!r} on a BasicBlock")
        super().__init__(inplanes, planes, stride, downsample)


class Bottleneck(nn.Module):
    """ResNet-50/101 bottleneck (mmdet ``Bottleneck``), ``conv2`` optionally deformable."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dcn: str | None = None, style: str = "pytorch") -> None:
        super().__init__()
        stride1, stride2 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = make_conv(dcn, planes, planes, 3, stride=stride2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


#: depth -> (block type, blocks per stage); mmdet ``ResNet.arch_settings`` (He et al. 2016 Table 1)
ARCH_SETTINGS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class MMDetResNet(nn.Module):
    """ResNet returning the four stage outputs C2..C5 (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        dcn: ``None``, ``"DCN"`` or ``"DCNv2"``: the deformable type of ``conv2`` in the stages
            flagged by ``stage_with_dcn``.
        stage_with_dcn: per stage, whether its blocks use ``dcn`` (all blocks of the stage, as
            mmdet's ``make_res_layer`` does).
        style: ``"pytorch"`` or ``"caffe"`` (see the module docstring).
        width: channel multiplier (1 = the standard ResNet, every official variant;
            0.5 halves every stage: rtseg's slim CPU variants).

    ``forward(x: float32[B, 3, H, W]) -> tuple`` of 4 tensors ``[B, C_i, ceil(H/s), ceil(W/s)]``.
    """

    def __init__(self, depth: int, *, dcn: str | None = None,
                 stage_with_dcn: tuple[bool, bool, bool, bool] = (False, False, False, False),
                 style: str = "pytorch", width: float = 1.0) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCH_SETTINGS)}, got {depth}")
        if dcn is not None and dcn not in DCN_TYPES:
            raise ValueError(f"dcn must be None or one of {DCN_TYPES}, got {dcn!r}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"ResNet style must be 'pytorch' or 'caffe', got {style!r}")
        if len(stage_with_dcn) != 4:
            raise ValueError(f"stage_with_dcn needs one flag per stage (4), got {len(stage_with_dcn)}")
        if not 0 < width <= 1 or int(64 * width) != 64 * width:
            raise ValueError(f"ResNet width must be in (0, 1] and give whole channel counts, got {width}")
        block, blocks = ARCH_SETTINGS[depth]
        base = int(64 * width)
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.channels: list[int] = []
        inplanes = base
        for i, (n, with_dcn) in enumerate(zip(blocks, stage_with_dcn)):
            planes = base * 2 ** i
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes * block.expansion))
            stage_dcn = dcn if with_dcn else None
            layers = [block(inplanes, planes, stride, downsample, dcn=stage_dcn, style=style)]
            inplanes = planes * block.expansion
            layers += [block(inplanes, planes, dcn=stage_dcn, style=style) for _ in range(1, n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.channels.append(inplanes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5
