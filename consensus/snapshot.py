"""The replicated state as a versioned document of plain values, and back.

Raft snapshots are written by one hagent version and may be read by another (rolling
upgrades), so the document carries ``"format"``. A reader accepts every format up to its own
and refuses newer ones with `SnapshotFormatError` rather than misreading them. Values are only
str, int, float, bool, None, lists and str-keyed dicts: msgpack and JSON can carry them, and
no pickle is ever needed. Derived indexes are not stored; `ClusterState.from_snapshot`
rebuilds them.

Format 1: ``{"format": 1, "segments": [...], "hosts": [...], "notifications": [...],
"leases": [...]}``, each list in insertion order (that order breaks ties in listings), each
item the record's fields by name; a notification carries ``accepted`` and its ``vmoves``.

Format 2 (written now) adds ``"incidents": [...]``: every open incident and each host's last
closed one, sorted by (host name, open first), each item the Incident's fields by name. A
format 1 snapshot reads as one without incidents (it predates them).

Format 3 (written now) adds ``"recovery_claim"`` (the RecoveryClaim's fields, or null) and,
per notification, ``attempts`` and ``steps`` (each the RecoveryStep's fields by name). Older
formats read as no claim, and notifications with no attempts and no steps.

Format 4 (written now) adds ``"voters"``: the voter set (``VoterSet.dump()``: voter addresses,
registrations, the change in flight, the last change, the term of the last change). Older
formats read as a voter set not bootstrapped yet: the first leader writes it again.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from consensus.model import (
    Host, Incident, Lease, Notification, RecoveryClaim, RecoveryStep, Segment, VMove,
)
from consensus.voterset import VoterSet

FORMAT = 4

_SEGMENT = ("uuid", "name", "description", "recovery_method", "service_type", "enabled",
            "created_at", "updated_at")
_HOST = ("uuid", "name", "segment_uuid", "type", "control_attributes", "reserved",
         "on_maintenance", "created_at", "updated_at")
_NOTIFICATION = ("notification_uuid", "type", "hostname", "source_host_uuid",
                 "failover_segment_uuid", "generated_time", "status", "source_node", "message",
                 "accepted", "created_at", "updated_at")
_VMOVE = ("instance_uuid", "instance_name", "type", "status", "source_host", "dest_host",
          "message", "start_time", "end_time", "created_at", "updated_at")
_LEASE = ("host", "seq", "renewed_at")
_STEP = ("step", "key", "term", "attempt", "detail", "started_at", "outcome", "outcome_detail",
         "outcome_term", "ended_at")
_CLAIM = ("term", "node", "claimed_at")
_INCIDENT = ("hostname", "host_uuid", "notification_uuid", "source_node", "opened_at",
             "fence_method", "fence_detail", "fenced_at", "closed_at", "up_notification_uuid")


class SnapshotFormatError(ValueError):
    """A snapshot this hagent can't read: newer than it understands, or malformed."""


def _fields(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


def dump(segments: Iterable[Segment], hosts: Iterable[Host],
         notifications: Iterable[Notification], leases: Iterable[Lease],
         incidents: Iterable[Incident], claim: RecoveryClaim | None,
         voters: dict[str, Any]) -> dict[str, Any]:
    """Copies of every record; nothing in the result is shared with the live state."""
    out_notifications = []
    for n in notifications:
        item = _fields(n, _NOTIFICATION)
        item["payload"] = dict(n.payload)
        item["vmoves"] = [_fields(vm, _VMOVE) for vm in n.vmoves.values()]
        item["attempts"] = n.attempts
        item["steps"] = [_fields(step, _STEP) for step in n.steps]
        out_notifications.append(item)
    return {
        "format": FORMAT,
        "segments": [_fields(s, _SEGMENT) for s in segments],
        "hosts": [_fields(h, _HOST) for h in hosts],
        "notifications": out_notifications,
        "leases": [_fields(lease, _LEASE) for lease in leases],
        "incidents": [_fields(i, _INCIDENT) for i in sorted(
            incidents, key=lambda i: (i.hostname, not i.is_open))],
        "recovery_claim": None if claim is None else _fields(claim, _CLAIM),
        "voters": voters,
    }


def load(data: Any) -> tuple[list[Segment], list[Host], list[Notification], list[Lease],
                             list[Incident], RecoveryClaim | None, VoterSet]:
    """Records from a snapshot document; raises SnapshotFormatError when it can't."""
    if not isinstance(data, dict) or not isinstance(data.get("format"), int):
        raise SnapshotFormatError("not an hagent snapshot: no integer 'format' field")
    version = data["format"]
    if version > FORMAT:
        raise SnapshotFormatError(f"snapshot format {version} is newer than this hagent "
                                  f"understands ({FORMAT}); upgrade hagent")
    if version < 1:
        raise SnapshotFormatError(f"snapshot format {version} is not a known format")
    try:
        segments = [Segment(**{k: s[k] for k in _SEGMENT}) for s in data["segments"]]
        hosts = [Host(**{k: h[k] for k in _HOST}) for h in data["hosts"]]
        notifications = []
        for item in data["notifications"]:
            n = Notification(**{k: item[k] for k in _NOTIFICATION},
                             payload=dict(item["payload"]),
                             generated_ts=datetime.fromisoformat(item["generated_time"]).timestamp())
            for vm in item["vmoves"]:
                n.vmoves[vm["instance_uuid"]] = VMove(**{k: vm[k] for k in _VMOVE})
            if version >= 3:
                n.attempts = item["attempts"]
                if isinstance(n.attempts, bool) or not isinstance(n.attempts, int):
                    raise TypeError(f"attempts must be an integer (got {n.attempts!r})")
                n.steps = [RecoveryStep(**{k: step[k] for k in _STEP}) for step in item["steps"]]
            notifications.append(n)
        leases = [Lease(**{k: lease[k] for k in _LEASE}) for lease in data["leases"]]
        incidents = [Incident(**{k: i[k] for k in _INCIDENT})
                     for i in (data["incidents"] if version >= 2 else [])]
        raw_claim = data["recovery_claim"] if version >= 3 else None
        claim = None if raw_claim is None else RecoveryClaim(**{k: raw_claim[k] for k in _CLAIM})
        voters = VoterSet.load(data["voters"]) if version >= 4 else VoterSet()
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotFormatError(f"snapshot format {version} is malformed: "
                                  f"{type(exc).__name__}: {exc}") from None
    return segments, hosts, notifications, leases, incidents, claim, voters
