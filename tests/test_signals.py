"""Signals to a real ``rtseg run`` process: two Ctrl-C in quick succession, and a signal while
the model is still loading. Each run is a real process sent real signals; the recording is
read back with OpenCV, frame by frame."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import cv2
import pytest

from cli_helpers import RTSEG


def _default_sigint() -> None:
    """In the child: SIGINT back to its default. A test runner started in the background by a
    non-interactive shell inherits SIGINT *ignored*, and Python then installs no Ctrl-C handler,
    so the signals this test sends would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _decoded_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} cannot be opened"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.mark.parametrize("gap", [0.05, pytest.param(0.2, marks=pytest.mark.slow), pytest.param(0.5, marks=pytest.mark.slow)])
def test_a_second_ctrl_c_still_gives_130_the_summary_and_a_playable_recording(gap, tmp_path):
    """Was: 'terminate called without an active exception', SIGABRT, no summary, a recording that
    could lack its index. The second KeyboardInterrupt left the pipeline's threads inside torch
    while the interpreter exited. Now the second Ctrl-C drops the frames not yet segmented
    (counted as abandoned) and finishes the rest."""
    out = tmp_path / "twice.mp4"
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen([*RTSEG, "run", "--record", str(out), "--summary-json", str(summary_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0) and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # frames in every queue
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr
    summary = json.loads(summary_path.read_text())
    assert summary["stopped_by"] == "interrupted (Ctrl-C)"
    # every frame read was segmented and recorded, or counted as abandoned: none vanished
    assert summary["frames_read"] == summary["frames_processed"] + summary["abandoned"] + summary["dropped_stale"]
    assert summary["frames_processed"] > 0
    assert f"processed {summary['frames_processed']}," in stdout and "end to end" in stdout
    assert f"wrote {summary['frames_processed']} frames to {out}" in stdout
    assert _decoded_frames(out) == summary["frames_processed"]


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 0, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_while_the_model_loads_exits_with_the_summary(sig, code, word, tmp_path):
    """Was (SIGTERM): killed by the signal, no message, although the README promises exit 0.
    The handlers are installed before torch is imported and the model loads."""
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen([*RTSEG, "run", "--max-frames", "5", "--summary-json", str(summary_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        seen = []
        for line in proc.stderr:  # "loading model" is logged before torch is imported
            seen.append(line)
            if "loading model" in line:
                proc.send_signal(sig)
                break
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(seen) + stderr
    assert proc.returncode == code, stderr
    assert f"{word} while loading the model: nothing was processed" in stderr
    assert "Traceback" not in stderr
    assert "read 0, processed 0" in stdout
    summary = json.loads(summary_path.read_text())
    assert summary["frames_read"] == 0 and summary["stopped_by"].startswith(word)
