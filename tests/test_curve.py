"""ZeroMQ CURVE: keys on disk (rtseg.keys) and authenticated, encrypted publishing over real
sockets on 127.0.0.1. The right key receives frames; a wrong key, a key for another
publisher and a plain-text subscriber receive nothing (each within a bounded receive
timeout)."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from rtseg.errors import ConfigError
from rtseg.keys import generate_keys, load_client_keys, load_server_keys
from rtseg.publisher import Publisher
from rtseg.structures import Frame, Instances
from rtseg.subscriber import subscribe
from rtseg.wire import Message

NAMES = ["person", "dog"]
LOOPBACK = "tcp://127.0.0.1:*"
#: how long a subscriber that must receive nothing listens (its receive timeout); the
#: publisher sends a frame every 10 ms for at least this long
SILENT_WAIT_S = 2.0

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE (built without libsodium)")


def frame(seq: int) -> Frame:
    masks = np.zeros((1, 16, 20), np.bool_)
    masks[0, 2:9, 3 + seq % 5:12] = True
    instances = Instances(np.array([[3, 2, 12, 9]], np.float32), np.array([0.75], np.float32),
                          np.array([seq % 2], np.int64), masks, (16, 20))
    return Frame(seq=seq, source_id="curve-test", capture_time=time.time(), image=np.zeros((16, 20, 3), np.uint8),
                 instances=instances)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys") / "rtseg-keys"
    generate_keys(folder)
    return folder


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory):
    """A second, unrelated key folder: its client key is not allowed by ``keys``' publisher,
    and its server key is another publisher's."""
    folder = tmp_path_factory.mktemp("other") / "keys"
    generate_keys(folder)
    return folder


# ---------------------------------------------------------------------------------------
# keys on disk
# ---------------------------------------------------------------------------------------
def test_generate_writes_zmq_certificates_with_owner_only_secret_keys(keys):
    for name in ("server", "client"):
        public_path, secret_path = keys / f"{name}.key", keys / f"{name}.key_secret"
        assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
        assert not stat.S_IMODE(public_path.stat().st_mode) & 0o022
        public, no_secret = zmq.auth.load_certificate(public_path)  # zmq.auth's own reader
        assert no_secret is None and len(public) == 40
        same_public, secret = zmq.auth.load_certificate(secret_path)
        assert same_public == public and zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(keys / "allowed_clients" / "client.key")[0] == zmq.auth.load_certificate(keys / "client.key")[0]
    assert not [p for p in keys.iterdir() if p.name.startswith(".rtseg-keys-")]  # staging folder removed
    server, client = load_server_keys(keys), load_client_keys(keys)
    assert client.server_public == server.public and server.allowed_clients == {client.public}
    assert "secret" not in repr(server).lower() and server.secret.decode() not in repr(server)


def test_generate_never_overwrites_keys(keys):
    before = (keys / "server.key_secret").read_bytes()
    with pytest.raises(ConfigError, match="expected a folder without keys, found .*server.key"):
        generate_keys(keys)
    assert (keys / "server.key_secret").read_bytes() == before


def _copy_keys(src, dst, *, skip=()):
    dst.mkdir()
    (dst / "allowed_clients").mkdir()
    for path in src.rglob("*"):
        if path.is_file() and path.name not in skip:
            target = dst / path.relative_to(src)
            target.write_bytes(path.read_bytes())
            os.chmod(target, stat.S_IMODE(path.stat().st_mode))


@pytest.mark.parametrize(
    "breakage, side, fragment",
    [
        ("no folder", "server", "expected a key folder made by 'rtseg keys generate"),
        ("no folder", "client", "expected a key folder made by 'rtseg keys generate"),
        ("no server secret", "server", "server.key_secret (made by 'rtseg keys generate DIR'), found it missing"),
        ("no client secret", "client", "client.key_secret (made by 'rtseg keys generate DIR'), found it missing"),
        ("no server public", "client", "server.key (made by 'rtseg keys generate DIR'), found it missing"),
        ("no allowed clients", "server", "must hold at least one subscriber's public key (*.key), found none"),
        ("garbage secret", "server", "must be a ZeroMQ certificate with a public-key line, found none"),
        ("short key", "client", "must be 40 Z85 characters, found 12"),
        ("readable secret", "server", "must be readable by its owner only (chmod 600 it), found mode 644"),
        ("mismatched pair", "client", "must belong to its public key, found another key pair's"),
    ],
)
def test_missing_or_malformed_keys_are_one_line_errors(keys, other_keys, tmp_path, breakage, side, fragment):
    folder = tmp_path / "k"
    if breakage != "no folder":
        _copy_keys(keys, folder)
    if breakage == "no server secret":
        (folder / "server.key_secret").unlink()
    elif breakage == "no client secret":
        (folder / "client.key_secret").unlink()
    elif breakage == "no server public":
        (folder / "server.key").unlink()
    elif breakage == "no allowed clients":
        (folder / "allowed_clients" / "client.key").unlink()
    elif breakage == "garbage secret":
        (folder / "server.key_secret").write_bytes(b"\x00\xffnot a certificate\n")
    elif breakage == "short key":
        text = (folder / "server.key").read_text()
        public = zmq.auth.load_certificate(folder / "server.key")[0].decode()
        (folder / "server.key").write_text(text.replace(public, public[:12]))
    elif breakage == "readable secret":
        os.chmod(folder / "server.key_secret", 0o644)
    elif breakage == "mismatched pair":
        other_secret = zmq.auth.load_certificate(other_keys / "client.key_secret")[1].decode()
        mine = zmq.auth.load_certificate(folder / "client.key_secret")[1].decode()
        (folder / "client.key_secret").write_text((folder / "client.key_secret").read_text().replace(mine, other_secret))
    with pytest.raises(ConfigError) as info:
        if side == "server":
            Publisher(LOOPBACK, NAMES, curve_keys=str(folder))
        else:
            next(subscribe("tcp://127.0.0.1:1", curve_keys=str(folder), timeout=0.1))
    message = str(info.value)
    assert fragment in message and "\n" not in message and message.startswith("--curve-keys")


