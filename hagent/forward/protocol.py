"""The forward wire protocol: what non-voters and voters say to each other over ZeroMQ.

Sans-IO (as ``hagent/admin/protocol.py``): the server and the client hand this module bytes
and get typed messages back, or the other way round, so every framing and validation rule is
tested without a socket.

Frames. A non-voter's DEALER sends one frame, a msgpack map; the voter's ROUTER sees it as
``[identity, body]`` and answers ``[identity, body]``, which the DEALER receives as one frame.
Every message carries the protocol version ``v`` and the request ``id`` the client chose;
replies carry the id of the request they answer, so many requests can be in flight on one
connection and answered in any order.

Requests (client -> voter)::

    {"v": 1, "id": 7, "kind": "propose", "command": {"op": "notification.submit", ...}}
    {"v": 1, "id": 8, "kind": "query", "name": "get_notification", "kwargs": {"notification_uuid": "..."}}
    {"v": 1, "id": 9, "kind": "status"}

Replies (voter -> client)::

    {"v": 1, "id": 7, "ok": true, "result": <ClusterState.apply's answer | query result | status>,
     "leader": "10.0.0.11:7170", "voter": "10.0.0.12:7170"}
    {"v": 1, "id": 7, "ok": false, "error": "reason", "code": "unavailable", "retryable": true,
     "leader": null, "voter": "10.0.0.12:7170"}

``leader`` is the Raft leader the answering voter knows (None during an election), so the
client can send its next request straight to it. ``code`` says what kind of failure it is
(see ``CODES``); ``retryable`` whether another voter, or the same one later, may succeed.

Proposals a voter refuses (``forward_refusal``, code ``forbidden``): the commands that drive
failure detection and recovery are the voters' own (the leader's detection and recovery
engine propose them locally), so a non-voter's key, stolen or buggy, can neither forge a
fence nor stop, fake or block a recovery through them. The forward endpoint has no map from
a CURVE key to a node name, so it cannot check that a proposal is about the proposer
itself; it refuses these ops from every forwarded proposal instead.

Voter-set ops: ``voters.change``/``commit``/``abort``/``bootstrap`` are refused the same way;
``voters.register`` and ``voters.progress`` (``SELF_VOTER_OPS``) are let through only about the
node whose registered public key is the sender's CURVE key (``self_op_refusal``).

Anything that does not follow these rules raises a ``ProtocolError`` subclass whose
``reason`` (``malformed``, ``version``, ``too_large``) labels the drop counter: the receive
loops drop such a message, count it and carry on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import msgpack

#: The protocol version this code speaks. A message with another ``v`` is dropped (counted
#: as ``version``): a voter and a non-voter of different major versions must not guess at
#: each other's meaning. Bump it only for incompatible changes; new optional keys are not.
VERSION = 1

#: Largest request body accepted (bytes). A request carries at most one replicated command,
#: which consensus.raft caps at 1 MiB; the rest is a few keys.
MAX_REQUEST_BYTES = (1 << 20) + 4096
#: Largest reply body (bytes). Query results (a notification list without ``limit``) can be
#: far larger than a command: 64 MiB holds ~100k notification records. A larger result is
#: answered with a ``too_large`` error asking for ``limit``.
MAX_REPLY_BYTES = 64 << 20
#: Longest failure text sent (characters).
MAX_ERROR_CHARS = 2000
#: Nesting depth accepted in commands and query arguments (hagent's are 3 deep at most).
MAX_DEPTH = 32
#: Largest request id: ids are unsigned 63-bit so they fit msgpack's int64 on every side.
MAX_ID = (1 << 63) - 1

PROPOSE, QUERY, STATUS = "propose", "query", "status"
KINDS = (PROPOSE, QUERY, STATUS)

#: The read-only ClusterState queries a non-voter may ask a voter for, by name. Anything
#: else (a method that changes state, a private attribute) is refused before it is looked up.
QUERY_NAMES = frozenset({
    "list_segments", "get_segment", "list_hosts", "get_host", "list_notifications",
    "get_notification", "counts_by_status", "notification_count", "list_leases", "get_lease",
    "incidents", "incident", "recovery_claim", "voters",
})

#: Ops only the voters' own failure detection (host.*) and recovery engine (recovery.*, the
#: notification transitions and vmoves) propose, and a voter never proposes for a non-voter:
#: a forged ``host.fenced`` would let the leader evacuate a host that may still run its
#: instances; a forged ``recovery.claim`` of a high term would refuse every step of the real
#: leader; a forged transition or vmove would end a recovery or skip an instance.
VOTER_ONLY_OPS = frozenset({
    "host.down", "host.fenced", "host.up", "recovery.claim", "recovery.intent",
    "recovery.result", "notification.transition", "notification.vmove",
    # The voter set: only the voters' leader (and hagentctl on a voter) changes it; a
    # non-voter's key must never add itself or remove a voter.
    "voters.change", "voters.commit", "voters.abort", "voters.bootstrap",
})
#: Voter-set ops a non-voter may send, each only about the node holding the sending key:
#: an eligible node registers itself (its record carries its public key, which must be the
#: one it connects with) and a promoted candidate reports its catch-up progress.
SELF_VOTER_OPS = frozenset({"voters.register", "voters.progress"})

# Failure codes of a reply (``code``).
CODE_QUERY = "query"              # the query's arguments are wrong (QueryError); not retryable
CODE_UNAVAILABLE = "unavailable"  # the log did not commit / no leader; retryable
CODE_BUSY = "busy"                # the voter has too many requests in flight; retryable
CODE_TOO_LARGE = "too_large"      # the answer would exceed MAX_REPLY_BYTES; not retryable
CODE_INTERNAL = "internal"        # the voter failed unexpectedly (logged there); retryable
CODE_FORBIDDEN = "forbidden"      # a proposal a non-voter may not make; not retryable
CODES = (CODE_QUERY, CODE_UNAVAILABLE, CODE_BUSY, CODE_TOO_LARGE, CODE_INTERNAL, CODE_FORBIDDEN)


# --- errors -------------------------------------------------------------------------------

class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``reason`` labels the drop counter."""

    reason = "malformed"


