"""What the command-line tests share: run ``rtseg`` as a user would and check its errors."""

from __future__ import annotations

import socket
import subprocess
import sys

RTSEG = [sys.executable, "-m", "rtseg"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*RTSEG, *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """Exit ``code``, exactly one ``rtseg: error: ...`` line holding every fragment, no traceback."""
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("rtseg: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
