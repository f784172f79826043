"""Wire format 1.3: every message names its stream (header ``stream``, topic
``<base>/<stream>``, the stream's own counter ``stream_seq``) and, when tracking is on, each
instance its ``track_id``. A subscriber of one stream gets exactly that stream (ZeroMQ's
prefix match would also give it ``cam10`` for ``cam1``), and counts its gaps per
(publisher, stream). Ends with a real multi-source ``rtseg run --publish`` and one real
subscriber per topic."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time

import cv2
import numpy as np
import pytest
import zmq

from rtseg.errors import ConfigError, PublishError
from rtseg.publisher import Publisher
from rtseg.structures import Frame, Instances
from rtseg.subscriber import run_subscriber, subscribe
from rtseg.wire import SCHEMA, GapCounter, decode_message, encode_message, is_stream_name, stream_topic

NAMES = ["a", "b"]
LOOPBACK = "tcp://127.0.0.1:*"


def frame(stream: str = "0", seq: int = 0, instances: Instances | None = None, source: str = "s") -> Frame:
    return Frame(seq=seq, source_id=source, capture_time=1700000000.0, image=np.zeros((6, 5, 3), np.uint8),
                 instances=instances, stream=stream)


def two_instances() -> Instances:
    masks = np.zeros((3, 6, 5), np.bool_)
    masks[0, 1:3, 1:4] = True
    masks[2, 4:6, 0:2] = True
    return Instances(boxes=np.array([[1, 1, 4, 3], [0, 0, 1, 1], [0, 4, 2, 6]], np.float32),
                     scores=np.array([0.9, 0.5, 0.4], np.float32), class_ids=np.array([0, 1, 1], np.int64),
                     masks=masks, image_size=(6, 5))


def with_track_ids(instances: Instances, track_ids) -> Instances:
    """``instances`` with ``track_ids`` set: the field tracking adds (``rtseg run --track``);
    set as an attribute where this checkout's Instances does not have the field yet."""
    object.__setattr__(instances, "track_ids", np.asarray(track_ids, np.int64))
    return instances


def reheader(parts: list[bytes], **fields) -> list[bytes]:
    header = json.loads(parts[1])
    for key, value in fields.items():
        if value is ...:
            header.pop(key, None)
        else:
            header[key] = value
    return [parts[0], json.dumps(header).encode(), parts[2]]


# ---------------------------------------------------------------------------------------
# the format
# ---------------------------------------------------------------------------------------
def test_stream_is_in_the_header_and_the_topic_and_round_trips():
    parts = encode_message(frame("cam1", seq=4, instances=two_instances()), NAMES, topic=b"site",
                           publisher_id="p", publish_seq=9, stream_seq=3)
    header = json.loads(parts[1])
    assert SCHEMA == "rtseg.instances/1.3" and header["schema"] == SCHEMA
    assert parts[0] == b"site/cam1" == stream_topic(b"site", "cam1")
    assert (header["stream"], header["stream_seq"], header["publish_seq"]) == ("cam1", 3, 9)
    message = decode_message(parts)
    assert (message.topic, message.stream, message.stream_seq, message.seq) == (b"site/cam1", "cam1", 3, 4)
    assert message.instances == two_instances()


@pytest.mark.parametrize("schema", ["rtseg.instances/1.0", "rtseg.instances/1.1", "rtseg.instances/1.2"])
def test_messages_before_1_3_have_stream_0_and_no_stream_seq(schema):
    parts = reheader(encode_message(frame("cam1"), NAMES), schema=schema, stream=..., stream_seq=...)
    parts[0] = b"rtseg"  # before 1.3 the topic was the base alone
    message = decode_message(parts)
    assert (message.stream, message.stream_seq) == ("0", None)


@pytest.mark.parametrize("value, found", [
    ("", "''"), ("c" * 65, "'" + "c" * 50), ("cam/1", "'cam/1'"), ("..", "'..'"), (".", "'.'"),
    ("cam 1", "'cam 1'"), ("x\n\x1b[31m", r"'x\n\x1b[31m'"), ("caméra", "'caméra'"), (7, "7"), (None, "None"),
    (["cam1"], "['cam1']"),
])
def test_a_hostile_stream_is_one_line_naming_it(value, found):
    parts = reheader(encode_message(frame(), NAMES), stream=value)
    with pytest.raises(PublishError) as info:
        decode_message(parts)
    text = str(info.value)
    assert "\n" not in text and len(text) < 300, text
    assert text.startswith("malformed rtseg message: header field 'stream' must be")
    assert found in text


