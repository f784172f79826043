"""rtseg on Triton Inference Server, with the real server (issue 19).

Everything is real: ``rtseg serve`` (PyTriton's bundled ``tritonserver`` 2.51 with its Python
backend) started by the test on 127.0.0.1 on free ports, ``rtseg run`` pipelines as
subprocesses talking gRPC (and system shared memory) through tritonclient, ZeroMQ
publishing to subscribers in this process, SIGKILL of the whole server process group, and
tritonclient's model-config protobuf for the exported repository.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from cli_helpers import RTSEG, assert_one_line_error, free_port, run_cli

MODEL = "yolact_resnet18_half_384"
#: a built-in model with a second stage (CenterMask's RoI mask + MaskIoU heads)
STAGE2_MODEL = "centermask_lite_vovnet19_quarter_384"


# -- the exported repository (no server needed) ---------------------------------------------
def test_exported_repository_config_parses_with_tritonclient(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from rtseg.export.onnx_export import read_manifest

    repo = tmp_path / "repo"
    proc = run_cli("export", "--model", MODEL, "--format", "triton-repo", str(repo), "--dynamic-batch", "1,2,4",
                   "--triton-queue-delay-us", "500", "--triton-instances", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    model_dir = repo / MODEL
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    manifest = read_manifest(str(model_dir / "1" / "model.onnx"))
    assert config.name == MODEL and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    # names, types and dims are the ONNX export's, batch dimension left to Triton
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [3, 384, 384])]
    assert all(i.data_type == model_config_pb2.TYPE_FP32 for i in (*config.input, *config.output))
    assert [o.name for o in config.output] == [o["name"] for o in manifest["outputs"]] == ["loc", "conf", "coef", "proto"]
    for out, entry in zip(config.output, manifest["outputs"]):
        assert [d if isinstance(d, int) else -1 for d in entry["shape"][1:]] == list(out.dims)
        assert not isinstance(entry["shape"][0], int)  # symbolic batch in the graph itself
    assert manifest["model"] == MODEL and manifest["triton"]["max_batch_size"] == 4
    assert sorted(os.listdir(repo)) == [MODEL]  # YOLACT has no second stage: no <model>_stage2


def test_a_second_stage_gets_its_own_unbatched_model_in_the_repository(tmp_path):
    """CenterMask's RoI heads: ``<model>_stage2`` (ONNX Runtime, version 1 like stage 1) with
    max_batch_size 0, K as -1 in dims, no dynamic batching; written beside a TensorRT stage 1 too."""
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from rtseg.export.onnx_export import read_manifest

    repo = tmp_path / "repo"
    proc = run_cli("export", "--model", STAGE2_MODEL, "--format", "triton-repo", str(repo), "--triton-instances", "2",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    name = f"{STAGE2_MODEL}_stage2"
    assert sorted(os.listdir(repo)) == [STAGE2_MODEL, name] and name in proc.stdout
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    # the stage-2 graph's whole shapes, K first and symbolic (fpn_channels 64, pooler 14, mask 28)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("roi_feats", model_config_pb2.TYPE_FP32, [-1, 64, 14, 14]), ("class_ids", model_config_pb2.TYPE_INT64, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("mask_probs", model_config_pb2.TYPE_FP32, [-1, 28, 28]), ("maskiou", model_config_pb2.TYPE_FP32, [-1])]
    stage1 = read_manifest(str(repo / STAGE2_MODEL / "1" / "model.onnx"))
    stage2 = read_manifest(str(repo / name / "1" / "model.onnx"))
    assert stage2["onnx_sha256"] == stage1["stage2"]["onnx_sha256"]  # the one exported with stage 1
    assert stage2["triton"] == {"name": name, "platform": "onnxruntime_onnx", "max_batch_size": 0, "instances": 2,
                                "stage1": STAGE2_MODEL}


def test_symbolic_height_and_width_become_minus_one(tmp_path):
    """A graph with dynamic H/W inputs (issue 16) gives dims [3, -1, -1] with no change."""
    onnx = pytest.importorskip("onnx")
    from google.protobuf import text_format
    from onnx import TensorProto, helper

    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import model_config_pb2

    from rtseg.export.triton_repo import config_pbtxt, graph_io

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("proto", TensorProto.FLOAT, ["batch", "height", "width", 3])
    graph = helper.make_graph([helper.make_node("Transpose", ["images"], ["proto"], perm=[0, 2, 3, 1])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    inputs, outputs = graph_io(str(path))
    assert [(s.name, s.dims) for s in inputs] == [("images", (3, -1, -1))]
    assert [(s.name, s.dims) for s in outputs] == [("proto", (-1, -1, 3))]
    text = config_pbtxt("m", "onnxruntime_onnx", inputs, outputs, max_batch_size=8, queue_delay_us=100, instances=1)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [-1, -1, 3]


def test_engine_given_makes_a_tensorrt_plan_repository_and_a_bad_profile_is_one_error(tmp_path):
    """``--triton-plan``: the engine becomes ``1/model.plan`` under platform tensorrt_plan (dims
    still from the ONNX graph); an engine whose batch profile does not start at 1 or reach
    max_batch_size is refused. TensorRT cannot run here: the engine is a stand-in file with
    the manifest ``rtseg build-engine`` writes (its fields that matter here)."""
    onnx = pytest.importorskip("onnx")
    from google.protobuf import text_format
    from onnx import TensorProto, helper

    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import model_config_pb2

    from rtseg.errors import EngineError
    from rtseg.export.triton_repo import write_triton_repo

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("proto", TensorProto.FLOAT, ["batch", 8, 8, 3])
    graph = helper.make_graph([helper.make_node("Transpose", ["images"], ["proto"], perm=[0, 2, 3, 1])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    (tmp_path / "m.json").write_text(json.dumps({"model": MODEL, "input": {"name": "images"}}))
    engine = tmp_path / "m-engine.engine"  # its manifest: m-engine.json (rtseg.export.onnx_export.manifest_path_for)
    engine.write_bytes(b"stand-in for a serialized engine")
    for profile, ok in (([1, 4, 8], True), ([2, 4, 8], False), ([1, 2, 4], False)):
        (tmp_path / "m-engine.json").write_text(json.dumps({"model": MODEL, "input": {"batch_profile": profile}}))
        if ok:
            repo = write_triton_repo(str(tmp_path / "repo"), MODEL, str(tmp_path / "m.onnx"), plan_path=str(engine),
                                     max_batch_size=8)
            config = text_format.Parse(open(repo.config_path).read(), model_config_pb2.ModelConfig())
            assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
            assert list(config.output[0].dims) == [8, 8, 3]
            assert sorted(os.listdir(os.path.dirname(repo.model_path))) == ["model.json", "model.plan"]
        else:
            with pytest.raises(EngineError, match="batch profile"):
                write_triton_repo(str(tmp_path / "repo"), MODEL, str(tmp_path / "m.onnx"), plan_path=str(engine),
                                  max_batch_size=8)


def test_serve_runs_the_second_stage_on_either_runtime_as_the_torch_module_does(tmp_path):
    """What ``rtseg serve`` binds as ``<model>_stage2`` (no server needed): the stage-2 ONNX on
    ONNX Runtime and the torch module give the local torch stage 2's outputs, and the tensor specs
    have K as -1."""
    pytest.importorskip("onnxruntime")
    import torch

    from rtseg.families.base import TorchStage2
    from rtseg.segmenter import Segmenter
    from rtseg.serve import ServeSettings, _make_stage2, dynamic_batch_onnx

    seg = Segmenter(STAGE2_MODEL)
    module = seg.family.stage2(seg.net, seg.config)
    torch.manual_seed(0)
    feats = torch.randn(3, 64, 14, 14)
    class_ids = torch.tensor([0, 2, 1])
    expected = TorchStage2(module)({"roi_feats": feats, "class_ids": class_ids})
    onnx_path = dynamic_batch_onnx(seg, str(tmp_path))
    for runtime, path in (("onnxruntime", onnx_path), ("torch", None)):
        served = _make_stage2(ServeSettings(STAGE2_MODEL, runtime=runtime), seg, path)
        assert served.inputs == (("roi_feats", np.float32, (-1, 64, 14, 14)), ("class_ids", np.int64, (-1,)))
        assert served.outputs == (("mask_probs", np.float32, (-1, 28, 28)), ("maskiou", np.float32, (-1,)))
        got = served.run({"roi_feats": feats.numpy(), "class_ids": class_ids.numpy()})
        for name, value in expected.items():
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], value.numpy(), atol=1e-5, err_msg=f"{runtime} {name}")


# -- the real server -------------------------------------------------------------------------
class Server:
    """``rtseg serve`` in its own process group (so SIGKILL takes tritonserver and its stubs too)."""

    def __init__(self, cache: str, log_dir, model: str = MODEL) -> None:
        self.model = model
        self.cache = cache
        self.log_dir = log_dir
        self.port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.pytriton_home = tempfile.mkdtemp(prefix="rtseg-pt-")

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.port}/{self.model}"

    def start(self, timeout: float = 240) -> None:
        import tritonclient.grpc as grpcclient

        self.starts += 1
        self.shm_before = set(glob.glob("/dev/shm/psm_*"))
        log = open(self.log_dir / f"serve-{self.starts}.log", "w")
        # PYTRITON_HOME: PyTriton's workspace (a copy of tritonserver) that a SIGKILL leaves goes
        # into a folder the fixture removes, not ~/.cache/pytriton (short: it holds unix sockets)
        env = {**os.environ, "RTSEG_CACHE": self.cache, "PYTRITON_HOME": self.pytriton_home}
        self.proc = subprocess.Popen([*RTSEG, "serve", "--model", self.model, "--port", str(self.port),
                                      "--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port),
                                      "--queue-delay-us", "20000"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.port}")
        models = [self.model] + ([f"{self.model}_stage2"] if self.model == STAGE2_MODEL else [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.log_dir / f"serve-{self.starts}.log").read_text()[-3000:]
            try:
                if all(client.is_model_ready(m, client_timeout=2) for m in models):
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"rtseg serve not ready in {timeout} s")

    def statistics(self, model: str | None = None) -> dict:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.port}")
        return client.get_inference_statistics(model or self.model, as_json=True)["model_stats"][0]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            # what PyTriton had in /dev/shm outlives a SIGKILL of its process group: its tensor
            # store (named after its pid) and multiprocessing's segments (psm_*) that appeared
            # since this server started and no live process maps any more
            mapped = _mapped_shm()
            for leftover in glob.glob(f"/dev/shm/pytrtion{self.proc.pid}-*") + [
                    p for p in glob.glob("/dev/shm/psm_*") if p not in self.shm_before and os.path.basename(p) not in mapped]:
                try:
                    os.remove(leftover)
                except OSError:
                    pass

    def stop(self) -> int:
        """SIGTERM to ``rtseg serve``; returns its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _mapped_shm() -> set[str]:
    """Names of the /dev/shm files some live process has mapped."""
    names = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                names.update(os.path.basename(line.split()[-1]) for line in f if "/dev/shm/" in line)
        except (OSError, IndexError):
            continue
    return names


