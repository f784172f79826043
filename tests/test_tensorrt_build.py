"""Real TensorRT engines, built here without a GPU by TensorRT-RTX (a dev dependency).

ONNX -> the real ONNX parser -> the real builder -> a serialized engine + manifest -> a cache
hit on the second call -> a changed binding field builds anew -> an engine from another
TensorRT version or for another GPU refused with what differs and the rebuild command. The
three built-in models by default; every listed variant (YOLACT++ and SOLOv2-DCN included,
deformable convolution decomposed: no plugin) under ``slow``. Running an engine needs a GPU
(``-m tensorrt``, tools/gpu_check.py).
"""

from __future__ import annotations

import dataclasses
import json
import os

import onnx
import pytest
import torch
from torch import nn

from cli_helpers import assert_one_line_error, run_cli
from rtseg.errors import ConfigError, EngineError
from rtseg.export.engine import (BuildSettings, MachineFacts, check_engine_manifest, ensure_engine, profile_shapes,
                                 shape_in_profile)
from rtseg.export.onnx_export import export_onnx
from rtseg.export.tensorrt_ops import tensorrt_refusals, unsupported_nodes
from rtseg.export.trt_flavour import TENSORRT_RTX, RTX_DEFAULT_TARGETS
from rtseg.models import MODELS
from rtseg.segmenter import Segmenter

pytestmark = pytest.mark.skipif(not TENSORRT_RTX.installed(), reason="TensorRT-RTX is a dev dependency: pip install -e '.[dev]'")

BUILTIN = ("yolact_resnet18_half_384", "solov2_light_resnet18_half_384", "centermask_lite_vovnet19_quarter_384")
RTX = BuildSettings(flavour="tensorrt-rtx")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def _export(name: str, folder, **kwargs) -> str:
    seg = Segmenter(name)
    path = os.path.join(folder, f"{name}{'-dyn' if kwargs.get('dynamic_batch') else ''}.onnx")
    if not os.path.isfile(path):
        export_onnx(seg.net, seg.config, path, weights=seg.weights_path, **kwargs)
    return path


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_engine_is_built_then_cached_then_rebuilt_when_a_binding_field_changes(name, onnx_dir, tmp_path):
    onnx_path = _export(name, onnx_dir)
    # the operator table against the real parser: the table passes the graph, so must the parser
    model = onnx.load(onnx_path)
    assert unsupported_nodes(model) == [] and tensorrt_refusals(model) == (tensorrt_refusals(model)[0], [])
    first = ensure_engine(onnx_path, str(tmp_path), RTX)
    assert first.built and os.path.getsize(first.path) > 1 << 20  # a real serialized engine, megabytes
    saved = json.loads(open(first.path[: -len(".engine")] + ".json").read())
    assert saved["model"] == name and saved["flavour"] == "tensorrt-rtx"
    assert saved["tensorrt"].startswith("tensorrt-rtx 1.7.")
    assert saved["gpu"] is None and saved["gpu_targets"] == list(RTX_DEFAULT_TARGETS)  # built without a GPU
    assert saved["precision"] == "onnx-float32" and saved["strongly_typed"] is True
    assert saved["input"]["profile"] == {"min": [1, 3, 384, 384], "opt": [1, 3, 384, 384], "max": [1, 3, 384, 384]}
    assert "--trt-flavour tensorrt-rtx" in saved["rebuild"]
    stamp = os.stat(first.path).st_mtime_ns

    again = ensure_engine(onnx_path, str(tmp_path), RTX)
    assert not again.built and again.path == first.path and os.stat(first.path).st_mtime_ns == stamp

    other = ensure_engine(onnx_path, str(tmp_path), dataclasses.replace(RTX, gpu_targets=("8.6",)))
    assert other.built and other.path != first.path and other.manifest["gpu_targets"] == ["8.6"]
    assert os.path.isfile(first.path)  # the first engine stays cached beside it


