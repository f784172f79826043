"""Publishing the instances found in each frame over ZeroMQ: :class:`Publisher` (a PUB
socket) and the endpoint checks and connection constants the subscriber shares.

The messages are those of :mod:`rtseg.wire` (``docs/wire-format.md``). Delivery is best
effort and per subscriber: the publisher never waits, and ZeroMQ drops a message only for
a subscriber whose queue is full; each subscriber counts what it missed from the headers'
``publish_seq`` (:class:`rtseg.wire.GapCounter`).

``zmq`` is imported inside the functions that need it, so ``import rtseg.publisher`` works
without touching ZeroMQ.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtseg.errors import ConfigError, PublishError
from rtseg.structures import Frame
from rtseg.wire import _short, encode_message

if TYPE_CHECKING:
    from rtseg.keys import ServerKeys

logger = logging.getLogger(__name__)


def _import_zmq():
    try:
        import zmq
    except ImportError:
        raise PublishError("publishing needs pyzmq: expected it installed (pip install pyzmq), found it missing") from None
    return zmq


def binds_all_interfaces(endpoint: str) -> bool:
    """True for a TCP endpoint whose host is every interface (``*``, ``0.0.0.0``, ``::``)."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    return host in ("*", "0.0.0.0", "::", "[::]", "[*]")


def binds_loopback_only(endpoint: str) -> bool:
    """True for an endpoint other machines cannot reach: ``ipc://``, ``inproc://``, or TCP on
    a loopback address (``127.x.x.x``, ``::1``, ``localhost``, the ``lo`` interface)."""
    if not endpoint.startswith("tcp://"):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "localhost", "lo")


#: where ``rtseg run --publish`` binds when given no endpoint: loopback only (docs/wire-format.md, section 8)
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


@dataclass(frozen=True)
class PublisherStats:
    """Counts since the publisher was made: messages ``sent`` (handed to ZeroMQ; also the
    next ``publish_seq``), ``bytes_sent``, and ``rejected_clients`` (CURVE handshakes
    refused).

    There is no drop count: ZeroMQ drops a message for each subscriber whose queue is full
    without telling the sender, so the subscribers count what they missed
    (``Message.missed``)."""

    sent: int
    bytes_sent: int
    #: CURVE only: handshakes refused because the subscriber's public key is not allowed
    rejected_clients: int = 0


class _AllowedKeys:
    """CURVE credentials check for :class:`zmq.auth.thread.ThreadAuthenticator` (runs in its
    thread): a subscriber gets in if its public key is one of ``allowed``."""

    def __init__(self, allowed: frozenset[bytes], endpoint: str) -> None:
        self.allowed = allowed
        self.endpoint = endpoint
        self.rejected = 0
        self._logged: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        from zmq.utils import z85

        encoded = z85.encode(key) if len(key) == 32 else key
        if encoded in self.allowed:
            return True
        self.rejected += 1
        if encoded not in self._logged and len(self._logged) < 100:  # once per key, bounded
            self._logged.add(encoded)
            logger.warning("refused a subscriber on %s: its public key %s is not in the allowed keys",
                           self.endpoint, encoded.decode("ascii", "replace"))
        return False


