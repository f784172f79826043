"""The TensorRT path's code, checked where no GPU runs it.

- every TensorRT API name the code uses exists: datacenter TensorRT 10's in the official API
  (the names of the ``tensorrt-stubs`` wheel, kept in
  ``tests/fixtures/tensorrt/tensorrt10_api.json``: TensorRT 10 cannot be installed here), and
  TensorRT-RTX's in the installed library itself;
- manifests, cache keys and the refusal of an engine built for another machine;
- the error paths a user meets without TensorRT or a GPU.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import rtseg.backends.tensorrt_backend as trt_backend
import rtseg.export.engine as engine
import rtseg.export.tensorrt_ops as tensorrt_ops
import rtseg.export.trt_flavour as trt_flavour
from rtseg.errors import ConfigError, EngineError
from rtseg.export.engine import (TRT_API, TRT_API_RTX_ONLY, TRT_API_TENSORRT_ONLY, BuildSettings, MachineFacts,
                                 calibration_batches, check_engine_manifest, engine_cache_key, engine_manifest,
                                 import_tensorrt, manifest_mismatches)

API = json.loads((Path(__file__).parent / "fixtures" / "tensorrt" / "tensorrt10_api.json").read_text())
SOURCES = [Path(engine.__file__), Path(trt_backend.__file__), Path(trt_flavour.__file__), Path(tensorrt_ops.__file__)]

#: how the TensorRT-facing code names its TensorRT objects -> their TensorRT class
VARIABLES = {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
             "profile": "IOptimizationProfile", "calib_profile": "IOptimizationProfile", "inp": "ITensor",
             "err": "ParserError", "self.engine": "ICudaEngine", "engine": "ICudaEngine",
             "self.context": "IExecutionContext", "context": "IExecutionContext", "slot.context": "IExecutionContext",
             "self.logger": "Logger", "logger": "Logger", "runtime": "Runtime", "runtime_config": "IRuntimeConfig",
             "self.runtime_cache": "IRuntimeCache", "runtime_cache": "IRuntimeCache"}
DECLARED = {owner: set(TRT_API.get(owner, ())) | set(TRT_API_TENSORRT_ONLY.get(owner, ())) | set(TRT_API_RTX_ONLY.get(owner, ()))
            for owner in {*TRT_API, *TRT_API_TENSORRT_ONLY, *TRT_API_RTX_ONLY}}


def members(cls: str) -> set[str]:
    """Members of a TensorRT class, inherited ones included."""
    entry = API["classes"][cls]
    out = set(entry["members"])
    for base in entry["bases"]:
        if base in API["classes"]:
            out |= members(base)
    return out


def _missing_in_tensorrt_10(table: dict) -> list[str]:
    missing = [f"trt.{n}" for n in table.get("trt", ()) if n not in API["module"]]
    for owner, names in table.items():
        if owner != "trt":
            assert owner in API["classes"], f"no TensorRT 10 class {owner}"
            missing += [f"{owner}.{n}" for n in names if n not in members(owner)]
    return missing


def _missing_in_rtx(table: dict) -> list[str]:
    trt = trt_flavour.TENSORRT_RTX.import_module()
    missing = [f"trt.{n}" for n in table.get("trt", ()) if not hasattr(trt, n)]
    for owner, names in table.items():
        if owner != "trt":
            cls = getattr(trt, owner, None)
            missing += [f"{owner}.{n}" for n in names if cls is None or not hasattr(cls, n)]
    return missing


def test_every_declared_tensorrt_name_exists_in_the_tensorrt_10_api():
    assert _missing_in_tensorrt_10(TRT_API) == [] and _missing_in_tensorrt_10(TRT_API_TENSORRT_ONLY) == []


@pytest.mark.skipif(not trt_flavour.TENSORRT_RTX.installed(), reason="TensorRT-RTX is a dev dependency")
def test_every_declared_tensorrt_rtx_name_exists_in_the_installed_library():
    assert _missing_in_rtx(TRT_API) == [] and _missing_in_rtx(TRT_API_RTX_ONLY) == []
    # and what RTX lacks, declared as datacenter-only, really is missing there
    trt = trt_flavour.TENSORRT_RTX.import_module()
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    assert not hasattr(trt, "IInt8EntropyCalibrator2")


def _uses(source: str) -> tuple[set[str], set[tuple[str, str]]]:
    """``trt.X`` names and ``(variable, attribute)`` pairs used in ``source``."""
    module_names, pairs = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            base = ast.unparse(node.value)
            if base == "trt":
                module_names.add(node.attr)
            elif base.startswith("trt.") and base.count(".") == 1:
                pairs.add((base[4:], node.attr))  # e.g. trt.Logger.WARNING
            elif base in VARIABLES:
                pairs.add((VARIABLES[base], node.attr))
    return module_names, pairs


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_the_code_uses_only_declared_tensorrt_names(path):
    module_names, pairs = _uses(path.read_text())
    assert module_names, "the scan found no TensorRT use: has the code changed shape?"
    assert module_names <= DECLARED["trt"], module_names - DECLARED["trt"]
    undeclared = {f"{c}.{a}" for c, a in pairs if a not in DECLARED.get(c, ())}
    assert undeclared == set()


def test_without_tensorrt_the_error_names_the_extra():
    if trt_flavour.TENSORRT.installed():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(EngineError, match=r"tensorrt is not installed: pip install 'rtseg\[tensorrt\]'"):
        import_tensorrt("tensorrt")


@pytest.mark.parametrize("requested, installed, gpu, chosen", [
    ("tensorrt", {"tensorrt-rtx": True}, False, "tensorrt"),  # a flag wins
    (None, {"tensorrt": True, "tensorrt-rtx": True}, True, "tensorrt"),  # datacenter TensorRT builds for this GPU
    (None, {"tensorrt": True, "tensorrt-rtx": True}, False, "tensorrt-rtx"),  # no GPU: only RTX builds
    (None, {"tensorrt": False, "tensorrt-rtx": True}, True, "tensorrt-rtx"),
    (None, {}, False, "tensorrt"),  # nothing installed: the import error names rtseg[tensorrt]
])
def test_the_flavour_follows_the_flag_then_what_is_installed(requested, installed, gpu, chosen):
    assert trt_flavour.choose_flavour(requested, installed, gpu) == chosen


def test_an_unknown_flavour_or_target_is_refused():
    with pytest.raises(ConfigError, match="--trt-flavour must be one of tensorrt, tensorrt-rtx, got 'tensorrt11'"):
        trt_flavour.get_flavour("tensorrt11")
    with pytest.raises(ConfigError, match="--gpu-targets takes compute capabilities from 7.5, 8.0"):
        trt_flavour.parse_targets("9.0")
    assert trt_flavour.parse_targets("8.6, 12.0") == ("8.6", "12.0")


FACTS = MachineFacts(tensorrt="10.13.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0")


def _write_engine(tmp_path, settings=BuildSettings()) -> str:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph bytes")
    onnx_manifest = {"model": "yolact_resnet18_half_384", "family": "yolact",
                     "input": {"name": "images", "shape": [1, 3, 384, 384]}}
    m = engine_manifest(str(onnx_path), onnx_manifest, settings, FACTS, [1, 3, 384, 384])
    path = tmp_path / f"m-{engine_cache_key(m)}.engine"
    path.write_bytes(b"engine")
    (tmp_path / f"m-{engine_cache_key(m)}.json").write_text(json.dumps(m))
    return str(path)


def test_an_engine_loads_on_the_machine_it_was_built_for(tmp_path):
    saved = check_engine_manifest(_write_engine(tmp_path), FACTS)
    assert saved["precision"] == "fp16" and saved["compute_capability"] == "9.0"
    assert len(saved["onnx_sha256"]) == 64


@pytest.mark.parametrize("other, field", [
    (MachineFacts("10.13.0", "NVIDIA A100-SXM4-40GB", "8.0"), "compute_capability: engine has '9.0', here '8.0'"),
    (MachineFacts("10.0.1", FACTS.gpu, FACTS.compute_capability), "tensorrt: engine has '10.13.0', here '10.0.1'"),
])
def test_an_engine_from_another_machine_is_refused_with_the_rebuild_command(tmp_path, other, field):
    path = _write_engine(tmp_path)
    with pytest.raises(EngineError) as err:
        check_engine_manifest(path, other)
    message = str(err.value)
    assert field in message and "rebuild it: rtseg build-engine --onnx" in message and "--precision fp16" in message
    assert "\n" not in message


def test_cache_key_follows_what_the_engine_depends_on(tmp_path):
    base = engine_manifest(_onnx(tmp_path), _onnx_manifest(), BuildSettings(), FACTS, [1, 3, 384, 384])
    same = engine_manifest(_onnx(tmp_path), _onnx_manifest(), BuildSettings(), FACTS, [1, 3, 384, 384])
    assert engine_cache_key(base) == engine_cache_key(same)
    for changed in (engine_manifest(_onnx(tmp_path), _onnx_manifest(), BuildSettings(precision="int8"), FACTS, [1, 3, 384, 384]),
                    engine_manifest(_onnx(tmp_path), _onnx_manifest(), BuildSettings(batch=(1, 4, 8)), FACTS, [4, 3, 384, 384]),
                    dict(base, gpu="another GPU"), dict(base, onnx_sha256="0" * 64)):
        assert engine_cache_key(changed) != engine_cache_key(base)
        assert manifest_mismatches(base, changed)
    assert manifest_mismatches(base, dict(base, built="later")) == []  # not a binding field


def _onnx(tmp_path) -> str:
    p = tmp_path / "x.onnx"
    p.write_bytes(b"x")
    return str(p)


def _onnx_manifest() -> dict:
    return {"model": "m", "family": "yolact", "input": {"name": "images", "shape": [1, 3, 384, 384]}}


@pytest.mark.parametrize("settings, message", [
    (BuildSettings(precision="int4"), "precision must be one of fp32, fp16, int8"),
    (BuildSettings(batch=(2, 1, 4)), "1 <= min <= opt <= max"),
    (BuildSettings(height=(384, 320, 640)), "height profile must satisfy 1 <= min <= opt <= max"),
    (BuildSettings(precision="fp16", strongly_typed=True), "strongly typed engine takes its precision from the ONNX"),
    (BuildSettings(workspace_mib=8), "workspace must be >= 64 MiB"),
])
def test_build_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        settings.check()


def test_int8_without_calibration_data_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(ConfigError, match="INT8 needs calibration data"):
        engine.build_engine(_onnx(tmp_path), str(tmp_path), BuildSettings(precision="int8", flavour="tensorrt"))


def test_calibration_batches_come_from_a_folder_of_images(tmp_path):
    import cv2

    from rtseg.synthetic import SyntheticVideo

    video = SyntheticVideo(seed=4, size=(48, 64))
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), video.frame(i).image)
    seen = []

    def preprocess(image: np.ndarray) -> np.ndarray:
        seen.append(image.shape)
        return np.zeros((1, 3, 32, 32), np.float32) + len(seen)

    batches = list(calibration_batches(str(tmp_path), preprocess, batch=2))
    assert [b.shape for b in batches] == [(2, 3, 32, 32), (2, 3, 32, 32)]  # the odd fifth image is left out
    assert seen == [(48, 64, 3)] * 5
    assert batches[1][0, 0, 0, 0] == 3 and batches[1].flags["C_CONTIGUOUS"]


def test_a_strongly_typed_engine_records_the_graphs_precision(tmp_path):
    manifest = {"model": "m", "family": "yolact", "input": {"name": "images", "shape": [1, 3, 8, 8], "dtype": "float16"}}
    m = engine_manifest(_onnx(tmp_path), manifest, BuildSettings(precision="fp32", strongly_typed=True), FACTS, [1, 3, 8, 8])
    assert m["precision"] == "onnx-float16" and m["strongly_typed"] is True
    assert "--strongly-typed" in engine.rebuild_command(m) and "--precision" not in engine.rebuild_command(m)


# -- the TensorRT backend's logic that runs without a GPU ----------------------------------------


def test_buffers_allocated_at_the_profile_max_are_viewed_at_each_calls_shape():
    import torch

    buf = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32)
    one = trt_backend.buffer_view(buf, (1, 3, 8, 8))
    assert one.shape == (1, 3, 8, 8) and one.is_contiguous() and one.data_ptr() == buf.data_ptr()
    assert float(one[0, 2, 7, 7]) == 3 * 64 - 1  # the first batch's elements
    assert trt_backend.buffer_view(buf, (4, 3, 8, 8)).numel() == buf.numel()
    with pytest.raises(AssertionError, match="exceeds its buffer"):
        trt_backend.buffer_view(buf, (5, 3, 8, 8))


@pytest.mark.parametrize("size", [1, 2, 4])
def test_each_stream_gets_its_own_context_and_none_is_lent_to_two_callers_at_once(size):
    import threading

    class Slot:
        holder = None

    made = []
    pool = trt_backend.StreamSlots(lambda i: made.append(i) or Slot(), size)
    first = pool.prepare()  # made at load: the first stream to call gets it
    clashes, seen = [], {}

    def worker(me: int) -> None:  # one worker = one stream (its handle is the key)
        for _ in range(300):
            with pool.acquire(1000 + me) as slot:
                if slot.holder is not None:
                    clashes.append((me, slot.holder))
                slot.holder = me
                seen.setdefault(me, set()).add(id(slot))
                for _ in range(50):  # give another thread the chance to barge in
                    if slot.holder != me:
                        clashes.append((me, slot.holder))
                slot.holder = None

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == [] and len(pool.slots) == len(made) == size and first in pool.slots
    assert all(len(ids) == 1 for ids in seen.values())  # a stream keeps its slot
    owners = {slot.owner for slot in pool.slots}
    assert len(owners) == size and owners <= {1000, 1001, 1002, 1003}  # each slot enqueues on one stream
    if size >= 4:  # enough contexts: no two streams share one
        assert len({next(iter(ids)) for ids in seen.values()}) == 4
    with pytest.raises(EngineError, match="at least 1 execution context"):
        trt_backend.StreamSlots(lambda i: Slot(), 0)


def test_half_takes_only_an_engine_that_computes_in_float16():
    assert all(trt_backend.engine_computes_in_half(p) for p in ("fp16", "int8", "onnx-float16"))
    assert not any(trt_backend.engine_computes_in_half(p) for p in ("fp32", "onnx-float32", None))


def test_the_cuda_device_an_engine_is_checked_against_is_the_backends_own():
    import torch

    assert engine.cuda_index(torch.device("cuda:3")) == 3 and engine.cuda_index("cuda:1") == 1
    with pytest.raises(EngineError, match="run on a CUDA device, got 'cpu'"):
        engine.cuda_index("cpu")
    with pytest.raises(EngineError, match="runs on a GPU: pass --device cuda"):
        trt_backend.TensorRTBackend("x.engine", model="m", device=torch.device("cpu"))


def test_cuda_graph_replay_is_reachable_from_the_segmenter_and_refused_elsewhere():
    from rtseg.segmenter import Segmenter

    with pytest.raises(ConfigError, match="--cuda-graph replays a TensorRT engine: it needs --backend tensorrt, got 'torch'"):
        Segmenter("yolact_resnet18_half_384", cuda_graph=True)
