"""ResNet backbones with the parameter names of the official YOLACT checkpoints.

Key layout (dbolya/yolact ``backbone.py``, ``ResNetBackbone``): stem ``conv1`` / ``bn1``, then
``layers.{0..3}.{block}.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}``.
YOLACT++ replaces ``conv2`` of chosen blocks with a modulated deformable convolution
(:class:`ModulatedDeformConv2d`, DCNv2 key layout: ``weight``, ``bias``,
``conv_offset_mask.{weight,bias}``). Which blocks: in stage ``s`` with ``n`` blocks and
``d`` DCN blocks, the first block uses DCN when ``d >= n``, block ``i >= 1`` when
``i + d >= n`` and ``i % interval == 0`` (``ResNetBackbone._make_layer``).

ResNet-18/34 (:class:`BasicBlock`) are rtseg's own small variants for CPU real-time use;
they follow the same naming (``conv1, bn1, conv2, bn2, downsample``) so torchvision's
ImageNet weights map onto them by renaming ``layerN`` -> ``layers.N-1``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import deform_conv2d


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 (Zhu et al. 2019) with the parameter layout of the ``DCN`` class in
    dbolya/yolact ``external/DCNv2/dcn_v2.py``.

    ``conv_offset_mask`` predicts ``3 * k * k`` channels per deformable group; the first two
    thirds are the (dy, dx) offsets in the layout ``torchvision.ops.deform_conv2d`` expects,
    the last third passes through a sigmoid to become the modulation mask. The official CUDA
    kernel and torchvision's share this layout; the op exports to ONNX ``DeformConv``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, deformable_groups: int = 1) -> None:
        super().__init__()
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.dilation = (dilation, dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset_mask = nn.Conv2d(in_channels, deformable_groups * 3 * kernel_size * kernel_size,
                                          kernel_size, stride=stride, padding=padding, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=1)
        # zero offsets and mask logits: starts as a plain convolution with mask 0.5 (as upstream)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset_mask(x)
        n = out.shape[1] // 3
        offset = out[:, : 2 * n]
        mask = torch.sigmoid(out[:, 2 * n:])
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)


class Bottleneck(nn.Module):
    """ResNet v1 bottleneck (stride on the 3x3 conv), optionally with a DCN 3x3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 use_dcn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if use_dcn:
            self.conv2: nn.Module = ModulatedDeformConv2d(planes, planes, 3, stride=stride, padding=1)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
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


class BasicBlock(nn.Module):
    """ResNet-18/34 basic block (two 3x3 convs)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 use_dcn: bool = False) -> None:
        super().__init__()
        if use_dcn:
            raise ValueError("DCN is only defined for Bottleneck ResNets (50/101), got a BasicBlock ResNet")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


#: depth -> (block type, blocks per stage); torchvision / He et al. 2016 Table 1
RESNET_LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetBackbone(nn.Module):
    """ResNet returning the outputs of the four stages (C2, C3, C4, C5).

    Args:
        depth: 18, 34, 50 or 101.
        dcn_layers: per stage, how many trailing blocks may use DCN (YOLACT++:
            ``(0, 4, 6, 3)`` for R-50, ``(0, 4, 23, 3)`` with ``dcn_interval=3`` for R-101).
        dcn_interval: every ``dcn_interval``-th block of a DCN stage uses DCN.
        width: channel multiplier (1 = the standard ResNet; 0.5 halves every stage).

    ``forward(x: float32[B, 3, H, W]) -> tuple`` of 4 tensors with strides 4, 8, 16, 32.
    """

    def __init__(self, depth: int, dcn_layers: tuple[int, int, int, int] = (0, 0, 0, 0), dcn_interval: int = 1,
                 width: float = 1.0) -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
        if not 0 < width <= 1 or int(64 * width) != 64 * width:
            raise ValueError(f"ResNet width must be in (0, 1] and give whole channel counts, got {width}")
        block, blocks = RESNET_LAYOUTS[depth]
        base = int(64 * width)  # width < 1: rtseg's slim variants (channels of every stage scaled)
        self.layers = nn.ModuleList()  # registered first, as upstream: checkpoint key order follows
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.channels: list[int] = []
        inplanes = base
        for stage, (planes, n, n_dcn) in enumerate(zip((base, 2 * base, 4 * base, 8 * base), blocks, dcn_layers)):
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            stage_blocks = [block(inplanes, planes, stride, downsample, use_dcn=n_dcn >= n)]
            inplanes = planes * block.expansion
            for i in range(1, n):
                use_dcn = (i + n_dcn) >= n and i % dcn_interval == 0
                stage_blocks.append(block(inplanes, planes, use_dcn=use_dcn))
            self.layers.append(nn.Sequential(*stage_blocks))
            self.channels.append(inplanes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return tuple(outs)