class Publisher:
    """A ZeroMQ PUB socket that publishes one message per :class:`Frame`.

    ``endpoint`` is bound, e.g. ``tcp://127.0.0.1:5555`` (loopback, the safe default),
    ``tcp://*:5555`` (every interface: reachable from the network, logged as a warning),
    ``tcp://127.0.0.1:*`` (a free port; read it back from :attr:`endpoint`) or
    ``ipc:///tmp/rtseg.sock``. ``sndhwm`` is how many messages ZeroMQ queues per
    subscriber; ``linger_ms`` how long :meth:`close` may wait to flush them (so the last
    frames of a run still reach subscribers that keep up).

    ``topic`` is the base topic: each frame goes out on ``<topic>/<frame.stream>``
    (``rtseg/0`` for a single source; :func:`rtseg.wire.stream_topic`), so a subscriber of
    ``topic`` receives every stream and one of ``<topic>/<stream>`` that stream.

    ``curve_keys``: a key folder (``rtseg keys generate DIR``, see :mod:`rtseg.keys`) or
    loaded :class:`rtseg.keys.ServerKeys`. The socket is then a CURVE server: traffic is
    encrypted and only subscribers holding the secret key of one of the folder's
    ``allowed_clients/*.key`` complete the handshake (checked by a
    ``zmq.auth.thread.ThreadAuthenticator``); others receive nothing and are counted in
    ``stats.rejected_clients``.

    :meth:`publish` never blocks, and one subscriber cannot cost another a frame: ZeroMQ
    queues each message for every subscriber and, for a subscriber whose queue is full
    (``sndhwm`` here plus its own receive queue and the socket buffers between), drops it
    for that subscriber only. The publisher cannot see those drops (nor could it count
    them per subscriber), so every header carries this publisher's random
    ``publisher_id`` and its message counter ``publish_seq`` (0, 1, 2, ...: one per
    :meth:`publish`), and each subscriber counts its own gaps (``Message.missed``,
    :class:`GapCounter`, the ``missed=`` of ``rtseg subscribe``).

    (The earlier design set ``ZMQ_XPUB_NODROP`` to count drops here; then a message went
    to every subscriber or to none, so one stalled subscriber made all of them miss
    frames.)

    Like every ZeroMQ socket, a Publisher must be used from one thread at a time.
    """

    def __init__(
        self,
        endpoint: str,
        class_names: Sequence[str],
        *,
        topic: bytes = b"rtseg",
        sndhwm: int = 10,
        linger_ms: int = 250,
        curve_keys: "str | os.PathLike | ServerKeys | None" = None,
    ) -> None:
        if not isinstance(endpoint, str):
            raise ConfigError(f"publish endpoint must be a string like 'tcp://127.0.0.1:5555', got {type(endpoint).__name__}")
        check_endpoint(endpoint, "cannot bind ZeroMQ PUB socket to", bind=True)
        if isinstance(class_names, (str, bytes)) or not all(isinstance(c, str) for c in class_names):
            raise ConfigError(f"class_names must be a sequence of strings, got {_short(class_names)}")
        if not isinstance(topic, bytes):
            raise ConfigError(f"topic must be bytes, got {type(topic).__name__}")
        if isinstance(sndhwm, bool) or not isinstance(sndhwm, int) or sndhwm < 0:
            raise ConfigError(f"sndhwm must be an integer >= 0 (0 = unlimited), got {sndhwm!r}")
        if isinstance(linger_ms, bool) or not isinstance(linger_ms, int) or linger_ms < -1:
            raise ConfigError(f"linger_ms must be an integer >= -1 (-1 = wait forever), got {linger_ms!r}")
        zmq = _import_zmq()
        keys = None
        if curve_keys is not None:
            from rtseg.keys import ServerKeys, load_server_keys

            keys = curve_keys if isinstance(curve_keys, ServerKeys) else load_server_keys(curve_keys)
        self._zmq = zmq
        self._class_names = list(class_names)
        self._topic = topic
        self._sent = self._bytes_sent = 0
        self._stream_sent: dict[str, int] = {}  # stream -> messages sent on it (the next stream_seq)
        #: 64 random bits: a subscriber tells a restarted publisher (new id) from a gap
        self._publisher_id = os.urandom(8).hex()
        self._context = zmq.Context()
        self._auth = None
        self._allowed: _AllowedKeys | None = None
        socket = self._context.socket(zmq.PUB)
        try:
            socket.setsockopt(zmq.SNDHWM, sndhwm)
            socket.setsockopt(zmq.LINGER, linger_ms)
            # a peer that has not completed its handshake in 5 s (not 30) is disconnected
            socket.setsockopt(zmq.HANDSHAKE_IVL, PUBLISHER_HANDSHAKE_IVL_MS)
            # no ZMQ_XPUB_NODROP: a full queue drops the message for that subscriber only
            if keys is not None:
                from zmq.auth.thread import ThreadAuthenticator

                self._allowed = _AllowedKeys(keys.allowed_clients, endpoint)
                self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("rtseg.publisher.auth"))
                self._auth.start()
                self._auth.configure_curve_callback("*", credentials_provider=self._allowed)
                socket.curve_secretkey = keys.secret
                socket.curve_publickey = keys.public
                socket.curve_server = True
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            self._stop_auth()
            self._context.term()
            raise PublishError(
                f"cannot bind ZeroMQ PUB socket to {endpoint!r} (expected e.g. tcp://127.0.0.1:5555 or ipc:///tmp/rtseg.sock): {exc.strerror}"
            ) from None
        self._socket = socket
        self._endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if keys is not None:
            protection = f"CURVE-encrypted, {len(keys.allowed_clients)} allowed subscriber key(s) from {keys.folder}"
        else:
            protection = "unencrypted, no authentication"
        if binds_loopback_only(endpoint):
            logger.info("publishing on %s: this machine only (%s)", self._endpoint, protection)
        else:  # reachable from the network: a warning unless encrypted
            where = "every network interface, reachable from the network" if binds_all_interfaces(endpoint) \
                else "reachable from the network"
            level = logging.INFO if keys is not None else logging.WARNING
            logger.log(level, "publishing on %s: %s (%s)", self._endpoint, where, protection)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    @property
    def curve(self) -> bool:
        """True when the socket is a CURVE server (``curve_keys`` was given)."""
        return self._allowed is not None

    @property
    def publisher_id(self) -> str:
        """This publisher's random id, written into every header (``publisher_id``)."""
        return self._publisher_id

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (wildcard ports resolved), e.g. ``tcp://127.0.0.1:40123``."""
        return self._endpoint

    @property
    def stats(self) -> PublisherStats:
        rejected = self._allowed.rejected if self._allowed is not None else 0
        return PublisherStats(sent=self._sent, bytes_sent=self._bytes_sent, rejected_clients=rejected)

    @property
    def closed(self) -> bool:
        return self._socket is None

    def publish(self, frame: Frame) -> None:
        """Send ``frame``'s instances without blocking, on topic ``<topic>/<frame.stream>``,
        as message ``publish_seq`` = :attr:`stats` ``.sent`` and ``stream_seq`` = the
        messages sent on ``frame.stream`` before. Every subscriber whose queue has room gets
        it; the others miss it (and see the gap in ``stream_seq``)."""
        if self._socket is None:
            raise PublishError(f"cannot publish on {self._endpoint}: expected an open Publisher, found it closed")
        stream_seq = self._stream_sent.get(frame.stream, 0)
        parts = encode_message(frame, self._class_names, topic=self._topic,
                               publisher_id=self._publisher_id, publish_seq=self._sent, stream_seq=stream_seq)
        zmq = self._zmq
        try:
            # A PUB socket without XPUB_NODROP never refuses a message (it drops per
            # subscriber instead), so NOBLOCK only guards against waiting at all.
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            raise PublishError(f"cannot send on {self._endpoint}: {exc.strerror}") from None
        self._sent += 1
        self._stream_sent[frame.stream] = stream_seq + 1
        self._bytes_sent += sum(len(p) for p in parts)

    def close(self) -> None:
        """Close the socket (waiting at most ``linger_ms`` to flush); safe to call twice."""
        if self._socket is None:
            return
        self._socket.close()
        self._socket = None
        self._stop_auth()
        self._context.term()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._socket is None else "open"
        return f"Publisher({self._endpoint!r}, {state}, id={self._publisher_id}, sent={self._sent})"