def test_a_frame_with_an_unusable_stream_name_is_not_published():
    with pytest.raises(PublishError, match=r"cannot publish: the frame's stream must be 1-64 .*found 'a/b'"):
        encode_message(frame("a/b"), NAMES)
    assert is_stream_name("cam-1_left.2") and not is_stream_name("..") and not is_stream_name("x" * 65)


def test_stream_seq_is_checked_like_publish_seq():
    for bad in (-1, 1.5, "3", True, 2**63):
        with pytest.raises(PublishError, match="header field 'stream_seq' must be an integer in"):
            decode_message(reheader(encode_message(frame(), NAMES), stream_seq=bad))


def test_track_ids_round_trip_and_an_instance_without_a_track_carries_none():
    instances = with_track_ids(two_instances(), [12, -1, 0])  # -1: not (yet) a confirmed track
    parts = encode_message(frame(instances=instances), NAMES)
    entries = json.loads(parts[1])["instances"]
    assert [e.get("track_id") for e in entries] == [12, None, 0]
    decoded = decode_message(parts).instances
    assert decoded.track_ids.tolist() == [12, -1, 0] and decoded.track_ids.dtype == np.int64
    assert decoded[[2, 0]].track_ids.tolist() == [0, 12]
    assert decoded == instances
    if "track_ids" in {f.name for f in dataclasses.fields(Instances)}:  # the field exists in this checkout
        assert decoded.track_ids.tolist() == [12, -1, 0]


def test_tracking_off_writes_no_track_id():
    parts = encode_message(frame(instances=two_instances()), NAMES)
    assert all("track_id" not in e for e in json.loads(parts[1])["instances"])
    assert decode_message(parts).instances.track_ids is None


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None, 2**63])
def test_a_hostile_track_id_is_one_line(bad):
    header = json.loads(encode_message(frame(instances=two_instances()), NAMES)[1])
    header["instances"][1]["track_id"] = bad
    parts = [b"rtseg/0", json.dumps(header).encode(), encode_message(frame(instances=two_instances()), NAMES)[2]]
    with pytest.raises(PublishError, match=r"^malformed rtseg message: instances\[1\] field 'track_id' must be an integer"):
        decode_message(parts)


# ---------------------------------------------------------------------------------------
# gaps per (publisher, stream)
# ---------------------------------------------------------------------------------------
def message(stream: str, stream_seq: int, publish_seq: int, publisher_id: str = "p1"):
    return decode_message(encode_message(frame(stream), NAMES, publisher_id=publisher_id, publish_seq=publish_seq,
                                         stream_seq=stream_seq))


def test_gaps_are_counted_per_stream():
    gaps = GapCounter()
    # two interleaved streams; cam2's stream_seq 1 is lost
    sequence = [("cam1", 0, 0), ("cam2", 0, 1), ("cam1", 1, 2), ("cam1", 2, 4), ("cam2", 2, 5), ("cam1", 3, 6)]
    assert [gaps.update(message(*m)) for m in sequence] == [0, 0, 0, 0, 1, 0]
    assert (gaps.received, gaps.missed, gaps.restarts) == (6, 1, 0)


def test_a_subscriber_of_one_stream_counts_no_gap_for_the_other_streams_messages():
    gaps = GapCounter()
    # only cam1 reaches this subscriber: publish_seq jumps (the other streams), stream_seq does not
    assert [gaps.update(message("cam1", s, 3 * s)) for s in range(5)] == [0] * 5
    assert (gaps.missed, gaps.restarts) == (0, 0)


def test_a_new_publisher_or_a_stream_counter_going_back_is_a_restart():
    gaps = GapCounter()
    gaps.update(message("cam1", 5, 10))
    gaps.update(message("cam2", 7, 11))
    assert gaps.update(message("cam1", 0, 0, publisher_id="p2")) == 0  # restarted: counting afresh
    assert gaps.update(message("cam2", 3, 1, publisher_id="p2")) == 0  # p2's first message of cam2
    assert gaps.update(message("cam2", 1, 2, publisher_id="p2")) == 0  # went back
    assert (gaps.received, gaps.missed, gaps.restarts) == (5, 0, 2)


def test_a_publisher_before_1_3_is_counted_by_publish_seq_as_before():
    gaps = GapCounter()
    old = [reheader(encode_message(frame(), NAMES, publisher_id="p", publish_seq=s), schema="rtseg.instances/1.2",
                    stream=..., stream_seq=...) for s in (0, 1, 4)]
    assert [gaps.update(decode_message(p)) for p in old] == [0, 0, 2]


