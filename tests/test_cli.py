"""The command line as a user runs it: real processes, real sockets, real files."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time

import cv2
import pytest

from cli_helpers import RTSEG, assert_one_line_error, free_port, run_cli


def test_models_lists_variants_sizes_and_weight_sources():
    proc = run_cli("models")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "family", "input"]
    text = proc.stdout
    for name, size in [("yolact_base", "550x550"), ("yolact_im700", "700x700"), ("yolact_plus_resnet50", "550x550"),
                       ("yolact_resnet18_half_384 (default)", "384x384")]:
        assert name in text and size in text
    assert "yolact_plus_resnet50_54_800000.pth" in text
    # whether weights are built in is read from the package, not from a fixed string
    line = next(line for line in lines if line.startswith("centermask_lite_vovnet19_quarter_384"))
    assert "built in" in line and "none built in" not in line


def test_help_shows_examples():
    proc = run_cli("run", "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--publish" in proc.stdout
    assert "examples:" in run_cli("subscribe", "--help").stdout


@pytest.mark.parametrize(
    "args,code,fragments",
    [
        (["run", "--model", "yolact_resnet5"], 2, ["unknown model 'yolact_resnet5'", "yolact_resnet50"]),
        (["run", "--source", "no/such/video.mp4"], 3, ["no/such/video.mp4", "no such file"]),
        (["run", "--source", "rtsp://127.0.0.1:{port}/cam", "--open-timeout", "2"], 3, ["rtsp://127.0.0.1"]),
        (["run", "--source", "57", "--open-timeout", "2"], 3, ["camera", "57"]),
        (["run", "--weights", "{tmp}/empty.pth"], 4, ["empty.pth", "empty (0 bytes)"]),
        (["run", "--weights", "{tmp}/other.pth"], 4, ["does not fit", "missing", "unexpected"]),
        (["run", "--device", "tpu"], 2, ["device 'tpu'"]),
        (["run", "--record", "{tmp}/nodir/out.mp4"], 2, ["does not exist"]),
        (["run", "--display", "--max-frames", "2"], 2, ["--display needs an OpenCV build with GUI support"]),
    ],
)
def test_user_errors_end_in_one_line_and_an_exit_code(args, code, fragments, tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    import torch

    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    args = [a.format(tmp=tmp_path, port=free_port()) for a in args]
    proc = run_cli(*args, timeout=120)
    assert_one_line_error(proc, code, *fragments)
    # nothing but rtseg's own log lines: no OpenCV / FFmpeg diagnostics around the error
    assert all(line.startswith("rtseg: ") for line in proc.stderr.splitlines()), proc.stderr


def test_publish_address_in_use_is_one_line(tmp_path):
    port = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        proc = run_cli("run", "--max-frames", "2", "--publish", f"tcp://127.0.0.1:{port}")
    assert_one_line_error(proc, 5, f"tcp://127.0.0.1:{port}")


def _collect(endpoint: str, received: list, ready: threading.Event, timeout: float) -> None:
    from rtseg.publish import subscribe

    gen = subscribe(endpoint, timeout=timeout)
    ready.set()
    for message in gen:
        received.append(message)


def _run_and_subscribe(model: str, frames: int, tmp_path, timeout: float):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    received: list = []
    ready = threading.Event()
    sub = threading.Thread(target=_collect, args=(endpoint, received, ready, 30.0), daemon=True)
    sub.start()
    assert ready.wait(10)
    summary_path = tmp_path / "summary.json"
    proc = run_cli("run", "--source", "synthetic", "--model", model, "--max-frames", str(frames),
                   "--publish", endpoint, "--summary-json", str(summary_path), timeout=timeout)
    sub.join(timeout=60)
    return proc, received, json.loads(summary_path.read_text()) if summary_path.exists() else None


def test_run_publishes_every_frame_to_a_subscriber_started_beforehand(tmp_path):
    proc, received, summary = _run_and_subscribe("yolact_resnet18_half_384", 100, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert summary["frames_processed"] == summary["frames_published"] == 100
    assert [m.seq for m in received] == list(range(100))
    assert all(m.source == "synthetic" and m.instances.image_size == (480, 640) for m in received)
    assert "processed 100" in proc.stdout and "end to end" in proc.stdout


@pytest.mark.slow
def test_issue_command_with_official_resnet50(tmp_path):
    """The exact command of the issue (random weights: no official checkpoint is available here)."""
    proc, received, summary = _run_and_subscribe("yolact_resnet50", 100, tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert [m.seq for m in received] == list(range(100))


def test_record_writes_every_frame(tmp_path):
    out = tmp_path / "demo.mp4"
    proc = run_cli("run", "--max-frames", "12", "--record", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 12 frames to {out}" in proc.stdout
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()


def _default_sigint() -> None:
    """In the child: SIGINT back to its default. A test runner started in the background by a
    non-interactive shell inherits SIGINT *ignored*, and Python then installs no Ctrl-C handler,
    so the signal this test sends would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_run_cleanly_and_flush_the_recording(sig, tmp_path):
    out = tmp_path / "stopped.avi"
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen([*RTSEG, "run", "--record", str(out), "--summary-json", str(summary_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == (130 if sig == signal.SIGINT else 0), stderr
    assert "Traceback" not in stderr
    summary = json.loads(summary_path.read_text())
    assert summary["frames_processed"] == summary["frames_read"] > 0
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames_processed"]
    cap.release()


def test_data_train_eval_commands_work_end_to_end(tmp_path):
    data = tmp_path / "shapes"
    proc = run_cli("data", "synthetic", str(data), "--images", "4", "--seed", "3", "--size", "192x256")
    assert proc.returncode == 0, proc.stderr
    assert (data / "annotations.json").exists() and len(list((data / "images").iterdir())) == 4
    again = run_cli("data", "synthetic", str(data), "--images", "4")
    assert_one_line_error(again, 2, str(data))
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(data), "--out", str(out), "--iterations", "2", "--batch-size", "2",
                   "--warmup-iters", "1")
    assert proc.returncode == 0, proc.stderr
    final = out / "yolact_resnet18_half_384_final_fp16.pth"
    assert final.exists() and (out / "last.pth").exists()
    proc = run_cli("eval", "--weights", str(final), "--data", str(data), "--json", str(tmp_path / "eval.json"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= result["segm"]["AP"] <= 1.0 and "AP" in proc.stdout


def test_export_writes_onnx_and_manifest_and_run_uses_it(tmp_path):
    out = tmp_path / "m.onnx"
    proc = run_cli("export", "--format", "onnx", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and (tmp_path / "m.json").is_file()
    assert "outputs loc[1, 9207, 4]" in proc.stdout
    summary = tmp_path / "summary.json"
    proc = run_cli("run", "--backend", "onnxruntime", "--engine", str(out), "--max-frames", "6",
                   "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(summary.read_text())["frames_processed"] == 6


@pytest.mark.parametrize("args, code, fragment", [
    # TensorRT-RTX (a dev dependency) builds engines here; datacenter TensorRT is not installed
    (("export", "--format", "engine", "--trt-flavour", "tensorrt"), 6, "tensorrt is not installed: pip install 'rtseg[tensorrt]'"),
    (("run", "--backend", "tensorrt", "--engine", "x.engine", "--max-frames", "1"), 6, "runs on a GPU: pass --device cuda"),
    (("run", "--backend", "onnxruntime", "--engine", "missing.onnx", "--max-frames", "1"), 6, "'missing.onnx' not found"),
    (("export", "--size", "320x320"), 2, "takes 384x384 input, got --size 320x320"),
    (("export", "--dynamic-batch", "4,2,8"), 2, "needs 1 <= MIN <= OPT <= MAX"),
    (("build-engine", "--onnx", "nothing.onnx"), 6, "no manifest"),
])
def test_export_and_engine_errors_are_one_line(args, code, fragment):
    assert_one_line_error(run_cli(*args), code, fragment)
