"""``rtseg run --view [HOST:]PORT``: the run's rendered frames in a browser, served by the run.

A small HTTP server (the standard library's :class:`http.server.ThreadingHTTPServer`, one
thread per client) with:

* ``/`` — a page with one image per stream and its live figures;
* ``/stream/<name>.mjpg`` — the stream's rendered frames as MJPEG
  (``multipart/x-mixed-replace``, which every browser shows in a plain ``<img>``); each part
  has ``Content-Length`` and ``X-Frame-Seq`` (the frame's ``Frame.seq``) headers;
* ``/frame/<name>.jpg`` — the stream's newest rendered frame, once;
* ``/stats.json`` — per stream: FPS, end-to-end latency, frames, instances per class.

Delay cannot build up and a client cannot slow the run:

* The pipeline hands each finished frame to :meth:`ViewServer.offer`, which only stores a
  reference in the stream's **newest-frame slot** (replacing an unsent one) and returns: it
  never blocks, never encodes, never waits for a client.
* One encoder thread JPEG-encodes the newest frame of each watched stream, **once**,
  whatever the number of clients; a frame replaced before the encoder got to it is skipped.
* Each client has its own thread and remembers only the number of the last JPEG it sent; it
  sends the newest one when it is ready for more, so frames a slow client missed are
  skipped, never queued. What a client can have outstanding is bounded: one JPEG being sent
  plus the socket's send buffer (set to :data:`SEND_BUFFER_BYTES`). A client that has not
  taken a whole frame within :data:`SEND_TIMEOUT_S` is dropped (Python's ``sendall`` timeout
  bounds the whole call since 3.5).

It binds 127.0.0.1 by default; any other address is reachable from the network, has no
authentication and no encryption, and is logged as a warning (as ``--publish tcp://*``).
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence
from urllib.parse import quote, unquote

from rtseg.errors import ConfigError

log = logging.getLogger("rtseg.view")

#: a client that has not taken a frame (or sent its request) within this long is dropped (its thread then ends)
SEND_TIMEOUT_S = 10.0
#: kernel send buffer per client (Linux doubles it): with the JPEG being sent, the most a
#: stalled client holds; 256 KiB covers a 1 Gbit/s link with a 2 ms round trip
SEND_BUFFER_BYTES = 256 * 1024
#: most clients at once (each is a thread); more get 503
MAX_CLIENTS = 16
#: JPEG quality of the served frames (OpenCV's default is 95; 80 halves the bytes)
JPEG_QUALITY = 80
BOUNDARY = "rtsegframe"
#: MJPEG clients whose frames-sent count is kept (:attr:`ViewServer.sent`), the most recent
MAX_SENT_RECORDS = 256
#: frames over which FPS and mean latency are measured
WINDOW = 30


def parse_view_address(text: str, option: str = "--view") -> tuple[str, int]:
    """``[HOST:]PORT`` -> ``(host, port)``; host 127.0.0.1 when only a port is given, port 0
    picks a free one. IPv6 hosts in brackets: ``[::1]:8080``."""
    host, port_text = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ConfigError(f"{option}: expected [HOST:]PORT, e.g. 8080, 0.0.0.0:8080 or [::1]:8080, got '{text}'")
        host, port_text = text[1:end], text[end + 2:]
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{option}: expected [HOST:]PORT with PORT 0..65535, e.g. 8080 or 0.0.0.0:8080, got '{text}'")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to is not known to be this machine only


class _Slot:
    """One stream's newest frame, its JPEG, and its figures. Guarded by ViewServer._cv."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.image = None  # newest rendered uint8[H, W, 3] BGR (a reference, not a copy)
        self.offered = 0  # frames offered so far
        self.image_no = 0  # rendered frames offered so far
        self.jpeg: bytes | None = None
        self.jpeg_no = 0  # image_no of the frame in ``jpeg``
        self.image_seq = -1  # Frame.seq of ``image``
        self.jpeg_seq = -1  # Frame.seq of ``jpeg``
        self.jpegs = 0  # JPEGs encoded (at most one per offered frame)
        self.watchers = 0  # MJPEG clients now
        self.times: deque = deque(maxlen=WINDOW + 1)
        self.latencies: deque = deque(maxlen=WINDOW)
        self.stats: dict[str, Any] = {"frames": 0}


