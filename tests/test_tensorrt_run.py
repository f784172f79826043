"""TensorRT engines executed on a GPU (``-m tensorrt``; tools/gpu_check.py runs these).

The flavour is what :func:`rtseg.export.trt_flavour.resolve_flavour` picks (datacenter
TensorRT where installed with a GPU, else TensorRT-RTX, whose engines target this GPU's
compute capability where it can). Not run where rtseg is developed (no GPU there).
"""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest
import torch

from rtseg.export.engine import BuildSettings, ensure_engine
from rtseg.export.onnx_export import export_onnx
from rtseg.export.trt_flavour import RTX_DEFAULT_TARGETS, RTX_TARGETS, resolve_flavour
from rtseg.segmenter import Segmenter
from rtseg.synthetic import SyntheticVideo

pytestmark = [pytest.mark.tensorrt,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODEL = "yolact_resnet18_half_384"


def _settings(**kw) -> BuildSettings:
    flavour = resolve_flavour()
    major, minor = torch.cuda.get_device_capability()
    cc = f"{major}.{minor}"
    targets = (cc,) if cc in RTX_TARGETS else RTX_DEFAULT_TARGETS
    precision = None if flavour.strongly_typed_only else "fp32"
    return BuildSettings(flavour=flavour.name, gpu_targets=targets, precision=precision, **kw)


@pytest.fixture(scope="module")
def seg():
    return Segmenter(MODEL, device="cuda")


@pytest.fixture(scope="module")
def engines(seg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    fixed = export_onnx(seg.net, seg.config, str(folder / "fixed.onnx"), weights=seg.weights_path)
    dyn = export_onnx(seg.net, seg.config, str(folder / "dyn.onnx"), weights=seg.weights_path, dynamic_batch=True)
    return (ensure_engine(fixed.path, str(folder), _settings()).path,
            ensure_engine(dyn.path, str(folder), _settings(batch=(1, 2, 4))).path)


def _batch(seg, n: int) -> torch.Tensor:
    video = SyntheticVideo(seed=5)
    return torch.cat([seg.preprocess(video.frame(i).image) for i in range(n)])


def _close(got, ref, tol=1e-3):
    for k in ref:
        assert float((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12)) <= tol, k


def test_an_engine_computes_what_torch_computes(seg, engines):
    from rtseg.backends.tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(engines[0], model=MODEL, device=torch.device("cuda"))
    x = _batch(seg, 1)
    with torch.inference_mode():
        ref = seg.net(x)
    _close(backend(x), ref)
    _close(backend(x.cpu()), ref)  # from host memory through the pinned buffer
    backend.close()


def test_a_dynamic_batch_engine_runs_batch_1_and_every_size_in_its_profile(seg, engines):
    from rtseg.backends.tensorrt_backend import TensorRTBackend
    from rtseg.errors import EngineError

    backend = TensorRTBackend(engines[1], model=MODEL, device=torch.device("cuda"))
    for n in (1, 2, 3, 4, 1):
        x = _batch(seg, n)
        with torch.inference_mode():
            ref = seg.net(x)
        got = backend(x)
        assert got["loc"].shape[0] == n
        _close(got, ref)
    with pytest.raises(EngineError, match="outside 1..4"):
        backend(_batch(seg, 5))


def test_the_input_is_read_after_its_producer_stream_wrote_it(seg, engines):
    from rtseg.backends.tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(engines[0], model=MODEL, device=torch.device("cuda"))
    x = _batch(seg, 1)
    with torch.inference_mode():
        ref = seg.net(x)
    producer = torch.cuda.Stream()
    with torch.cuda.stream(producer):
        torch.cuda._sleep(50_000_000)  # a slow producer: the input is written well after this call is queued
        y = x * 1.0
        got = backend(y)
    torch.cuda.synchronize()
    _close(got, ref)


def test_concurrent_workers_get_their_own_results(seg, engines):
    from rtseg.backends.tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(engines[1], model=MODEL, device=torch.device("cuda"), contexts=2)
    inputs = [_batch(seg, n) for n in (1, 2, 3, 4)]
    with torch.inference_mode():
        refs = [seg.net(x) for x in inputs]
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        results[i] = [backend(inputs[(i + k) % 4]) for k in range(8)]
        torch.cuda.synchronize()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        for k, got in enumerate(outs):
            _close(got, refs[(i + k) % 4])


def test_cuda_graph_replay_equals_a_plain_run(seg, engines):
    from rtseg.backends.tensorrt_backend import TensorRTBackend

    plain = TensorRTBackend(engines[0], model=MODEL, device=torch.device("cuda"))
    graphed = TensorRTBackend(engines[0], model=MODEL, device=torch.device("cuda"), cuda_graph=True)
    x = _batch(seg, 1)
    a = plain(x)
    for _ in range(3):  # capture, then replays
        b = graphed(x)
    _close(b, a, tol=1e-5)


def test_the_segmenter_runs_an_engine_end_to_end(engines):
    torch_seg = Segmenter(MODEL, device="cuda")
    trt_seg = Segmenter(MODEL, device="cuda", backend="tensorrt", engine=engines[0], cuda_graph=True)
    image = SyntheticVideo(seed=11).frame(7).image
    a, b = torch_seg(image), trt_seg(image)
    assert len(a) == len(b) > 0
    assert (a.masks_dense() != b.masks_dense()).mean() < 1e-3
    if resolve_flavour().has_runtime_cache:
        trt_seg.backend.close()
        assert os.path.isfile(os.path.splitext(engines[0])[0] + ".runtime-cache")


def test_a_half_engine_stays_close_to_torch(seg, tmp_path):
    from rtseg.backends.tensorrt_backend import TensorRTBackend

    half = export_onnx(seg.net, seg.config, str(tmp_path / "half.onnx"), weights=seg.weights_path, half=True)
    settings = dataclasses.replace(_settings(), precision=None, strongly_typed=True)
    backend = TensorRTBackend(ensure_engine(half.path, str(tmp_path), settings).path, model=MODEL,
                              device=torch.device("cuda"))
    x = _batch(seg, 1)
    with torch.inference_mode():
        ref = seg.net(x)
    got = backend(x)
    assert all(v.dtype == torch.float32 for v in got.values())
    _close(got, ref, tol=2e-2)
