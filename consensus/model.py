"""Records and enumerations of the replicated state, with Masakari's names and values.

The records are plain mutable dataclasses owned by `ClusterState`; nothing outside the state
machine ever holds one. Callers get `record()` dicts, which are fresh copies.

Times are ISO 8601 strings in UTC (``2024-05-01T10:00:00.000000+00:00``) as Masakari's API
shows them; a lease keeps the proposer's float UNIX time because code, not people, reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Masakari: masakari/objects/fields.py (FailoverSegmentRecoveryMethod).
RECOVERY_METHODS = ("auto", "reserved_host", "auto_priority", "rh_priority")

# Masakari: masakari/objects/fields.py (NotificationType).
NOTIFICATION_TYPES = ("COMPUTE_HOST", "PROCESS", "VM")

# Masakari: masakari/objects/fields.py (NotificationStatus).
NOTIFICATION_STATUSES = ("new", "running", "error", "failed", "ignored", "finished")

# Legal notification status changes, derived from masakari/engine/manager.py:
#   new     -> running   _process_notification starts the workflow
#   new     -> ignored   process_notification: the segment is disabled
#   new     -> failed    _check_expired_notifications: too old to recover
#   running -> finished | error | ignored   the workflow's outcome (handlers return ignored
#                                            e.g. for host_status other than NORMAL)
#   running -> failed    _check_expired_notifications
#   error   -> running   _process_unfinished_notifications retries it
#   error   -> failed    the retry failed again, or it expired
# failed, ignored and finished are final. A status never "changes" to itself: a proposer that
# repeats a transition learns that the first one already happened.
NOTIFICATION_TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"running", "ignored", "failed"}),
    "running": frozenset({"finished", "error", "ignored", "failed"}),
    "error": frozenset({"running", "failed"}),
    "failed": frozenset(),
    "ignored": frozenset(),
    "finished": frozenset(),
}

# Notifications in these statuses keep their failover segment "under recovery": Masakari
# (masakari/ha/api.py, is_failover_segment_under_recovery) then refuses to update or delete
# the segment and its hosts.
UNDER_RECOVERY_STATUSES = frozenset({"new", "running", "error"})

# How a host incident was fenced (``host.fenced``): its lease ran out on the leader, or a
# fence driver confirmed the power is off (docs/detection.md).
FENCE_METHODS = ("lease", "ipmi", "redfish", "lab")  # lab: the lab's BMC stand-in
# Longest host.fenced ``detail`` (a fence driver's answer, kept in the log).
FENCE_DETAIL_MAX = 1000

# The payloads of the COMPUTE_HOST notifications hagent's failure detection stores, in the
# form masakari-monitors' host monitor sends (hostmonitor/host_handler/handle_host.py,
# _make_event): host_status UNKNOWN until the host is known to be powered off (fenced), then
# NORMAL, the only value Masakari's engine recovers a host for.
HOST_DOWN_PAYLOAD = {"event": "STOPPED", "cluster_status": "OFFLINE", "host_status": "UNKNOWN"}
HOST_UP_PAYLOAD = {"event": "STARTED", "cluster_status": "ONLINE", "host_status": "NORMAL"}

# Masakari: masakari/objects/fields.py (VMoveStatus).
VMOVE_STATUSES = ("pending", "ongoing", "ignored", "failed", "succeeded")

# Statuses a vmove may be recorded with when first seen: Masakari creates every vmove
# `pending` (engine/drivers/taskflow/host_failure.py, PrepareHAEnabledInstancesTask); an
# instance the engine decides to skip is recorded `ignored` at once.
VMOVE_INITIAL = frozenset({"pending", "ignored"})

# Legal vmove status changes, from host_failure.py's _evacuate_and_confirm:
#   pending -> ongoing (evacuation started) | failed (failed before it started) | ignored
#   ongoing -> succeeded | failed
#   failed  -> pending   hagent's addition: a retried notification (error -> running)
#                        retries its failed instances instead of recording new rows.
# succeeded and ignored are final.
VMOVE_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"ongoing", "failed", "ignored"}),
    "ongoing": frozenset({"succeeded", "failed"}),
    "failed": frozenset({"pending"}),
    "succeeded": frozenset(),
    "ignored": frozenset(),
}
VMOVE_FINAL = frozenset({"succeeded", "failed", "ignored"})

# Outcomes of a recovery step (``recovery.result``): done (the world changed as intended and
# the change was confirmed), failed, skipped (Nova already showed the wanted state).
RECOVERY_OUTCOMES = ("done", "failed", "skipped")
# Longest ``detail`` of a recovery intent or result (a few Nova facts, an error message).
RECOVERY_DETAIL_MAX = 1000
# Words every refusal of a recovery op for a stale term starts with, so that an engine tells
# "a newer leader claimed recovery" (stop acting) from a bug (report it).
STALE_TERM = "stale term"


@dataclass
class Segment:
    uuid: str
    name: str
    description: str | None
    recovery_method: str
    service_type: str
    enabled: bool
    created_at: str
    updated_at: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "description": self.description,
            "recovery_method": self.recovery_method,
            "service_type": self.service_type,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class Host:
    uuid: str
    name: str
    segment_uuid: str
    type: str
    control_attributes: str
    reserved: bool
    on_maintenance: bool
    created_at: str
    updated_at: str | None = None

    def record(self, segment: Segment) -> dict[str, Any]:
        """The host as Masakari's API shows it, with its segment embedded."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "segment_uuid": self.segment_uuid,
            "failover_segment_id": self.segment_uuid,
            "failover_segment": segment.record(),
            "type": self.type,
            "control_attributes": self.control_attributes,
            "reserved": self.reserved,
            "on_maintenance": self.on_maintenance,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class VMove:
    """Progress of one instance of a host-failure recovery (Masakari's VMove)."""

    instance_uuid: str
    instance_name: str | None
    status: str
    source_host: str | None
    dest_host: str | None
    message: str | None
    start_time: str | None
    end_time: str | None
    created_at: str
    updated_at: str | None = None
    type: str = "evacuation"

    def record(self) -> dict[str, Any]:
        return {
            "instance_uuid": self.instance_uuid,
            "instance_name": self.instance_name,
            "type": self.type,
            "status": self.status,
            "source_host": self.source_host,
            "dest_host": self.dest_host,
            "message": self.message,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class RecoveryStep:
    """One step of a notification's recovery: the intent the leader committed before acting
    (``step``, ``key``: the host or instance acted on, ``term``, ``detail``) and, once known,
    its result (``outcome``, ``outcome_detail``, ``outcome_term``: the term of the leader that
    recorded it, which may be a later one that resumed the step)."""

    step: str
    key: str
    term: int
    attempt: int  # the notification's ``attempts`` when the intent was committed
    detail: str | None
    started_at: str
    outcome: str | None = None
    outcome_detail: str | None = None
    outcome_term: int | None = None
    ended_at: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "key": self.key,
            "term": self.term,
            "attempt": self.attempt,
            "detail": self.detail,
            "outcome": self.outcome,
            "outcome_detail": self.outcome_detail,
            "outcome_term": self.outcome_term,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


@dataclass
class RecoveryClaim:
    """The highest Raft term whose leader claimed the recovery engine (``recovery.claim``):
    intents and results of any lower term are refused, so a deposed leader cannot act."""

    term: int
    node: str
    claimed_at: str

    def record(self) -> dict[str, Any]:
        return {"term": self.term, "node": self.node, "claimed_at": self.claimed_at}


@dataclass
class Notification:
    notification_uuid: str
    type: str
    hostname: str
    source_host_uuid: str
    failover_segment_uuid: str
    generated_time: str
    payload: dict[str, str]
    status: str
    source_node: str
    message: str | None
    created_at: str
    # Seconds since the epoch of generated_time, kept to compare without re-parsing.
    generated_ts: float
    # True when submit accepted it for recovery (status "new"); False when submit stored it
    # "ignored" (host on maintenance, duplicate). Only accepted ones count when later
    # notifications are checked for duplicates, as Masakari stores nothing it refuses.
    accepted: bool
    updated_at: str | None = None
    vmoves: dict[str, VMove] = field(default_factory=dict)
    # Times the recovery engine moved it to ``running`` (the first run and each retry).
    attempts: int = 0
    # The recovery steps taken, in commit order (``recovery.intent`` / ``recovery.result``).
    steps: list[RecoveryStep] = field(default_factory=list)
    # Position in commit order (shown as ``id``), the tie-break of sorted listings. Not stored
    # in snapshots: a restore renumbers in the same order, so it is equal on every replica.
    ordinal: int = field(default=0, compare=False)

    def record(self) -> dict[str, Any]:
        return {
            # Masakari's integer primary key; here the position in the log, so equal on
            # every replica and the order notifications were committed in.
            "id": self.ordinal + 1,
            "notification_uuid": self.notification_uuid,
            "type": self.type,
            "hostname": self.hostname,
            "source_host_uuid": self.source_host_uuid,
            "failover_segment_uuid": self.failover_segment_uuid,
            "generated_time": self.generated_time,
            "payload": dict(self.payload),
            "status": self.status,
            "source_node": self.source_node,
            "message": self.message,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "vmoves": [v.record() for v in self.vmoves.values()],
            "recovery_attempts": self.attempts,
            "recovery_steps": [step.record() for step in self.steps],
        }

    def open_step(self, step: str, key: str) -> RecoveryStep | None:
        """The step's intent that has no result yet, if any (at most one per step and key)."""
        for item in reversed(self.steps):
            if item.step == step and item.key == key:
                return item if item.outcome is None else None
        return None


@dataclass
class Lease:
    """The latest committed renewal of one host's lease (see ARCHITECTURE.md §3 rule 2)."""

    host: str
    seq: int
    renewed_at: float

    def record(self) -> dict[str, Any]:
        return {"host": self.host, "seq": self.seq, "renewed_at": self.renewed_at}


@dataclass
class Incident:
    """One failure of one host, from the STOPPED notification that opened it to the STARTED
    one that closed it (``host.down`` / ``host.fenced`` / ``host.up``, docs/detection.md).

    A host has at most one open incident; once closed, the last one is kept for the
    operator until the next one closes. Keyed by host name, as gossip names hosts."""

    hostname: str
    host_uuid: str
    notification_uuid: str  # the STOPPED notification
    source_node: str        # the leader that declared the host down
    opened_at: str
    fence_method: str | None = None
    fence_detail: str | None = None
    fenced_at: str | None = None
    closed_at: str | None = None
    up_notification_uuid: str | None = None  # the STARTED one (None: host no longer registered)

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def record(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "status": "open" if self.is_open else "closed",
            "host_uuid": self.host_uuid,
            "notification_uuid": self.notification_uuid,
            "source_node": self.source_node,
            "opened_at": self.opened_at,
            "fenced": self.fenced_at is not None,
            "fence_method": self.fence_method,
            "fence_detail": self.fence_detail,
            "fenced_at": self.fenced_at,
            "closed_at": self.closed_at,
            "up_notification_uuid": self.up_notification_uuid,
        }
