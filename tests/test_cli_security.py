"""The CURVE command line as a user runs it: `rtseg keys generate`, `rtseg run --curve-keys`,
`rtseg subscribe --curve-keys`; real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

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


# ---------------------------------------------------------------------------------------
# refused subscribers (issue 15, item 10) and endpoints (item 11)
# ---------------------------------------------------------------------------------------
def _key_folder(path, *, client_from, server_from):
    """A subscriber's key folder: the client key pair of one folder, the server key of another."""
    path.mkdir()
    for name in ("client.key", "client.key_secret"):
        (path / name).write_bytes((client_from / name).read_bytes())
    os.chmod(path / "client.key_secret", 0o600)
    (path / "server.key").write_bytes((server_from / "server.key").read_bytes())
    return path


@pytest.mark.parametrize("client, expected", [
    ("unlisted key", "authentication failed: the publisher refused this subscriber's CURVE key"),
    ("no key", "expected --curve-keys DIR"),  # a mechanism mismatch, or the server closes first
    ("another publisher's server key", "authentication failed: the publisher ended the CURVE handshake"),
])
def test_a_refused_subscriber_says_authentication_failed_backs_off_and_logs_a_few_lines(tmp_path, client, expected):
    """`rtseg subscribe` refused by a CURVE publisher (a CURVE PUB socket whose ZAP handler
    admits only keys/allowed_clients, as rtseg's Publisher): for 4 s its log says why, in
    at most one warning line, and its connection attempts -- counted by the publisher
    socket's monitor -- are spaced by the back-off (0.1 s doubling: about 6 in 4 s; it
    used to reconnect every 20 ms, thousands of handshakes and log lines)."""
    keys, other = tmp_path / "keys", tmp_path / "other"
    assert run_cli("keys", "generate", str(keys)).returncode == 0
    assert run_cli("keys", "generate", str(other)).returncode == 0
    folder = {"unlisted key": lambda: _key_folder(tmp_path / "stranger", client_from=other, server_from=keys),
              "no key": lambda: None,
              "another publisher's server key": lambda: other}[client]()
    context = zmq.Context()
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys / "allowed_clients"))
    server = context.socket(zmq.PUB)
    server_public, server_secret = zmq.auth.load_certificate(keys / "server.key_secret")
    server.curve_secretkey, server.curve_publickey, server.curve_server = server_secret, server_public, True
    port = server.bind_to_random_port("tcp://127.0.0.1")
    monitor = server.get_monitor_socket(zmq.EVENT_ACCEPTED)
    try:
        command = [*RTSEG, "subscribe", f"tcp://127.0.0.1:{port}", "--timeout", "4"]
        command += ["--curve-keys", str(folder)] if folder is not None else []
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        accepted = 0
        while proc.poll() is None:
            if monitor.poll(100):
                monitor.recv_multipart()
                accepted += 1
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.disable_monitor()
        monitor.close(linger=0)
        server.close(linger=0)
        auth.stop()
        context.term()
    assert proc.returncode == 0 and out == ""
    lines = err.splitlines()
    assert lines[-1] == "received 0 message(s), missed 0, publisher restarts 0", err
    warnings = lines[:-1]
    assert len(warnings) == 1 and expected in warnings[0], err
    assert 1 <= accepted <= 12, f"{accepted} connection attempts in 4 s"


MALFORMED_ENDPOINTS = [
    ("tcp://127.0.0.1:99999", "expected a TCP port in 1-65535, found '99999'"),
    ("tcp://127.0.0.1:0", "expected a TCP port in 1-65535, found '0'"),
    ("tcp://127.0.0.1", "expected tcp://HOST:PORT, found no port"),
    ("udp://127.0.0.1:5555", "expected tcp://HOST:PORT (port 1-65535), ipc://PATH, found scheme 'udp'"),
    ("inproc://results", "found inproc:// (it reaches only the same process)"),
    ("ipc://" + "x" * 200, "expected ipc://PATH with 1-107 bytes, found a path of 200 bytes"),
]


@pytest.mark.parametrize("endpoint, fragment", MALFORMED_ENDPOINTS)
def test_subscribe_to_a_malformed_endpoint_is_one_line(endpoint, fragment):
    """Refused at once (port 99999 used to be accepted, and the subscriber waited forever)."""
    assert_one_line_error(run_cli("subscribe", endpoint, timeout=60), 5, f"subscribe '{endpoint[:40]}", fragment)


@pytest.mark.parametrize("endpoint, fragment", [MALFORMED_ENDPOINTS[0], MALFORMED_ENDPOINTS[4]])
def test_run_publish_on_a_malformed_endpoint_is_one_line_before_the_model_loads(endpoint, fragment):
    run = run_cli("run", "--publish", endpoint, "--max-frames", "1", timeout=120)
    assert_one_line_error(run, 5, "--publish", fragment.replace("1-65535, found", "1-65535, or * for a free one, found"))
    assert not any(line.startswith("rtseg: INFO: model ") for line in run.stderr.splitlines()), run.stderr
