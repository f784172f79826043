"""Faults and bad input, end to end: what rtseg does and how many frames it loses.

Every row of docs/faults.md names the test that backs it; the rows not tested here are
tested next to their module (test_sources, test_publish, test_segmenter, test_cli,
test_curve). Everything is real: video and image files written by the tests, real
ZeroMQ sockets on 127.0.0.1, the real GStreamer RTSP server (tests/rtsp_server.py), the
built-in model. The fuzz tests replay and mutate the seed corpus in tests/fixtures/fuzz/
(remade by tests/fixtures/fuzz/make_corpus.py).
"""

from __future__ import annotations

import json
import os
import random
import resource
import socket
import statistics
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtseg.errors import PublishError, SourceError
from rtseg.pipeline import Pipeline
from rtseg.publisher import Publisher
from rtseg.render import VideoRecorder
from rtseg.sources import MAX_IMAGE_PIXELS, open_source
from rtseg.structures import Frame, Instances
from rtseg.subscriber import subscribe
from rtseg.wire import GapCounter, decode_message, encode_message

from rtsp_server import read_stamp
from test_sources import decode_index, indexed_image, write_video

CORPUS = Path(__file__).resolve().parent / "fixtures" / "fuzz"
NAMES = ["person", "dog", "car"]
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def segmenter():
    from rtseg.segmenter import Segmenter

    return Segmenter("yolact_resnet18_half_384", score_threshold=0.3)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------
# fuzz: the message decoder (corpus replay + mutation, allocation measured)
# ---------------------------------------------------------------------------------------
def _corpus_messages() -> list[tuple[str, list[bytes], str]]:
    out = []
    for path in sorted((CORPUS / "message").glob("*.json")):
        entry = json.loads(path.read_text())
        parts = [entry["topic"].encode(), entry["header"].encode(), bytes.fromhex(entry["blob_hex"])]
        out.append((path.name, parts, entry["expect"]))
    return out


MESSAGES = _corpus_messages()


def _allocation_bound(parts: list[bytes]) -> int:
    """What decoding ``parts`` may allocate: the parsed header (Python objects cost at most
    ~20x their JSON text; 64x allowed), the decoded masks N * H * W the header declares
    (twice: the masks and one window's unpacked bits), copies of the blob, and 1 MiB."""
    n_h_w = 0
    try:
        header = json.loads(parts[1])
        h, w = header["image_size"]
        n_h_w = len(header["instances"]) * int(h) * int(w)
    except Exception:  # not a header a decode could get far with: nothing beyond parsing
        pass
    return 64 * len(parts[1]) + 2 * max(0, n_h_w) + 8 * len(parts[2]) + 2**20