# ---------------------------------------------------------------------------------------
# real sockets
# ---------------------------------------------------------------------------------------
def _listen(endpoint: str, curve_keys, timeout: float, limit: int, out: list, errors: list) -> None:
    try:
        for message in subscribe(endpoint, curve_keys=curve_keys, timeout=timeout):
            out.append(message)
            if len(out) >= limit:
                return
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _listen_plain(endpoint: str, timeout: float, out: list) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))  # bounded wait: a receive timeout
    sock.connect(endpoint)
    try:
        while True:
            out.append(sock.recv_multipart())
    except zmq.Again:
        pass
    finally:
        sock.close(linger=0)
        context.term()


def test_only_the_allowed_key_receives_frames(keys, other_keys, caplog):
    right: list[Message] = []
    wrong_client: list[Message] = []
    wrong_server: list[Message] = []
    plain: list = []
    errors: list[BaseException] = []
    sent: dict[int, Frame] = {}
    caplog.set_level(logging.WARNING, logger="rtseg")
    with Publisher(LOOPBACK, NAMES, curve_keys=str(keys)) as publisher:
        assert publisher.curve
        endpoint = publisher.endpoint
        # a client key pair the publisher does not allow, with the right server key
        stranger = other_keys.parent / "stranger"
        if not stranger.exists():
            stranger.mkdir()
            for name in ("client.key", "client.key_secret"):
                (stranger / name).write_bytes((other_keys / name).read_bytes())
                os.chmod(stranger / name, 0o600)
            (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())
        listeners = [
            threading.Thread(target=_listen, args=(endpoint, str(keys), 20.0, 5, right, errors)),
            threading.Thread(target=_listen, args=(endpoint, str(stranger), SILENT_WAIT_S, 1, wrong_client, errors)),
            threading.Thread(target=_listen, args=(endpoint, str(other_keys), SILENT_WAIT_S, 1, wrong_server, errors)),
            threading.Thread(target=_listen_plain, args=(endpoint, SILENT_WAIT_S, plain)),
        ]
        for t in listeners:
            t.start()
        seq = 0
        # publish until every listener has finished: the right one after 5 frames, the
        # others after SILENT_WAIT_S without a message (ended by their receive timeouts)
        while any(t.is_alive() for t in listeners):
            sent[seq] = frame(seq)
            publisher.publish(sent[seq])
            seq += 1
            time.sleep(0.01)
            assert seq < 100_000
        stats = publisher.stats
    assert not errors, errors
    assert len(right) == 5
    for message in right:  # decrypted and decoded: the frames that were published
        assert message.instances == sent[message.seq].instances
    assert wrong_client == [] and wrong_server == [] and plain == []
    assert stats.rejected_clients >= 1  # the stranger's handshake reached the authenticator and was refused
    assert "is not in the allowed keys" in caplog.text


def test_curve_publisher_log_states_reach_and_encryption(keys, caplog):
    caplog.set_level(logging.INFO, logger="rtseg.publisher")
    with Publisher(LOOPBACK, NAMES, curve_keys=str(keys)):
        pass
    with Publisher(LOOPBACK, NAMES):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("publishing on")]
    assert "this machine only (CURVE-encrypted, 1 allowed subscriber key(s)" in lines[0]
    assert "this machine only (unencrypted, no authentication)" in lines[1]


def test_all_interfaces_without_curve_is_a_warning_and_with_curve_is_not(keys, caplog):
    caplog.set_level(logging.INFO, logger="rtseg.publisher")
    with Publisher("tcp://*:*", NAMES):
        pass
    with Publisher("tcp://*:*", NAMES, curve_keys=str(keys)):
        pass
    records = [r for r in caplog.records if r.getMessage().startswith("publishing on")]
    assert records[0].levelno == logging.WARNING and "every network interface" in records[0].getMessage()
    assert "unencrypted" in records[0].getMessage()
    assert records[1].levelno == logging.INFO and "CURVE-encrypted" in records[1].getMessage()
