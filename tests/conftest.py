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


# --- one torch thread (owner: kernels; tests/test_kernels_*.py) --------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """For a module of thousands of tiny torch ops (the kernels' reference twins): one intra-op
    thread is many times faster than several on a busy machine (a 12 ms bmm instead of
    0.1 ms), and the twins' results do not depend on it. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
