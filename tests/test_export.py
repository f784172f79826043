"""ONNX export and the ONNX Runtime backend: the exported graph computes what torch computes.

Everything runs for real: torch's exporter, onnxsim, the TensorRT operator check, ONNX
Runtime's CPU provider, the segmenter's post-processing and pycocotools.
"""

from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rtseg.backends.onnxruntime_backend import OnnxRuntimeBackend
from rtseg.errors import ConfigError, EngineError
from rtseg.export.cache import cached_onnx, onnx_cache_key
from rtseg.export.onnx_export import export_onnx, read_manifest
from rtseg.export.tensorrt_ops import SUPPORTED_OPS, tensorrt_refusals, unsupported_nodes
from rtseg.models import DEFAULT_MODEL, MODELS
from rtseg.families.yolact.network import Yolact
from rtseg.segmenter import Segmenter
from rtseg.synthetic import SyntheticVideo


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut()[..., ::-1])


@pytest.fixture(scope="module")
def builtin_pair(tmp_path_factory):
    """The built-in model under torch and under ONNX Runtime (exported into a temporary cache)."""
    cache = tmp_path_factory.mktemp("engines")
    torch_seg = Segmenter(DEFAULT_MODEL, score_threshold=0.05)
    ort_seg = Segmenter(DEFAULT_MODEL, score_threshold=0.05, backend="onnxruntime", cache_dir=str(cache))
    return torch_seg, ort_seg, cache


def test_builtin_model_head_outputs_match_torch(builtin_pair, photo):
    torch_seg, ort_seg, _ = builtin_pair
    frames = [photo, SyntheticVideo(seed=3).frame(5).image]
    for image in frames:
        batch = torch_seg.preprocess(image)
        ref, got = torch_seg.infer(batch), ort_seg.infer(batch)
        assert list(got) == list(ref)
        for name in ref:
            assert got[name].shape == ref[name].shape
            assert rel_err(got[name], ref[name]) <= 1e-4, name


def test_builtin_model_instances_match_torch(builtin_pair):
    torch_seg, ort_seg, _ = builtin_pair
    video = SyntheticVideo(seed=11)
    for i in (0, 7, 19):
        image = video.frame(i).image
        a, b = torch_seg(image), ort_seg(image)
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        # a mask pixel can flip only where the soft mask sits at the 0.5 threshold
        assert (a.masks_dense() != b.masks_dense()).mean() < 1e-4


def test_export_writes_a_manifest_and_a_graph_tensorrt_parses(builtin_pair):
    _, ort_seg, cache = builtin_pair
    path = ort_seg.backend.manifest and next(p for p in os.listdir(cache) if p.endswith(".onnx"))
    model = onnx.load(os.path.join(cache, path))
    assert unsupported_nodes(model) == []
    assert {n.op_type for n in model.graph.node} <= SUPPORTED_OPS
    m = read_manifest(os.path.join(cache, path))
    assert m["model"] == DEFAULT_MODEL and m["family"] == "yolact"
    assert m["input"] == {"name": "images", "shape": ["batch", 3, 384, 384], "dtype": "float32"}
    assert [o["name"] for o in m["outputs"]] == ["loc", "conf", "coef", "proto"]
    assert len(m["onnx_sha256"]) == 64 and m["weights_sha256"] and m["opset"] == 19
    # checked by the real TensorRT-RTX parser (a dev dependency), not only by the table
    assert m["tensorrt_check"].startswith("tensorrt-rtx 1.7") and m["dcn"] is None


def test_cached_export_is_reused_and_keyed_by_weights(builtin_pair, tmp_path):
    torch_seg, _, cache = builtin_pair
    first = cached_onnx(torch_seg.net, torch_seg.config, torch_seg.weights_path, str(cache))
    stamp = os.stat(first).st_mtime_ns
    again = cached_onnx(torch_seg.net, torch_seg.config, torch_seg.weights_path, str(cache))
    assert again == first and os.stat(again).st_mtime_ns == stamp  # not exported again
    other = tmp_path / "other.pth"
    torch.save({k: v + 0 for k, v in torch_seg.net.state_dict().items()}, other)
    other.write_bytes(other.read_bytes() + b"")  # same tensors, different file: a different key
    assert onnx_cache_key(torch_seg.config, str(other)) != onnx_cache_key(torch_seg.config, torch_seg.weights_path)
    assert not torch_seg.net.training


