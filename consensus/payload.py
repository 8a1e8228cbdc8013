"""Notification payload rules per type, as Masakari's API schemas state them.

Sources: masakari/api/validation/parameter_types.py (``payload``: keys of 1-255 characters
from ``[a-zA-Z0-9-_:. ]``, string values of at most 255 characters, nothing else) and
masakari/api/openstack/ha/schemas/payload.py (the keys each type requires and allows).
Masakari's engine later ignores a COMPUTE_HOST notification without host_status, so
host_status and cluster_status are optional here too, as in its schema.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from consensus.validate import CommandError, show, uuid

_KEY_RE = re.compile(r"[a-zA-Z0-9\-_:. ]{1,255}")
_EVENTS = ("STARTED", "STOPPED")  # fields.EventType


@dataclass(frozen=True)
class _Key:
    required: bool
    choices: tuple[str, ...] = ()  # empty: any string of min_len..255 characters
    min_len: int = 0
    uuid: bool = False


_SCHEMAS: dict[str, dict[str, _Key]] = {
    "COMPUTE_HOST": {
        "event": _Key(True, _EVENTS),
        "host_status": _Key(False, ("NORMAL", "UNKNOWN")),  # fields.HostStatusType
        "cluster_status": _Key(False, ("ONLINE", "OFFLINE")),  # fields.ClusterStatusType
    },
    "PROCESS": {
        "process_name": _Key(True, min_len=1),
        "event": _Key(True, _EVENTS),
    },
    "VM": {
        "instance_uuid": _Key(True, uuid=True),
        "vir_domain_event": _Key(True, min_len=1),
        "event": _Key(True, min_len=1),
    },
}


def check_payload(notification_type: str, payload: Any) -> dict[str, str]:
    """Return a copy of ``payload`` if it suits ``notification_type``; else CommandError."""
    if not isinstance(payload, dict):
        raise CommandError(f"argument 'payload' must be an object (got {show(payload)})")
    schema = _SCHEMAS[notification_type]
    for key, value in payload.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise CommandError(f"argument 'payload' has an invalid key {show(key)}")
        if key not in schema:
            raise CommandError(f"argument 'payload' of a {notification_type} notification "
                               f"may not contain {key!r} (allowed: {', '.join(schema)})")
        rule = schema[key]
        if not isinstance(value, str) or not rule.min_len <= len(value) <= 255:
            raise CommandError(f"argument 'payload' key {key!r} must be a string of "
                               f"{rule.min_len} to 255 characters (got {show(value)})")
        if rule.choices and value not in rule.choices:
            raise CommandError(f"argument 'payload' key {key!r} must be one of "
                               f"{', '.join(rule.choices)} (got {show(value)})")
        if rule.uuid:
            uuid(value, f"payload.{key}")
    missing = [k for k, rule in schema.items() if rule.required and k not in payload]
    if missing:
        raise CommandError(f"argument 'payload' of a {notification_type} notification needs "
                           f"{', '.join(repr(k) for k in missing)}")
    return dict(payload)
