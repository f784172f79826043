"""tools/gpu_check.py where no GPU is: its arguments, its one no-GPU line, its verdict and report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0", "memory_gib": 139.8, "torch": "2.14.1", "cuda": "12.8"}


def test_arguments_are_parsed_and_checked():
    args = gpu_check.parse_args(["--minutes", "5", "--models", "a,b", "--frames", "4"])
    assert args.minutes == 5 and args.models == ["a", "b"] and args.frames == 4 and not args.no_install
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--minutes", "0"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == [
        "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False): nothing was run"]
    assert not (tmp_path / "o").exists()


def test_the_verdict_on_tensorrt_rtx_is_plain():
    assert gpu_check.rtx_verdict(True, [False, False], H200) == (
        "TensorRT-RTX engines DO NOT RUN on this NVIDIA H200 (compute capability 9.0, outside TensorRT-RTX 1.7's "
        "targets 7.5, 8.0, 8.6, 8.9, 12.0, 12.1)")
    assert gpu_check.rtx_verdict(True, [True], dict(H200, name="RTX 4090", compute_capability="8.9")) == (
        "TensorRT-RTX engines RUN on this RTX 4090 (compute capability 8.9)")
    assert "run only in part" in gpu_check.rtx_verdict(True, [True, False], H200)
    assert "not installed" in gpu_check.rtx_verdict(False, [], H200)


def test_the_report_renders_rows_errors_and_the_verdict(tmp_path):
    report = gpu_check.Report(tmp_path, 1)
    report.data["steps"] = {
        "pytest -m gpu": {"result": {"summary": "40 passed in 12.0s"}},
        "pytest -m tensorrt": {"skipped": "time budget spent"},
        "engines": {"result": {"rtx_verdict": gpu_check.rtx_verdict(True, [False], H200), "rows": [
            {"model": "m", "runtime": "tensorrt-rtx", "batch": 1, "precision": "fp32", "error": "EngineError: no",
             "raw_attempt": {"validity": "INVALID", "diagnostics": ["UNSUPPORTED_CC"], "deserialized": False}},
            {"model": "m", "runtime": "tensorrt", "batch": 8, "precision": "fp16", "inference_ms": 3.2,
             "images_per_s": 2500.0, "max_rel_err": 1.5e-3}]}},
        "torch stages": {"result": [{"model": "m", "runtime": "torch CUDA", "batch": 1, "precision": "fp32",
                                     "preprocess_ms": 1.0, "inference_ms": 5.0, "postprocess_ms": 2.0, "fps": 125.0}]},
    }
    gpu_check.markdown(report, H200)
    report.write()
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith("## GPU check ") and "NVIDIA H200 (compute capability 9.0" in text
    assert "**TensorRT-RTX engines DO NOT RUN on this NVIDIA H200" in text
    assert "- `pytest -m gpu`: 40 passed in 12.0s" in text and "- `pytest -m tensorrt`: time budget spent" in text
    assert "| m | torch CUDA | 1 | fp32 | 1.0 | 5.0 | 2.0 | 125.0 |" in text
    assert "| m | tensorrt | 8 | fp16 |  | 3.2 |  | 2500.0 | 1.5e-03 |" in text and "EngineError: no · TensorRT-RTX itself: validity INVALID UNSUPPORTED_CC, deserialized False, ran False" in text
    assert (tmp_path / "gpu_check.json").exists()


def test_the_sync_counter_counts_every_thread_and_puts_torch_back():
    import threading

    import torch

    device_sync, stream_sync = torch.cuda.synchronize, torch.cuda.Stream.synchronize
    with gpu_check.SyncCounter() as count:
        assert torch.cuda.synchronize is not device_sync

        def call():
            try:
                torch.cuda.synchronize()  # counted, then torch's own (which needs a GPU here)
            except Exception:
                pass

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert count.device == 3 and count.stream == 0
    assert torch.cuda.synchronize is device_sync and torch.cuda.Stream.synchronize is stream_sync


def test_the_report_renders_the_no_serialisation_checks(tmp_path):
    report = gpu_check.Report(tmp_path, 1)
    report.data["steps"] = {
        "hot-path syncs": {"result": {"ok": True, "rows": [
            {"model": "m", "postprocess": "cuda", "frames": 60, "device_syncs": 0, "stream_syncs": 60,
             "stream_syncs_per_frame": 1.0, "sync_debug_per_frame": 3.0, "fps": 210.5}]}},
        "process_batch vs process": {"result": {"ok": True, "rows": [
            {"model": "m", "postprocess": "torch", "batch_of_one_equal": True, "batch_of_three_same": True,
             "batch_of_three_max_box_err_px": 0.01}]}},
        "half": {"result": {"rows": [{"model": "m", "instances_fp32": 5, "instances_fp16": 5, "same_classes": True,
                                      "max_box_err_px": 0.4,
                                      "fp32": {"preprocess_ms": 1.0, "inference_ms": 4.0, "postprocess_ms": 2.0},
                                      "fp16": {"preprocess_ms": 1.0, "inference_ms": 2.5, "postprocess_ms": 2.0}}],
                            "cli": {"command": "rtseg run --half --batch 2", "returncode": 0}}},
        "multistream": {"result": {"returncode": 0, "table": "streams batched FPS\n      4   120.00"}},
    }
    gpu_check.markdown(report, H200)
    text = "\n".join(report.lines)
    assert "| m | cuda | 60 | 0 | 1.0 | 3.0 | 210.5 |" in text
    assert "| m | torch | True | True | 0.01 |" in text
    assert "| m | 5 / 5 | True | 0.4 | 1.0/4.0/2.0 | 1.0/2.5/2.0 |" in text
    assert "`rtseg run --half --batch 2`: exit 0" in text and "      4   120.00" in text


def test_the_check_fits_its_device_time():
    assert gpu_check.parse_args([]).minutes == 6.0
    assert "timeout 420 " in (ROOT / "tools" / "gpu_check.sh").read_text()
