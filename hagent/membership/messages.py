"""Membership wire messages and their msgpack encoding.

Every message is a msgpack array ``[v, kind, source, source_address, updates, ...fields]``.
``decode`` validates every field (types, ranges, lengths, the name charset) so the protocol
core never sees junk, and raises nothing but ``DecodeError`` whose ``kind`` is "malformed",
"version" or "oversized": a receive loop catches that one exception, counts it and drops the
message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Union

import msgpack

PROTOCOL_VERSION = 1
#: decode()'s default size limit; callers pass MembershipKnobs.max_message_bytes.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

MAX_NAME = 253            # a DNS host name
MAX_ADDRESS = 255
MAX_META_ENTRIES = 16
MAX_META_KEY = 64
MAX_META_VALUE = 1024
MAX_UPDATES = 1024        # piggybacked updates in one message
MAX_STATES = 100_000      # members in one push-pull
MAX_INT = 2**63 - 1

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_PRINTABLE_RE = re.compile(r"[\x21-\x7e]+\Z")


class DecodeError(Exception):
    """A message that cannot be trusted: kind is "malformed", "version" or "oversized"."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# --- updates (piggybacked state changes) -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Alive:
    """``name`` is alive at ``incarnation``, reachable at ``address``, with opaque ``meta``."""
    name: str
    incarnation: int
    address: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suspect:
    """``source`` suspects ``name`` at ``incarnation``."""
    name: str
    incarnation: int
    source: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``source`` declared ``name`` dead at ``incarnation``; source == name means it left."""
    name: str
    incarnation: int
    source: str


Update = Union[Alive, Suspect, Dead]


@dataclass(frozen=True, slots=True)
class MemberState:
    """One row of a push-pull: state is "alive", "suspect", "dead" or "left"."""
    name: str
    address: str
    incarnation: int
    state: str
    meta: dict[str, str] = field(default_factory=dict)


STATES = ("alive", "suspect", "dead", "left")

# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe of ``target`` (named, so a reused address does not ack for someone else)."""
    source: str
    source_address: str
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to probe ``target`` for ``source`` and forward the ack (ping-req);
    with ``nack`` the receiver answers Nack when the target stays silent (Lifeguard)."""
    source: str
    source_address: str
    seq: int
    target: str
    target_address: str
    nack: bool = True
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to Ping(seq), or forwarded by a relay for IndirectPing(seq)."""
    source: str
    source_address: str
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A relay could not reach the target of IndirectPing(seq) in time: the relay and the
    path to it work, which tells the prober its own health is fine (Lifeguard)."""
    source: str
    source_address: str
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state exchange. ``join``: the sender is joining; ``reply``: answer to a push-pull
    (a reply is never answered)."""
    source: str
    source_address: str
    join: bool
    reply: bool
    states: tuple[MemberState, ...] = ()
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    """Nothing but piggybacked updates (a gossip round)."""
    source: str
    source_address: str
    updates: tuple[Update, ...] = ()


Message = Union[Ping, IndirectPing, Ack, Nack, PushPull, Gossip]

_PING, _INDIRECT, _ACK, _NACK, _PUSHPULL, _GOSSIP = 1, 2, 3, 4, 5, 6
_ALIVE, _SUSPECT, _DEAD = 0, 1, 2


# --- encode ----------------------------------------------------------------------------------

def _enc_update(u: Update) -> list[Any]:
    if type(u) is Alive:
        return [_ALIVE, u.name, u.incarnation, u.address, u.meta]
    if type(u) is Suspect:
        return [_SUSPECT, u.name, u.incarnation, u.source]
    return [_DEAD, u.name, u.incarnation, u.source]


def encode(msg: Message) -> bytes:
    """msgpack bytes for ``msg``; decode(encode(m)) == m for every valid message."""
    head: list[Any] = [PROTOCOL_VERSION, 0, msg.source, msg.source_address,
                       [_enc_update(u) for u in msg.updates]]
    t = type(msg)
    if t is Ping:
        head[1] = _PING
        head += [msg.seq, msg.target]
    elif t is IndirectPing:
        head[1] = _INDIRECT
        head += [msg.seq, msg.target, msg.target_address, msg.nack]
    elif t is Ack:
        head[1] = _ACK
        head.append(msg.seq)
    elif t is Nack:
        head[1] = _NACK
        head.append(msg.seq)
    elif t is PushPull:
        head[1] = _PUSHPULL
        head += [msg.join, msg.reply,
                 [[s.name, s.address, s.incarnation, STATES.index(s.state), s.meta]
                  for s in msg.states]]
    elif t is Gossip:
        head[1] = _GOSSIP
    else:
        raise TypeError(f"not a membership message: {t.__name__}")
    return msgpack.packb(head, use_bin_type=True)


def estimate_size(u: Update) -> int:
    """Rough encoded size of one update, for the piggyback byte budget (cheap, no packing)."""
    if type(u) is Alive:
        return 16 + len(u.name) + len(u.address) + sum(len(k) + len(v) + 4
                                                        for k, v in u.meta.items())
    return 16 + len(u.name) + len(u.source)