def test_an_engine_for_another_tensorrt_or_gpu_is_refused_with_what_differs(onnx_dir, tmp_path):
    built = ensure_engine(_export(BUILTIN[0], onnx_dir), str(tmp_path), RTX)
    here = MachineFacts.here("tensorrt-rtx")
    ok = check_engine_manifest(built.path, dataclasses.replace(here, gpu="NVIDIA GeForce RTX 4090", compute_capability="8.9"))
    assert ok["onnx_sha256"] == built.manifest["onnx_sha256"]
    cases = [
        (dataclasses.replace(here, tensorrt="tensorrt-rtx 1.6.0.1", gpu="RTX 4090", compute_capability="8.9"),
         [f"tensorrt: engine has '{here.tensorrt}', here 'tensorrt-rtx 1.6.0.1'", "--trt-flavour tensorrt-rtx"]),
        (dataclasses.replace(here, gpu="NVIDIA H200", compute_capability="9.0"),
         ["compute_capability: engine targets 8.0, 8.6, 8.9, 12.0, here '9.0' (TensorRT-RTX 1.7 cannot target 9.0)",
          "rebuild it: rtseg build-engine --onnx", "--trt-flavour tensorrt --strongly-typed"]),
        (dataclasses.replace(here, gpu="NVIDIA GeForce RTX 2080", compute_capability="7.5"),
         ["here '7.5'", "--trt-flavour tensorrt-rtx --gpu-targets 8.0,8.6,8.9,12.0,7.5"]),
        (MachineFacts("tensorrt 10.13.0.35", "NVIDIA H200", "9.0", "tensorrt"),
         ["flavour: engine is for 'tensorrt-rtx', here 'tensorrt'"]),
    ]
    for machine, fragments in cases:
        with pytest.raises(EngineError) as err:
            check_engine_manifest(built.path, machine)
        message = str(err.value)
        assert "\n" not in message and "was built for another machine" in message
        for fragment in fragments:
            assert fragment in message, message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
def test_a_built_engine_is_refused_by_the_backend_without_a_gpu(onnx_dir, tmp_path):
    from rtseg.backends.tensorrt_backend import TensorRTBackend

    built = ensure_engine(_export(BUILTIN[0], onnx_dir), str(tmp_path), RTX)
    with pytest.raises(EngineError, match="tensorrt-rtx engines need an NVIDIA GPU to run; none is visible"):
        TensorRTBackend(built.path, model=BUILTIN[0], device=torch.device("cuda:1"))


def test_a_dynamic_batch_engine_records_its_profile(onnx_dir, tmp_path):
    onnx_path = _export(BUILTIN[0], onnx_dir, dynamic_batch=True)
    built = ensure_engine(onnx_path, str(tmp_path), dataclasses.replace(RTX, batch=(1, 2, 4)))
    assert built.built and built.manifest["input"]["profile"] == {
        "min": [1, 3, 384, 384], "opt": [2, 3, 384, 384], "max": [4, 3, 384, 384]}
    assert "--dynamic-batch 1,2,4" in built.manifest["rebuild"]
    assert shape_in_profile((1, 3, 384, 384), built.manifest["input"]["profile"]) is None  # batch 1 is accepted
    assert "axis 0 outside 1..4" in shape_in_profile((8, 3, 384, 384), built.manifest["input"]["profile"])


def test_profile_shapes_take_ranges_for_symbolic_dimensions_only():
    assert profile_shapes(["batch", 3, "height", "width"], BuildSettings(batch=(1, 2, 8), height=(256, 384, 640),
                                                                        width=(320, 512, 1024))) == (
        [1, 3, 256, 320], [2, 3, 384, 512], [8, 3, 640, 1024])
    assert profile_shapes([4, 3, 384, 384], BuildSettings()) == ([4, 3, 384, 384],) * 3
    with pytest.raises(ConfigError, match="fixed height of 384, got a height profile 256,384,640"):
        profile_shapes([1, 3, 384, 384], BuildSettings(height=(256, 384, 640)))
    with pytest.raises(ConfigError, match=r"dynamic width \('width'\): pass --dynamic-width MIN,OPT,MAX"):
        profile_shapes([1, 3, 384, "width"], BuildSettings())


@pytest.mark.parametrize("settings, message", [
    (BuildSettings(flavour="tensorrt-rtx", precision="fp16"), "TensorRT-RTX networks are strongly typed"),
    (BuildSettings(flavour="tensorrt-rtx", precision="int8"), "QuantizeLinear / DequantizeLinear"),
    (BuildSettings(flavour="tensorrt-rtx", gpu_targets=("9.0",)), "GPU targets must be among 7.5, 8.0"),
])
def test_rtx_refuses_what_it_cannot_do_before_building(settings, message, onnx_dir, tmp_path):
    with pytest.raises(ConfigError, match=message):
        ensure_engine(_export(BUILTIN[0], onnx_dir), str(tmp_path), settings)
    assert not os.listdir(tmp_path)


