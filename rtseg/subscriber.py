"""Receiving rtseg's messages over ZeroMQ: :func:`subscribe` (a generator of decoded
:class:`rtseg.wire.Message`) and :func:`run_subscriber` (``rtseg subscribe``).

A subscriber trusts nothing it receives: every message is decoded by
:func:`rtseg.wire.decode_message` (one-line :class:`PublishError` on anything malformed,
counted and skipped), at most 3 parts of a message are kept, and its receive queue is
bounded in bytes. What it missed is counted from the headers (:class:`rtseg.wire.GapCounter`).

``zmq`` is imported inside the functions that need it, so ``import rtseg.subscriber`` works
without touching ZeroMQ.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterator, TextIO

from rtseg.errors import ConfigError, PublishError
from rtseg.publisher import (
    RECONNECT_BACKOFF_FIRST_S,
    RECONNECT_BACKOFF_MAX_S,
    RECONNECT_IVL_MAX_MS,
    RECONNECT_IVL_MS,
    WARNING_INTERVAL_S,
    _import_zmq,
    _ThrottledWarnings,
    check_endpoint,
)
from rtseg.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_STREAM_CHARS,
    STREAM_CHARACTERS,
    GapCounter,
    Message,
    _malformed,
    _short,
    decode_message,
    is_stream_name,
    stream_topic,
)

if TYPE_CHECKING:
    from rtseg.keys import ClientKeys

logger = logging.getLogger(__name__)


#: Received messages a subscriber may hold, by default, in its ZeroMQ receive queue:
#: ``ZMQ_RCVHWM`` is this // ``max_message_bytes`` (8 messages at the default 64 MiB cap).
DEFAULT_MAX_QUEUED_BYTES = 512 * 2**20


def _handshake_failure(zmq: Any, event: int, value: int, keys: "ClientKeys | None") -> tuple[str, str]:
    """(kind, one line) for a failed handshake seen by the subscriber's socket monitor; one
    kind for all, so that the log shows one line per ``WARNING_INTERVAL_S`` however the
    refusal shows (a CURVE server may close before the client reads why)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if keys is not None:
            return "auth", (f"authentication failed: the publisher refused this subscriber's CURVE key (ZAP status {value}; "
                            f"expected {keys.folder}/client.key in the publisher's allowed_clients)")
        return "auth", f"authentication failed: the publisher refused this subscriber (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if keys is None:
                return "auth", ("authentication failed: the publisher expects another security mechanism than this "
                                "subscriber's none (a CURVE publisher: expected --curve-keys DIR / curve_keys=)")
            return "auth", ("authentication failed: this subscriber uses CURVE (--curve-keys) and the publisher another "
                            "security mechanism (an unencrypted publisher: expected no --curve-keys)")
        return "auth", f"authentication failed: ZeroMQ handshake protocol error 0x{value:08x}"
    # EVENT_HANDSHAKE_FAILED_NO_DETAIL: the peer closed the connection during the handshake;
    # a CURVE server does so when the client's HELLO is not encrypted for its key
    if keys is not None:
        return "auth", ("authentication failed: the publisher ended the CURVE handshake (expected "
                        f"{keys.folder}/server.key to be this publisher's public key)")
    reason = os.strerror(value) if value else "no detail"
    return "auth", (f"handshake failed: the publisher closed the connection ({reason}); a CURVE publisher refuses a "
                    "subscriber without keys (expected --curve-keys DIR / curve_keys= for one)")