def test_gap_counter_follows_a_bounded_number_of_streams():
    from rtseg.wire import MAX_COUNTED_STREAMS

    gaps = GapCounter()
    for i in range(MAX_COUNTED_STREAMS + 10):  # a hostile publisher naming a new stream each time
        gaps.update(message(f"s{i}", 0, i))
    assert len(gaps._last) == MAX_COUNTED_STREAMS and gaps.missed == 0


# ---------------------------------------------------------------------------------------
# subscribing to one stream (real ZeroMQ)
# ---------------------------------------------------------------------------------------
def test_a_subscriber_of_cam1_gets_cam1_alone_in_order_not_cam10():
    streams = ["cam1", "cam10", "cam1.left", "cam2"]
    got: dict[str, list] = {name: [] for name in [*streams, None]}
    with Publisher(LOOPBACK, NAMES) as publisher:
        threads = []
        for name in got:
            gaps = GapCounter()

            def collect(name=name, gaps=gaps) -> None:
                ends = set()
                for m in subscribe(publisher.endpoint, stream=name, timeout=20.0, gaps=gaps):
                    got[name].append(m)
                    if m.source == "end":
                        ends.add(m.stream)
                        if ends == ({name} if name is not None else set(streams)):
                            return

            threads.append(threading.Thread(target=collect, daemon=True))
            threads[-1].start()
        # slow joiner: warm up until every subscriber has a message, then the counted ones
        for _ in range(2000):
            if all(got[n] for n in got):
                break
            for name in streams:
                publisher.publish(frame(name, seq=0, source="warm-up"))
            time.sleep(0.01)
        for seq in range(1, 21):
            for name in streams:
                publisher.publish(frame(name, seq=seq))
            time.sleep(0.002)  # well within what the subscribers read: nothing is dropped for them
        for name in streams:
            publisher.publish(frame(name, seq=21, source="end"))
        for t in threads:
            t.join(timeout=30)
    for name in streams:
        messages = [m for m in got[name] if m.source != "warm-up"]
        assert {m.stream for m in got[name]} == {name} and {m.topic for m in got[name]} == {b"rtseg/" + name.encode()}
        assert [m.seq for m in messages] == list(range(1, 22)) and not any(m.missed for m in messages)
    everything = [m for m in got[None] if m.source != "warm-up"]
    for name in streams:
        assert [m.seq for m in everything if m.stream == name] == list(range(1, 22))


def test_a_message_whose_header_names_another_stream_than_its_topic_is_skipped(caplog):
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    received: list = []

    def collect() -> None:
        for m in subscribe(f"tcp://127.0.0.1:{port}", stream="cam1", timeout=10.0):
            received.append(m)
            if m.seq == 2:
                return

    thread = threading.Thread(target=collect, daemon=True)
    try:
        with caplog.at_level("WARNING", logger="rtseg.subscriber"):
            thread.start()
            forged = encode_message(frame("cam2", seq=1), NAMES)
            forged[0] = b"rtseg/cam1"  # cam2's message on cam1's topic
            for _ in range(1000):
                if received:
                    break
                pub.send_multipart(encode_message(frame("cam1", seq=0), NAMES))
                time.sleep(0.01)
            pub.send_multipart(forged)
            pub.send_multipart(encode_message(frame("cam1", seq=2), NAMES))
            thread.join(timeout=20)
    finally:
        pub.close(linger=0)
    assert {m.stream for m in received} == {"cam1"} and received[-1].seq == 2 and 1 not in [m.seq for m in received]
    assert any("header field 'stream' must be 'cam1'" in r.getMessage() and r.name == "rtseg.subscriber"
               for r in caplog.records)


def test_an_unusable_stream_to_subscribe_to_is_a_config_error():
    with pytest.raises(ConfigError, match=r"stream must be a stream name of 1-64 .* found 'a/b'"):
        next(subscribe("tcp://127.0.0.1:5555", stream="a/b"))
    with pytest.raises(ConfigError, match="--stream must be"):
        run_subscriber("tcp://127.0.0.1:5555", stream="..", count=1)


