"""rtseg.view (``rtseg run --view``): real sockets, a real pipeline and model, a real browser.

A client that stops reading is a real TCP socket that connects, asks for the MJPEG stream
and never reads (as the slow ZeroMQ subscriber tests in test_publish.py / test_pipeline.py);
what is compared is behaviour (every frame of a file processed, the run ends, the other
client gets frames, nothing left running), never durations.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import json

import cv2
import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_cli
from rtseg.bench import write_video
from rtseg.errors import ConfigError
from rtseg.pipeline import Pipeline
from rtseg.render import render
from rtseg.segmenter import Segmenter
from rtseg.sources import open_source
from rtseg.synthetic import SyntheticVideo
from rtseg.view import BOUNDARY, ViewServer, is_loopback, parse_view_address

N_FRAMES = 40
H, W = 480, 640
DOCS_SCREENSHOT = os.path.join(os.path.dirname(__file__), "..", "docs", "view.png")


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter("yolact_resnet18_half_384", score_threshold=0.3)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """N_FRAMES synthetic frames (textured: ~60 KB JPEGs each, far more than socket buffers hold)."""
    path = str(tmp_path_factory.mktemp("video") / "synthetic.avi")
    write_video(path, (H, W), N_FRAMES, seed=3, fps=25.0)
    return path


def _wait_until(condition, what: str, limit_s: float = 120.0) -> None:
    """Polls a state (never a duration); the limit only keeps a broken run from hanging the suite."""
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _mjpeg_parts(f):
    """``(X-Frame-Seq, jpeg bytes)`` of each part of an MJPEG response read from file ``f``,
    until the server closes it."""
    status = f.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    headers = {}
    while (line := f.readline().strip()):
        k, v = line.split(b":", 1)
        headers[k.lower()] = v.strip()
    assert headers[b"content-type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}".encode()
    while True:
        line = f.readline()
        if not line:
            return
        if not line.strip():
            continue
        assert line.strip() == f"--{BOUNDARY}".encode(), line
        part = {}
        while (line := f.readline().strip()):
            k, v = line.split(b":", 1)
            part[k.lower()] = v.strip()
        assert part[b"content-type"] == b"image/jpeg"
        n = int(part[b"content-length"])
        data = f.read(n)
        if len(data) < n:
            return
        yield int(part[b"x-frame-seq"]), data


def _connect(view: ViewServer, path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect: the window the server sees
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((view.host, view.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {view.host}\r\n\r\n".encode())
    return sock


def _watchers(view: ViewServer, name: str = "0") -> int:
    return view.stats()["streams"][name]["watchers"]


def _view_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rtseg-") or "process_request" in t.name}


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [("8080", ("127.0.0.1", 8080)), ("0", ("127.0.0.1", 0)),
                                           ("0.0.0.0:8080", ("0.0.0.0", 8080)), ("[::1]:81", ("::1", 81)),
                                           ("localhost:9000", ("localhost", 9000))])
def test_view_address_defaults_to_loopback(text, expected):
    assert parse_view_address(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "8080:", ":8080", "host:99999", "[::1", "[::1]8080", "-1"])
def test_a_malformed_view_address_is_one_clear_error(text):
    with pytest.raises(ConfigError, match=r"--view: expected \[HOST:\]PORT"):
        parse_view_address(text)


def test_only_loopback_addresses_count_as_this_machine_only():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("camera.local")


def test_a_busy_port_and_a_bad_address_are_one_line_before_the_model_loads():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("run", "--max-frames", "2", "--view", str(port))
    assert_one_line_error(proc, 2, f"--view 127.0.0.1:{port}", "Address already in use")
    assert "loading model" not in proc.stderr
    proc = run_cli("run", "--max-frames", "2", "--view", "localhost:http")
    assert_one_line_error(proc, 2, "--view: expected [HOST:]PORT", "'localhost:http'")


def test_rtseg_run_view_serves_the_run_until_it_is_stopped():
    """The CLI end to end: port 0 picks a free port, the log says the URL, the page and the
    figures are served while the run goes on, Ctrl-C ends it as usual."""
    import signal
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "rtseg", "run", "--source", "synthetic:0:320x240", "--view", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "output: rendered video in a browser at " in line:
                break
        assert proc.poll() is None, "".join(lines)
        drain = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # a full pipe would block it
        drain.start()
        url = line.rsplit(" at ", 1)[1].strip()
        assert any("viewing on http://127.0.0.1:" in x and "this machine only" in x for x in lines), lines
        assert "results go nowhere" not in "".join(lines)
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "/stream/0.mjpg" in page
        _wait_until(lambda: json.loads(urllib.request.urlopen(url + "stats.json", timeout=30).read())
                    ["streams"]["0"]["frames"] >= 2, "frames in the view")
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "interrupted (Ctrl-C)" in out


def test_a_non_loopback_view_is_a_warning(caplog):
    with caplog.at_level("INFO", logger="rtseg.view"):
        ViewServer(["0"], host="0.0.0.0", port=0).close()
        ViewServer(["0"], port=0).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "every network interface, reachable from the network" in warnings[0]


# -- serving a run -------------------------------------------------------------------------------
def test_every_stream_is_served_with_its_figures_and_the_run_renders_for_it(segmenter, video_file):
    """Two streams (as ``--source A --source B``): one image each on the page, its MJPEG at
    /stream/<name>.mjpg, its newest frame at /frame/<name>.jpg, figures in /stats.json."""
    names = ["front door", "yard"]  # a space: names are quoted in URLs
    view = ViewServer(names, segmenter.class_names).start()
    seen = []
    try:
        page = urllib.request.urlopen(view.url, timeout=30).read().decode()
        assert page.count("<img") == 2 and "/stream/front%20door.mjpg" in page and "/stream/yard.mjpg" in page
        readers = {}
        for name in names:
            f = _connect(view, view.stream_path(name)).makefile("rb")
            readers[name] = (f, [])
        _wait_until(lambda: all(_watchers(view, n) == 1 for n in names), "both viewers to connect")
        threads = [threading.Thread(target=lambda f=f, out=out: out.extend(_mjpeg_parts(f)))
                   for f, out in readers.values()]
        for t in threads:
            t.start()
        pipeline = Pipeline([open_source(video_file), open_source("synthetic")], segmenter, names=names, view=view,
                            max_frames=6, on_frame=seen.append)
        summary = pipeline.run()
        stats = json.loads(urllib.request.urlopen(view.url + "stats.json", timeout=30).read())
        frame = urllib.request.urlopen(view.url + "frame/yard.jpg", timeout=30).read()
        for _, out in readers.values():  # the last frame reaches each viewer (then the view may close)
            _wait_until(lambda out=out: out and out[-1][0] == 5, "the last frame to reach a viewer")
    finally:
        view.close()
    for t in threads:
        t.join()
    assert summary.frames_processed == 12 and all(f.rendered is not None for f in seen)  # --view implies rendering
    for name in names:
        parts = readers[name][1]
        seqs = [seq for seq, _ in parts]
        assert seqs and seqs == sorted(set(seqs)) and seqs[-1] == 5, seqs  # newest frames, in order, the last one too
        image = cv2.imdecode(np.frombuffer(parts[-1][1], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (H, W, 3)
        s = stats["streams"][name]
        assert s["frames"] == 6 and s["seq"] == 5 and s["size"] == [W, H] and s["fps"] > 0 and s["latency_ms"] > 0
        assert s["instances"] == sum(s["classes"].values()) and set(s["classes"]) <= set(segmenter.class_names)
        assert s["jpegs"] <= 6  # encoded once per frame at most, whatever the number of clients
    assert cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)


def test_a_client_that_never_reads_does_not_hold_back_the_run(segmenter, video_file):
    """A stalled viewer connects first and never reads; the run still processes every frame
    of the file, in order, and ends; a reading viewer gets the frames up to the last; the
    stalled one was really stalled (it was written far fewer frames than there were); closing
    the view ends every thread it started, the stalled client's included."""
    before = _view_threads()
    view = ViewServer(["0"], segmenter.class_names, send_timeout=600.0).start()  # never dropped during the run
    stalled = _connect(view, view.stream_path("0"), rcvbuf=4096)
    _wait_until(lambda: _watchers(view) == 1, "the stalled viewer to connect")
    healthy = _connect(view, view.stream_path("0")).makefile("rb")
    _wait_until(lambda: _watchers(view) == 2, "the reading viewer to connect")
    got: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=lambda: got.extend(_mjpeg_parts(healthy)))
    reader.start()
    seen = []
    try:
        summary = Pipeline(open_source(video_file), segmenter, view=view, on_frame=seen.append, workers=2).run()
        _wait_until(lambda: got and got[-1][0] == N_FRAMES - 1, "the last frame to reach the reading viewer")
        sent_to_stalled = view.sent[1]
        encoded = view.stats()["streams"]["0"]["jpegs"]
    finally:
        view.close()
        reader.join()
        stalled.close()
    assert [f.seq for f in seen] == list(range(N_FRAMES))  # nothing lost from the file
    assert summary.frames_read == summary.frames_processed == N_FRAMES and summary.stopped_by == "end of input"
    seqs = [seq for seq, _ in got]
    assert seqs and seqs == sorted(set(seqs)) and seqs[-1] == N_FRAMES - 1
    assert sent_to_stalled < min(encoded, N_FRAMES), (sent_to_stalled, encoded)  # it did stall
    assert _view_threads() <= before  # nothing left running


