"""The CURVE command line as a user runs it: `rtseg keys generate`, `rtseg run --curve-keys`,
`rtseg subscribe --curve-keys`; real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import stat
import subprocess
import time

import pytest
import zmq

from cli_helpers import RTSEG, assert_one_line_error, free_port, run_cli

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE (built without libsodium)")


def test_keys_generate_writes_the_key_folder_once(tmp_path):
    folder = tmp_path / "keys"
    proc = run_cli("keys", "generate", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {folder / 'server.key_secret'}" in proc.stdout
    assert stat.S_IMODE((folder / "client.key_secret").stat().st_mode) == 0o600
    assert (folder / "allowed_clients" / "client.key").is_file()
    assert_one_line_error(run_cli("keys", "generate", str(folder)), 2, "expected a folder without keys")


def test_curve_keys_errors_come_before_the_model_loads(tmp_path):
    assert_one_line_error(run_cli("run", "--curve-keys", str(tmp_path), "--max-frames", "1"), 2,
                   "--curve-keys is for --publish")
    assert_one_line_error(run_cli("run", "--publish", f"tcp://127.0.0.1:{free_port()}", "--curve-keys",
                           str(tmp_path / "missing"), "--max-frames", "1"), 2, "--curve-keys: expected a key folder")
    assert_one_line_error(run_cli("subscribe", "tcp://127.0.0.1:1", "--curve-keys", str(tmp_path / "missing")), 2,
                   "--curve-keys: expected a key folder")


def test_run_with_curve_keys_reaches_only_the_subscriber_with_the_right_keys(tmp_path):
    keys, other = tmp_path / "keys", tmp_path / "other"
    assert run_cli("keys", "generate", str(keys)).returncode == 0
    assert run_cli("keys", "generate", str(other)).returncode == 0
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    right = subprocess.Popen([*RTSEG, "subscribe", endpoint, "--curve-keys", str(keys), "--count", "3",
                              "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wrong = subprocess.Popen([*RTSEG, "subscribe", endpoint, "--curve-keys", str(other), "--timeout", "120"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(5)  # both subscribers import and connect (they retry until the publisher binds)
    run = subprocess.Popen([*RTSEG, "run", "--source", "synthetic", "--publish", endpoint, "--curve-keys", str(keys)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = right.communicate(timeout=300)
        assert right.returncode == 0, err
        assert len(out.splitlines()) == 3 and all(line.startswith("seq=") for line in out.splitlines())
    finally:
        run.terminate()  # SIGTERM: a clean stop
        run_out, run_err = run.communicate(timeout=60)
        wrong.terminate()
        wrong_out, _ = wrong.communicate(timeout=60)
    assert run.returncode == 0, run_err
    assert "CURVE-encrypted, 1 allowed subscriber key(s)" in run_err
    assert wrong_out == ""  # the whole run long, the wrong key received nothing
