"""The families' explicit second stage (``Family.stage2``): CenterMask's RoI mask + MaskIoU heads
and YOLACT++'s mask re-scoring, run by post-processing through a ``Stage2`` callable.

The torch module, its ONNX export (``<stem>.stage2.onnx``, the number of RoIs ``K`` dynamic) run by
ONNX Runtime, and the segmenter's ONNX Runtime path must give today's results.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from rtseg.errors import EngineError
from rtseg.families import FAMILIES, family_of
from rtseg.families.base import TorchStage2
from rtseg.models import get_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CENTERMASK = "centermask_lite_vovnet19_quarter_384"  # rtseg's small CenterMask, built-in weights
YOLACT_PLUS = "yolact_plus_resnet50"


def _net(name: str):
    cfg = get_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = family_of(cfg).build(cfg).eval()
    return cfg, net


def test_families_without_a_second_stage_have_none():
    cfg, net = _net("solov2_light_resnet18_half_384")
    assert FAMILIES["solov2"].stage2(net, cfg) is None
    cfg, net = _net("yolact_resnet18_half_384")  # YOLACT: no mask re-scoring
    assert FAMILIES["yolact"].stage2(net, cfg) is None


@pytest.mark.parametrize("name", [CENTERMASK, YOLACT_PLUS])
def test_stage2_onnx_with_dynamic_k_matches_torch(tmp_path, name):
    from rtseg.backends.onnxruntime_backend import OnnxRuntimeStage2
    from rtseg.export.onnx_export import STAGE2_AXIS, export_stage2_onnx

    cfg, net = _net(name)
    module = family_of(cfg).stage2(net, cfg)
    result = export_stage2_onnx(net, cfg, str(tmp_path / "m.stage2.onnx"))
    assert result is not None and os.path.isfile(result.path)
    manifest = json.loads(open(result.manifest_path).read())
    assert manifest["stage"] == 2 and manifest["model"] == name
    assert [i["name"] for i in manifest["inputs"]] == list(module.input_names)
    assert [o["name"] for o in manifest["outputs"]] == list(module.output_names)
    assert all(v["shape"][0] == STAGE2_AXIS for v in manifest["inputs"] + manifest["outputs"])
    ort_stage2 = OnnxRuntimeStage2(result.path, model=name, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    for k in (1, 7):  # other than the export's example K = 2
        example = module.example_inputs(k)
        inputs = {n: (torch.randint(0, len(cfg.class_names), (k,), generator=g) if t.dtype == torch.int64
                      else torch.rand(t.shape, generator=g)) for n, t in zip(module.input_names, example)}
        want = TorchStage2(module)(inputs)
        got = ort_stage2(inputs)
        assert set(got) == set(want)
        for n in want:
            assert got[n].shape == want[n].shape and got[n].shape[0] == k
            np.testing.assert_allclose(got[n].numpy(), want[n].numpy(), rtol=1e-4, atol=1e-5, err_msg=n)
    with pytest.raises(EngineError, match="not 'yolact_base'"):
        OnnxRuntimeStage2(result.path, model="yolact_base", device=torch.device("cpu"))


def test_segmenter_onnxruntime_runs_stage2_from_the_export_and_matches_torch(tmp_path):
    from rtseg.backends.onnxruntime_backend import OnnxRuntimeStage2
    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import render_scene

    image = render_scene(np.random.default_rng(3), (240, 320)).image  # the shapes the built-in model knows
    torch_seg = Segmenter(CENTERMASK, backend="torch", score_threshold=0.05)
    ort_seg = Segmenter(CENTERMASK, backend="onnxruntime", cache_dir=str(tmp_path), score_threshold=0.05)
    assert torch_seg.stage2 is None and isinstance(ort_seg.stage2, OnnxRuntimeStage2)
    want, _ = torch_seg.process(image)
    got, _ = ort_seg.process(image)
    assert len(got) == len(want)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
    np.testing.assert_allclose(got.mask_scores, want.mask_scores, atol=1e-4)
    if len(want):
        assert np.mean(got.masks != want.masks) < 1e-3  # masks: thresholded probabilities, a border pixel may flip

    # a stage-1 graph whose stage 2 is missing, or not the one exported with it, is refused
    onnx_path = next(str(p) for p in tmp_path.glob("*.onnx") if not p.name.endswith(".stage2.onnx"))
    stage2_json = onnx_path[:-5] + ".stage2.json"
    manifest = json.loads(open(stage2_json).read())
    manifest["onnx_sha256"] = "0" * 64
    open(stage2_json, "w").write(json.dumps(manifest))
    with pytest.raises(EngineError, match="is not the stage 2 exported with"):
        Segmenter(CENTERMASK, backend="onnxruntime", engine=onnx_path)
    os.remove(onnx_path[:-5] + ".stage2.onnx")
    with pytest.raises(EngineError, match="rtseg export --model centermask_lite_vovnet19_quarter_384 --format onnx"):
        Segmenter(CENTERMASK, backend="onnxruntime", engine=onnx_path)