@pytest.mark.parametrize("dcn", ["decomposed", "deformconv"])
def test_deformable_convolution_exports_in_both_forms_and_matches(tmp_path, dcn):
    # YOLACT++ R-50's DCN layout at a quarter of the width (a quick export; same operators)
    cfg = dataclasses.replace(MODELS["yolact_plus_resnet50"], max_size=256, backbone_width=0.25, fpn_features=32,
                              proto_channels=32)
    torch.manual_seed(0)
    net = Yolact(cfg).eval()
    for m in net.modules():  # offsets of a few pixels, so the deformation is really exercised
        if hasattr(m, "conv_offset_mask"):
            nn.init.normal_(m.conv_offset_mask.weight, std=0.05)
    result = export_onnx(net, cfg, str(tmp_path / "plus.onnx"), dcn=dcn)
    model = onnx.load(result.path)
    ops = {n.op_type for n in model.graph.node}
    assert result.manifest["dcn"] == dcn
    if dcn == "decomposed":  # standard operators only: the real TensorRT-RTX parser takes it
        assert "DeformConv" not in ops and {"GridSample", "MatMul"} <= ops
        checker, refusals = tensorrt_refusals(model)
        assert checker.startswith("tensorrt-rtx") and refusals == []
    else:  # ONNX DeformConv, for ONNX Runtime; the real parser refuses it (a plugin), so does the table
        assert "DeformConv" in ops and result.manifest["tensorrt_check"].startswith("skipped")
        assert any("DeformConv" in r for r in tensorrt_refusals(model)[1])
        assert any("DeformConv" in p for p in unsupported_nodes(model))
    backend = OnnxRuntimeBackend(result.path, model=cfg.name, device=torch.device("cpu"))
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        ref = net(x)
    got = backend(x)
    for name in ref:
        assert rel_err(got[name], ref[name]) <= 1e-4, name


def test_dcn_needs_its_opset_and_opsets_outside_tensorrts_range_are_refused(tmp_path):
    cfg = dataclasses.replace(MODELS["yolact_plus_resnet50"], max_size=256)
    net = Yolact(cfg)
    with pytest.raises(ConfigError, match="DeformConv needs opset >= 19, got 17"):
        export_onnx(net, cfg, str(tmp_path / "a.onnx"), opset=17, dcn="deformconv")
    with pytest.raises(ConfigError, match="GridSample needs opset >= 16, got 15"):
        export_onnx(net, cfg, str(tmp_path / "a.onnx"), opset=15)
    with pytest.raises(ConfigError, match="dcn must be one of decomposed, deformconv"):
        export_onnx(net, cfg, str(tmp_path / "a.onnx"), dcn="plugin")
    with pytest.raises(ConfigError, match=r"opset must be an integer in 9\.\.20"):
        export_onnx(net, cfg, str(tmp_path / "a.onnx"), opset=21)
    with pytest.raises(ConfigError, match="batch must be an integer >= 1"):
        export_onnx(net, cfg, str(tmp_path / "a.onnx"), batch=0)