#: after a refused handshake, or a connection dropped again before any message came, the
#: subscriber waits this long before connecting again, doubling up to the maximum; the
#: first drop after a message reconnects at once (a restarted publisher)
RECONNECT_BACKOFF_FIRST_S = 0.1
RECONNECT_BACKOFF_MAX_S = 5.0
#: ZeroMQ's own retry of a TCP connect that was refused (no publisher yet): 20 ms, doubling
#: to this (``ZMQ_RECONNECT_IVL`` / ``ZMQ_RECONNECT_IVL_MAX``). Kept well under the time
#: between a publisher's bind and its first message (the first inference): at 500 ms a
#: subscriber started before ``rtseg run`` missed its first 4 frames
RECONNECT_IVL_MS = 20
RECONNECT_IVL_MAX_MS = 100
#: a subscriber warning of the same kind is logged at most once per this many seconds
WARNING_INTERVAL_S = 30.0
#: ``ZMQ_HANDSHAKE_IVL`` of the publisher: a peer that has not completed its handshake
#: after this long is disconnected (ZeroMQ's default is 30 s)
PUBLISHER_HANDSHAKE_IVL_MS = 5000
#: a ZeroMQ IPC path must fit ``sockaddr_un.sun_path`` (108 bytes on Linux, with the NUL)
MAX_IPC_PATH_BYTES = 107