# --- decode ----------------------------------------------------------------------------------

def _bad(detail: str) -> DecodeError:
    return DecodeError("malformed", detail)


def _int(x: Any, what: str) -> int:
    if type(x) is not int or not 0 <= x <= MAX_INT:
        raise _bad(f"{what} must be an integer in [0, 2^63)")
    return x


def _bool(x: Any, what: str) -> bool:
    if type(x) is not bool:
        raise _bad(f"{what} must be a boolean")
    return x


def _name(x: Any, what: str) -> str:
    if type(x) is not str or not 0 < len(x) <= MAX_NAME or not _NAME_RE.match(x):
        raise _bad(f"{what} must be a host name ([A-Za-z0-9._-], at most {MAX_NAME} chars)")
    return x


def _address(x: Any, what: str) -> str:
    if type(x) is not str or not 0 < len(x) <= MAX_ADDRESS or not _PRINTABLE_RE.match(x):
        raise _bad(f"{what} must be printable ASCII, at most {MAX_ADDRESS} chars")
    return x


def _list(x: Any, what: str, limit: int) -> list[Any]:
    if type(x) is not list or len(x) > limit:
        raise _bad(f"{what} must be a list of at most {limit} items")
    return x


def _meta(x: Any) -> dict[str, str]:
    if type(x) is not dict or len(x) > MAX_META_ENTRIES:
        raise _bad(f"meta must be a map of at most {MAX_META_ENTRIES} entries")
    for k, v in x.items():
        if type(k) is not str or not 0 < len(k) <= MAX_META_KEY or not _NAME_RE.match(k):
            raise _bad("meta keys must be names of at most 64 chars")
        if type(v) is not str or len(v) > MAX_META_VALUE or (v and not _PRINTABLE_RE.match(v)):
            raise _bad(f"meta values must be printable ASCII, at most {MAX_META_VALUE} chars")
    return x


def _dec_update(x: Any) -> Update:
    if type(x) is not list or not x:
        raise _bad("an update must be a non-empty list")
    kind = x[0]
    if kind == _ALIVE and type(kind) is int and len(x) == 5:
        return Alive(_name(x[1], "alive name"), _int(x[2], "incarnation"),
                     _address(x[3], "alive address"), _meta(x[4]))
    if kind in (_SUSPECT, _DEAD) and type(kind) is int and len(x) == 4:
        cls = Suspect if kind == _SUSPECT else Dead
        return cls(_name(x[1], "name"), _int(x[2], "incarnation"), _name(x[3], "source"))
    raise _bad("unknown update kind or wrong field count")


def _dec_state(x: Any) -> MemberState:
    if type(x) is not list or len(x) != 5:
        raise _bad("a push-pull state must be a list of 5 fields")
    st = x[3]
    if type(st) is not int or not 0 <= st < len(STATES):
        raise _bad("push-pull state code out of range")
    return MemberState(_name(x[0], "state name"), _address(x[1], "state address"),
                       _int(x[2], "incarnation"), STATES[st], _meta(x[4]))


_FIELD_COUNT = {_PING: 7, _INDIRECT: 9, _ACK: 6, _NACK: 6, _PUSHPULL: 8, _GOSSIP: 5}


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """The message in ``data``; raises only DecodeError (malformed, version or oversized)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad("data must be bytes")
    if len(data) > max_bytes:
        raise DecodeError("oversized", f"{len(data)} bytes > limit {max_bytes}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, ...)
        raise _bad(f"not msgpack: {type(exc).__name__}") from None
    if type(obj) is not list or len(obj) < 5:
        raise _bad("a message must be a list of at least 5 fields")
    if type(obj[0]) is not int:
        raise _bad("protocol version must be an integer")
    if obj[0] != PROTOCOL_VERSION:
        raise DecodeError("version", f"protocol version {obj[0]}, this node speaks "
                                     f"{PROTOCOL_VERSION}")
    kind = obj[1]
    if type(kind) is not int or _FIELD_COUNT.get(kind) != len(obj):
        raise _bad("unknown message kind or wrong field count")
    source = _name(obj[2], "source")
    source_address = _address(obj[3], "source_address")
    updates = tuple(_dec_update(u) for u in _list(obj[4], "updates", MAX_UPDATES))
    if kind == _PING:
        return Ping(source, source_address, _int(obj[5], "seq"), _name(obj[6], "target"), updates)
    if kind == _INDIRECT:
        return IndirectPing(source, source_address, _int(obj[5], "seq"), _name(obj[6], "target"),
                            _address(obj[7], "target_address"), _bool(obj[8], "nack"), updates)
    if kind == _ACK:
        return Ack(source, source_address, _int(obj[5], "seq"), updates)
    if kind == _NACK:
        return Nack(source, source_address, _int(obj[5], "seq"), updates)
    if kind == _PUSHPULL:
        states = tuple(_dec_state(s) for s in _list(obj[7], "states", MAX_STATES))
        return PushPull(source, source_address, _bool(obj[5], "join"), _bool(obj[6], "reply"),
                        states, updates)
    return Gossip(source, source_address, updates)