class MalformedMessage(ProtocolError):
    """Not msgpack, not a map, a missing or mistyped key, an unknown kind or query name."""

    reason = "malformed"


class UnsupportedVersion(ProtocolError):
    """A well-formed map whose ``v`` is not ``VERSION``."""

    reason = "version"


class MessageTooLarge(ProtocolError):
    """A body over the size cap for its direction."""

    reason = "too_large"


DROP_REASONS = (MalformedMessage.reason, UnsupportedVersion.reason, MessageTooLarge.reason)


# --- messages -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Propose:
    """Commit ``command`` (a replicated command dict) through the log."""

    id: int
    command: dict[str, Any]
    kind = PROPOSE


@dataclass(frozen=True)
class Query:
    """Run the read-only ClusterState query ``name(**kwargs)`` on the voter's state."""

    id: int
    name: str
    kwargs: dict[str, Any]
    kind = QUERY


@dataclass(frozen=True)
class Status:
    """The voter's Raft status."""

    id: int
    kind = STATUS


Request = Union[Propose, Query, Status]


@dataclass(frozen=True)
class Reply:
    id: int
    ok: bool
    result: Any = None
    error: str | None = None
    code: str | None = None
    retryable: bool = False
    leader: str | None = None   # the Raft leader the answering voter knows
    voter: str | None = None    # the answering voter's Raft address


def failure(request_id: int, error: str, code: str, *, retryable: bool,
            leader: str | None = None, voter: str | None = None) -> Reply:
    return Reply(id=request_id, ok=False, error=error, code=code, retryable=retryable,
                 leader=leader, voter=voter)


def forward_refusal(command: dict[str, Any]) -> str | None:
    """Why a voter must not propose ``command`` for a non-voter, or None when it may.

    Refused: the ``VOTER_ONLY_OPS``, and ``notification.submit`` of a COMPUTE_HOST
    notification, since a STOPPED one with host_status NORMAL tells the leader the host is
    fenced (Masakari's meaning), exactly what a forged ``host.fenced`` would. Host failures
    are the cluster's own verdict (host.down); an operator who must declare one by hand runs
    ``hagentctl notification create`` on a voter."""
    op = command.get("op")
    if op in VOTER_ONLY_OPS:
        return (f"refused: {op} is proposed only by the voters' own failure detection and "
                f"recovery engine, never for a non-voter")
    if op == "notification.submit" and command.get("type") == "COMPUTE_HOST":
        return ("refused: a non-voter may not submit COMPUTE_HOST notifications (a STOPPED one "
                "declares the host fenced); host failures come from the cluster's detection, "
                "or from hagentctl notification create on a voter")
    return None