class _Unique(nn.Module):
    """A network whose graph needs ONNX ``Unique``, which the TensorRT 10 parser refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"values": torch.unique(self.conv(x).round())}


def test_a_graph_with_an_operator_tensorrt_lacks_is_refused_by_name(tmp_path):
    cfg = SimpleNamespace(name="unique_net", family="test", class_names=("a",), input_size=(8, 8))
    # the real TensorRT-RTX parser's refusal, named by operator and node
    with pytest.raises(EngineError, match=r"the tensorrt-rtx 1\.7[.\d]* ONNX parser refuses the exported graph "
                                          r"\(1 error\(s\)\): Unique \(node '/net/Unique'\): false \(in checkUnique\)"):
        export_onnx(_Unique(), cfg, str(tmp_path / "u.onnx"))
    assert not os.listdir(tmp_path)  # nothing half-written left behind


def test_operator_check_flags_custom_domains_old_opsets_and_large_topk():
    from onnx import TensorProto, helper

    k = helper.make_tensor("k", TensorProto.INT64, [1], [5000])
    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk"),
         helper.make_node("Foo", ["x"], ["y"], domain="com.example", name="foo")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10000])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)], initializer=[k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    problems = unsupported_nodes(model)
    assert any("opset 8" in p for p in problems)
    assert any(p.startswith("com.example::Foo") for p in problems)
    assert any("TopK" in p and "K=5000" in p for p in problems)


def test_dynamic_batch_export_runs_batches_of_any_size(tmp_path):
    seg = Segmenter(DEFAULT_MODEL)
    result = export_onnx(seg.net, seg.config, str(tmp_path / "dyn.onnx"), dynamic_batch=True)
    assert result.manifest["input"]["shape"][0] == "batch"
    backend = OnnxRuntimeBackend(result.path, model=DEFAULT_MODEL, device=torch.device("cpu"))
    video = SyntheticVideo(seed=2)
    batch = torch.cat([seg.preprocess(video.frame(i).image) for i in range(3)])
    ref = seg.infer(batch)
    got = backend(batch)
    for name in ref:
        assert got[name].shape[0] == 3 and rel_err(got[name], ref[name]) <= 1e-4


def test_backend_refusals_are_one_clear_line(builtin_pair, tmp_path):
    _, ort_seg, cache = builtin_pair
    onnx_path = os.path.join(cache, next(p for p in os.listdir(cache) if p.endswith(".onnx")))
    with pytest.raises(EngineError, match="was exported from model 'yolact_resnet18_half_384', not 'yolact_base'"):
        OnnxRuntimeBackend(onnx_path, model="yolact_base", device=torch.device("cpu"))
    with pytest.raises(EngineError, match="not found"):
        OnnxRuntimeBackend(str(tmp_path / "missing.onnx"), model=DEFAULT_MODEL, device=torch.device("cpu"))
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(open(onnx_path, "rb").read())
    with pytest.raises(EngineError, match="no manifest"):
        OnnxRuntimeBackend(str(bare), model=DEFAULT_MODEL, device=torch.device("cpu"))
    (tmp_path / "bare.json").write_text("{not json")
    with pytest.raises(EngineError, match="not readable JSON"):
        OnnxRuntimeBackend(str(bare), model=DEFAULT_MODEL, device=torch.device("cpu"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file")
    (tmp_path / "garbage.json").write_text(json.dumps({"model": DEFAULT_MODEL, "input": {}}))
    with pytest.raises(EngineError, match="ONNX Runtime cannot load"):
        OnnxRuntimeBackend(str(garbage), model=DEFAULT_MODEL, device=torch.device("cpu"))
    with pytest.raises(EngineError, match=r"takes input \['batch', 3, 384, 384\], got \[1, 3, 320, 320\]"):
        ort_seg.infer(torch.zeros(1, 3, 320, 320))


def test_eval_gives_the_same_ap_with_both_backends(builtin_pair, tmp_path):
    from rtseg.data.synthetic_coco import generate_dataset
    from rtseg.evaluate import evaluate

    _, ort_seg, cache = builtin_pair
    onnx_path = os.path.join(cache, next(p for p in os.listdir(cache) if p.endswith(".onnx")))
    generate_dataset(str(tmp_path), images=8, seed=2002, size=(384, 512))
    by_torch = evaluate(DEFAULT_MODEL, weights=None, data=str(tmp_path), progress=False)
    by_ort = evaluate(DEFAULT_MODEL, weights=None, data=str(tmp_path), progress=False, backend="onnxruntime",
                      engine=onnx_path)
    assert by_torch.segm["AP"] > 0.2  # the built-in model really segments these
    assert abs(by_torch.segm["AP"] - by_ort.segm["AP"]) <= 0.005
    assert abs(by_torch.bbox["AP"] - by_ort.bbox["AP"]) <= 0.005


@pytest.mark.slow  # ~10 s: fp16 export is exercised again by the slow engine builds
def test_half_export_carries_float16_and_stays_close_to_torch(tmp_path, photo):
    seg = Segmenter(DEFAULT_MODEL)
    result = export_onnx(seg.net, seg.config, str(tmp_path / "half.onnx"), half=True)
    model = onnx.load(result.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert result.manifest["input"]["dtype"] == "float16"
    assert next(seg.net.parameters()).dtype == torch.float32  # the segmenter's own network is untouched
    batch = seg.preprocess(photo)
    ref = seg.infer(batch)
    got = OnnxRuntimeBackend(result.path, model=DEFAULT_MODEL, device=torch.device("cpu"))(batch)
    for name in ref:
        assert got[name].dtype == torch.float32
        assert rel_err(got[name], ref[name]) <= 2e-2, name  # float16 precision


@pytest.mark.parametrize("device, available, plugin, chosen", [
    ("cpu", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], True,
     (False, ["CPUExecutionProvider"])),  # a CPU segmenter never takes a GPU provider
    ("cuda", ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"], False,
     (False, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])),
    ("cuda", ["NvTensorRTRTXExecutionProvider", "CPUExecutionProvider"], False,
     (False, ["NvTensorRTRTXExecutionProvider", "CPUExecutionProvider"])),
    ("cuda", ["CPUExecutionProvider"], True, (True, ["CPUExecutionProvider"])),  # the TensorRT-RTX plugin EP first
])
def test_onnxruntime_provider_choice(device, available, plugin, chosen):
    from rtseg.backends.onnxruntime_backend import choose_providers

    assert choose_providers(device, available, plugin) == chosen


def test_the_cpu_provider_runs_without_io_binding(builtin_pair):
    _, ort_seg, _ = builtin_pair
    assert ort_seg.backend.providers == ["CPUExecutionProvider"] and ort_seg.backend.io_binding is False