def _decode_measured(parts: list[bytes]) -> tuple[object, int]:
    """(Message or PublishError, peak bytes allocated while decoding)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            result: object = decode_message(parts, max_mask_pixels=2**24)
        except PublishError as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("name, parts, expect", MESSAGES, ids=[m[0] for m in MESSAGES])
def test_message_corpus_decodes_or_fails_in_one_line(name, parts, expect):
    result, peak = _decode_measured(parts)
    if expect == "ok":
        assert not isinstance(result, PublishError), result
    else:
        assert isinstance(result, PublishError) and expect in str(result) and "\n" not in str(result)
    assert peak <= _allocation_bound(parts)


@FUZZ
@given(st.data())
def test_fuzz_mutated_corpus_messages_raise_only_publish_error_and_allocate_within_the_header(data):
    _, parts, _ = data.draw(st.sampled_from(MESSAGES))
    topic, header, blob = parts
    for _ in range(data.draw(st.integers(1, 4))):
        target = data.draw(st.sampled_from(["header", "header", "header", "blob", "json"]))
        if target == "json":  # a structurally valid header with one value replaced
            try:
                obj = json.loads(header)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and obj:
                key = data.draw(st.sampled_from(sorted(obj)))
                obj[key] = data.draw(st.integers(-(2**40), 2**40) | st.lists(st.integers(-5, 20000), max_size=5)
                                     | st.text(max_size=5) | st.none() | st.floats())
                header = json.dumps(obj).encode()
            continue
        buffer = bytearray(header if target == "header" else blob)
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = data.draw(st.integers(0, len(buffer)))
        if op == "flip" and buffer:
            position = min(position, len(buffer) - 1)
            buffer[position] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buffer[position:position] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buffer[position:position + data.draw(st.integers(1, 16))]
        else:
            del buffer[position:]
        if target == "header":
            header = bytes(buffer)
        else:
            blob = bytes(buffer)
    mutated = [topic, header, blob]
    result, peak = _decode_measured(mutated)
    if isinstance(result, PublishError):
        assert "\n" not in str(result)
    assert peak <= _allocation_bound(mutated)


# ---------------------------------------------------------------------------------------
# fuzz: the input openers (corrupted video and image files opened as sources)
# ---------------------------------------------------------------------------------------
SEEDS = sorted(p for p in (CORPUS / "video").iterdir()) + sorted(p for p in (CORPUS / "image").iterdir())


def _open_and_read_all(path: str) -> list[Frame]:
    """Only SourceError (one line) may come out; every frame delivered is a sane BGR image."""
    try:
        source = open_source(path, open_timeout=5.0, max_frames=60)
    except SourceError as exc:
        assert "\n" not in str(exc)
        return []
    frames: list[Frame] = []
    try:
        with source:
            for frame in source:
                frames.append(frame)
    except SourceError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("cannot open source")
    for frame in frames:
        image = frame.image
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] * image.shape[1] <= MAX_IMAGE_PIXELS
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs))
    return frames


@pytest.mark.parametrize("seed", SEEDS, ids=[p.name for p in SEEDS])
def test_every_seed_file_opens_or_fails_in_one_line(seed):
    frames = _open_and_read_all(str(seed))
    if seed.name == "huge_declared.png":
        assert frames == []  # refused before OpenCV allocates 60000 x 60000 pixels
    else:
        assert frames, seed.name


@FUZZ
@given(st.data())
def test_fuzz_corrupted_video_and_image_files_never_crash_the_source(data):
    seed = data.draw(st.sampled_from(SEEDS))
    buffer = bytearray(seed.read_bytes())
    for _ in range(data.draw(st.integers(1, 5))):
        op = data.draw(st.sampled_from(["flip", "flip", "zero", "insert", "truncate", "shuffle"]))
        position = data.draw(st.integers(0, max(0, len(buffer) - 1)))
        if op == "flip" and buffer:
            for k in range(data.draw(st.integers(1, 8))):
                buffer[(position + 97 * k) % len(buffer)] = data.draw(st.integers(0, 255))
        elif op == "zero":
            length = data.draw(st.integers(1, 512))
            buffer[position:position + length] = bytes(len(buffer[position:position + length]))
        elif op == "insert":
            buffer[position:position] = data.draw(st.binary(min_size=1, max_size=64))
        elif op == "truncate":
            del buffer[position:]
        elif op == "shuffle" and len(buffer) > 64:
            a, b = sorted(data.draw(st.lists(st.integers(0, len(buffer) - 32), min_size=2, max_size=2)))
            buffer[a:a + 32], buffer[b:b + 32] = buffer[b:b + 32], buffer[a:a + 32]
    # sometimes the extension lies (an image named .mp4, a video named .png)
    suffix = data.draw(st.sampled_from([seed.suffix, seed.suffix, seed.suffix, ".mp4", ".png", ".jpg"]))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz" + suffix)
        with open(path, "wb") as f:
            f.write(bytes(buffer))
        _open_and_read_all(path)


def test_fuzz_of_the_openers_stays_within_a_memory_bound():
    """Runs last in this file's fuzz section: the peak RSS of the whole fuzz session stays
    under a bound (MAX_IMAGE_PIXELS caps image decodes at 192 MiB of BGR)."""
    before = _peak_rss_bytes()
    test_fuzz_corrupted_video_and_image_files_never_crash_the_source()
    assert _peak_rss_bytes() - before < 1536 * 2**20


# ---------------------------------------------------------------------------------------
# corrupt input through the whole pipeline: only destroyed frames are missing
# ---------------------------------------------------------------------------------------
def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(len(data) * 4 // 10, len(data) * 6 // 10, 997):
        data[offset:offset + 50] = rng.integers(0, 256, 50, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["garbled middle", "truncated"])
def test_damaged_video_through_the_pipeline_loses_only_the_destroyed_frames(damage, segmenter, tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 40)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        _garble(path)
    seen: list[Frame] = []
    recorder = VideoRecorder(str(tmp_path / "out.avi"), fps=25)
    with Publisher("tcp://127.0.0.1:*", list(segmenter.class_names)) as publisher:
        summary = Pipeline(open_source(str(path)), segmenter, publisher=publisher, recorder=recorder,
                           on_frame=seen.append).run()
    recorder.close()
    # every frame the source delivered was segmented, recorded and published: none lost
    assert summary.frames_read == summary.frames_processed == summary.frames_published == len(seen)
    assert recorder.frames_written == len(seen) and summary.stopped_by == "end of input"
    seqs = [f.seq for f in seen]
    assert seqs == sorted(set(seqs))
    if damage == "garbled middle":
        # the container lists 40 frames: each one is delivered or counted as skipped
        assert summary.skipped_corrupt >= 1 and summary.frames_read + summary.skipped_corrupt == 40
        assert [decode_index(f.image) for f in seen[:15]] == list(range(15))
    else:
        assert 10 <= summary.frames_read < 40
        assert [decode_index(f.image) for f in seen[:-1]] == list(range(len(seen) - 1))


def test_image_folder_with_non_images_odd_sizes_and_bombs_through_the_pipeline(segmenter, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good = {
        "a_small.png": indexed_image(1),
        "b_one_pixel.png": np.full((1, 1, 3), 200, np.uint8),
        "c_thin.png": np.full((3, 500, 3), 90, np.uint8),
        "d_tall.jpg": np.full((400, 7, 3), 30, np.uint8),
        "e_big.png": cv2.resize(indexed_image(5), (1280, 1024)),
    }
    for name, image in good.items():
        assert cv2.imwrite(str(folder / name), image)
    (folder / "f_empty.jpg").write_bytes(b"")
    (folder / "g_text.png").write_text("not an image")
    (folder / "h_bomb.png").write_bytes((CORPUS / "image" / "huge_declared.png").read_bytes())
    (folder / "notes.txt").write_text("ignored")
    (folder / "sub").mkdir()
    seen: list[Frame] = []
    recorder = VideoRecorder(str(tmp_path / "out.avi"), fps=5)
    summary = Pipeline(open_source(str(folder)), segmenter, recorder=recorder, on_frame=seen.append).run()
    recorder.close()
    assert [f.image.shape[:2] for f in seen] == [im.shape[:2] for im in good.values()]
    assert all(f.instances.image_size == f.image.shape[:2] for f in seen)  # masks at each image's own size
    assert summary.frames_processed == len(good) and summary.skipped_corrupt == 4  # 3 bad images + notes.txt
    assert recorder.frames_written == len(good)  # mixed sizes are resized to the first
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(good)
    cap.release()


# ---------------------------------------------------------------------------------------
# ZeroMQ under stress
# ---------------------------------------------------------------------------------------
def _frame(seq: int, rng: np.random.Generator, size: tuple[int, int] = (48, 64)) -> Frame:
    h, w = size
    n = int(rng.integers(0, 4))
    masks = rng.random((n, h, w)) < rng.random()
    instances = Instances((rng.random((n, 4)) * [w, h, w, h]).astype(np.float32), rng.random(n).astype(np.float32),
                          rng.integers(0, len(NAMES), n).astype(np.int64), masks, (h, w))
    return Frame(seq=seq, source_id="stress", capture_time=time.time(), image=np.zeros((h, w, 3), np.uint8),
                 instances=instances)


def test_stalled_subscriber_does_not_hold_up_the_pipeline_and_counts_what_it_missed(segmenter, tmp_path):
    """A subscriber that stops reading (receive queue of 1, over a Unix socket whose small
    buffers fill fast) next to a healthy one: the pipeline runs at its own pace and the
    healthy subscriber gets every frame; the stalled one misses frames -- dropped by ZeroMQ
    for it alone -- and counts them from the gaps in publish_seq when it reads again."""
    endpoint = f"ipc://{tmp_path}/rtseg.sock"
    seen: list[Frame] = []
    healthy_received: list = []
    with Publisher(endpoint, list(segmenter.class_names)) as publisher:
        # the receive timeouts only end a wait that would otherwise hang the test
        healthy = subscribe(endpoint, timeout=60.0)
        stalled_gaps = GapCounter()
        stalled = subscribe(endpoint, timeout=60.0, rcvhwm=1, gaps=stalled_gaps)
        warm_up = Frame(seq=0, source_id="warm-up", capture_time=0.0, image=np.zeros((8, 8, 3), np.uint8))
        done = threading.Event()

        def keep_warming() -> None:  # until both subscriptions have reached the publisher
            while not done.wait(0.01):
                publisher.publish(warm_up)

        warming = threading.Thread(target=keep_warming)
        warming.start()
        try:
            first_healthy, first = next(healthy), next(stalled)
        finally:
            done.set()
            warming.join()
        assert first_healthy.source == first.source == "warm-up"
        # ... and from here the stalled one does not read until the pipeline has finished

        def after_publish(frame: Frame) -> None:  # publish thread: wait until the healthy one has it
            seen.append(frame)
            for message in healthy:
                if message.source != "warm-up":
                    healthy_received.append(message)
                    return

        summary = Pipeline(open_source("synthetic:0:1280x720"), segmenter, publisher=publisher, max_frames=40,
                           on_frame=after_publish).run()
        # the stalled subscriber reads again, a marker published per message it reads,
        # until it has come through its backlog to a marker
        late = []
        for _ in range(10_000):
            publisher.publish(Frame(seq=0, source_id="marker", capture_time=0.0, image=np.zeros((8, 8, 3), np.uint8)))
            late.append(next(stalled))
            if late[-1].source == "marker":
                break
        healthy.close()
        stalled.close()
    # every frame was processed and published, none waited for the stalled subscriber
    assert summary.frames_read == summary.frames_processed == summary.frames_published == len(seen) == 40
    assert summary.stopped_by == "max frames (40)"
    # the healthy subscriber received every frame, in order, nothing missed
    assert [m.seq for m in healthy_received] == list(range(40)) and all(m.missed == 0 for m in healthy_received)
    assert all(m.instances == f.instances for m, f in zip(healthy_received, seen))
    # the stalled one missed frames and counted each: received + missed spans every
    # message from its first to its last, in publish_seq
    assert late[-1].source == "marker" and stalled_gaps.received == 1 + len(late) and stalled_gaps.restarts == 0
    assert stalled_gaps.missed == sum(m.missed for m in late) > 0
    assert stalled_gaps.received + stalled_gaps.missed == late[-1].publish_seq - first.publish_seq + 1
    frames_it_got = [m.seq for m in late if m.source == seen[0].source_id]
    assert frames_it_got == sorted(set(frames_it_got)) and len(frames_it_got) < 40


def test_subscribers_joining_and_leaving_at_random_see_only_whole_decodable_messages():
    rng = np.random.default_rng(1)
    frames = {seq: _frame(seq, rng) for seq in range(400)}
    problems: list[str] = []
    received: list[int] = []

    def churn(seed: int) -> None:
        chooser = random.Random(seed)
        context = zmq.Context()
        try:
            for _ in range(12):  # join, read a few (or none), leave; repeat
                sock = context.socket(zmq.SUB)
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                sock.setsockopt(zmq.RCVTIMEO, 2000)
                sock.setsockopt(zmq.RCVHWM, chooser.choice([1, 2, 1000]))
                sock.connect(endpoint)
                for _ in range(chooser.randint(0, 15)):
                    try:
                        parts = sock.recv_multipart()
                    except zmq.Again:
                        break
                    try:
                        message = decode_message(parts)
                    except PublishError as exc:
                        problems.append(f"undecodable: {exc}")
                        continue
                    if len(parts) != 3 or message.instances != frames[message.seq % 400].instances:
                        problems.append(f"message {message.seq} differs from what was published")
                    received.append(message.seq)
                    if chooser.random() < 0.3:
                        time.sleep(chooser.random() * 0.05)  # a slow reader, sometimes
                sock.close(linger=0)  # leaves mid-stream, possibly with messages queued
                time.sleep(chooser.random() * 0.03)
        finally:
            context.term()

    with Publisher("tcp://127.0.0.1:*", NAMES, sndhwm=2) as publisher:
        endpoint = publisher.endpoint
        threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        seq = 0
        while any(t.is_alive() for t in threads):
            publisher.publish(Frame(seq=seq, source_id="stress", capture_time=time.time(),
                                    image=frames[seq % 400].image, instances=frames[seq % 400].instances))
            seq += 1
            time.sleep(0.001)
        stats = publisher.stats
    assert problems == []
    assert len(received) > 20  # the subscribers did receive (whole) messages
    assert stats.sent == seq  # publish() never refuses a message (and never blocks)


def test_subscriber_caps_the_message_size_it_accepts():
    """ZMQ_MAXMSGSIZE: a part above max_message_bytes never reaches the decoder (ZeroMQ
    drops that connection and reconnects); smaller messages keep arriving."""
    rng = np.random.default_rng(2)
    small = _frame(0, rng)
    big_masks = rng.random((1, 1024, 1024)) < 0.5  # ~128 KiB of bit-packed mask
    big = Frame(seq=1, source_id="big", capture_time=0.0, image=np.zeros((1024, 1024, 3), np.uint8),
                instances=Instances(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64),
                                    big_masks, (1024, 1024)))
    assert len(encode_message(big, NAMES)[2]) > 100_000
    received: list = []
    with Publisher("tcp://127.0.0.1:*", NAMES) as publisher:
        messages = subscribe(publisher.endpoint, timeout=20.0, max_message_bytes=32_768)

        def collect() -> None:
            for message in messages:
                received.append(message)
                if len(received) >= 4:
                    break
            messages.close()

        listener = threading.Thread(target=collect)
        listener.start()

        def publish_until(frame: Frame, count: int) -> None:
            seq = 0
            while len(received) < count and listener.is_alive():
                publisher.publish(frame)
                seq += 1
                time.sleep(0.005)
                assert seq < 20_000

        publish_until(small, 1)  # the subscription has reached the publisher
        for _ in range(5):  # too big: ZeroMQ drops the connection instead of buffering them
            publisher.publish(big)
            time.sleep(0.005)
        publish_until(small, 4)  # ... reconnects, and small messages arrive again
        listener.join()
    assert len(received) == 4 and all(m.source == "stress" for m in received)
    assert sum(m.missed for m in received) >= 5  # the big ones never arrived, and the gap says so


# ---------------------------------------------------------------------------------------
# RTSP
# ---------------------------------------------------------------------------------------
def test_rtsp_url_that_never_answers_fails_in_one_line_after_the_open_timeout():
    """A server that accepts the TCP connection and then says nothing (a hung camera, a
    black-holed path): open() gives up after open_timeout with one line, and close()
    leaves no capture thread behind."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nothing is ever sent back
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/stream"
        source = open_source(url, open_timeout=2.0, read_timeout=2.0)
        with pytest.raises(SourceError) as info:
            source.open()
        source.close()
    message = str(info.value)
    assert message.startswith(f"cannot open source '{url}'") and "\n" not in message
    assert "open_timeout=2s" in message or "could not be opened" in message
    assert info.value.exit_code == 3
    deadline = time.monotonic() + 10  # the abandoned open returns within FFmpeg's own timeout
    while any(t.name.startswith(("rtseg-capture", "rtseg-open")) for t in threading.enumerate()):
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.1)


