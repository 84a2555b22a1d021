"""CURVE keys for tcp:// control endpoints, and the ZAP allow list.

ZeroMQ CURVE (RFC 26, CurveZMQ) encrypts and authenticates a TCP connection with
Curve25519 key pairs.  The server proves itself with its secret key; clients prove
themselves with theirs, and the ZAP handler (RFC 27) admits only public keys listed in
the authorized-keys file.  Without a ZAP handler libzmq would accept *any* client key, so
the authenticator is started before the socket binds, and a tcp:// endpoint without keys
is refused outright (``ControlError``), never bound in the clear.

Files:
* key pairs use ZeroMQ's certificate format (``zmq.auth.create_certificates``):
  ``NAME.key`` holds the public key, ``NAME.key_secret`` both keys (mode 0600);
* the authorized-keys file lists one Z85 public key (40 characters) per line; a line
  starting with ``#`` is a comment, and text after the key on a line is a free-form label
  (no inline ``#`` comments: ``#`` is a Z85 digit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maglev import files
from maglev.errors import ConfigError, ControlError

if TYPE_CHECKING:
    from maglev.config import Config

Z85_KEY_LEN = 40
_Z85 = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


# Key files are small (a certificate ~300 bytes, a key a line of ~60): anything larger is
# not one, and nothing unbounded is read.
KEY_FILE_LIMIT = 1 << 20


def _check_file(path: str | Path) -> None:
    """OSError/ValueError unless ``path`` is a regular file of at most KEY_FILE_LIMIT bytes."""
    files.read_regular(path, KEY_FILE_LIMIT)


def _why(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else "") or str(exc)


def load_keypair(path: str | Path) -> KeyPair:
    """A key pair from a ZeroMQ ``.key_secret`` certificate file."""
    import zmq.auth

    try:
        _check_file(path)  # zmq.auth reads it whole: a FIFO would hang, /dev/zero never end
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read CURVE key pair from {path}: {_why(exc)}") from None
    if not secret:
        raise ControlError(f"{path} holds no secret key (give the .key_secret file)")
    return KeyPair(public, secret)


def load_public_key(path_or_key: str) -> bytes:
    """A server public key: a Z85 string, or a certificate file holding one."""
    if len(path_or_key) == Z85_KEY_LEN and set(path_or_key) <= _Z85 and not Path(path_or_key).exists():
        return path_or_key.encode()
    import zmq.auth

    try:
        _check_file(path_or_key)
        public, _ = zmq.auth.load_certificate(path_or_key)
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read CURVE public key from {path_or_key}: {_why(exc)}") from None
    return public


def load_authorized_keys(path: str | Path) -> frozenset[bytes]:
    try:
        text = files.read_regular(path, KEY_FILE_LIMIT).decode("utf-8")
    except (OSError, ValueError) as exc:  # also a FIFO, a device, too large (maglev/files.py)
        raise ControlError(f"cannot read authorized keys {path}: {_why(exc)}") from None
    keys = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):  # no inline comments: '#' is a Z85 digit
            continue
        key = line.split()[0]
        if len(key) != Z85_KEY_LEN or not set(key) <= _Z85:
            raise ControlError(f"{path}:{n}: {key!r} is not a 40-character Z85 CURVE public key")
        keys.add(key.encode())
    if not keys:
        raise ControlError(f"{path} lists no client keys: nobody could connect")
    return frozenset(keys)


def generate(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (0600 from its creation) into
    ``directory``.  ControlError, and nothing written, when NAME is not a plain file name
    (empty, a path, a dot file) or a key pair of that name is there already (it may be the
    one a server or client uses: replacing it would lock them out)."""
    import zmq.auth

    if not name or not name.isprintable() or "/" in name or name.startswith(".") or len(name) > 200:
        raise ControlError(f"key name {name!r}: give a plain file name (no '/', not empty, no leading '.')")
    d = Path(directory)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    there = [str(p) for p in (public, secret) if os.path.lexists(p)]
    if there:
        raise ControlError(f"{' and '.join(there)}: already there; remove it first or choose another NAME")
    try:
        d.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
        try:
            pub, sec = zmq.auth.create_certificates(str(d), name)
        finally:
            os.umask(old)
    except OSError as exc:
        raise ControlError(f"{directory}: cannot write the key pair: {exc.strerror or exc}") from None
    Path(pub).chmod(0o644)
    return Path(pub), Path(sec)


class AllowList:
    """ZAP credentials provider: admits exactly the listed Z85 public keys."""

    def __init__(self, keys: frozenset[bytes]):
        self.keys = keys
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys
        if not ok:
            self.denied += 1
        return ok


def check_key_files(config: Config) -> None:
    """ConfigError, one line per file, when a ``tcp://`` control endpoint's CURVE key files
    cannot be loaded as the config manager loads them at its start -- after ``maglev run``
    dropped CAP_DAC_OVERRIDE.  ``maglev check`` said ok and the run failed after starting
    its actors ("config failed to start: ControlError: cannot read CURVE key pair ...")."""
    from maglev.config import _source
    from maglev.service.privileges import unreadable_without_dac

    c = config.control
    if not any(ep.startswith("tcp://") for ep in (c.endpoint, c.events_endpoint)):
        return
    problems = []
    for key, load in (("server_secret_key_file", load_keypair),
                      ("authorized_keys_file", load_authorized_keys)):
        path = getattr(c, key)
        try:
            load(path)
        except ControlError as exc:
            problems.append(f"control.{key}: {exc}")
            continue
        why = unreadable_without_dac(path)
        if why:
            problems.append(f"control.{key}: {_source(path)}: cannot read without CAP_DAC_OVERRIDE: {why} "
                            "(maglev run drops that capability before its config manager reads it)")
    if problems:
        raise ConfigError(problems)
