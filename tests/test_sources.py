"""Tests for rtseg.sources with real files written by OpenCV and a real RTSP server."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.sources import (
    CameraSource,
    ImageFilesSource,
    StreamSource,
    SyntheticSource,
    VideoFileSource,
    open_source,
)
from rtseg.synthetic import SyntheticVideo

from rtsp_server import free_port

W, H = 160, 128
BLOCK = 48  # two solid blocks carry the frame index; JPEG keeps their means within +-3


def indexed_image(i: int) -> np.ndarray:
    """A frame whose index ``0 <= i < 256`` survives lossy compression."""
    image = np.full((H, W, 3), (40, 90, 140), np.uint8)
    image[8:8 + BLOCK, 8:8 + BLOCK] = (i % 16) * 16 + 8
    image[8:8 + BLOCK, 80:80 + BLOCK] = (i // 16) * 16 + 8
    cv2.putText(image, str(i), (10, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    return image


def decode_index(image: np.ndarray) -> int:
    def level(block: np.ndarray) -> int:
        return int(round((float(block[8:-8, 8:-8].mean()) - 8) / 16))

    return level(image[8:8 + BLOCK, 8:8 + BLOCK]) + 16 * level(image[8:8 + BLOCK, 80:80 + BLOCK])


def write_video(path, n: int, fourcc: str = "MJPG") -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (W, H))
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc} to {path.suffix}"
    for i in range(n):
        writer.write(indexed_image(i))
    writer.release()


def read_all(source) -> list:
    with source:
        return list(source)


# -- video files ---------------------------------------------------------------------------
@pytest.mark.parametrize(("fourcc", "ext"), [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_video_file_delivers_every_frame_in_order(tmp_path, fourcc, ext):
    path = tmp_path / f"clip{ext}"
    write_video(path, 40, fourcc)
    source = open_source(str(path))
    assert isinstance(source, VideoFileSource) and not source.is_live
    frames = read_all(source)
    assert [decode_index(f.image) for f in frames] == list(range(40))
    assert [f.seq for f in frames] == list(range(40))
    assert all(f.source_id == str(path) and f.image.shape == (H, W, 3) for f in frames)
    assert all(f.capture_time > 0 and f.capture_monotonic > 0 for f in frames)
    assert source.stats.frames_read == 40 and source.stats.frames_skipped == 0
    assert source.read() is None  # closed


def test_video_file_max_frames_and_loop(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 12)
    assert len(read_all(open_source(str(path), max_frames=5))) == 5
    frames = read_all(open_source(str(path), loop=True, max_frames=30))
    assert [f.seq for f in frames] == list(range(30))
    assert [decode_index(f.image) for f in frames] == [i % 12 for i in range(30)]


def test_video_file_with_garbled_middle_delivers_what_decodes(tmp_path, caplog):
    path = tmp_path / "clip.avi"
    write_video(path, 60)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(len(data) * 4 // 10, len(data) * 6 // 10, 997):
        data[offset:offset + 50] = rng.integers(0, 256, 50, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))

    caplog.set_level(logging.WARNING, logger="rtseg.sources")
    source = open_source(str(path))
    frames = read_all(source)
    indices = [decode_index(f.image) for f in frames]
    assert 40 <= len(frames) < 60
    # the clean start and end are intact (a garbled frame may still decode, garbled)
    assert indices[:20] == list(range(20))
    assert indices[-10:] == list(range(50, 60))
    assert all(b > a for a, b in zip([f.seq for f in frames], [f.seq for f in frames][1:]))
    assert source.stats.frames_skipped >= 1
    # the container says 60 frames: each one is either delivered or counted as skipped
    assert source.stats.frames_read + source.stats.frames_skipped == 60
    assert "undecodable" in caplog.text


def test_truncated_video_file_delivers_its_first_part(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    frames = read_all(open_source(str(path)))
    indices = [decode_index(f.image) for f in frames]
    assert 10 <= len(frames) < 60
    # the last frame may be cut in half and decode partly garbled; all others are intact
    assert indices[:-1] == list(range(len(frames) - 1))


def test_file_that_is_not_a_video_raises_on_open(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    source = open_source(str(path))
    with pytest.raises(SourceError, match="cannot open source .*noise.mp4"):
        source.open()
    source.close()


# -- images --------------------------------------------------------------------------------
def test_image_file_is_one_frame(tmp_path):
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), indexed_image(7))
    source = open_source(str(path))
    assert isinstance(source, ImageFilesSource) and not source.is_live
    frames = read_all(source)
    assert len(frames) == 1 and frames[0].seq == 0
    assert np.array_equal(frames[0].image, indexed_image(7))  # PNG is lossless


def test_gray_image_is_delivered_as_bgr(tmp_path):
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), np.full((20, 30), 77, np.uint8))
    (frame,) = read_all(open_source(str(path)))
    assert frame.image.shape == (20, 30, 3) and np.all(frame.image == 77)


def test_folder_delivers_images_sorted_and_skips_other_files(tmp_path, caplog):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"frame_{i:03d}.png"), indexed_image(i))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")  # sorts first
    (tmp_path / "subdir").mkdir()
    caplog.set_level(logging.WARNING, logger="rtseg.sources")
    source = open_source(str(tmp_path))
    frames = read_all(source)
    assert [decode_index(f.image) for f in frames] == [0, 1, 2]
    assert [f.seq for f in frames] == [1, 2, 3]  # position among the image files
    assert source.stats.frames_skipped == 2  # notes.txt and broken.png
    assert "notes.txt" in caplog.text and "broken.png" in caplog.text


def test_folder_loop(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), indexed_image(i))
    frames = read_all(open_source(str(tmp_path), loop=True, max_frames=7))
    assert [decode_index(f.image) for f in frames] == [0, 1, 2, 0, 1, 2, 0]
    assert [f.seq for f in frames] == list(range(7))


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "readme.md").write_text("nothing to see")
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path)).open()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no image files"):
        with open_source(str(empty)):
            pass


def test_undecodable_single_image_is_an_error(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match="could not be decoded"):
        open_source(str(path)).open()


# -- errors from the spec ---------------------------------------------------------------
def test_missing_path_is_a_one_line_error(tmp_path):
    spec = str(tmp_path / "foo.mp4")
    with pytest.raises(SourceError) as info:
        open_source(spec)
    assert str(info.value) == f"cannot open source '{spec}': no such file or directory"
    assert info.value.exit_code == 3


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:1:640", "synthetic:1:8x8", "ftp://example.com/a.mp4", ""])
def test_malformed_specs_are_errors(spec):
    with pytest.raises(SourceError) as info:
        open_source(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [dict(open_timeout=0), dict(read_timeout=-1), dict(max_frames=-2)])
def test_bad_options_are_errors(kwargs):
    with pytest.raises(SourceError, match="must be"):
        open_source("synthetic", **kwargs)


def test_unreachable_rtsp_url_raises_within_open_timeout():
    url = f"rtsp://127.0.0.1:{free_port()}/x"  # nothing listens there
    source = open_source(url, open_timeout=3.0)
    assert isinstance(source, StreamSource) and source.is_live
    with pytest.raises(SourceError, match="cannot open source 'rtsp://127.0.0.1"):
        source.open()
    source.close()


def test_password_in_url_is_not_shown():
    source = open_source("rtsp://admin:secret@127.0.0.1:1/x")
    assert "secret" not in source.source_id and "admin" in source.source_id


def test_nonexistent_camera_is_an_error():
    source = open_source("57", open_timeout=3.0)
    assert isinstance(source, CameraSource) and source.is_live
    with pytest.raises(SourceError, match="camera at index 57"):
        source.open()
    source.close()


# -- synthetic -------------------------------------------------------------------------------
def test_synthetic_source_delivers_the_video_frames_in_order():
    source = open_source("synthetic:3:160x120", max_frames=6)
    assert isinstance(source, SyntheticSource) and not source.is_live
    frames = read_all(source)
    video = SyntheticVideo(seed=3, size=(120, 160))
    assert [f.seq for f in frames] == list(range(6))
    for f in frames:
        assert f.source_id == "synthetic:3:160x120"
        assert np.array_equal(f.image, video.frame(f.seq).image)
    assert np.array_equal(source.last_scene.image, frames[-1].image)


def test_synthetic_defaults_and_open_close_protocol():
    source = open_source("synthetic")
    frame = source.read()  # opens on first use
    assert frame.image.shape == (480, 640, 3) and frame.seq == 0
    assert source.read().seq == 1
    source.close()
    source.close()  # idempotent
    assert source.read() is None
    with pytest.raises(SourceError, match="closed"):
        source.open()


# -- live: a real RTSP server -------------------------------------------------------------
def assert_no_duplicates(frames) -> None:
    seqs = [f.seq for f in frames]
    assert all(b > a for a, b in zip(seqs, seqs[1:])), seqs
    for a, b in zip(frames, frames[1:]):
        assert not np.array_equal(a.image, b.image), f"frames {a.seq} and {b.seq} are identical"


@pytest.mark.rtsp
def test_rtsp_stream_delivers_newest_frames(rtsp_server):
    with open_source(rtsp_server.url, open_timeout=10, read_timeout=3) as source:
        assert source.is_live and source.source_id == rtsp_server.url
        frames = [source.read() for _ in range(15)]
        assert all(f is not None and f.image.shape == (240, 320, 3) for f in frames)
        assert_no_duplicates(frames)
        # a consumer that falls behind gets the newest frame, and the skipped ones are counted
        time.sleep(1.0)
        later = source.read()
        assert later.seq > frames[-1].seq + 1
        assert source.stats.frames_dropped >= 1
        assert source.stats.frames_read == 16
        assert source.stats.reconnects == 0 and source.stats.gaps == []


@pytest.mark.rtsp
def test_rtsp_reconnects_after_the_server_restarts(rtsp_server, caplog):
    caplog.set_level(logging.INFO, logger="rtseg.sources")
    with open_source(rtsp_server.url, open_timeout=10, read_timeout=2, reconnect_timeout=60) as source:
        frames = [source.read() for _ in range(10)]
        rtsp_server.kill()
        rtsp_server.start()  # same port
        after = 0
        while after < 10:
            frame = source.read()  # waits through the outage; raises if it never ends
            assert frame is not None
            frames.append(frame)
            after += source.stats.reconnects > 0
        assert source.stats.reconnects >= 1
        assert len(source.stats.gaps) >= 1
        start, end = source.stats.gaps[0]
        assert end > start
        assert_no_duplicates(frames)
    assert "reconnecting" in caplog.text


@pytest.mark.rtsp
def test_rtsp_stalled_stream_is_reopened(rtsp_server, caplog):
    caplog.set_level(logging.INFO, logger="rtseg.sources")
    with open_source(rtsp_server.url, open_timeout=5, read_timeout=1, reconnect_timeout=60) as source:
        frames = [source.read() for _ in range(5)]
        rtsp_server.pause()  # the TCP connection stays up, nothing arrives
        resumer = threading.Timer(3.0, rtsp_server.resume)
        resumer.start()
        try:
            while source.stats.reconnects == 0 or len(frames) < 15:
                frames.append(source.read())
        finally:
            resumer.cancel()
            rtsp_server.resume()
        assert source.stats.reconnects >= 1 and source.stats.gaps
        assert_no_duplicates(frames)
    assert "no frame for 1s" in caplog.text or "a read failed" in caplog.text


@pytest.mark.rtsp
def test_rtsp_gone_for_good_raises_after_reconnect_timeout(rtsp_server):
    source = open_source(rtsp_server.url, open_timeout=5, read_timeout=1, reconnect_timeout=2)
    with source:
        assert source.read() is not None
        rtsp_server.kill()
        with pytest.raises(SourceError, match="lost"):
            while source.read() is not None:  # buffered frames first, then the outage
                pass
        assert source.stats.gaps  # the outage is recorded even though it never ended


@pytest.mark.rtsp
def test_rtsp_close_from_another_thread_unblocks_read(rtsp_server):
    source = open_source(rtsp_server.url, open_timeout=10, read_timeout=2, reconnect_timeout=60)
    source.open()
    rtsp_server.kill()  # read() now waits through an outage that does not end
    results = []
    reader = threading.Thread(target=lambda: results.append([f for f in source]))
    reader.start()
    time.sleep(0.5)
    source.close()
    reader.join(timeout=30)
    assert not reader.is_alive() and len(results) == 1


# -- issue 15, item 15: a synthetic frame size that cannot be rendered -------------------------
@pytest.mark.parametrize("spec", ["synthetic:0:40000x40000", "synthetic:0:8193x16", "synthetic:1:16x100000"])
def test_synthetic_size_above_the_bound_is_refused_when_the_spec_is_parsed(spec):
    with pytest.raises(SourceError) as info:
        open_source(spec)  # parsing only: nothing is allocated or rendered
    message = str(info.value)
    assert "\n" not in message and "too large" in message and "8192" in message


def test_synthetic_size_at_the_bound_is_accepted():
    source = open_source("synthetic:0:8192x16", max_frames=1)
    (frame,) = read_all(source)
    assert frame.image.shape == (16, 8192, 3)


def test_rtseg_run_with_a_huge_synthetic_frame_is_one_line_error():
    from cli_helpers import assert_one_line_error, run_cli

    proc = run_cli("run", "--source", "synthetic:0:40000x40000", "--max-frames", "1", timeout=300)
    assert_one_line_error(proc, 3, "synthetic:0:40000x40000", "too large")


# -- issue 15, item 12: back-off within an outage of seconds, stale frames after a reconnect ------
@pytest.mark.rtsp
def test_rtsp_outage_of_seconds_is_retried_at_most_2s_apart_and_stale_frames_are_dropped(rtsp_server):
    from rtsp_server import read_stamp

    from rtseg.sources import RECONNECT_EARLY_MAX_DELAY_S, reconnect_delay

    def age(frame) -> float:
        stamp = read_stamp(frame.image)
        assert stamp is not None, "not a stamped frame (black, grey or garbled)"
        return frame.capture_time - stamp[1]

    with open_source(rtsp_server.url, open_timeout=10, read_timeout=2, reconnect_timeout=60) as source:
        before = [source.read() for _ in range(25)]
        steady = max(age(f) for f in before[5:])
        stale_before = source.stats.frames_stale
        rtsp_server.kill()
        killed_at = time.time()
        time.sleep(5.0)  # the outage: 5 s without a server
        rtsp_server.start()  # same port
        after = []
        while len(after) < 10:
            frame = source.read()  # waits through the outage; raises if it never ends
            assert frame is not None
            if read_stamp(frame.image)[1] > killed_at:  # made by the restarted server
                after.append(frame)
        assert source.stats.reconnects == 1
        delays = list(source.stats.reconnect_delays)
        # the counted schedule: 0.5, 1, 2, 2, ... (was 0.5, 1, 2, 4, 8: an 8 s outage became 16.8 s)
        assert len(delays) >= 4  # 5 s of outage took several attempts
        assert delays == [reconnect_delay(i + 1, 0.0) for i in range(len(delays))]
        assert max(delays) <= RECONNECT_EARLY_MAX_DELAY_S  # the success came at most one 2 s step after a failure
        # the new connection's buffered frames were dropped and counted, not delivered
        assert source.stats.frames_stale > stale_before
        assert source.stats.frames_dropped >= source.stats.frames_stale
        # was 1.1-1.4 s old against a steady 0.1 s; a margin for a loaded machine
        assert age(after[0]) <= 2 * steady + 0.3, (age(after[0]), steady)
        assert_no_duplicates(before + after)
