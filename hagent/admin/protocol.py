"""The admin socket's wire protocol: one JSON object per line, both ways.

Request::

    {"verb": "segment.create", "args": {"name": "s1", ...}}

Reply::

    {"ok": true, "result": ...}      or      {"ok": false, "error": "reason"}

This module does no I/O: the server and the client feed it bytes and get bytes
back, so the framing rules are tested without sockets. A line longer than
``MAX_LINE`` bytes is refused (the server answers with an error and closes that
connection, since the rest of the over-long line cannot be re-synchronised).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# 1 MiB: far above any real request (the largest is a notification payload of a
# few KiB), small enough that a misbehaving client cannot make the agent buffer
# without bound.
MAX_LINE = 1 << 20


class ProtocolError(Exception):
    """A request or reply that does not follow the wire protocol; ``str()`` says why."""


@dataclass(frozen=True)
class Request:
    verb: str
    args: dict[str, Any] = field(default_factory=dict)


def encode(obj: dict[str, Any]) -> bytes:
    """One protocol line: compact JSON plus ``\\n`` (JSON never contains a raw newline)."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def encode_request(verb: str, args: dict[str, Any] | None = None) -> bytes:
    return encode({"verb": verb, "args": args or {}})


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": reason}


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises ProtocolError naming what is wrong with it."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request line longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("request must be a JSON object with 'verb' and 'args'")
    verb = obj.get("verb")
    if not isinstance(verb, str) or not verb:
        raise ProtocolError("request needs a string 'verb'")
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be a JSON object")
    extra = set(obj) - {"verb", "args"}
    if extra:
        raise ProtocolError(f"unknown request keys: {', '.join(sorted(extra))}")
    return Request(verb, args)


def decode_reply(line: bytes) -> dict[str, Any]:
    """Parse one reply line (client side); raises ProtocolError if it is not a reply."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"reply is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ProtocolError("reply must be a JSON object with a boolean 'ok'")
    if not obj["ok"] and not isinstance(obj.get("error"), str):
        raise ProtocolError("error reply without an 'error' string")
    return obj