def test_a_stalled_client_is_dropped_after_the_send_timeout_while_the_run_goes_on(segmenter):
    view = ViewServer(["0"], segmenter.class_names, send_timeout=0.5).start()
    stalled = _connect(view, view.stream_path("0"), rcvbuf=4096)
    pipeline = Pipeline(open_source("synthetic"), segmenter, view=view)
    run = threading.Thread(target=pipeline.run)
    run.start()
    try:
        _wait_until(lambda: view.clients_dropped == 1, "the stalled viewer to be dropped")
        assert _watchers(view) == 0
    finally:
        pipeline.stop()
        run.join()
        view.close()
        stalled.close()
    assert pipeline.result is not None and pipeline.result.frames_processed >= 1


# -- in a browser ----------------------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs a headless Chromium (Debian: apt-get install chromium)")
def test_a_real_browser_shows_each_streams_rendered_frame(segmenter, tmp_path):
    """Headless Chromium opens the page while the run goes on; the screenshot holds each
    stream's rendered frame (found by template matching against the same frame rendered
    here), masks included; with the track extra the run tracks, so the labels carry IDs (the
    match tolerates their few pixels). With RTSEG_WRITE_DOCS=1 the screenshot becomes docs/view.png."""
    stills = {}
    for name, seed in (("entrance", 0), ("yard", 5)):  # one still per stream, looped: a known frame
        stills[name] = SyntheticVideo(seed=seed, size=(H, W)).frame(0).image
        cv2.imwrite(str(tmp_path / f"{name}.png"), stills[name])
    tracker = None
    if importlib.util.find_spec("trackers") is not None:  # the track extra: IDs in the labels too
        from rtseg.track import InstanceTracker

        tracker = lambda name: InstanceTracker("bytetrack")  # noqa: E731
    view = ViewServer(list(stills), segmenter.class_names).start()
    pipeline = Pipeline([open_source(str(tmp_path / f"{n}.png"), loop=True) for n in stills], segmenter,
                        names=list(stills), view=view, tracker=tracker)
    run = threading.Thread(target=pipeline.run)
    run.start()
    shot = tmp_path / "view.png"  # (kept for a failing run: /tmp/pytest-of-*/)
    try:
        _wait_until(lambda: all(s["frames"] >= 3 for s in view.stats()["streams"].values()), "frames of each stream")
        proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--force-device-scale-factor=1", "--window-size=1320,580", "--timeout=5000",
                               f"--screenshot={shot}", view.url], capture_output=True, text=True, timeout=180)
        running = run.is_alive()  # the screenshot was taken while the run went on
    finally:
        pipeline.stop()
        run.join()
        view.close()
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert running
    screen = cv2.imread(str(shot))
    for name, image in stills.items():
        instances, _ = segmenter.process(image)
        assert len(instances) > 0
        expected = render(image, instances, segmenter.class_names, fps=None)  # labels without track IDs
        # the FPS readout (top-left) differs from frame to frame: match what lies below it
        top = 40
        scores = cv2.matchTemplate(screen, expected[top:], cv2.TM_CCOEFF_NORMED)
        _, best, _, (x, y) = cv2.minMaxLoc(scores)
        assert best > 0.9, (name, best)
        shown = screen[y - top:y - top + H, x:x + W].astype(np.int16)
        assert shown.shape == (H, W, 3)
        # the masks are drawn: inside them the page is the rendering, not the raw image
        inside = cv2.erode(instances.masks_dense().any(axis=0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        inside[:top] = False
        to_rendered = np.abs(shown - expected.astype(np.int16))[inside].mean()
        to_raw = np.abs(shown - image.astype(np.int16))[inside].mean()
        assert to_rendered < to_raw / 2, (name, to_rendered, to_raw)
    if os.environ.get("RTSEG_WRITE_DOCS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
