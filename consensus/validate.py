"""Argument checks for replicated commands, with Masakari's rules.

Every check takes the raw value and the argument's name and returns the normalised value, or
raises `CommandError` with a message that names the argument. The state machine turns that
into ``{"ok": False, "error": ...}``; nothing here touches state, so a refused command has
changed nothing. Rules come from masakari/api/validation/parameter_types.py and the API
schemas in masakari/api/openstack/ha/schemas/.
"""
from __future__ import annotations

import math
import re
import unicodedata
import uuid as uuidlib
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

# Largest accepted `at`: the start of year 10000, past which ISO 8601 years need 5 digits.
_MAX_EPOCH = 253402300800.0

# Masakari's `hostname` parameter type (notifications) and host `type`.
_HOSTNAME_RE = re.compile(r"[a-zA-Z0-9\-._]{1,255}")
_HOST_TYPE_RE = re.compile(r"[a-zA-Z0-9]{0,255}")

# Masakari's boolean parameter type accepts these strings as well as JSON booleans.
_TRUE_STRINGS = frozenset({"True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes", "yes"})
_FALSE_STRINGS = frozenset({"False", "FALSE", "false", "0", "OFF", "Off", "off", "NO", "No", "no"})


class CommandError(Exception):
    """A command was refused; the message says which argument and why."""


def show(value: Any) -> str:
    """A short repr for error messages (arguments may be huge junk)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_keys(command: Mapping[str, Any], required: Iterable[str],
               optional: Iterable[str] = ()) -> None:
    """Refuse missing and unexpected arguments, as Masakari's schemas do
    (``additionalProperties: False``): a typo must not be silently dropped."""
    required = tuple(required)
    allowed = {"op", "at", *required, *optional}
    unexpected = sorted(repr(k) for k in command if k not in allowed)
    if unexpected:
        raise CommandError(f"unexpected argument {', '.join(unexpected)}")
    missing = [k for k in required if k not in command]
    if missing:
        raise CommandError(f"missing argument {', '.join(repr(k) for k in missing)}")


def at_time(value: Any) -> float:
    """The proposer's UNIX time; finite and representable as an ISO 8601 date."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(f"argument 'at' must be a UNIX time in seconds (got {show(value)})")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value < _MAX_EPOCH):
        raise CommandError(f"argument 'at' must be between 0 and {_MAX_EPOCH:.0f} (got {value!r})")
    return value


def iso_from_epoch(ts: float) -> str:
    """The UTC ISO 8601 form used for every record time; identical on every replica."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds")


def generated_time(value: Any, arg: str) -> tuple[str, float]:
    """Parse an ISO 8601 time as Masakari's ``date-time`` format does (oslo
    ``parse_isotime``): with or without fraction and offset, ``Z`` allowed; a time without
    an offset is UTC, as Masakari normalises it. Returns (normalised UTC string, epoch)."""
    if not isinstance(value, str):
        raise CommandError(f"argument {arg!r} must be an ISO 8601 time string (got {show(value)})")
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        parsed = parsed.astimezone(timezone.utc)
        return parsed.isoformat(timespec="microseconds"), parsed.timestamp()
    except (ValueError, OverflowError):
        raise CommandError(
            f"argument {arg!r} is not an ISO 8601 time such as 2024-05-01T10:00:00Z "
            f"(got {show(value)})") from None


def uuid(value: Any, arg: str) -> str:
    """A UUID in any form Masakari's ``is_uuid_like`` accepts, normalised to the lower-case
    hyphenated form so that one id has one spelling in the log."""
    if isinstance(value, str):
        try:
            return str(uuidlib.UUID(value))
        except ValueError:
            pass
    raise CommandError(f"argument {arg!r} must be a UUID (got {show(value)})")


def _printable(char: str, spaces: bool) -> bool:
    category = unicodedata.category(char)
    if category.startswith("C"):
        return False
    if category.startswith("Z"):
        return spaces and category == "Zs"
    return True


def name(value: Any, arg: str) -> str:
    """Masakari's ``name``: 1-255 printable characters, not starting or ending with a space."""
    if not isinstance(value, str) or not 1 <= len(value) <= 255:
        raise CommandError(f"argument {arg!r} must be a string of 1 to 255 characters "
                           f"(got {show(value)})")
    if not (all(_printable(c, True) for c in value)
            and _printable(value[0], False) and _printable(value[-1], False)):
        raise CommandError(f"argument {arg!r} must be printable characters and can not start "
                           f"or end with whitespace (got {show(value)})")
    return value


def description(value: Any, arg: str, nullable: bool = True) -> str | None:
    """Masakari's ``description``: printable characters and newlines (or null)."""
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not all(c == "\n" or _printable(c, True) for c in value):
        kind = "a string or null" if nullable else "a string"
        raise CommandError(f"argument {arg!r} must be {kind} of printable characters "
                           f"(got {show(value)})")
    return value


def hostname(value: Any, arg: str) -> str:
    """Masakari's ``hostname``: 1-255 of letters, digits, '-', '.', '_'."""
    if not isinstance(value, str) or not _HOSTNAME_RE.fullmatch(value):
        raise CommandError(f"argument {arg!r} must be a host name of 1 to 255 letters, digits, "
                           f"'-', '.' or '_' (got {show(value)})")
    return value


def host_type(value: Any, arg: str) -> str:
    """Masakari's host ``type``: up to 255 letters and digits."""
    if not isinstance(value, str) or not _HOST_TYPE_RE.fullmatch(value):
        raise CommandError(f"argument {arg!r} must be up to 255 letters and digits "
                           f"(got {show(value)})")
    return value


def boolean(value: Any, arg: str) -> bool:
    """Masakari's ``boolean``: true/false or one of its accepted strings ("yes", "off", ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in _TRUE_STRINGS:
            return True
        if value in _FALSE_STRINGS:
            return False
    raise CommandError(f"argument {arg!r} must be a boolean (got {show(value)})")


def choice(value: Any, arg: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise CommandError(f"argument {arg!r} must be one of {', '.join(choices)} "
                           f"(got {show(value)})")
    return value


def text(value: Any, arg: str, max_len: int | None = None) -> str | None:
    """Free text (messages): any string (of at most ``max_len`` characters), or null."""
    if value is not None and not isinstance(value, str):
        raise CommandError(f"argument {arg!r} must be a string or null (got {show(value)})")
    if max_len is not None and value is not None and len(value) > max_len:
        raise CommandError(f"argument {arg!r} must be at most {max_len} characters "
                           f"(got {len(value)})")
    return value


def uuid_or_none(value: Any, arg: str) -> str | None:
    return None if value is None else uuid(value, arg)


def sequence_number(value: Any, arg: str) -> int:
    """A renewal counter; bounded so every snapshot packs as a msgpack int64."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise CommandError(f"argument {arg!r} must be an integer from 0 to 2**63-1 "
                           f"(got {show(value)})")
    return value


def address(value: Any, arg: str) -> str:
    """A ``host:port`` address as pysyncobj names nodes (``TCPNode``: split at the last ':');
    the host is 1-255 characters without whitespace, the port 1-65535. Kept as written:
    pysyncobj compares node ids as strings, so one node has one spelling."""
    if isinstance(value, str) and 3 <= len(value) <= 261 and ":" in value:
        host, _, port = value.rpartition(":")
        if (host and len(host) <= 255 and port.isdigit() and not port.startswith("0")
                and 1 <= int(port) <= 65535
                and all(_printable(c, False) for c in host)):
            return value
    raise CommandError(f"argument {arg!r} must be a host:port address with a port from 1 to "
                       f"65535 (got {show(value)})")