def subscribe(
    endpoint: str,
    *,
    topic: bytes = b"rtseg",
    timeout: float | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    curve_keys: "str | os.PathLike | ClientKeys | None" = None,
    rcvhwm: int | None = None,
    gaps: GapCounter | None = None,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    stream: str | None = None,
) -> Iterator[Message]:
    """Connect a SUB socket to ``endpoint`` and yield each decoded :class:`Message`.

    ``topic`` is a prefix: every message whose topic starts with it (all the streams of an
    rtseg publisher with that base topic, whose topics are ``<topic>/<stream>``). With
    ``stream``, only that stream's messages: the subscription is ``<topic>/<stream>``, and
    since ZeroMQ matches prefixes (``rtseg/cam1`` also gets ``rtseg/cam10``) a message
    whose topic is not exactly that is dropped unread, as is one whose header names
    another stream (counted as malformed).

    Each message's ``missed`` is the number of the publisher's messages this subscriber
    did not receive just before it (its queue was full, or it was disconnected), counted
    by a :class:`GapCounter` from the headers' ``publish_seq``; pass ``gaps`` to read the
    running totals (received, missed, publisher restarts).

    Memory is bounded: ZeroMQ queues at most ``rcvhwm`` received messages on this side
    (``ZMQ_RCVHWM``; by default ``max_queued_bytes // max_message_bytes``, at least 1: 8
    with the defaults, 512 MiB / 64 MiB), each at most ``max_message_bytes``, so what this
    subscriber holds is about ``(rcvhwm + 2) * max_message_bytes`` (the queue, one message
    being received, one being decoded; a decoded :class:`Message` keeps its masks packed,
    about its size on the wire). An explicit ``rcvhwm`` must keep ``rcvhwm *
    max_message_bytes`` within ``max_queued_bytes``. To queue more small messages, lower
    ``max_message_bytes``. Once this queue and the publisher's for this subscriber are
    full, the publisher drops messages for this subscriber only.

    A generator: the socket is made at the first ``next()`` (a bad endpoint raises
    :class:`PublishError` there) and closed when the generator ends or is closed.
    ``timeout`` (seconds): stop once that long passes with no valid message; ``None``
    waits forever. ZeroMQ drops the connection of a peer that sends a part above
    ``max_message_bytes`` (``ZMQ_MAXMSGSIZE``) before buffering it; the subscriber then
    connects again. Malformed messages are counted and skipped. Messages published before
    the subscription reaches the publisher are not received (ZeroMQ's "slow joiner").

    ``curve_keys``: a key folder (:mod:`rtseg.keys`: ``client.key_secret`` and
    ``server.key``) or loaded :class:`rtseg.keys.ClientKeys`, for a publisher that uses
    CURVE. A publisher that does not accept the key (or a key for another publisher, or
    no key for a CURVE publisher) completes no handshake: nothing is received, the log
    says ``authentication failed`` and why, and ``timeout`` ends the wait.

    Connection trouble backs off and is logged sparingly: after a refused handshake, or a
    connection dropped again before any message arrived, the next attempt waits
    ``RECONNECT_BACKOFF_FIRST_S`` (0.1 s), doubling to ``RECONNECT_BACKOFF_MAX_S`` (5 s),
    until a message arrives; each kind of warning (authentication, dropped connection,
    malformed message) is logged at most once per ``WARNING_INTERVAL_S`` (30 s), with a
    count of those left out.
    """
    check_endpoint(endpoint, "cannot connect ZeroMQ SUB socket to", bind=False)
    if not isinstance(topic, bytes):
        raise ConfigError(f"topic must be bytes, got {type(topic).__name__}")
    check_stream(stream)
    subscription = topic if stream is None else stream_topic(topic, stream)
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ConfigError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) or max_message_bytes < 1:
        raise ConfigError(f"max_message_bytes must be an integer >= 1, got {max_message_bytes!r}")
    if isinstance(max_queued_bytes, bool) or not isinstance(max_queued_bytes, int) or max_queued_bytes < 1:
        raise ConfigError(f"max_queued_bytes must be an integer >= 1, got {max_queued_bytes!r}")
    if rcvhwm is None:
        rcvhwm = max(1, max_queued_bytes // max_message_bytes)
    elif isinstance(rcvhwm, bool) or not isinstance(rcvhwm, int) or rcvhwm < 1 \
            or rcvhwm * max_message_bytes > max(max_queued_bytes, max_message_bytes):
        limit = max(1, max_queued_bytes // max_message_bytes)
        raise ConfigError(f"rcvhwm must be an integer in [1, {limit}] (max_queued_bytes {max_queued_bytes} / "
                          f"max_message_bytes {max_message_bytes}: bounded memory) or None, got {rcvhwm!r}")
    if gaps is not None and not isinstance(gaps, GapCounter):
        raise ConfigError(f"gaps must be a GapCounter or None, got {type(gaps).__name__}")
    counter = GapCounter() if gaps is None else gaps
    zmq = _import_zmq()
    from zmq.utils.monitor import parse_monitor_message

    keys = None
    if curve_keys is not None:
        from rtseg.keys import ClientKeys, load_client_keys

        keys = curve_keys if isinstance(curve_keys, ClientKeys) else load_client_keys(curve_keys)
    warnings = _ThrottledWarnings(WARNING_INTERVAL_S, logger)  # the subscriber's warnings on its own logger
    context = zmq.Context()

    def open_socket() -> tuple[Any, Any]:
        """A new SUB socket connected to ``endpoint``, and its monitor. A connection that
        failed is replaced by a new socket rather than ``disconnect()`` + ``connect()``:
        disconnecting terminates the pipe under messages still queued in it, and reading
        one of those then aborts the process inside libzmq (``Assertion failed: !_more
        (src/fq.cpp:80)``, seen once on a subscriber whose publisher was killed)."""
        sock = context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                sock.curve_secretkey = keys.secret
                sock.curve_publickey = keys.public
                sock.curve_serverkey = keys.server_public
            # Retry a refused TCP connect soon (20 ms; ZeroMQ's default is 100 ms), so a
            # subscriber started before the publisher misses no first frame, backing off to
            # 0.1 s while no publisher is there.
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
            sock.setsockopt(zmq.SUBSCRIBE, subscription)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                raise PublishError(
                    f"cannot connect ZeroMQ SUB socket to {endpoint!r} (expected e.g. tcp://127.0.0.1:5555): "
                    f"{exc.strerror}") from None
            # libzmq ends a connection on a protocol error -- a part above ZMQ_MAXMSGSIZE, a
            # refused handshake -- *without* reconnecting (session_base_t::engine_error), so
            # one oversized message would silently end the subscription for good. A monitor
            # sees the disconnect (and why the handshake failed) and the subscriber connects
            # again, after a back-off while nothing gets through.
            mon = sock.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock, mon

    def close_socket(sock: Any, mon: Any) -> None:
        sock.disable_monitor()
        mon.close(linger=0)
        sock.close(linger=0)

    socket = monitor = None
    try:
        socket, monitor = open_socket()
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        malformed = 0
        failures = 0  # connection failures since the last message received
        failure: tuple[str, str] | None = None  # why the handshake failed, until its DISCONNECTED
        reconnect_at: float | None = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wake = min((t for t in (deadline, reconnect_at) if t is not None), default=None)
            wait_ms = None if wake is None else max(0, int(math.ceil((wake - time.monotonic()) * 1000)))
            if socket is None:  # waiting out a back-off: nothing to poll
                time.sleep(0 if wait_ms is None else wait_ms / 1000)
                ready = {}
            else:
                ready = dict(poller.poll(wait_ms))
            if reconnect_at is not None and time.monotonic() >= reconnect_at:
                reconnect_at = None
                socket, monitor = open_socket()
                poller.register(socket, zmq.POLLIN)
                poller.register(monitor, zmq.POLLIN)
                continue
            if monitor is not None and monitor in ready:
                event = parse_monitor_message(monitor.recv_multipart())
                if event["event"] != zmq.EVENT_DISCONNECTED:
                    failure = _handshake_failure(zmq, event["event"], event["value"], keys)
                    continue
                failures += 1
                delay = 0.0 if failures == 1 and failure is None else \
                    min(RECONNECT_BACKOFF_MAX_S, RECONNECT_BACKOFF_FIRST_S * 2 ** (failures - 1))
                kind, why = failure or ("dropped", "connection dropped (publisher gone, or a message part above "
                                                   f"max_message_bytes={max_message_bytes})")
                failure = None
                warnings.warning(kind, f"{endpoint}: {why}; connecting again in {delay:.1f} s "
                                       f"(attempt {failures} since the last message)")
                # a new socket after the delay; closing this one also stops ZeroMQ's own retries
                poller.unregister(socket)
                poller.unregister(monitor)
                close_socket(socket, monitor)
                socket = monitor = None
                reconnect_at = time.monotonic() + delay
                continue
            if socket is None or socket not in ready:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                continue
            parts, extra = _receive_parts(socket, zmq)
            if stream is not None and parts[0] != subscription:  # another stream, e.g. cam10 for cam1
                del parts
                continue
            try:
                if extra:  # dropped while receiving: one message never holds more than 3 parts here
                    raise _malformed("the message", "3 parts (topic, header, masks)", f"{3 + extra} parts")
                message = decode_message(parts, max_message_bytes=max_message_bytes)
                if stream is not None and message.stream != stream:
                    raise _malformed("header field 'stream'", f"{stream!r}, the stream of its topic {subscription!r}",
                                     _short(message.stream))
            except PublishError as exc:
                malformed += 1
                warnings.warning("malformed", f"skipping a malformed message from {endpoint} ({malformed} so far): {exc}")
                continue
            finally:
                del parts
            failures = 0
            restarts = counter.restarts
            missed = counter.update(message)
            if counter.restarts != restarts:
                logger.info("a new or restarted publisher on %s (publisher_id %s): counting missed messages afresh",
                            endpoint, message.publisher_id)
            yield replace(message, missed=missed) if missed else message
            if timeout is not None:
                deadline = time.monotonic() + timeout
    finally:
        if socket is not None:
            close_socket(socket, monitor)
        context.term()


def check_stream(stream: str | None, what: str = "stream") -> None:
    """``ConfigError`` unless ``stream`` is None or a usable stream name (:func:`rtseg.wire.is_stream_name`)."""
    if stream is not None and not is_stream_name(stream):
        raise ConfigError(f"{what} must be a stream name of 1-{MAX_STREAM_CHARS} {STREAM_CHARACTERS} (not '.' or '..'), "
                          f"found {_short(stream)}")


def _receive_parts(socket: Any, zmq: Any) -> tuple[list[bytes], int]:
    """The parts of the next message, at most 3 kept: ``(parts, how many more were dropped)``."""
    parts = [socket.recv()]
    extra = 0
    while socket.getsockopt(zmq.RCVMORE):
        part = socket.recv()
        if len(parts) < 3:
            parts.append(part)
        else:
            extra += 1
        del part
    return parts, extra


def _format_line(message: Message, received_time: float) -> str:
    latency_ms = (received_time - message.publish_time) * 1000.0
    found = ", ".join(f"{name} {score:.2f}" for name, score in zip(message.class_names, message.instances.scores.tolist()))
    missed = f" missed={message.missed}" if message.missed else ""
    return (
        f"seq={message.seq} stream={message.stream} source={message.source!r} latency={latency_ms:.1f}ms "
        f"instances={len(message.instances)} [{found}]{missed}"
    )


def _save(message: Message, received_time: float, save_dir: str) -> str:
    document = {
        "header": message.header,
        "received_time": received_time,
        "mask_rle": message.instances.to_rle(),  # COCO compressed RLE, one per instance
    }
    folder = os.path.join(save_dir, message.stream)  # a checked stream name: no separators, not '.' or '..'
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{message.seq:010d}.json")
    temporary = path + ".part"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(document, f, allow_nan=False)
    os.replace(temporary, path)
    return path


def run_subscriber(
    endpoint: str,
    *,
    topic: bytes = b"rtseg",
    count: int | None = None,
    timeout: float | None = None,
    save_dir: str | None = None,
    out: TextIO | None = None,
    curve_keys: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    err: TextIO | None = None,
    stream: str | None = None,
) -> int:
    """``rtseg subscribe ENDPOINT [--topic T] [--stream NAME] [--count N] [--timeout S] [--save DIR] [--curve-keys DIR]``;
    returns the exit code.

    ``stream``: receive only that stream of a multi-stream run (topic ``<topic>/<stream>``);
    every stream by default. Prints one line per message to ``out`` (default
    ``sys.stdout``): seq, stream, source,
    publish-to-receive latency in ms (wall clocks: across machines it includes their
    clock offset), number of instances and each class name and score, and ``missed=N``
    when N messages of the publisher did not reach this subscriber just before this one
    (its queue was full or it was disconnected; see :class:`GapCounter`). At the end, one
    line to ``err`` (default ``sys.stderr``): messages received, missed, and publisher
    restarts seen. With ``save_dir``,
    writes ``<stream>/<seq>.json`` per message: the header, the receive time and the masks as
    COCO RLEs (``Instances.to_rle()``). Stops after ``count`` messages, or after
    ``timeout`` seconds without one. ``curve_keys``: a key folder for a CURVE publisher
    (``--curve-keys DIR``); ``max_message_bytes``: larger messages are not accepted.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    check_endpoint(endpoint, "cannot connect ZeroMQ SUB socket to", bind=False)  # before --save makes a folder
    check_stream(stream, "--stream")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"--count must be an integer >= 1, got {count!r}")
    if save_dir is not None:
        try:
            os.makedirs(save_dir, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--save must be a directory that can be created, got {save_dir!r}: {exc.strerror}") from None
    received = 0
    gaps = GapCounter()
    messages = subscribe(endpoint, topic=topic, timeout=timeout, curve_keys=curve_keys, max_message_bytes=max_message_bytes,
                         gaps=gaps, stream=stream)
    try:
        for message in messages:
            received_time = time.time()
            print(_format_line(message, received_time), file=out, flush=True)
            if save_dir is not None:
                try:
                    _save(message, received_time, save_dir)
                except OSError as exc:
                    raise ConfigError(f"--save: cannot write into {save_dir!r}: {exc.strerror}") from None
            received += 1
            if count is not None and received >= count:
                break
    except KeyboardInterrupt:  # Ctrl-C, the usual end without --count: the totals still count
        print(_totals_line(gaps), file=err, flush=True)
        raise
    finally:
        messages.close()
    print(_totals_line(gaps), file=err, flush=True)
    return 0


def _totals_line(gaps: GapCounter) -> str:
    return f"received {gaps.received} message(s), missed {gaps.missed}, publisher restarts {gaps.restarts}"