def check_endpoint(endpoint: Any, what: str, *, bind: bool, inproc: bool = True) -> str:
    """``endpoint`` if it is one rtseg can bind (``bind``) or connect to, else
    :class:`PublishError` with one line: what was expected and what was found.

    Accepted: ``tcp://HOST:PORT`` with a port in 1-65535 (``*`` as the port, a free one,
    only to bind; ``*`` as the host only to bind), ``ipc://PATH`` (at most 107 bytes) and,
    when ``inproc``, ``inproc://NAME`` (the same process only).
    """
    expected = "tcp://HOST:PORT (port 1-65535), ipc://PATH" + (" or inproc://NAME" if inproc else "")
    if not isinstance(endpoint, str):
        raise PublishError(f"{what} {_short(endpoint)}: expected an endpoint string like tcp://127.0.0.1:5555, "
                           f"found {type(endpoint).__name__}")
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise PublishError(f"{what} {endpoint!r}: expected {expected}, found no '://'")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise PublishError(f"{what} {endpoint!r}: expected tcp://HOST:PORT, found no {'port' if not colon else 'host'}")
        if host in ("*", "[*]") and not bind:
            raise PublishError(f"{what} {endpoint!r}: expected the publisher's host (e.g. 127.0.0.1) to connect to, found '*'")
        if port == "*" and bind:
            return endpoint
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            allowed = "1-65535, or * for a free one" if bind else "1-65535"
            raise PublishError(f"{what} {endpoint!r}: expected a TCP port in {allowed}, found {port!r}")
        return endpoint
    if scheme == "ipc":
        if not rest or len(os.fsencode(rest)) > MAX_IPC_PATH_BYTES:
            found = "an empty path" if not rest else f"a path of {len(os.fsencode(rest))} bytes"
            raise PublishError(f"{what} {endpoint!r}: expected ipc://PATH with 1-{MAX_IPC_PATH_BYTES} bytes, found {found}")
        return endpoint
    if scheme == "inproc" and inproc:
        if not rest:
            raise PublishError(f"{what} {endpoint!r}: expected inproc://NAME, found an empty name")
        return endpoint
    found = "inproc:// (it reaches only the same process)" if scheme == "inproc" else f"scheme {scheme!r}"
    raise PublishError(f"{what} {endpoint!r}: expected {expected}, found {found}")


class _ThrottledWarnings:
    """Warnings logged (on ``log``, by default this module's logger) at most once per
    ``interval`` seconds per kind; the next one logged says how many were left out."""

    def __init__(self, interval: float, log: logging.Logger | None = None) -> None:
        self.interval = interval
        self._log = logger if log is None else log
        self._next: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warning(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, -math.inf):
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            text += f" ({left_out} more like this in the last {self.interval:.0f} s not logged)"
        self._next[kind] = now + self.interval
        self._log.warning("%s", text)