@pytest.mark.rtsp
def test_rtsp_restart_through_the_pipeline_publishes_no_stale_black_or_duplicate_frames(rtsp_server, segmenter):
    """The issue's kill-and-restart test, end to end: segmenting the stream, publishing,
    the server killed mid-stream and restarted. After the restart latency (frame made by
    the server -> frame published by rtseg, read from the stamp each frame carries) comes
    back to its level before the cut within a few seconds: no backlog of stale frames."""
    done: list[tuple[Frame, float]] = []
    made_at: list[float] = []  # server stamp of each done frame (-1: no stamp)
    lock = threading.Lock()

    def on_frame(frame: Frame) -> None:
        stamp = read_stamp(frame.image)
        with lock:
            done.append((frame, time.time()))
            made_at.append(stamp[1] if stamp is not None else -1.0)

    def frames_made_after(t: float) -> int:
        with lock:
            return sum(m >= t for m in made_at)

    def wait_for(condition, limit: float) -> None:
        deadline = time.monotonic() + limit
        while not condition():
            assert time.monotonic() < deadline, "the pipeline stopped making progress"
            time.sleep(0.05)

    source = open_source(rtsp_server.url, open_timeout=10, read_timeout=2, reconnect_timeout=60)
    source.open()
    received: list = []
    with Publisher("tcp://127.0.0.1:*", list(segmenter.class_names)) as publisher:
        listener = threading.Thread(target=lambda: received.extend(subscribe(publisher.endpoint, timeout=5.0)))
        listener.start()
        pipeline = Pipeline(source, segmenter, publisher=publisher, on_frame=on_frame)
        runner_result: list = []
        runner = threading.Thread(target=lambda: runner_result.append(pipeline.run()))
        runner.start()
        t_open = time.time()
        # steady state: 6 s, and at least 5 frames made 2 s after the open (however slow the CPU)
        wait_for(lambda: done and done[-1][1] - t_open > 6.0 and frames_made_after(t_open + 2.0) >= 5, 180)
        rtsp_server.kill()
        t_cut = time.time()
        rtsp_server.start()  # same port
        t_restart = time.time()
        # after the restart: 6 s of frames, and at least 5 made 3 s after the first one
        def recovered_enough() -> bool:
            with lock:
                after = [m for m in made_at if m >= t_restart]
            return bool(after) and after[-1] > t_restart + 6.0 and frames_made_after(after[0] + 3.0) >= 5

        wait_for(recovered_enough, 180)
        pipeline.stop("test done")
        runner.join(60)
        listener.join(30)
    assert not runner.is_alive() and runner_result
    summary = runner_result[0]
    stamps = [read_stamp(f.image) for f, _ in done]
    assert all(s is not None for s in stamps), "a published frame was black or garbled (not a server frame)"
    made = [s[1] for s in stamps]
    assert all(b > a for a, b in zip(made, made[1:])), "a frame was published twice or out of order"
    assert len(set(stamps)) == len(stamps)
    assert [f.seq for f, _ in done] == sorted({f.seq for f, _ in done})
    latency = [t - m for (f, t), m in zip(done, made)]
    before = [lat for m, lat in zip(made, latency) if t_open + 2.0 <= m < t_cut]
    after = [lat for m, lat in zip(made, latency) if m >= t_restart]
    recovered = [lat for m, lat in zip(made, latency) if m >= min(made[len(made) - len(after):]) + 3.0]
    assert len(before) >= 5 and len(recovered) >= 5
    level = statistics.median(before)
    # within 3 s of the first frame after the restart, latency is back to its level
    assert statistics.median(recovered) <= 2 * level + 0.25, (level, recovered)
    assert summary.reconnects >= 1 and summary.gaps and summary.outage_seconds > 0
    assert "outage" in summary.format()
    assert summary.frames_processed == len(done) == summary.frames_published
    # the subscriber saw only whole messages, in order, each one a frame rtseg processed
    processed = {f.seq for f, _ in done}
    assert received and all(m.seq in processed for m in received)
    assert [m.seq for m in received] == sorted({m.seq for m in received})


# ---------------------------------------------------------------------------------------
# docs/faults.md is backed by tests
# ---------------------------------------------------------------------------------------
def test_every_test_named_in_the_faults_table_exists():
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text()
    named = re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)", doc)
    assert len(named) >= 40
    sources = {p.name: p.read_text() for p in Path(__file__).resolve().parent.glob("test_*.py")}
    current = None
    for file, test in named:
        current = file or current  # "::name" continues the file named before it in the cell
        assert current in sources and f"def {test}(" in sources[current], f"{current}::{test}"