def test_export_format_engine_through_the_cli_builds_then_hits_the_cache(tmp_path):
    args = ("export", "--model", BUILTIN[0], "--format", "engine", "--engine-dir", str(tmp_path))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "(tensorrt-rtx 1.7." in first.stdout and "built in" in first.stdout
    engines = [p for p in os.listdir(tmp_path) if p.endswith(".engine")]
    assert len(engines) == 1 and os.path.isfile(tmp_path / engines[0].replace(".engine", ".json"))
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "cached: same ONNX, settings and TensorRT" in second.stdout and engines[0] in second.stdout
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".engine")) == engines


@pytest.mark.slow  # ~20 s of CLI processes: the refusals themselves are tested in-process in the default run
def test_engine_cli_refusals_are_one_line(tmp_path):
    onnx_args = ("export", "--model", BUILTIN[0], "--format", "engine", "--engine-dir", str(tmp_path))
    assert_one_line_error(run_cli(*onnx_args, "--gpu-targets", "9.0"), 2, "--gpu-targets takes compute capabilities",
                          "got '9.0'")
    if not torch.cuda.is_available():
        assert_one_line_error(run_cli(*onnx_args, "--trt-flavour", "tensorrt"), 6,
                              "tensorrt is not installed: pip install 'rtseg[tensorrt]'")
    assert_one_line_error(run_cli(*onnx_args, "--trt-flavour", "tensorrt-rtx", "--precision", "fp16"), 2,
                          "TensorRT-RTX networks are strongly typed", "rtseg export --half")


def _yolact_plus_quarter():
    """YOLACT++ R-50's DCN layout at a quarter of the width (a quick export; same operators)."""
    from rtseg.families.yolact.network import Yolact

    cfg = dataclasses.replace(MODELS["yolact_plus_resnet50"], max_size=256, backbone_width=0.25, fpn_features=32,
                              proto_channels=32)
    torch.manual_seed(0)
    net = Yolact(cfg).eval()
    for m in net.modules():
        if hasattr(m, "conv_offset_mask"):
            nn.init.normal_(m.conv_offset_mask.weight, std=0.05)
    return net, cfg


def test_onnx_deformconv_is_refused_by_the_real_parser_with_the_way_out(tmp_path):
    net, cfg = _yolact_plus_quarter()
    plain = export_onnx(net, cfg, str(tmp_path / "deformconv.onnx"), dcn="deformconv")
    with pytest.raises(EngineError, match=r"DeformConv \(node .*Plugin not found.*re-export with 'rtseg export --dcn decomposed'"):
        ensure_engine(plain.path, str(tmp_path / "engines"), RTX)
    assert not os.path.isdir(tmp_path / "engines") or not os.listdir(tmp_path / "engines")


#: in the default run: YOLACT++ R-50, the graph whose DeformConv the real parser refused
#: (about 30 s); the built-in three are built by the first test; every other variant is slow
DEFAULT_VARIANTS = ("yolact_plus_resnet50",)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT_VARIANTS else pytest.mark.slow)
                                  for n in MODELS])
def test_every_variant_parses_passes_the_table_and_builds(name, tmp_path):
    """The operator table against the real parser: a graph the table passes must parse."""
    seg = Segmenter(name)
    result = export_onnx(seg.net, seg.config, str(tmp_path / f"{name}.onnx"), weights=seg.weights_path)
    model = onnx.load(result.path)
    assert unsupported_nodes(model) == []
    checker, refusals = tensorrt_refusals(model)
    assert checker.startswith("tensorrt-rtx") and refusals == []
    built = ensure_engine(result.path, str(tmp_path), RTX)
    assert built.built and os.path.getsize(built.path) > 0