class ViewServer:
    """The HTTP view of a run; bound (and its errors raised) on construction.

    Args:
        streams: the run's stream names, in page order.
        class_names: the model's class names (for the per-class counts).
        host, port: where to listen; port 0 picks a free one (see :attr:`url`).

    Use :meth:`start` before the run, pass the server as the pipeline's ``view`` (it calls
    :meth:`offer` with every finished frame), :meth:`close` after it; or ``with``.
    """

    def __init__(self, streams: Sequence[str], class_names: Sequence[str] = (), *, host: str = "127.0.0.1",
                 port: int = 0, send_timeout: float = SEND_TIMEOUT_S, jpeg_quality: int = JPEG_QUALITY) -> None:
        if not streams:
            raise ValueError("expected at least one stream name, got none")
        self.streams = [str(s) for s in streams]
        self.class_names = list(class_names)
        self.send_timeout = float(send_timeout)
        self.jpeg_quality = int(jpeg_quality)
        self._slots = {name: _Slot(name) for name in self.streams}
        self._cv = threading.Condition()
        self._closing = False
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self.clients_dropped = 0  #: MJPEG clients dropped: a frame not taken within ``send_timeout``
        self.clients_served = 0  #: MJPEG clients so far
        #: MJPEG client number (1, 2, ... in order of arrival) -> JPEGs written to its socket
        self.sent: dict[int, int] = {}
        self._client_no = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True,
                                                               "allow_reuse_address": True})
        try:
            self._server = server_cls((host, port), _Handler, bind_and_activate=True)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, socket.gaierror):
                why = f"unknown host ({why})"
            raise ConfigError(f"--view {host}:{port}: cannot listen there: {why}") from None
        self._server.view = self  # type: ignore[attr-defined]
        self.host, self.port = self._server.server_address[:2]
        self._threads: list[threading.Thread] = []
        if not is_loopback(host):
            where = "every network interface" if host in ("0.0.0.0", "::") else host
            log.warning("viewing on %s: %s, reachable from the network (no authentication, no encryption)",
                        self.url, where)
        else:
            log.info("viewing on %s (this machine only)", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stream_path(self, name: str) -> str:
        return f"/stream/{quote(name, safe='')}.mjpg"

    # -- lifetime ----------------------------------------------------------------------------
    def start(self) -> "ViewServer":
        for name, fn in (("serve", self._server.serve_forever), ("encode", self._encode_loop)):
            t = threading.Thread(target=fn, name=f"rtseg-view-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        """Stop serving: every client's connection is shut (a stalled one too), every thread of
        the server ends."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        if self._threads:
            self._server.shutdown()
        with self._cv:
            connections = list(self._connections)
            handlers = list(self._handlers)
        for conn in connections:  # unblocks a handler inside sendall to a client that stopped reading
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        for t in self._threads + handlers:
            t.join(timeout=5.0)

    def __enter__(self) -> "ViewServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- from the pipeline -------------------------------------------------------------------
    def offer(self, frame: Any) -> None:
        """A finished frame (``frame.rendered`` set): becomes its stream's newest frame. Never
        blocks beyond a short lock; frames without a rendering only update the figures."""
        slot = self._slots.get(frame.stream)
        if slot is None:
            return
        now = time.perf_counter()
        inst = frame.instances
        counts: dict[str, int] = {}
        if inst is not None:
            for cid in inst.class_ids.tolist():
                name = self.class_names[cid] if 0 <= cid < len(self.class_names) else str(cid)
                counts[name] = counts.get(name, 0) + 1
        track_ids = getattr(inst, "track_ids", None) if inst is not None else None
        with self._cv:
            slot.offered += 1
            if frame.rendered is not None:
                slot.image, slot.image_seq = frame.rendered, frame.seq
                slot.image_no += 1
                if slot.watchers:
                    self._cv.notify_all()
            slot.times.append(now)
            latency = frame.timings.get("end to end")
            if latency is not None:
                slot.latencies.append(latency)
            span = slot.times[-1] - slot.times[0]
            slot.stats = {
                "frames": slot.offered,
                "seq": frame.seq,
                "fps": (len(slot.times) - 1) / span if span > 0 else None,
                "latency_ms": latency * 1000.0 if latency is not None else None,
                "mean_latency_ms": 1000.0 * sum(slot.latencies) / len(slot.latencies) if slot.latencies else None,
                "instances": 0 if inst is None else len(inst),
                "classes": counts,
                "tracks": None if track_ids is None else sorted(int(t) for t in track_ids if t >= 0),
                "size": list(frame.image.shape[1::-1]),  # [W, H]
            }

    # -- encoder -----------------------------------------------------------------------------
    def _encode_loop(self) -> None:
        import cv2

        params = [int(cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality]
        while True:
            with self._cv:
                while True:
                    if self._closing:
                        return
                    todo = [s for s in self._slots.values() if s.watchers and s.image_no > s.jpeg_no]
                    if todo:
                        break
                    self._cv.wait()
                jobs = [(s, s.image, s.image_no, s.image_seq) for s in todo]
            for slot, image, number, seq in jobs:
                ok, buf = cv2.imencode(".jpg", image, params)
                if not ok:  # not expected for a uint8 BGR image; the stream just shows no new frame
                    log.debug("JPEG encoding failed for stream %s", slot.name)
                    continue
                with self._cv:
                    slot.jpeg, slot.jpeg_no, slot.jpeg_seq = buf.tobytes(), number, seq
                    slot.jpegs += 1
                    self._cv.notify_all()

    def _newest_jpeg(self, slot: _Slot) -> bytes | None:
        """The newest frame as a JPEG, encoded here if no watcher's encoding is current."""
        with self._cv:
            if slot.jpeg is not None and slot.jpeg_no == slot.image_no:
                return slot.jpeg
            image = slot.image
        if image is None:
            return None
        import cv2

        ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality])
        return buf.tobytes() if ok else None

    def _wait_newer(self, slot: _Slot, sent: int) -> tuple[bytes, int, int] | None:
        """Block until the stream has a JPEG newer than ``sent``: ``(jpeg, its number, its
        Frame.seq)``; None when closing."""
        with self._cv:
            while not self._closing:
                if slot.jpeg is not None and slot.jpeg_no > sent:
                    return slot.jpeg, slot.jpeg_no, slot.jpeg_seq
                self._cv.wait()
        return None

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {
                "streams": {name: dict(s.stats, jpegs=s.jpegs, watchers=s.watchers) for name, s in self._slots.items()},
                "clients_served": self.clients_served,
                "clients_dropped": self.clients_dropped,
            }

    def page(self) -> str:
        cards = "\n".join(
            f'<figure data-stream="{html.escape(name)}"><img src="{html.escape(self.stream_path(name))}" '
            f'alt="stream {html.escape(name)}"><figcaption><b>{html.escape(name)}</b> '
            f'<span class="stats">waiting for frames</span></figcaption></figure>'
            for name in self.streams)
        return _PAGE.replace("{cards}", cards)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rtseg view</title>
<style>
body { margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; }
main { display: flex; flex-wrap: wrap; gap: 12px; padding: 12px; }
figure { margin: 0; width: min-content; }
img { display: block; background: #000; }
figcaption { padding: 4px 0; }
</style></head>
<body><main>
{cards}
</main>
<script>
function show(s) {
  if (!s.frames) return "waiting for frames";
  const f = (v, d) => v === null || v === undefined ? "-" : v.toFixed(d);
  const classes = Object.entries(s.classes).map(([k, v]) => k + " " + v).join(", ");
  return f(s.fps, 1) + " FPS, latency " + f(s.latency_ms, 0) + " ms (mean " + f(s.mean_latency_ms, 0) +
    "), frame " + s.seq + ", " + s.instances + " instance(s)" + (classes ? ": " + classes : "") +
    (s.tracks ? ", tracks " + s.tracks.join(" ") : "");
}
async function poll() {
  try {
    const r = await fetch("/stats.json", {cache: "no-store"});
    const all = (await r.json()).streams;
    for (const fig of document.querySelectorAll("figure")) {
      const s = all[fig.dataset.stream];
      if (s) fig.querySelector(".stats").textContent = show(s);
    }
  } catch (e) {
    for (const el of document.querySelectorAll(".stats")) el.textContent = "run ended";
    return;
  }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server_version = "rtseg-view"
    protocol_version = "HTTP/1.1"

    @property
    def view(self) -> ViewServer:
        return self.server.view  # type: ignore[attr-defined]

    def setup(self) -> None:
        self.timeout = self.view.send_timeout  # reads and writes: a client that stalls is dropped
        super().setup()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        with self.view._cv:
            self.view._connections.add(self.connection)
            self.view._handlers.add(threading.current_thread())

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        with self.view._cv:
            self.view._connections.discard(self.connection)
            self.view._handlers.discard(threading.current_thread())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream_name(self, prefix: str, suffix: str) -> str | None:
        path = self.path.split("?", 1)[0]
        if path.startswith(prefix) and path.endswith(suffix):
            name = unquote(path[len(prefix):-len(suffix)])
            if name in self.view._slots:
                return name
        return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                self._send(200, self.view.page().encode(), "text/html; charset=utf-8")
            elif path == "/stats.json":
                self._send(200, json.dumps(self.view.stats()).encode(), "application/json")
            elif (name := self._stream_name("/frame/", ".jpg")) is not None:
                jpeg = self.view._newest_jpeg(self.view._slots[name])
                if jpeg is None:
                    self._send(503, b"no frame yet\n", "text/plain")
                else:
                    self._send(200, jpeg, "image/jpeg")
            elif (name := self._stream_name("/stream/", ".mjpg")) is not None:
                self._mjpeg(self.view._slots[name])
            else:
                self._send(404, f"not found: {path} (expected /, /stats.json, /stream/NAME.mjpg, "
                                f"/frame/NAME.jpg)\n".encode(), "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _mjpeg(self, slot: _Slot) -> None:
        view = self.view
        with view._cv:
            if sum(s.watchers for s in view._slots.values()) >= MAX_CLIENTS:
                full = True
            else:
                full = False
                slot.watchers += 1
                view.clients_served += 1
                view._client_no += 1
                number = view._client_no
                view.sent[number] = 0
                if len(view.sent) > MAX_SENT_RECORDS:  # bounded over a long run of coming and going viewers
                    del view.sent[min(view.sent)]
                view._cv.notify_all()  # the encoder: this stream is watched now
        if full:
            self._send(503, f"too many viewers (at most {MAX_CLIENTS})\n".encode(), "text/plain")
            return
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            while True:
                newest = view._wait_newer(slot, sent)
                if newest is None:
                    break
                jpeg, sent, seq = newest
                head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                        f"X-Frame-Seq: {seq}\r\n\r\n").encode()
                self.wfile.write(head + jpeg + b"\r\n")
                with view._cv:
                    view.sent[number] += 1
        except TimeoutError:
            with view._cv:
                view.clients_dropped += 1
            log.info("view: dropped a client that did not take a frame within %.0f s (%s)", view.send_timeout,
                     self.address_string())
        except OSError:  # the client went away, or close() shut its connection
            pass
        finally:
            with view._cv:
                slot.watchers -= 1
