"""A real RTSP server for tests, and the controller the tests use to start and stop it.

Two halves in one file:

- ``main()`` runs under Debian's ``/usr/bin/python3`` (NOT the project venv), which has
  GObject introspection and GStreamer's RTSP server (packages ``python3-gi``,
  ``gir1.2-gst-rtsp-server-1.0``, ``gstreamer1.0-plugins-{base,good,ugly}``). It serves an
  H.264 test stream at ``rtsp://127.0.0.1:PORT/test`` and prints ``READY <url>`` once it
  listens. Every frame carries a visible stamp (:func:`stamp_image`, read back with
  :func:`read_stamp`): its frame counter and the wall-clock time it was made, as blocks
  big enough to survive H.264, so tests can tell duplicates, black frames and stale frames
  apart and measure end-to-end latency::

      /usr/bin/python3 tests/rtsp_server.py --port 8554
      /usr/bin/python3 tests/rtsp_server.py --check   # exit 0 if everything needed is installed

- :class:`RtspServerProcess` runs inside pytest: it starts that script as a child process,
  waits for ``READY``, and can kill it and start it again on the same port (to test
  reconnection). Nothing here imports ``gi``; the ``gi`` imports live inside ``main()``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = os.path.abspath(__file__)
MOUNT = "/test"

# 320x240 at 25 fps keeps x264 (ultrafast, zero latency) cheap on a 2-core machine. Frames
# come from an appsrc fed by a 40 ms GLib timer (live: made at the moment they are sent).
WIDTH, HEIGHT, FPS = 320, 240, 25
PIPELINE = (
    "( appsrc name=stamps is-live=true format=time do-timestamp=true "
    f"caps=video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate={FPS}/1 "
    "! videoconvert "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)

REQUIRED_ELEMENTS = ("appsrc", "videoconvert", "x264enc", "rtph264pay")

# The stamp: a grid of 10 x 8 blocks of 32 x 30 pixels (the whole 320 x 240 frame), each
# dark (bit 0) or light (bit 1), row-major, least significant bit first: bits 0-31 the
# frame counter, bits 32-79 the wall-clock time the frame was made in milliseconds.
STAMP_COLUMNS, STAMP_ROWS, BLOCK_W, BLOCK_H = 10, 8, 32, 30
DARK, LIGHT = 16, 235  # video-range levels: nothing clips


def stamp_image(counter: int, time_ms: int) -> bytes:
    """A GRAY8 ``WIDTH x HEIGHT`` frame carrying ``counter`` and ``time_ms`` (pure Python:
    the server's interpreter need not have numpy)."""
    value = (counter & 0xFFFFFFFF) | ((time_ms & (2**48 - 1)) << 32)
    rows = []
    for r in range(STAMP_ROWS):
        line = b"".join(
            bytes([LIGHT if (value >> (r * STAMP_COLUMNS + c)) & 1 else DARK]) * BLOCK_W for c in range(STAMP_COLUMNS)
        )
        rows.append(line * BLOCK_H)
    return b"".join(rows)


def read_stamp(image) -> tuple[int, float] | None:
    """``(counter, made_at)`` from a decoded ``uint8[240, 320, 3]`` frame (``made_at`` in
    ``time.time()`` seconds), or ``None`` when a block is neither clearly dark nor light
    (not a stamped frame: black, grey, garbled)."""
    import numpy as np

    gray = np.asarray(image, dtype=np.float32)
    gray = gray.mean(axis=2) if gray.ndim == 3 else gray
    if gray.shape != (HEIGHT, WIDTH):
        return None
    middle = (LIGHT + DARK) / 2
    value = 0
    for r in range(STAMP_ROWS):
        for c in range(STAMP_COLUMNS):
            y, x = r * BLOCK_H, c * BLOCK_W
            level = float(gray[y + 8:y + BLOCK_H - 8, x + 8:x + BLOCK_W - 8].mean())
            if level > middle + 60:
                value |= 1 << (r * STAMP_COLUMNS + c)
            elif level > middle - 60:
                return None
    return value & 0xFFFFFFFF, (value >> 32) / 1000.0


# --------------------------------------------------------------------------------------
# server side: run by /usr/bin/python3
# --------------------------------------------------------------------------------------
def _import_gst():
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    return GLib, Gst, GstRtspServer


def _check() -> int:
    try:
        _, Gst, _ = _import_gst()
    except Exception as exc:  # ImportError, ValueError (namespace not available)
        print(f"GStreamer RTSP server not importable: {exc}", file=sys.stderr)
        return 1
    missing = [name for name in REQUIRED_ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"GStreamer elements missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an H.264 test stream over RTSP on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--check", action="store_true", help="only check that GStreamer and its RTSP server are installed")
    args = parser.parse_args(argv)
    if args.check:
        return _check()

    GLib, Gst, GstRtspServer = _import_gst()
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)  # all clients watch one encoder
    counter = [0]

    def on_media_configure(_factory, media) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("stamps")

        def push() -> bool:  # every 1/FPS s while the media lives; False ends the timer
            data = stamp_image(counter[0], int(time.time() * 1000))
            counter[0] += 1
            return appsrc.emit("push-buffer", Gst.Buffer.new_wrapped(data)) == Gst.FlowReturn.OK

        GLib.timeout_add(1000 // FPS, push)

    factory.connect("media-configure", on_media_configure)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{MOUNT}", flush=True)
    loop.run()
    return 0


# --------------------------------------------------------------------------------------
# test side: imported by pytest (venv python)
# --------------------------------------------------------------------------------------
_availability: tuple[bool, str] | None = None


def rtsp_server_available() -> tuple[bool, str]:
    """``(True, "")`` if ``/usr/bin/python3`` can run the server, else ``(False, reason)``. Cached."""
    global _availability
    if _availability is None:
        if not os.path.exists(SYSTEM_PYTHON):
            _availability = (False, f"{SYSTEM_PYTHON} not found")
        else:
            try:
                proc = subprocess.run(
                    [SYSTEM_PYTHON, SCRIPT, "--check"], capture_output=True, text=True, timeout=60
                )
                returncode, stderr = proc.returncode, proc.stderr.strip()
            except subprocess.TimeoutExpired:
                returncode, stderr = 1, "the check did not finish within 60 s"
            reason = stderr.splitlines()[-1] if stderr else f"exit code {returncode}"
            _availability = (True, "") if returncode == 0 else (
                False,
                f"{SYSTEM_PYTHON} cannot run the GStreamer RTSP server ({reason}); install "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                "gstreamer1.0-plugins-ugly python3-gi gstreamer1.0-tools",
            )
    return _availability


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _drain_pipe(pipe) -> None:
    try:
        while pipe.read(4096):
            pass
    except (OSError, ValueError):  # closed under us
        pass


class RtspServerProcess:
    """Start / kill / restart ``tests/rtsp_server.py`` as a child process on a fixed port."""

    def __init__(self, port: int | None = None, ready_timeout: float = 20.0) -> None:
        self.port = port if port is not None else free_port()
        self.ready_timeout = ready_timeout
        self.url = f"rtsp://127.0.0.1:{self.port}{MOUNT}"
        self._proc: subprocess.Popen | None = None
        self._drain: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and return once it listens; raises ``RuntimeError`` otherwise."""
        if self.running:
            raise RuntimeError(f"RTSP server on port {self.port} is already running")
        deadline = time.monotonic() + self.ready_timeout
        last_error = ""
        while time.monotonic() < deadline:  # the port may still be held briefly after a kill
            proc = subprocess.Popen(
                [SYSTEM_PYTHON, SCRIPT, "--port", str(self.port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            ready = self._wait_ready(proc, deadline)
            if ready:
                self._proc = proc
                # keep draining stderr so GStreamer warnings never fill the pipe and block it
                self._drain = threading.Thread(target=_drain_pipe, args=(proc.stderr,), daemon=True)
                self._drain.start()
                return
            proc.kill()
            _, err = proc.communicate(timeout=10)
            last_error = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
            time.sleep(0.2)
        raise RuntimeError(f"RTSP server on port {self.port} did not become ready: {last_error}")

    @staticmethod
    def _wait_ready(proc: subprocess.Popen, deadline: float) -> bool:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        return bool(result) and result[0].startswith("READY")

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crashed camera would vanish."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=10)
            self._close_pipes()
            self._proc = None

    def stop(self) -> None:
        """Stop the server politely (SIGTERM), then kill it if it does not exit."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self.resume()  # a paused process would not act on SIGTERM
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._close_pipes()
            self._proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but no data flows, as with a
        camera that hangs or a network path that black-holes packets."""
        if self.running:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self.running:
            os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def _close_pipes(self) -> None:
        if self._drain is not None:
            self._drain.join(timeout=5)  # the process has exited, so its stderr is at EOF
            self._drain = None
        for pipe in (self._proc.stdout, self._proc.stderr):
            try:
                pipe.close()
            except Exception:
                pass

    def __enter__(self) -> "RtspServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
