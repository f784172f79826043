"""The threaded pipeline: every frame of a file, in order; live-source policy; errors; stop."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.pipeline import Pipeline
from rtseg.render import VideoRecorder
from rtseg.segmenter import Segmenter
from rtseg.sources import open_source
from rtseg.structures import Frame, Instances

N_FRAMES = 24
BLOCK = 16  # index encoded as 8 binary blocks of BLOCK x BLOCK pixels (robust to MJPG)


def encode_index(i: int, h: int = 96, w: int = 160) -> np.ndarray:
    img = np.full((h, w, 3), 40, np.uint8)
    for bit in range(8):
        if (i >> bit) & 1:
            img[8:8 + BLOCK, 8 + bit * BLOCK:8 + (bit + 1) * BLOCK] = 230
    return img


def decode_index(img: np.ndarray) -> int:
    value = 0
    for bit in range(8):
        block = img[8 + 4:8 + BLOCK - 4, 8 + bit * BLOCK + 4:8 + (bit + 1) * BLOCK - 4]
        if block.mean() > 135:
            value |= 1 << bit
    return value


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "numbered.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 96))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(encode_index(i))
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter("yolact_resnet18_half_384", score_threshold=0.3)


class SlowSegmenter:
    """A stand-in model that takes a fixed time per frame (to exercise queue policies)."""

    class_names = ("thing",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process(self, image):
        from rtseg.segmenter import StageTimes

        time.sleep(self.seconds)
        return Instances.empty(image.shape[:2]), StageTimes(0.0, self.seconds, 0.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_video_file_is_processed_frame_for_frame(video_file, segmenter, tmp_path, workers):
    seen: list[Frame] = []
    recorder = VideoRecorder(str(tmp_path / "out.avi"), fps=25)
    pipeline = Pipeline(open_source(video_file), segmenter, recorder=recorder, on_frame=seen.append, queue_size=2,
                        workers=workers)
    summary = pipeline.run()
    recorder.close()
    assert [f.seq for f in seen] == list(range(N_FRAMES))
    assert [decode_index(f.image) for f in seen] == list(range(N_FRAMES))
    assert all(isinstance(f.instances, Instances) and f.rendered is not None for f in seen)
    assert summary.frames_read == summary.frames_processed == N_FRAMES
    assert summary.dropped_source == summary.dropped_stale == 0
    assert set(summary.stages_ms) >= {"preprocess", "inference", "postprocess", "render", "end to end"}
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    cap.release()


def test_synthetic_source_with_max_frames(segmenter):
    seen = []
    summary = Pipeline(open_source("synthetic"), segmenter, max_frames=5, on_frame=seen.append).run()
    assert [f.seq for f in seen] == [0, 1, 2, 3, 4]
    assert summary.frames_processed == 5 and summary.stopped_by == "max frames (5)"
    text = summary.format()
    assert "read 5, processed 5" in text and "end to end" in text


def test_stop_finishes_accepted_frames_and_returns_promptly():
    source = open_source("synthetic")
    seen = []
    pipeline = Pipeline(source, SlowSegmenter(0.05), on_frame=seen.append, queue_size=2)
    timer = threading.Timer(0.5, pipeline.stop, args=("interrupted (Ctrl-C)",))
    timer.start()
    summary = pipeline.run()
    timer.join()
    assert summary.stopped_by == "interrupted (Ctrl-C)"
    # every frame that capture handed on was processed and reached the end (none lost)
    assert summary.frames_processed == summary.frames_read == len(seen)
    assert [f.seq for f in seen] == list(range(len(seen)))


class FakeLiveSource:
    """A live source delivering frames faster than the model: the pipeline must keep only the newest."""

    is_live = True
    source_id = "fake-live"

    def __init__(self, n: int) -> None:
        self.n = n
        self.i = 0

    def read(self):
        if self.i >= self.n:
            return None
        time.sleep(0.005)
        f = Frame(seq=self.i, source_id=self.source_id, capture_time=time.time(), image=encode_index(self.i),
                  capture_monotonic=time.perf_counter())
        self.i += 1
        return f

    def close(self):
        pass


def test_live_source_drops_stale_frames_instead_of_queueing_them():
    seen = []
    summary = Pipeline(FakeLiveSource(60), SlowSegmenter(0.05), on_frame=seen.append).run()
    seqs = [f.seq for f in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, no duplicates
    assert summary.dropped_stale > 0
    assert summary.frames_processed + summary.dropped_stale == summary.frames_read == 60
    assert seqs[-1] == 59  # the newest frame is never dropped


def test_source_error_in_capture_thread_surfaces_as_itself(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="broken.mp4"):
        Pipeline(open_source(str(bad), open_timeout=5), SlowSegmenter(0.0)).run()


class JitterSegmenter(SlowSegmenter):
    """Takes a different time per frame, so that two workers finish out of order."""

    def process(self, image):
        from rtseg.segmenter import StageTimes

        seconds = 0.03 if decode_index(image) % 3 == 0 else 0.001
        time.sleep(seconds)
        return Instances.empty(image.shape[:2]), StageTimes(0.0, seconds, 0.0)


def test_several_workers_keep_file_order_when_they_finish_out_of_order(video_file):
    seen = []
    summary = Pipeline(open_source(video_file), JitterSegmenter(0), on_frame=seen.append, workers=3).run()
    assert [decode_index(f.image) for f in seen] == list(range(N_FRAMES))
    assert summary.frames_processed == N_FRAMES


def test_abandon_drops_only_frames_not_yet_segmented_and_counts_them():
    """A second Ctrl-C: the frames waiting for inference are dropped and counted; every frame
    that was segmented still reaches the end, in order; none vanishes uncounted."""
    seen = []
    pipeline = Pipeline(open_source("synthetic"), SlowSegmenter(0.1), on_frame=seen.append, queue_size=4)

    def stop_twice():
        pipeline.stop("interrupted (Ctrl-C)")
        time.sleep(0.05)
        pipeline.abandon()

    timer = threading.Timer(0.6, stop_twice)
    timer.start()
    summary = pipeline.run()
    timer.join()
    assert summary.stopped_by == "interrupted (Ctrl-C)"
    assert summary.abandoned > 0 and f"abandoned {summary.abandoned}" in summary.format()
    assert summary.frames_processed == len(seen) and [f.seq for f in seen] == list(range(len(seen)))
    assert summary.frames_read == summary.frames_processed + summary.abandoned


def test_keyboard_interrupts_in_the_waiting_thread_never_leave_a_stage_running():
    """Without a handler of the caller's, Ctrl-C is KeyboardInterrupt in run()'s thread: the
    first stops, the second abandons, and run() returns only once every stage has ended
    (leaving with threads inside torch aborts the process at exit)."""
    import _thread

    seen = []
    pipeline = Pipeline(open_source("synthetic"), SlowSegmenter(0.1), on_frame=seen.append, queue_size=4)
    timers = [threading.Timer(0.5, _thread.interrupt_main), threading.Timer(0.55, _thread.interrupt_main)]
    for t in timers:
        t.start()
    summary = pipeline.run()
    for t in timers:
        t.join()
    stages = ("rtseg-capture", "rtseg-inference-", "rtseg-render", "rtseg-publish")
    assert not [t for t in threading.enumerate() if t.name.startswith(stages)]
    assert summary.stopped_by == "interrupted (Ctrl-C)"
    assert summary.frames_read == summary.frames_processed + summary.abandoned == len(seen) + summary.abandoned


class FailingSource:
    """Delivers ``n`` frames, then is lost for good (as a live source after its reconnect timeout)."""

    is_live = False
    source_id = "failing"

    def __init__(self, n: int) -> None:
        self.n, self.i = n, 0

    def read(self):
        if self.i >= self.n:
            raise SourceError("source 'failing' lost: no frame for 2s after 1 reconnect attempt(s)")
        self.i += 1
        return Frame(seq=self.i - 1, source_id=self.source_id, capture_time=time.time(), image=encode_index(self.i),
                     capture_monotonic=time.perf_counter())

    def close(self):
        pass


def test_an_error_still_leaves_the_summary_of_what_was_processed():
    pipeline = Pipeline(FailingSource(5), SlowSegmenter(0.0))
    with pytest.raises(SourceError, match="lost"):
        pipeline.run()
    summary = pipeline.result
    assert summary.frames_read == summary.frames_processed == 5
    assert summary.stopped_by == "error" and "lost" in summary.error
    assert "lost" not in summary.format()  # the caller reports the error itself, once
