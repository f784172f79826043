"""Deformable convolution in standard ONNX operators, so that every TensorRT parses it.

ONNX's ``DeformConv`` (opset 19) runs under ONNX Runtime, but TensorRT parsers without
plugins refuse it (TensorRT-RTX 1.7: ``DeformConv (importFallbackPluginImporter): Plugin not
found``). :func:`deform_conv2d_decomposed` computes ``torchvision.ops.deform_conv2d`` from
ops the exporter writes as standard operators:

1. sampling positions ``p0 + pk + Δpk`` for each output position and kernel tap, from the
   offsets (``(dy, dx)`` pairs per tap, per offset group: torchvision's layout), normalised
   to ``[-1, 1]`` (``(2x + 1) / W - 1``, the ``align_corners=False`` convention, exact for any
   size);
2. one bilinear ``GridSample`` (zeros padding: a tap outside the image reads 0, as in
   torchvision's ``bilinear_interpolate``) over all taps at once;
3. the modulation mask multiplies each tap (DCNv2);
4. a ``MatMul`` with the weight reshaped to ``[groups, C_out / groups, C_in / groups * k * k]``
   (im2col's GEMM), plus the bias.

Sizes are read from the tensors (``offset.shape``, ``input.shape``), so an export with
dynamic height / width keeps them symbolic.

:func:`deform_conv_export` selects the form for one export: ``decomposed`` (the default; every
TensorRT and ONNX Runtime run it) or ``deformconv`` (ONNX ``DeformConv``, ONNX Runtime only;
``benchmarks/deform_conv.py`` measures which ONNX Runtime runs faster).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: ``--dcn`` values: how deformable convolution is exported
DCN_MODES = ("decomposed", "deformconv")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d_decomposed(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None = None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (same arguments, same result) from GridSample + MatMul."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    b, c, h, w = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    taps = kh * kw
    w_groups = c // c_in_g
    o_groups = offset.shape[1] // (2 * taps)
    ho, wo = offset.shape[2], offset.shape[3]
    # positions in float32 whatever the graph's dtype: float16 cannot hold pixel coordinates exactly
    f32 = torch.float32
    off = offset.to(f32).reshape(b, o_groups, taps, 2, ho, wo)
    tap_y = (torch.arange(kh, dtype=f32, device=input.device) * dh).repeat_interleave(kw)  # [taps], row-major taps
    tap_x = (torch.arange(kw, dtype=f32, device=input.device) * dw).repeat(kh)
    out_y = torch.arange(ho, dtype=f32, device=input.device) * sh - ph  # [ho]
    out_x = torch.arange(wo, dtype=f32, device=input.device) * sw - pw  # [wo]
    y = out_y[None, :, None] + tap_y[:, None, None] + off[:, :, :, 0]  # [b, og, taps, ho, wo]
    x = out_x[None, None, :] + tap_x[:, None, None] + off[:, :, :, 1]
    gx = (2 * x + 1) / w - 1
    gy = (2 * y + 1) / h - 1
    grid = torch.stack((gx, gy), dim=-1).reshape(b * o_groups, taps * ho, wo, 2).to(input.dtype)
    cols = F.grid_sample(input.reshape(b * o_groups, c // o_groups, h, w), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=False)  # [b*og, c/og, taps*ho, wo]
    cols = cols.reshape(b, o_groups, c // o_groups, taps, ho, wo)
    if mask is not None:
        cols = cols * mask.reshape(b, o_groups, 1, taps, ho, wo)
    cols = cols.reshape(b, w_groups, c_in_g * taps, ho * wo)
    out = torch.matmul(weight.reshape(w_groups, c_out // w_groups, c_in_g * taps), cols)  # [b, wg, c_out/wg, ho*wo]
    out = out.reshape(b, c_out, ho, wo)
    if bias is not None:
        out = out + bias.reshape(1, c_out, 1, 1)
    return out


def _dcn_modules(net: nn.Module) -> list[type]:
    """Classes of ``net``'s deformable convolutions (rtseg's all say DeformConv and call
    ``deform_conv2d`` from their module's namespace: rtseg/models/resnet.py, mmdet_resnet.py)."""
    return sorted({type(m) for m in net.modules() if "DeformConv" in type(m).__name__}, key=lambda t: t.__qualname__)


@contextlib.contextmanager
def deform_conv_export(net: nn.Module, mode: str) -> Iterator[None]:
    """Within the block, ``net``'s deformable convolutions export as ``mode``.

    ``decomposed``: the modules' ``deform_conv2d`` is :func:`deform_conv2d_decomposed` (their
    module's global, restored on exit). ``deformconv``: unchanged; the caller registers the
    ``DeformConv`` symbolic (:func:`rtseg.export.onnx_export._register_deform_conv`).
    """
    if mode not in DCN_MODES:
        from rtseg.errors import ConfigError

        raise ConfigError(f"--dcn must be one of {', '.join(DCN_MODES)}, got '{mode}'")
    patched: list[tuple[object, object]] = []
    try:
        if mode == "decomposed":
            for cls in _dcn_modules(net):
                module = sys.modules[cls.__module__]
                original = getattr(module, "deform_conv2d", None)
                assert original is not None, f"{cls.__qualname__}'s module has no deform_conv2d to replace"
                if original is not deform_conv2d_decomposed:
                    patched.append((module, original))
                    module.deform_conv2d = deform_conv2d_decomposed
        yield
    finally:
        for module, original in patched:
            module.deform_conv2d = original