def _serve(tmp_path_factory, model: str = MODEL):
    pytest.importorskip("tritonclient.grpc")
    pytest.importorskip("pytriton.triton")
    base = tmp_path_factory.mktemp("triton")
    srv = Server(str(base / "cache"), base, model)
    srv.start()
    yield srv
    srv.kill()
    shutil.rmtree(srv.pytriton_home, ignore_errors=True)
    if srv.proc is not None:  # a kill leaves no orphan tritonserver holding the port
        try:
            os.killpg(srv.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serve(tmp_path_factory)


def test_unreachable_server_is_one_line():
    pytest.importorskip("tritonclient.grpc")
    port = free_port()
    proc = run_cli("run", "--max-frames", "1", "--backend", f"triton://127.0.0.1:{port}/{MODEL}")
    assert_one_line_error(proc, 6, "cannot reach", f"127.0.0.1:{port}")


@pytest.mark.slow  # ~20 s: the default run keeps the unreachable-server line and the two-pipeline test
def test_unknown_model_and_mismatched_model_are_one_line(server):
    proc = run_cli("run", "--max-frames", "1", "--backend", f"triton://127.0.0.1:{server.port}/no_such_model")
    assert_one_line_error(proc, 6, "no model 'no_such_model'")
    # yolact_resnet50 takes 550x550 images: the server's model (384x384) does not fit it
    proc = run_cli("run", "--max-frames", "1", "--model", "yolact_resnet50", "--backend", server.url)
    assert_one_line_error(proc, 6, "shape [-1, 3, 384, 384]", "[B, 3, 550, 550]")
    proc = run_cli("run", "--max-frames", "1", "--backend", f"triton://127.0.0.1:{server.port}")
    assert_one_line_error(proc, 2, "triton://HOST:PORT/MODEL")


def test_serve_port_in_use_is_one_line(server):
    proc = run_cli("serve", "--port", str(server.port), timeout=120)
    assert_one_line_error(proc, 2, f"127.0.0.1:{server.port}")


def _collect(endpoint: str, received: list, ready: threading.Event, stop: threading.Event) -> None:
    """Messages with their arrival time until ``stop``; the test sets it while the publisher is
    still up, so this subscriber never sees its publisher go away."""
    from rtseg.subscriber import subscribe

    ready.set()
    while not stop.is_set():
        gen = subscribe(endpoint, timeout=1.0)  # ends after 1 s without a message (server outage)
        try:
            for message in gen:
                received.append((time.monotonic(), message))
                if stop.is_set():
                    break
        finally:
            gen.close()


def _wait(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"a pipeline ended early ({what}): {p.stderr.read() if p.stderr else ''}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_two_pipelines_share_a_batching_server_survive_its_restart_and_match_local_onnxruntime(server, tmp_path):
    """The issue's acceptance: two ``rtseg run`` pipelines against one server at once;
    Triton's statistics show batching; SIGKILL of the server and a restart mid-run: both
    pipelines drop (count) frames meanwhile, reconnect and go on; every published frame's
    detections equal the local ONNX Runtime backend's on the same image."""
    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import SyntheticVideo

    seeds = (1, 2)
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in seeds]
    received: list[list] = [[] for _ in seeds]
    stop_subs = threading.Event()
    subs = []
    for endpoint, box in zip(endpoints, received):
        ready = threading.Event()
        t = threading.Thread(target=_collect, args=(endpoint, box, ready, stop_subs), daemon=True)
        t.start()
        assert ready.wait(10)
        subs.append(t)
    summaries = [tmp_path / f"summary-{s}.json" for s in seeds]
    env = {**os.environ, "RTSEG_CACHE": server.cache}
    runs = [subprocess.Popen([*RTSEG, "run", "--source", f"synthetic:{seed}", "--backend", server.url + "?timeout=10",
                              "--publish", endpoint, "--summary-json", str(summary)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for seed, endpoint, summary in zip(seeds, endpoints, summaries)]
    try:
        _wait(lambda: all(len(r) >= 6 for r in received), 240, "frames before the kill", runs)
        before = server.statistics()
        server.kill()
        t_killed = time.monotonic()
        time.sleep(2.0)  # both pipelines meet the dead server
        server.start()
        t_ready = time.monotonic()
        _wait(lambda: all(sum(t > t_ready for t, _ in r) >= 4 for r in received), 240, "frames after the restart", runs)
        after = server.statistics()
    finally:
        stop_subs.set()
        for t in subs:
            t.join(timeout=10)
        for p in runs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # rtseg run finishes the frames it accepted
        outs = [p.communicate(timeout=120) for p in runs]
    for p, (out, err) in zip(runs, outs):
        assert p.returncode == 0, err[-3000:]

    # Triton batched the two pipelines' requests: fewer executions than inferences
    assert int(before["execution_count"]) < int(before["inference_count"]), before
    assert int(after["inference_count"]) >= 8 and int(after["execution_count"]) <= int(after["inference_count"])

    reference = Segmenter(MODEL, backend="onnxruntime", cache_dir=str(tmp_path / "engines"))
    for seed, summary_path, box in zip(seeds, summaries, received):
        summary = json.loads(summary_path.read_text())
        # the frames met by the outage were dropped and counted, none lost otherwise
        assert summary["dropped_backend"] >= 1, summary
        assert summary["frames_read"] == summary["frames_processed"] + summary["dropped_backend"], summary
        assert summary["frames_published"] == summary["frames_processed"], summary
        seqs = [m.seq for _, m in box]
        assert seqs == sorted(set(seqs))
        assert any(t < t_killed for t, _ in box) and sum(t > t_ready for t, _ in box) >= 4
        video = SyntheticVideo(seed=seed)
        for _, message in box[:6] + box[-4:]:
            expected = reference(video.frame(message.seq).image)
            got = message.instances
            assert got.class_ids.tolist() == expected.class_ids.tolist(), message.seq
            np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
            np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-2)
            assert (got.masks_dense() != expected.masks_dense()).sum() <= 0.001 * got.masks_dense().size, message.seq


@pytest.mark.slow  # ~40 s; the default run's kill-and-restart test covers the drop-and-go-on path
def test_a_stalled_server_drops_frames_after_the_timeout_instead_of_stalling_the_stream(server, tmp_path):
    """SIGSTOP freezes the server with its connections open: requests get no answer. With
    ``?timeout=1`` each one is given up after a second and its frame dropped (counted); after
    SIGCONT frames flow again."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    received: list = []
    ready, stop_sub = threading.Event(), threading.Event()
    sub = threading.Thread(target=_collect, args=(endpoint, received, ready, stop_sub), daemon=True)
    sub.start()
    assert ready.wait(10)
    summary_path = tmp_path / "summary.json"
    run = subprocess.Popen([*RTSEG, "run", "--source", "synthetic", "--backend", server.url + "?timeout=1",
                            "--publish", endpoint, "--summary-json", str(summary_path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RTSEG_CACHE": server.cache})
    try:
        _wait(lambda: len(received) >= 3, 240, "frames before the stall", [run])
        os.killpg(server.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(5.0)
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
        t_resumed = time.monotonic()
        _wait(lambda: sum(t > t_resumed for t, _ in received) >= 3, 240, "frames after the stall", [run])
    finally:
        stop_sub.set()
        sub.join(timeout=10)
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["dropped_backend"] >= 2, summary  # at least one per worker during the 5 s stall
    assert summary["frames_read"] == summary["frames_processed"] + summary["dropped_backend"]
    assert "dropped by the backend" in out


def test_a_server_without_the_second_stage_is_one_error_at_construction(server):
    """What a CenterMask client meets on a server that serves only stage 1 (a repository from
    before stage 2 was exported, an older rtseg serve): here the real server has no
    ``<model>_stage2`` for the YOLACT model, and asking for it is one error line naming the fixes."""
    from rtseg.backends.triton_backend import TritonStage2
    from rtseg.errors import EngineError
    from rtseg.segmenter import Segmenter

    backend = Segmenter(MODEL, backend=server.url).backend
    try:
        with pytest.raises(EngineError) as info:
            TritonStage2(backend, expected_inputs={"masks": ("FP32", (-1, 1, 96, 96))},
                         expected_outputs={"maskiou": ("FP32", (-1,))})
    finally:
        backend.close()
    message = str(info.value)
    assert "\n" not in message and f"'{MODEL}_stage2'" in message
    assert "--format triton-repo" in message and "rtseg serve" in message


@pytest.fixture(scope="module")
def stage2_server(tmp_path_factory):
    yield from _serve(tmp_path_factory, STAGE2_MODEL)


def test_the_second_stage_runs_on_the_server_and_matches_local_torch(stage2_server, tmp_path):
    """CenterMask through ``rtseg serve``: stage 1 and the RoI heads (``<model>_stage2``) both on
    the server; the Instances equal local torch's on a synthetic frame, and the server's own
    statistics show the stage-2 model ran once per frame with detections."""
    from rtseg.backends.triton_backend import TritonStage2
    from rtseg.segmenter import Segmenter
    from rtseg.synthetic import SyntheticVideo

    remote = Segmenter(STAGE2_MODEL, backend=stage2_server.url)
    local = Segmenter(STAGE2_MODEL)
    assert isinstance(remote.stage2, TritonStage2)
    before = int(stage2_server.statistics(f"{STAGE2_MODEL}_stage2").get("inference_count", 0))  # zero: left out
    video = SyntheticVideo(seed=3)
    with_detections = 0
    for i in (0, 5):
        image = video.frame(i).image
        got, expected = remote(image), local(image)
        with_detections += len(expected) > 0
        assert got.class_ids.tolist() == expected.class_ids.tolist(), i
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
        np.testing.assert_allclose(got.mask_scores, expected.mask_scores, atol=1e-4)
        np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-2)
        dense = got.masks_dense()
        assert (dense != expected.masks_dense()).sum() <= 0.001 * max(dense.size, 1), i
    assert with_detections >= 1  # stage 2 had RoIs to run on
    stats = stage2_server.statistics(f"{STAGE2_MODEL}_stage2")
    assert int(stats.get("inference_count", 0)) - before == with_detections == remote.stage2.requests
    remote.backend.close()


def test_serve_stops_cleanly_on_sigterm(server):
    pid = server.proc.pid
    assert _group_commands(pid)  # tritonserver and its stub run in rtseg serve's process group
    assert server.stop() == 0
    assert "Triton server stopped" in (server.log_dir / f"serve-{server.starts}.log").read_text()
    # rtseg serve returned only after tritonserver and its stubs ended (nothing left holding
    # the ports); multiprocessing's resource tracker, if any, ends right after its parent
    assert not [c for c in _group_commands(pid) if "triton" in c], _group_commands(pid)


def _group_commands(pgid: int) -> list[str]:
    """Command lines of the live processes in process group ``pgid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().decode(errors="replace").rsplit(")", 1)[-1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return found