def test_run_subscriber_prints_and_saves_per_stream(tmp_path):
    out, err, result = io.StringIO(), io.StringIO(), []
    with Publisher(LOOPBACK, NAMES) as publisher:
        thread = threading.Thread(target=lambda: result.append(run_subscriber(
            publisher.endpoint, stream="cam1", count=3, timeout=20.0, save_dir=str(tmp_path), out=out, err=err)),
            daemon=True)
        thread.start()
        seq = 0
        while thread.is_alive() and seq < 3000:
            publisher.publish(frame("cam10", seq=seq))
            publisher.publish(frame("cam1", seq=seq, instances=two_instances()))
            seq += 1
            time.sleep(0.01)
        thread.join(timeout=20)
    assert result == [0]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("seq=") and " stream=cam1 source='s' " in line for line in lines)
    assert sorted(p.parent.name for p in tmp_path.glob("*/*.json")) == ["cam1"] * 3
    assert err.getvalue() == "received 3 message(s), missed 0, publisher restarts 0\n"


# ---------------------------------------------------------------------------------------
# a real multi-source run, one subscriber per topic
# ---------------------------------------------------------------------------------------
FRAMES = 6


def write_clip(path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120))
    assert writer.isOpened(), f"this OpenCV build cannot write mp4v to {path}"
    for i in range(n):
        writer.write(np.full((120, 160, 3), i * 8, np.uint8))
    writer.release()


def run_with_a_subscriber_per_topic(sources: list[str], tmp_path, extra: tuple[str, ...] = ()):
    """``rtseg run --source ... --publish`` with, started beforehand, one ``subscribe(stream=)``
    per stream ("0", "1", ... by position) and one of every stream; after the run an end marker
    per stream (a new publisher on the same endpoint) stops them. Returns (process, summary,
    {stream or None: messages of the run})."""
    from cli_helpers import free_port, run_cli

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    names = [str(i) for i in range(len(sources))]
    got: dict[str | None, list] = {name: [] for name in [*names, None]}
    ended: dict[str | None, set] = {name: set() for name in got}

    def collect(name: str | None) -> None:
        for m in subscribe(endpoint, stream=name, timeout=300.0):
            if m.source == "end":
                ended[name].add(m.stream)
                if ended[name] == ({name} if name is not None else set(names)):
                    return
            else:
                got[name].append(m)

    threads = [threading.Thread(target=collect, args=(name,), daemon=True) for name in got]
    for t in threads:
        t.start()
    summary_path = tmp_path / "summary.json"
    args = ["run", "--max-frames", str(FRAMES), "--publish", endpoint, "--summary-json", str(summary_path), *extra]
    for source in sources:
        args += ["--source", source]
    proc = run_cli(*args, timeout=600)
    with Publisher(endpoint, NAMES) as markers:  # the run's publisher is gone: the subscribers reconnect here
        for _ in range(3000):
            if not any(t.is_alive() for t in threads):
                break
            for name in names:
                markers.publish(frame(name, source="end"))
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return proc, summary, got


def check_each_topic(summary: dict, got: dict, live: set[str]) -> None:
    for name, stream in summary["streams"].items():
        mine = got[name]
        assert mine, f"stream {name}: nothing received"
        assert {m.stream for m in mine} == {name} and {m.topic for m in mine} == {b"rtseg/" + name.encode()}
        assert {m.source for m in mine} == {stream["source"]}
        seqs = [m.seq for m in mine]
        # every published frame of its stream, in order, none missed
        assert len(mine) == stream["frames_published"] == stream["frames_processed"], (name, seqs, stream)
        assert [m.stream_seq for m in mine] == list(range(len(mine))) and not any(m.missed for m in mine)
        if name in live:  # a live source skips the frames inference did not keep up with (seq: the camera's count)
            assert seqs == sorted(set(seqs))
        else:
            assert seqs == list(range(FRAMES))
        assert [m.seq for m in got[None] if m.stream == name] == seqs  # the subscriber of every stream agrees
    assert len(got[None]) == sum(len(got[name]) for name in summary["streams"])


def test_multi_source_run_publishes_each_stream_on_its_own_topic(tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, FRAMES + 4)
    proc, summary, got = run_with_a_subscriber_per_topic(["synthetic:1:160x120", "synthetic:2:160x120", str(clip)],
                                                         tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(summary["streams"]) == {"0", "1", "2"}
    check_each_topic(summary, got, live=set())


@pytest.mark.rtsp
def test_multi_source_run_with_an_rtsp_camera_publishes_each_stream_on_its_own_topic(rtsp_server, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, FRAMES + 4)
    proc, summary, got = run_with_a_subscriber_per_topic(
        ["synthetic:1:160x120", "synthetic:2:160x120", str(clip), rtsp_server.url], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(summary["streams"]) == {"0", "1", "2", "3"}
    check_each_topic(summary, got, live={"3"})
