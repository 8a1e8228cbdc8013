"""CURVE key pairs: the file ``hagent keygen`` writes and the agent reads.

A node's key pair file holds its Z85 public and secret keys as TOML::

    # hagent CURVE key pair; the public key goes into other nodes' configs
    public = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    secret = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"

The secret key lets its holder talk to the voters as this node, so the file is written mode
0600 and refused at start-up if its group or other users may read it (``hagent.secretfile``).
The public key is not secret: it goes into the voters' ``security.allowed_keys`` (for a
non-voter) or every node's ``security.voter_keys`` (for a voter).
"""
from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import zmq

from hagent.secretfile import SecretFileError, read_private, write_private

log = logging.getLogger(__name__)

#: Distinct refused keys logged (each once); more are only counted.
LOGGED_REFUSED_KEYS = 100

#: A CURVE key is 32 bytes; Z85 writes 4 bytes as 5 characters.
Z85_LENGTH = 40
Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         ".-:+=^!/*?&<>()[]{}@%$#")


def z85_problem(key: str) -> str | None:
    """Why ``key`` is not a Z85-encoded CURVE key, or None."""
    if len(key) != Z85_LENGTH:
        return f"is {len(key)} characters long; a Z85 CURVE key has {Z85_LENGTH}"
    bad = sorted(set(key) - Z85_ALPHABET)
    if bad:
        return f"contains {''.join(bad)!r}, not in the Z85 alphabet"
    return None


@dataclass(frozen=True)
class KeyPair:
    public: str   # Z85
    secret: str   # Z85

    @property
    def public_bytes(self) -> bytes:
        return self.public.encode("ascii")

    @property
    def secret_bytes(self) -> bytes:
        return self.secret.encode("ascii")


def generate() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode("ascii"), secret.decode("ascii"))


def _create_hint(path: Path) -> str:
    return f"create it with `hagent keygen --out {path}`"


def write_key_pair(path: Path, *, overwrite: bool = False) -> KeyPair:
    """Generate a key pair into ``path`` (mode 0600, fsynced, atomic); returns it.

    Refuses (SecretFileError) to replace an existing file unless ``overwrite``: the old
    public key is in other nodes' configs, and this node would be locked out.
    """
    pair = generate()
    text = ("# hagent CURVE key pair (hagent keygen). Keep this file secret (mode 0600);\n"
            "# put the public key into the other nodes' security.allowed_keys / voter_keys.\n"
            f'public = "{pair.public}"\nsecret = "{pair.secret}"\n')
    write_private(Path(path), text, overwrite=overwrite, what="key file",
                  keep="keep it (its public key is in other nodes' configs), or delete it first")
    return pair


def read_key_pair(path: Path) -> KeyPair:
    """The key pair in ``path``; raises SecretFileError (with the fix) on any problem:
    missing, readable by others, not TOML, a bad key, or a secret key that does not belong
    to the public key."""
    path = Path(path)
    text = read_private(path, "key file", _create_hint(path), "check the path in security.key_file")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SecretFileError(path, f"key file is not TOML: {exc}", _create_hint(path)) from None
    keys = {}
    for name in ("public", "secret"):
        value = doc.get(name)
        if not isinstance(value, str):
            raise SecretFileError(path, f"key file has no '{name}' key", _create_hint(path))
        problem = z85_problem(value)
        if problem:
            raise SecretFileError(path, f"key file's {name} key {problem}", _create_hint(path))
        keys[name] = value
    try:
        derived = zmq.curve_public(keys["secret"].encode("ascii")).decode("ascii")
    except (zmq.ZMQError, ValueError) as exc:
        raise SecretFileError(path, f"key file's secret key is not a CURVE key: {exc}",
                              _create_hint(path)) from None
    if derived != keys["public"]:
        raise SecretFileError(path, "key file's public key does not belong to its secret key",
                              _create_hint(path))
    return KeyPair(keys["public"], keys["secret"])


class AllowList:
    """ZAP credentials provider for a CURVE server socket: exactly the configured Z85 public
    keys (``security.allowed_keys``); counts refusals. ``service`` names the socket in logs."""

    def __init__(self, keys: Iterable[str], service: str) -> None:
        self.keys = frozenset(k.encode("ascii") for k in keys)
        self.service = service
        self.refused = 0
        self._logged: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.refused += 1
        # A refused peer reconnects every 100 ms: log each key once (bounded), count all.
        if key not in self._logged and len(self._logged) < LOGGED_REFUSED_KEYS:
            self._logged.add(key)
            log.warning("%s: refused CURVE key %s: not in security.allowed_keys (further "
                        "attempts with it are only counted)", self.service,
                        key.decode("ascii", "replace"))
        return False