def self_op_refusal(command: dict[str, Any], peer_key: str,
                    registered_key: str | None) -> str | None:
    """Why a voter must not propose a ``SELF_VOTER_OPS`` command for the non-voter holding
    ``peer_key`` (its CURVE key, as ZAP authenticated it), or None when it may.

    ``registered_key`` is the public key the cluster state has on record for the command's
    ``node`` (None: not registered). A registration must carry the sender's own key and may
    not take over a name registered with another key (that would point the non-voters at the
    sender's forward endpoint as that node); a progress report must come from the key its
    node registered."""
    op, node = command.get("op"), command.get("node")
    if op == "voters.register":
        if command.get("public_key") != peer_key:
            return (f"refused: voters.register of {node!r} carries public key "
                    f"{command.get('public_key')!r}, not the key {peer_key} it was sent with")
        if registered_key is not None and registered_key != peer_key:
            return (f"refused: {node!r} is registered with another public key; a node that "
                    f"changed its key is re-registered from a voter")
        return None
    if op == "voters.progress" and registered_key != peer_key:
        return (f"refused: voters.progress about {node!r} from a key that is not the one "
                f"{node!r} registered")
    return None


# --- encoding -----------------------------------------------------------------------------

def _pack(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def encode_request(request: Request) -> bytes:
    """The body of ``request``; raises MessageTooLarge over MAX_REQUEST_BYTES and
    MalformedMessage for a request this module would refuse on the other side."""
    _check_id(request.id)
    doc: dict[str, Any] = {"v": VERSION, "id": request.id, "kind": request.kind}
    if isinstance(request, Propose):
        _check_command(request.command)
        doc["command"] = request.command
    elif isinstance(request, Query):
        _check_query(request.name, request.kwargs)
        doc["name"] = request.name
        doc["kwargs"] = request.kwargs
    try:
        data = _pack(doc)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedMessage(f"request is not plain data: {exc}") from None
    if len(data) > MAX_REQUEST_BYTES:
        raise MessageTooLarge(f"request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    return data


def encode_reply(reply: Reply) -> bytes:
    """The body of ``reply``. A result that cannot be packed or is too large becomes a
    failure reply with the same id (so the client learns why instead of timing out)."""
    doc: dict[str, Any] = {"v": VERSION, "id": reply.id, "ok": reply.ok,
                           "leader": reply.leader, "voter": reply.voter}
    if reply.ok:
        doc["result"] = reply.result
    else:  # failure texts are bounded so a failure reply always fits
        doc.update(error=(reply.error or "failed")[:MAX_ERROR_CHARS],
                   code=reply.code or CODE_INTERNAL, retryable=bool(reply.retryable))
    try:
        data = _pack(doc)
    except (TypeError, ValueError, OverflowError) as exc:
        return encode_reply(failure(reply.id, f"answer is not plain data: {exc}", CODE_INTERNAL,
                                    retryable=False, leader=reply.leader, voter=reply.voter))
    if len(data) > MAX_REPLY_BYTES and reply.ok:
        return encode_reply(failure(
            reply.id, f"answer of {len(data)} bytes exceeds {MAX_REPLY_BYTES}; ask for less "
            "(limit, filters)", CODE_TOO_LARGE, retryable=False, leader=reply.leader,
            voter=reply.voter))
    return data


# --- decoding -----------------------------------------------------------------------------

def _ext_refused(code: int, data: bytes) -> Any:
    raise MalformedMessage(f"msgpack extension type {code} is not allowed")


def _unpack(data: bytes, cap: int) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"a body must be bytes, not {type(data).__name__}")
    if len(data) > cap:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {cap}")
    try:
        # timestamp=3 would turn ext -1 into datetime; 0 keeps it an ext the hook refuses
        # for every other code, and msgpack.Timestamp is refused by the plain-data check.
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_ext_refused,
                              use_list=True)
    except MalformedMessage:
        raise
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError...)
        raise MalformedMessage(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedMessage(f"a message must be a map, not {type(doc).__name__}")
    v = doc.get("v")
    if type(v) is not int:
        raise MalformedMessage("missing or non-integer protocol version 'v'")
    if v != VERSION:
        raise UnsupportedVersion(f"protocol version {v}; this agent speaks {VERSION}")
    _check_id(doc.get("id"))
    return doc


def decode_request(data: bytes) -> Request:
    """A request body as a typed message; raises a ProtocolError subclass on anything else."""
    doc = _unpack(data, MAX_REQUEST_BYTES)
    kind = doc.get("kind")
    rid = doc["id"]
    if kind == PROPOSE:
        _only(doc, {"command"})
        command = doc.get("command")
        _check_command(command)
        return Propose(rid, command)
    if kind == QUERY:
        _only(doc, {"name", "kwargs"})
        name, kwargs = doc.get("name"), doc.get("kwargs", {})
        _check_query(name, kwargs)
        return Query(rid, name, kwargs)
    if kind == STATUS:
        _only(doc, set())
        return Status(rid)
    raise MalformedMessage(f"unknown request kind {kind!r}; known: {', '.join(KINDS)}")


def decode_reply(data: bytes) -> Reply:
    """A reply body as a Reply; raises a ProtocolError subclass on anything else."""
    doc = _unpack(data, MAX_REPLY_BYTES)
    ok = doc.get("ok")
    if type(ok) is not bool:
        raise MalformedMessage("reply without a boolean 'ok'")
    for key in ("leader", "voter"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise MalformedMessage(f"reply '{key}' must be a string or null")
    if ok:
        return Reply(id=doc["id"], ok=True, result=doc.get("result"), leader=doc.get("leader"),
                     voter=doc.get("voter"))
    error, code, retryable = doc.get("error"), doc.get("code"), doc.get("retryable")
    if not isinstance(error, str) or code not in CODES or type(retryable) is not bool:
        raise MalformedMessage("failure reply needs a string 'error', a known 'code' and a "
                               "boolean 'retryable'")
    return Reply(id=doc["id"], ok=False, error=error, code=code, retryable=retryable,
                 leader=doc.get("leader"), voter=doc.get("voter"))


# --- validation ---------------------------------------------------------------------------

def _check_id(rid: Any) -> None:
    if type(rid) is not int or not 0 < rid <= MAX_ID:
        raise MalformedMessage(f"request id must be an integer in 1..2^63-1, got {rid!r}")


def _only(doc: dict[str, Any], allowed: set[str]) -> None:
    extra = set(doc) - {"v", "id", "kind"} - allowed
    if extra:
        raise MalformedMessage(f"unknown keys: {', '.join(sorted(map(str, extra)))}")


def _check_command(command: Any) -> None:
    if not isinstance(command, dict):
        raise MalformedMessage("'command' must be a map")
    if not isinstance(command.get("op"), str):
        raise MalformedMessage("'command' needs a string 'op'")
    _check_plain(command, "command", 0)


def _check_query(name: Any, kwargs: Any) -> None:
    if not isinstance(name, str) or name not in QUERY_NAMES:
        raise MalformedMessage(f"unknown query {name!r}; known: {', '.join(sorted(QUERY_NAMES))}")
    if not isinstance(kwargs, dict):
        raise MalformedMessage("'kwargs' must be a map")
    _check_plain(kwargs, "kwargs", 0)


def _check_plain(value: Any, where: str, depth: int) -> None:
    """Only the plain values a replicated command may hold: None, bool, int, finite float,
    str, lists and string-keyed maps of them, at most MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        raise MalformedMessage(f"{where}: nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MalformedMessage(f"{where}: non-finite number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedMessage(f"{where}: map keys must be strings")
            _check_plain(item, f"{where}.{key}", depth + 1)
        return
    raise MalformedMessage(f"{where}: {type(value).__name__} is not a plain value")
