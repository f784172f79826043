"""Shared pytest fixtures. Each block says who owns it; add yours under its own heading."""

from __future__ import annotations

import pytest


# --- real RTSP server (owner: sources; used by tests marked `rtsp`) --------------------
@pytest.fixture
def rtsp_server():
    """A running GStreamer RTSP server at ``rtsp_server.url`` (H.264, 320x240, 25 fps).

    The object is a :class:`rtsp_server.RtspServerProcess`: ``kill()``, ``start()`` and
    ``restart()`` it mid-test (same port). Skips the test when ``/usr/bin/python3`` cannot
    run GStreamer's RTSP server (see tests/rtsp_server.py for the Debian packages).
    """
    from rtsp_server import RtspServerProcess, rtsp_server_available

    available, reason = rtsp_server_available()
    if not available:
        pytest.skip(reason)
    server = RtspServerProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()
