"""ZeroMQ CURVE keys for authenticated, encrypted publishing (``rtseg keys generate DIR``).

A key folder, as ``rtseg keys generate DIR`` writes it, holds ZeroMQ certificate files in
the format of ``zmq.auth`` (``zmq.auth.load_certificate`` reads them; so does any CZMQ
``zcert``)::

    DIR/server.key            the publisher's public key       (give to every subscriber)
    DIR/server.key_secret     the publisher's secret key       (mode 0600; stays with the publisher)
    DIR/client.key            a subscriber's public key
    DIR/client.key_secret     that subscriber's secret key     (mode 0600; goes to that subscriber only)
    DIR/allowed_clients/      one ``*.key`` public key per subscriber the publisher accepts

- The publisher (``rtseg run --curve-keys DIR``) reads ``server.key_secret`` and every
  ``allowed_clients/*.key``: only a subscriber holding the secret key of one of those
  public keys completes the handshake. To admit another subscriber, generate a key pair
  for it (e.g. ``python -c "import zmq.auth; zmq.auth.create_certificates('.', 'cam2')"``)
  and copy its public ``.key`` into ``allowed_clients/``; to revoke one, delete its file
  (both take effect at the next start).
- A subscriber (``rtseg subscribe --curve-keys DIR``) reads ``client.key_secret`` and
  ``server.key``; a subscriber machine needs only those two files (and ``client.key``).

Every problem (missing folder or file, a file that is not a certificate, a key that is
not 40 Z85 characters, a secret key that does not match its public key) raises
:class:`ConfigError` with one line naming the file, what was expected and what was found.
A secret key file that others can read is refused too, like ``ssh`` refuses such keys.
``zmq`` is imported inside the functions.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rtseg.errors import ConfigError

SERVER = "server"
CLIENT = "client"
ALLOWED_CLIENTS = "allowed_clients"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: a CURVE key is 32 bytes, written as 40 Z85 characters (ZeroMQ RFC 26 / RFC 32)
Z85_KEY_LENGTH = 40


@dataclass(frozen=True)
class ServerKeys:
    """What a CURVE publisher needs: its key pair and the public keys it accepts (Z85 bytes)."""

    public: bytes
    secret: bytes
    allowed_clients: frozenset[bytes]
    folder: str

    def __repr__(self) -> str:  # never print a secret key
        return f"ServerKeys({self.folder!r}, {len(self.allowed_clients)} allowed client key(s))"


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE subscriber needs: its key pair and the publisher's public key (Z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes
    folder: str

    def __repr__(self) -> str:
        return f"ClientKeys({self.folder!r})"


def _import_zmq():
    try:
        import zmq
    except ImportError:
        raise ConfigError("CURVE keys need pyzmq: expected it installed (pip install pyzmq), found it missing") from None
    if not zmq.has("curve"):
        raise ConfigError(f"CURVE keys need a libzmq built with CURVE (libsodium), found libzmq {zmq.zmq_version()} without it")
    return zmq


def generate_keys(folder: str | os.PathLike) -> list[Path]:
    """Write a server and a client key pair and ``allowed_clients/client.key`` into ``folder``.

    ``folder`` is created (mode 0700) if needed; existing key files are never overwritten
    (:class:`ConfigError` names them). Secret key files get mode 0600. Returns the paths
    written.
    """
    zmq = _import_zmq()
    import zmq.auth

    root = Path(folder)
    targets = [root / f"{name}{suffix}" for name in (SERVER, CLIENT) for suffix in (PUBLIC_SUFFIX, SECRET_SUFFIX)]
    targets.append(root / ALLOWED_CLIENTS / f"{CLIENT}{PUBLIC_SUFFIX}")
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise ConfigError(f"keys generate: expected a folder without keys, found {', '.join(existing)} (delete them to make new keys)")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / ALLOWED_CLIENTS).mkdir(mode=0o755, exist_ok=True)
        # Written in a private (0700) temporary folder, made 0600 there, then moved in: a
        # secret key is never readable by others, not even for a moment.
        with tempfile.TemporaryDirectory(dir=root, prefix=".rtseg-keys-") as staging:
            for name in (SERVER, CLIENT):
                public, secret = zmq.auth.create_certificates(staging, name)
                os.chmod(secret, 0o600)
                os.chmod(public, 0o644)
            for name in (SERVER, CLIENT):
                for suffix in (PUBLIC_SUFFIX, SECRET_SUFFIX):
                    os.replace(os.path.join(staging, name + suffix), root / f"{name}{suffix}")
        allowed = root / ALLOWED_CLIENTS / f"{CLIENT}{PUBLIC_SUFFIX}"
        allowed.write_bytes((root / f"{CLIENT}{PUBLIC_SUFFIX}").read_bytes())
        os.chmod(allowed, 0o644)
    except OSError as exc:
        raise ConfigError(f"keys generate: cannot write keys into '{root}': {exc.strerror or exc}") from None
    return targets


def _check_key(key: bytes | None, what: str, path: Path) -> bytes:
    from zmq.utils import z85

    if key is None:
        raise ConfigError(f"--curve-keys: {path} must hold a {what}, found none")
    if len(key) != Z85_KEY_LENGTH:
        raise ConfigError(f"--curve-keys: the {what} in {path} must be {Z85_KEY_LENGTH} Z85 characters, found {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError, IndexError):
        raise ConfigError(f"--curve-keys: the {what} in {path} must be Z85 text, found invalid characters") from None
    return key


def _read_certificate(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        made_by = "'rtseg keys generate DIR'"
        raise ConfigError(f"--curve-keys: expected the key file {path} (made by {made_by}), found it missing")
    if secret:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"--curve-keys: the secret key file {path} must be readable by its owner only (chmod 600 it), "
                f"found mode {stat.S_IMODE(mode):o}"
            )
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except ValueError:
        raise ConfigError(f"--curve-keys: {path} must be a ZeroMQ certificate with a public-key line, found none") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--curve-keys: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    public = _check_key(public, "public key", path)
    if secret:
        secret_key = _check_key(secret_key, "secret key", path)
        import zmq

        if zmq.curve_public(secret_key) != public:
            raise ConfigError(f"--curve-keys: the secret key in {path} must belong to its public key, found another key pair's")
    return public, secret_key


def _folder(folder: str | os.PathLike) -> Path:
    root = Path(folder)
    if not root.is_dir():
        found = "a file" if root.exists() else "nothing there"
        raise ConfigError(f"--curve-keys: expected a key folder made by 'rtseg keys generate {root}', found {found}")
    return root


def load_server_keys(folder: str | os.PathLike) -> ServerKeys:
    """The publisher's keys from ``folder`` (see the module docstring), checked."""
    _import_zmq()
    root = _folder(folder)
    public, secret = _read_certificate(root / f"{SERVER}{SECRET_SUFFIX}", secret=True)
    allowed_dir = root / ALLOWED_CLIENTS
    if not allowed_dir.is_dir():
        raise ConfigError(f"--curve-keys: expected a folder {allowed_dir} of allowed subscribers' public keys, found it missing")
    allowed = set()
    for path in sorted(allowed_dir.iterdir()):
        if path.suffix == PUBLIC_SUFFIX and path.is_file():
            allowed.add(_read_certificate(path, secret=False)[0])
    if not allowed:
        raise ConfigError(f"--curve-keys: {allowed_dir} must hold at least one subscriber's public key (*.key), found none")
    assert secret is not None
    return ServerKeys(public=public, secret=secret, allowed_clients=frozenset(allowed), folder=str(root))


def load_client_keys(folder: str | os.PathLike) -> ClientKeys:
    """A subscriber's keys from ``folder`` (see the module docstring), checked."""
    _import_zmq()
    root = _folder(folder)
    public, secret = _read_certificate(root / f"{CLIENT}{SECRET_SUFFIX}", secret=True)
    server_public, _ = _read_certificate(root / f"{SERVER}{PUBLIC_SUFFIX}", secret=False)
    assert secret is not None
    return ClientKeys(public=public, secret=secret, server_public=server_public, folder=str(root))