def test_an_engine_over_a_dynamic_height_and_width_gets_one_profile_for_them(tmp_path):
    """Where issue 16's dynamic-size exports slot in: symbolic H / W take --dynamic-height /
    --dynamic-width ranges (here a DCN layer exported with symbolic H / W, decomposed)."""
    from rtseg.export.deform_conv_onnx import deform_conv_export
    from rtseg.models.resnet import ModulatedDeformConv2d

    layer = ModulatedDeformConv2d(4, 6, 3).eval()
    onnx_path = tmp_path / "dcn.onnx"
    with deform_conv_export(layer, "decomposed"):
        torch.onnx.export(layer, (torch.randn(1, 4, 16, 20),), str(onnx_path), input_names=["images"],
                          output_names=["y"], opset_version=19, dynamo=False,
                          dynamic_axes={"images": {2: "height", 3: "width"}})
    (tmp_path / "dcn.json").write_text(json.dumps({"model": "dcn_layer", "family": None,
                                                   "input": {"name": "images", "shape": [1, 4, "height", "width"]}}))
    with pytest.raises(ConfigError, match="dynamic height"):
        ensure_engine(str(onnx_path), str(tmp_path / "e"), RTX)
    built = ensure_engine(str(onnx_path), str(tmp_path / "e"),
                          dataclasses.replace(RTX, height=(8, 16, 64), width=(8, 20, 96)))
    assert built.built and built.manifest["input"]["profile"] == {
        "min": [1, 4, 8, 8], "opt": [1, 4, 16, 20], "max": [1, 4, 64, 96]}
    assert "--dynamic-height 8,16,64 --dynamic-width 8,20,96" in built.manifest["rebuild"]


@pytest.mark.parametrize("name", ["centermask_lite_vovnet19_quarter_384", "yolact_plus_resnet50"])
def test_stage2_engine_is_built_with_a_k_profile(name, tmp_path):
    """A family's second stage (``<stem>.stage2.onnx``) is a second real engine: the parser takes
    it, the builder builds it with one profile whose first axis (K RoIs) ranges 1..max_k."""
    from rtseg.export.engine import STAGE2_ENGINE_SCHEMA, ensure_stage2_engine
    from rtseg.export.onnx_export import export_stage2_onnx
    from rtseg.families import family_of

    cfg = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = family_of(cfg).build(cfg).eval()
    stage2_onnx = export_stage2_onnx(net, cfg, str(tmp_path / f"{name}.stage2.onnx"))
    max_k = stage2_onnx.manifest["max_k"]
    assert unsupported_nodes(onnx.load(stage2_onnx.path)) == []
    first = ensure_stage2_engine(stage2_onnx.path, str(tmp_path / "engines"), RTX)
    assert first.built and os.path.getsize(first.path) > 1 << 10  # a real serialized engine
    saved = json.loads(open(first.path[: -len(".engine")] + ".json").read())
    assert saved["schema"] == STAGE2_ENGINE_SCHEMA and saved["model"] == name and saved["stage"] == 2
    assert saved["input"]["k"] == [1, min(16, max_k), max_k]
    for inp in stage2_onnx.manifest["inputs"]:
        prof = saved["input"]["profile"][inp["name"]]
        assert prof["min"][0] == 1 and prof["max"][0] == max_k and prof["min"][1:] == prof["max"][1:] == inp["shape"][1:]
    again = ensure_stage2_engine(stage2_onnx.path, str(tmp_path / "engines"), RTX)
    assert not again.built and again.path == first.path  # cached
    other = ensure_stage2_engine(stage2_onnx.path, str(tmp_path / "engines"), RTX, k=(1, 4, 8))
    assert other.built and other.path != first.path  # another K range is another engine
    with pytest.raises(EngineError, match="not a stage-2 graph"):
        ensure_stage2_engine(_export("yolact_resnet18_half_384", tmp_path), str(tmp_path / "engines"), RTX)


def test_ensure_engine_builds_the_stage2_engine_beside_stage1(onnx_dir, tmp_path):
    """``ensure_engine`` (``rtseg build-engine``, ``rtseg export --format engine``) on an ONNX with a
    ``<stem>.stage2.onnx`` beside it builds the second engine as ``<engine stem>.stage2.engine``."""
    from rtseg.export.engine import STAGE2_ENGINE_SCHEMA, stage2_engine_path_for

    onnx_path = _export("centermask_lite_vovnet19_quarter_384", onnx_dir)
    assert os.path.isfile(onnx_path[:-5] + ".stage2.onnx")
    first = ensure_engine(onnx_path, str(tmp_path), RTX)
    assert first.stage2 is not None and first.stage2.built
    assert first.stage2.path == stage2_engine_path_for(first.path) and os.path.isfile(first.stage2.path)
    assert first.stage2.manifest["schema"] == STAGE2_ENGINE_SCHEMA
    again = ensure_engine(onnx_path, str(tmp_path), RTX)
    assert not again.built and again.stage2 is not None and not again.stage2.built
    # families without a second stage build one engine
    assert ensure_engine(_export("solov2_light_resnet18_half_384", onnx_dir), str(tmp_path), RTX).stage2 is None
