"""Several streams through one Pipeline: the batcher (one frame per stream per batch, round
robin, no lockstep), per-stream order, and a real run over synthetic, file and RTSP sources."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rtseg.errors import ConfigError
from rtseg.pipeline import Pipeline
from rtseg.preflight import per_stream_path, read_sources_file, stream_names
from rtseg.segmenter import StageTimes
from rtseg.sources import open_source
from rtseg.structures import Instances


class BatchRecorder:
    """A segmenter that records what each model call got (stream of every frame via its pixel tag)."""

    class_names = ("a",)

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.lock = threading.Lock()

    def _one(self):
        return Instances.empty((8, 8)), StageTimes(0.0, 0.0, 0.0)

    def process(self, image):
        return self.process_batch([image])[0]

    def process_batch(self, images):
        with self.lock:
            self.calls.append([int(im[0, 0, 0]) for im in images])
        return [self._one() for _ in images]


class Tagged:
    """A non-live source whose frames carry its tag in pixel (0, 0); ``gate`` stalls it."""

    is_live = False

    def __init__(self, tag: int, n: int, gate: threading.Event | None = None) -> None:
        self.source_id, self.tag, self.n, self.gate, self.i = f"tagged:{tag}", tag, n, gate, 0

    def read(self):
        from rtseg.structures import Frame

        if self.gate is not None:
            self.gate.wait()
        if self.i >= self.n:
            return None
        image = np.full((8, 8, 3), self.tag, np.uint8)
        frame = Frame(seq=self.i, source_id=self.source_id, capture_time=0.0, capture_monotonic=0.0, image=image)
        self.i += 1
        return frame

    def close(self):
        if self.gate is not None:
            self.gate.set()


def test_a_batch_holds_at_most_one_frame_per_stream_and_each_stream_keeps_its_order():
    seg, seen = BatchRecorder(), []
    sources = [Tagged(t, 12) for t in (1, 2, 3)]
    summary = Pipeline(sources, seg, batch=3, workers=2, on_frame=seen.append).run()
    assert all(len(set(call)) == len(call) for call in seg.calls)
    assert max(map(len, seg.calls)) <= 3
    for name in ("0", "1", "2"):
        assert [f.seq for f in seen if f.stream == name] == list(range(12))
    assert summary.frames_processed == 36 and set(summary.streams) == {"0", "1", "2"}
    assert summary.streams["1"]["frames_processed"] == 12


def test_a_stalled_stream_does_not_block_the_others():
    gate = threading.Event()
    seg, seen = BatchRecorder(), []
    stalled = Tagged(9, 5, gate)
    pipeline = Pipeline([Tagged(1, 20), stalled, Tagged(2, 20)], seg, batch=3, batch_wait_ms=1,
                        on_frame=seen.append)

    def release_when_others_done(frame):
        seen.append(frame)
        if sum(f.stream != "1" for f in seen) == 40:
            gate.set()  # the others finished every frame while stream 1 delivered nothing

    pipeline.on_frame = release_when_others_done
    pipeline.run()
    assert [f.seq for f in seen if f.stream == "1"] == list(range(5))
    first_stalled = next(i for i, f in enumerate(seen) if f.stream == "1")
    assert first_stalled == 40


def test_sources_file_names_comments_and_errors(tmp_path):
    f = tmp_path / "cams.txt"
    f.write_text("# cameras\nsynthetic:1 left\n\nsynthetic:2   # no name\nrtsp://h/x#frag right\n")
    entries = read_sources_file(str(f))
    assert entries == [("synthetic:1", "left"), ("synthetic:2", None), ("rtsp://h/x#frag", "right")]
    assert stream_names(entries) == ["left", "1", "right"]
    f.write_text("synthetic:1 a\nsynthetic:2 b extra\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_sources_file(str(f))
    with pytest.raises(ConfigError, match="used by sources 1 and 2"):
        stream_names([("a", "x"), ("b", "x")])
    assert per_stream_path("out/demo.mp4", "cam1") == "out/demo.cam1.mp4"


@pytest.mark.rtsp
def test_synthetic_file_and_rtsp_streams_killing_the_camera_leaves_the_others_whole(rtsp_server, tmp_path):
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(30):
        writer.write(np.full((48, 64, 3), i * 8, np.uint8))
    writer.release()
    sources = [open_source("synthetic:1:64x48"), open_source("synthetic:2:64x48"), open_source(str(video)),
               open_source(rtsp_server.url, read_timeout=1, reconnect_timeout=2)]
    for s in sources:
        s.open()
    seen, killed = [], threading.Event()

    def on_frame(frame):
        seen.append(frame)
        if frame.stream == "3" and not killed.is_set():
            killed.set()
            rtsp_server.kill()  # mid-run: the camera dies after its first frame got through

    seg = BatchRecorder()
    pipeline = Pipeline(sources, seg, max_frames=30, batch=4, on_frame=on_frame)
    try:
        pipeline.run()
    except Exception as exc:  # the lost camera is reported once the others are done
        assert "3" in str(exc) or "rtsp" in str(exc).lower()
    for name in ("0", "1", "2"):
        assert [f.seq for f in seen if f.stream == name] == list(range(30))
    assert killed.is_set()
    assert pipeline.result.streams["3"]["error"] is not None


def test_malformed_sources_file_is_one_line_before_the_model_loads(tmp_path):
    from cli_helpers import assert_one_line_error, run_cli

    f = tmp_path / "cams.txt"
    f.write_text("synthetic:1 a\n\nsynthetic:2 b c\n")
    assert_one_line_error(run_cli("run", "--sources", str(f), timeout=60), 2, "line 3", "SOURCE [NAME]")
    f.write_text("synthetic:1 a\nsynthetic:2 a\n")
    assert_one_line_error(run_cli("run", "--sources", str(f), timeout=60), 2, "'a'", "used by sources 1 and 2")


def test_two_sources_on_the_command_line_give_per_stream_summary_and_recordings(tmp_path):
    from cli_helpers import run_cli

    out = tmp_path / "out.mp4"
    proc = run_cli("run", "--source", "synthetic:1:160x120", "--source", "synthetic:2:160x120", "--max-frames", "3",
                   "--record", str(out), "--summary-json", str(tmp_path / "s.json"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    import json

    summary = json.loads((tmp_path / "s.json").read_text())
    assert {k: v["frames_processed"] for k, v in summary["streams"].items()} == {"0": 3, "1": 3}
    assert (tmp_path / "out.0.mp4").is_file() and (tmp_path / "out.1.mp4").is_file()


def test_paced_synthetic_source_is_live_and_skips_the_frames_a_slow_reader_missed():
    import time

    from rtseg.errors import SourceError

    with open_source("synthetic:3:64x48@20") as src:
        assert src.is_live and not open_source("synthetic:3").is_live
        first = src.read()
        time.sleep(0.5)  # ~10 frames due meanwhile: the next read is the newest one, not the next
        second = src.read()
        assert second.seq > first.seq + 1 and src.stats.frames_dropped == second.seq - first.seq - 1
    with pytest.raises(SourceError, match="@FPS"):
        open_source("synthetic:3@fast")
