"""Deformable convolution decomposed into standard operators equals torchvision's, in torch
and as exported ONNX (ONNX Runtime), on random and on real (scikit-image photo) inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

import rtseg.models.resnet as resnet_module
from rtseg.export.deform_conv_onnx import deform_conv2d_decomposed, deform_conv_export

TOL = 1e-4

# (batch, channels, H, W, out channels, kernel, stride, padding, dilation, weight groups, offset groups, mask)
CASES = [
    (2, 8, 11, 13, 6, 3, 1, 1, 1, 1, 1, True),  # DCNv2 (YOLACT++, SOLOv2-DCN): 3x3, mask
    (1, 8, 9, 7, 4, 3, 2, 1, 2, 2, 2, True),  # stride, dilation, weight and offset groups
    (1, 4, 5, 5, 4, 1, 1, 0, 1, 1, 1, False),  # 1x1, DCNv1 (no mask)
    (2, 6, 10, 12, 6, 3, 1, 2, 2, 3, 1, False),
    (1, 4, 1, 6, 2, 3, 1, 1, 1, 1, 1, True),  # a one-pixel-high input: no division by zero
]


def _inputs(case, seed: int, offset_scale: float = 3.0):
    b, c, h, w, c_out, k, s, p, d, wg, og, use_mask = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    weight = torch.randn(c_out, c // wg, k, k, generator=g) / (c // wg * k * k) ** 0.5
    bias = torch.randn(c_out, generator=g)
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    # offsets of a few pixels: many taps land between pixels, some outside the image (read as 0)
    offset = torch.randn(b, 2 * og * k * k, ho, wo, generator=g) * offset_scale
    mask = torch.rand(b, og * k * k, ho, wo, generator=g) if use_mask else None
    return x, offset, weight, bias, dict(stride=s, padding=p, dilation=d), mask


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_decomposed_equals_torchvision_on_random_inputs(case, seed):
    x, offset, weight, bias, geometry, mask = _inputs(case, seed)
    ref = deform_conv2d(x, offset, weight, bias, mask=mask, **geometry)
    got = deform_conv2d_decomposed(x, offset, weight, bias, mask=mask, **geometry)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= TOL


def test_decomposed_equals_torchvision_on_a_photo():
    skimage_data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(np.ascontiguousarray(skimage_data.astronaut()[::4, ::4])).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(7)
    # offsets and mask from a convolution of the photo itself, as a DCN's offset branch computes them
    branch = nn.Conv2d(3, 27, 3, padding=1)
    with torch.no_grad():
        branch.weight.copy_(torch.randn(branch.weight.shape, generator=g) * 0.5)
        out = branch(photo)
    offset, mask = out[:, :18] * 4, torch.sigmoid(out[:, 18:])
    weight = torch.randn(16, 3, 3, 3, generator=g) / 27 ** 0.5
    ref = deform_conv2d(photo, offset, weight, None, padding=1, mask=mask)
    got = deform_conv2d_decomposed(photo, offset, weight, None, padding=1, mask=mask)
    assert float(offset.abs().max()) > 2  # really deformed
    assert float((got - ref).abs().max()) <= TOL


def test_the_exported_graph_has_no_deformconv_and_onnx_runtime_matches_torchvision(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    layer = resnet_module.ModulatedDeformConv2d(8, 8, 3, stride=1, padding=1).eval()
    nn.init.normal_(layer.conv_offset_mask.weight, std=0.3)  # offsets of pixels, not hundredths
    x = torch.randn(1, 8, 16, 20)
    with torch.inference_mode():
        ref = layer(x)
    path = str(tmp_path / "dcn.onnx")
    with deform_conv_export(layer, "decomposed"):
        torch.onnx.export(layer, (x,), path, input_names=["x"], output_names=["y"], opset_version=19, dynamo=False)
    assert resnet_module.deform_conv2d is deform_conv2d  # restored after the export
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "DeformConv" not in ops and "GridSample" in ops
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert float(np.abs(got - ref.numpy()).max()) <= TOL


def test_an_unknown_mode_is_refused():
    from rtseg.errors import ConfigError

    with pytest.raises(ConfigError, match="--dcn must be one of decomposed, deformconv, got 'plugin'"):
        with deform_conv_export(nn.Identity(), "plugin"):
            pass


def test_the_decomposition_keeps_a_dynamic_height_and_width(tmp_path):
    """Issue 16's exports make H and W symbolic: the decomposed graph must follow them."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    layer = resnet_module.ModulatedDeformConv2d(4, 6, 3, stride=2, padding=1).eval()
    nn.init.normal_(layer.conv_offset_mask.weight, std=0.3)
    path = str(tmp_path / "dyn.onnx")
    with deform_conv_export(layer, "decomposed"):
        torch.onnx.export(layer, (torch.randn(1, 4, 16, 20),), path, input_names=["x"], output_names=["y"],
                          opset_version=19, dynamo=False, dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "oh", 3: "ow"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for h, w in ((16, 20), (23, 9)):
        x = torch.randn(1, 4, h, w)
        with torch.inference_mode():
            ref = layer(x)
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == tuple(ref.shape) and float(np.abs(got - ref.numpy()).max()) <= TOL
