"""The replicated state machine: Masakari's segments, hosts and notifications, plus leases,
host incidents, the recovery engine's claims, intents and results (docs/recovery.md) and the
voter set (``voters.*``, consensus/voterset.py).

`ClusterState.apply` is the only way to change the state. Each committed log entry is one
command dict; every replica applies the same commands in the same order and must reach the
same state, so `apply` reads no clock, draws no random numbers and does no I/O: times come in
``command["at"]`` (the proposer's UNIX time) and uuids in the command. `apply` never raises:
a refused command returns ``{"ok": False, "error": ...}`` and changes nothing, because an
exception in pysyncobj's apply thread would stop the replica. Every handler checks all its
arguments before it changes anything.

The command contract is the "Replicated commands" table in docs/architecture.md. Rules that
come from Masakari name their source; where hagent departs from Masakari the docstring says so.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from consensus import snapshot, validate as v
from consensus.model import (
    FENCE_DETAIL_MAX, FENCE_METHODS, HOST_DOWN_PAYLOAD, HOST_UP_PAYLOAD, NOTIFICATION_STATUSES,
    NOTIFICATION_TRANSITIONS, NOTIFICATION_TYPES, RECOVERY_DETAIL_MAX, RECOVERY_METHODS,
    RECOVERY_OUTCOMES, STALE_TERM, UNDER_RECOVERY_STATUSES, VMOVE_FINAL, VMOVE_INITIAL,
    VMOVE_STATUSES, VMOVE_TRANSITIONS, Host, Incident, Lease, Notification, RecoveryClaim,
    RecoveryStep, Segment, VMove,
)
from consensus.payload import check_payload
from consensus.queries import (
    QueryError, bool_filter, check_filters, select, since_filter, status_filter,
)
from consensus.validate import CommandError
from consensus.voterset import VoterSet

Result = dict[str, Any]
_Handler = Callable[["ClusterState", dict[str, Any], float], Any]
_HANDLERS: dict[str, _Handler] = {}

# Host fields the recovery engine changes while it recovers a segment (Masakari's engine
# writes them to its database directly, bypassing the API's "segment in use" check).
_HOST_FIELDS_DURING_RECOVERY = frozenset({"reserved", "on_maintenance"})

_SEGMENT_SORT_KEYS = ("created_at", "updated_at", "name", "uuid", "description",
                      "recovery_method", "service_type", "enabled")
_HOST_SORT_KEYS = ("created_at", "updated_at", "name", "uuid", "type", "reserved",
                   "on_maintenance", "segment_uuid")
_NOTIFICATION_SORT_KEYS = ("created_at", "updated_at", "generated_time", "notification_uuid",
                           "type", "status", "hostname", "source_host_uuid")


def _duplicate_key(notification: Notification) -> tuple[Any, ...]:
    """What Masakari's duplicate check compares: type, source host and payload."""
    return (notification.type, notification.source_host_uuid,
            tuple(sorted(notification.payload.items())))


def _command(op: str) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        _HANDLERS[op] = handler
        return handler
    return register


class ClusterState:
    """Segments, hosts, notifications (with their vmoves and recovery steps), host leases,
    host incidents and the recovery claim.

    ``duplicate_interval`` is Masakari's ``duplicate_notification_detection_interval`` in
    seconds; it comes from config and must be the same on every replica.
    """

    def __init__(self, duplicate_interval: float = 180.0) -> None:
        if (isinstance(duplicate_interval, bool) or not isinstance(duplicate_interval, (int, float))
                or not 0 <= duplicate_interval < float("inf")):
            raise ValueError(f"duplicate_interval must be a number of seconds >= 0 "
                             f"(got {duplicate_interval!r})")
        self.duplicate_interval = float(duplicate_interval)
        self._segments: dict[str, Segment] = {}
        self._segment_names: dict[str, str] = {}
        self._hosts: dict[str, Host] = {}
        self._host_names: dict[str, str] = {}
        self._notifications: dict[str, Notification] = {}
        self._leases: dict[str, Lease] = {}
        # Host name -> its open incident; host name -> its last closed one (docs/detection.md).
        self._incidents: dict[str, Incident] = {}
        self._closed_incidents: dict[str, Incident] = {}
        # Derived indexes, rebuilt on restore; they keep submit and the queries the leader
        # runs often (notifications by status) independent of the number of notifications.
        self._by_status: dict[str, dict[str, None]] = {s: {} for s in NOTIFICATION_STATUSES}
        self._under_recovery: dict[str, int] = {}  # segment uuid -> notifications in recovery
        # (type, source_host_uuid, payload items) -> (latest generated_ts, its uuid), over
        # accepted notifications only: the O(1) form of Masakari's duplicate query.
        self._latest: dict[tuple[Any, ...], tuple[float, str]] = {}
        self._next_ordinal = 0
        # The highest term whose leader claimed recovery (None: no engine ever ran).
        self._claim: RecoveryClaim | None = None
        # Who votes, who may be promoted, the change in flight (docs/raft.md, membership).
        self._voters = VoterSet()

    # ------------------------------------------------------------------ applying commands

    def apply(self, command: Any) -> Result:
        """Apply one committed command; see the module docstring for the guarantees."""
        if not isinstance(command, dict):
            return {"ok": False, "error": f"a command must be a dict (got {v.show(command)})"}
        op = command.get("op")
        handler = _HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {v.show(op)} "
                                          f"(known: {', '.join(sorted(_HANDLERS))})"}
        try:
            if "at" not in command:
                raise CommandError("missing argument 'at'")
            result = handler(self, command, v.at_time(command["at"]))
        except CommandError as exc:
            return {"ok": False, "error": f"{op}: {exc}"}
        except Exception as exc:  # a bug: report it rather than stop the Raft apply thread
            return {"ok": False, "error": f"{op}: internal error {type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}

    @_command("segment.create")
    def _segment_create(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        v.check_keys(cmd, ("uuid", "name", "recovery_method", "service_type"),
                     ("description", "enabled"))
        uuid = v.uuid(cmd["uuid"], "uuid")
        name = v.name(cmd["name"], "name")
        segment = Segment(
            uuid=uuid, name=name,
            description=v.description(cmd.get("description"), "description"),
            recovery_method=v.choice(cmd["recovery_method"], "recovery_method", RECOVERY_METHODS),
            service_type=v.name(cmd["service_type"], "service_type"),
            enabled=v.boolean(cmd.get("enabled", True), "enabled"),
            created_at=v.iso_from_epoch(at))
        if uuid in self._segments:
            raise CommandError(f"segment {uuid} already exists")
        if name in self._segment_names:
            raise CommandError(f"a segment named {name!r} already exists")
        self._segments[uuid] = segment
        self._segment_names[name] = uuid
        return segment.record()

    @_command("segment.update")
    def _segment_update(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Masakari refuses to update a segment under recovery (masakari/ha/api.py)."""
        fields = ("name", "description", "recovery_method", "service_type", "enabled")
        v.check_keys(cmd, ("segment",), fields)
        segment = self._find_segment(cmd["segment"], "segment")
        changes = {k: cmd[k] for k in fields if k in cmd}
        if not changes:
            raise CommandError(f"nothing to update: give any of {', '.join(fields)}")
        if "name" in changes:
            changes["name"] = v.name(changes["name"], "name")
            other = self._segment_names.get(changes["name"])
            if other is not None and other != segment.uuid:
                raise CommandError(f"a segment named {changes['name']!r} already exists")
        if "description" in changes:
            changes["description"] = v.description(changes["description"], "description")
        if "recovery_method" in changes:
            changes["recovery_method"] = v.choice(changes["recovery_method"], "recovery_method",
                                                  RECOVERY_METHODS)
        if "service_type" in changes:
            changes["service_type"] = v.name(changes["service_type"], "service_type")
        if "enabled" in changes:
            changes["enabled"] = v.boolean(changes["enabled"], "enabled")
        self._refuse_if_under_recovery(segment, f"segment {segment.uuid} can't be updated")
        del self._segment_names[segment.name]
        for key, value in changes.items():
            setattr(segment, key, value)
        self._segment_names[segment.name] = segment.uuid
        segment.updated_at = v.iso_from_epoch(at)
        return segment.record()

    @_command("segment.delete")
    def _segment_delete(self, cmd: dict[str, Any], at: float) -> None:
        """hagent refuses to delete a segment that still holds hosts, where Masakari deletes
        the hosts with it: removing a segment should not silently end HA for its hosts.
        (Hosts under recovery can't be deleted, so neither can their segment.)"""
        v.check_keys(cmd, ("segment",))
        segment = self._find_segment(cmd["segment"], "segment")
        held = sum(1 for h in self._hosts.values() if h.segment_uuid == segment.uuid)
        if held:
            raise CommandError(f"segment {segment.uuid} ({segment.name}) still holds {held} "
                               f"host(s); delete them first")
        del self._segments[segment.uuid]
        del self._segment_names[segment.name]
        return None

    @_command("host.create")
    def _host_create(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Host names are unique across all segments, as Masakari's unique constraint
        ``uniq_host0name0deleted`` makes them: a notification names its host by name alone."""
        v.check_keys(cmd, ("uuid", "name", "type", "control_attributes", "segment"),
                     ("reserved", "on_maintenance"))
        uuid = v.uuid(cmd["uuid"], "uuid")
        name = v.name(cmd["name"], "name")
        segment = self._find_segment(cmd["segment"], "segment")
        host = Host(
            uuid=uuid, name=name, segment_uuid=segment.uuid,
            type=v.host_type(cmd["type"], "type"),
            control_attributes=v.description(cmd["control_attributes"], "control_attributes",
                                             nullable=False),
            reserved=v.boolean(cmd.get("reserved", False), "reserved"),
            on_maintenance=v.boolean(cmd.get("on_maintenance", False), "on_maintenance"),
            created_at=v.iso_from_epoch(at))
        if uuid in self._hosts:
            raise CommandError(f"host {uuid} already exists")
        if name in self._host_names:
            raise CommandError(f"a host named {name!r} already exists")
        self._hosts[uuid] = host
        self._host_names[name] = uuid
        return host.record(segment)

    @_command("host.update")
    def _host_update(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Masakari refuses to update a host whose segment is under recovery. hagent still
        lets ``reserved`` and ``on_maintenance`` change then: its recovery engine changes
        them mid-recovery through this same log. A renamed host keeps its incidents."""
        fields = ("name", "type", "control_attributes", "reserved", "on_maintenance")
        v.check_keys(cmd, ("host",), ("segment", *fields))
        host = self._find_host(cmd["host"], cmd.get("segment"))
        changes = {k: cmd[k] for k in fields if k in cmd}
        if not changes:
            raise CommandError(f"nothing to update: give any of {', '.join(fields)}")
        if "name" in changes:
            changes["name"] = v.name(changes["name"], "name")
            other = self._host_names.get(changes["name"])
            if other is not None and other != host.uuid:
                raise CommandError(f"a host named {changes['name']!r} already exists")
        if "type" in changes:
            changes["type"] = v.host_type(changes["type"], "type")
        if "control_attributes" in changes:
            changes["control_attributes"] = v.description(
                changes["control_attributes"], "control_attributes", nullable=False)
        for key in ("reserved", "on_maintenance"):
            if key in changes:
                changes[key] = v.boolean(changes[key], key)
        if not changes.keys() <= _HOST_FIELDS_DURING_RECOVERY:
            self._refuse_if_under_recovery(self._segments[host.segment_uuid],
                                           f"host {host.uuid} can't be updated")
        del self._host_names[host.name]
        old_name = host.name
        for key, value in changes.items():
            setattr(host, key, value)
        self._host_names[host.name] = host.uuid
        if host.name != old_name:
            self._rename_incidents(old_name, host.name)
        host.updated_at = v.iso_from_epoch(at)
        return host.record(self._segments[host.segment_uuid])

    @_command("host.delete")
    def _host_delete(self, cmd: dict[str, Any], at: float) -> None:
        """Masakari refuses to delete a host whose segment is under recovery. The host's
        incidents (open and last closed) are forgotten with it."""
        v.check_keys(cmd, ("host",), ("segment",))
        host = self._find_host(cmd["host"], cmd.get("segment"))
        self._refuse_if_under_recovery(self._segments[host.segment_uuid],
                                       f"host {host.uuid} can't be deleted")
        del self._hosts[host.uuid]
        del self._host_names[host.name]
        # Its incidents go with it: a host that is no longer registered gets no notifications.
        self._incidents.pop(host.name, None)
        self._closed_incidents.pop(host.name, None)
        return None

    @_command("notification.submit")
    def _notification_submit(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Store a notification, as Masakari's NotificationAPI._create_notification would.

        A known notification_uuid returns the stored record unchanged: submitters resend
        until they see a commit, so the first copy wins. Masakari refuses (HTTP 409)
        notifications from hosts on maintenance and duplicates; hagent stores them with
        status ``ignored`` and a message, so the operator sees them and the submitter's
        resends stop. A duplicate is, as in Masakari's _is_duplicate_notification, a
        notification of the same type, source host and payload as an accepted one whose
        generated_time is no earlier than this one's minus ``duplicate_interval``, in any
        status (Masakari's query has no status filter).
        """
        v.check_keys(cmd, ("notification_uuid", "type", "hostname", "generated_time",
                           "payload", "source_node"))
        uuid = v.uuid(cmd["notification_uuid"], "notification_uuid")
        if uuid in self._notifications:
            return self._notifications[uuid].record()
        ntype = v.choice(cmd["type"], "type", NOTIFICATION_TYPES)
        hostname = v.hostname(cmd["hostname"], "hostname")
        generated = v.generated_time(cmd["generated_time"], "generated_time")
        payload = check_payload(ntype, cmd["payload"])
        source_node = v.name(cmd["source_node"], "source_node")
        host = self._registered_host(hostname)
        return self._store_notification(uuid, ntype, host, generated, payload, source_node, at,
                                        check_duplicates=True).record()

    def _registered_host(self, hostname: str) -> Host:
        host_uuid = self._host_names.get(hostname)
        if host_uuid is None:
            raise CommandError(f"no host named {hostname!r} is registered in any segment")
        return self._hosts[host_uuid]

    def _store_notification(self, uuid: str, ntype: str, host: Host,
                            generated: tuple[str, float], payload: dict[str, str],
                            source_node: str, at: float, check_duplicates: bool) -> Notification:
        """Store a checked, new notification: ``ignored`` when the host is on maintenance
        or (``check_duplicates``) it duplicates an accepted one, else ``new``. Changes the
        state, so callers call it only once every argument has been checked."""
        generated_time, generated_ts = generated
        latest = self._latest.get((ntype, host.uuid, tuple(sorted(payload.items()))))
        status, message = "new", None
        if host.on_maintenance:
            status, message = "ignored", f"host {host.name} is on maintenance"
        elif (check_duplicates and latest is not None
              and latest[0] >= generated_ts - self.duplicate_interval):
            status = "ignored"
            message = f"duplicate of notification {latest[1]} (within {self.duplicate_interval:g} s)"
        notification = Notification(
            notification_uuid=uuid, type=ntype, hostname=host.name, source_host_uuid=host.uuid,
            failover_segment_uuid=host.segment_uuid, generated_time=generated_time,
            generated_ts=generated_ts, payload=payload, status=status, source_node=source_node,
            message=message, created_at=v.iso_from_epoch(at), accepted=status == "new")
        self._insert_notification(notification)
        return notification

    @_command("notification.transition")
    def _notification_transition(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Move a notification along NOTIFICATION_TRANSITIONS (consensus/model.py); the
        optional ``message`` is Masakari's notification message (why it ended so)."""
        v.check_keys(cmd, ("notification_uuid", "status"), ("message",))
        notification = self._find_notification(cmd["notification_uuid"])
        status = v.choice(cmd["status"], "status", NOTIFICATION_STATUSES)
        message = v.text(cmd.get("message"), "message")
        if status not in NOTIFICATION_TRANSITIONS[notification.status]:
            allowed = sorted(NOTIFICATION_TRANSITIONS[notification.status]) or ["nothing: final"]
            raise CommandError(f"notification {notification.notification_uuid} can't go from "
                               f"{notification.status} to {status} (allowed: {', '.join(allowed)})")
        self._set_status(notification, status)
        if status == "running":
            notification.attempts += 1
        if "message" in cmd:
            notification.message = message
        notification.updated_at = v.iso_from_epoch(at)
        return notification.record()

    @_command("notification.vmove")
    def _notification_vmove(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Record one instance's progress in a host recovery (Masakari's vmoves table), keyed
        by instance: the first report creates it, later ones follow VMOVE_TRANSITIONS.
        Only a running COMPUTE_HOST notification has vmoves being written."""
        optional = ("instance_name", "source_host", "dest_host", "message")
        v.check_keys(cmd, ("notification_uuid", "instance_uuid", "status"), optional)
        notification = self._find_notification(cmd["notification_uuid"])
        instance = v.uuid(cmd["instance_uuid"], "instance_uuid")
        status = v.choice(cmd["status"], "status", VMOVE_STATUSES)
        given = {k: v.text(cmd[k], k) for k in optional if k in cmd}
        if notification.type != "COMPUTE_HOST" or notification.status != "running":
            raise CommandError(f"notification {notification.notification_uuid} is a "
                               f"{notification.status} {notification.type} notification; vmoves "
                               f"are recorded only for a running COMPUTE_HOST one")
        now = v.iso_from_epoch(at)
        vmove = notification.vmoves.get(instance)
        if vmove is None:
            if status not in VMOVE_INITIAL:
                raise CommandError(f"a new vmove must start as {' or '.join(sorted(VMOVE_INITIAL))} "
                                   f"(got {status})")
            vmove = VMove(instance_uuid=instance, instance_name=None, status=status,
                          source_host=None, dest_host=None, message=None, start_time=None,
                          end_time=None, created_at=now)
            notification.vmoves[instance] = vmove
        else:
            if status not in VMOVE_TRANSITIONS[vmove.status]:
                allowed = sorted(VMOVE_TRANSITIONS[vmove.status]) or ["nothing: final"]
                raise CommandError(f"vmove of instance {instance} can't go from {vmove.status} "
                                   f"to {status} (allowed: {', '.join(allowed)})")
            vmove.status = status
            vmove.updated_at = now
        if status == "ongoing":
            vmove.start_time = now
        if status == "pending":
            vmove.start_time = vmove.end_time = None
        if status in VMOVE_FINAL:
            vmove.end_time = now
        for key, value in given.items():
            setattr(vmove, key, value)
        notification.updated_at = now
        return notification.record()

    @_command("recovery.claim")
    def _recovery_claim(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """A new leader's recovery engine claims recovery for its Raft ``term`` before it
        acts. The state keeps the highest claim; a lower term is refused (that leader was
        deposed) and so is the same term from another node (Raft elects one leader per
        term). A resend of the current claim returns it unchanged."""
        v.check_keys(cmd, ("term", "node"))
        term = v.sequence_number(cmd["term"], "term")
        node = v.name(cmd["node"], "node")
        claim = self._claim
        if claim is not None:
            if term < claim.term:
                raise CommandError(f"{STALE_TERM}: term {term} is older than the claimed term "
                                   f"{claim.term} (node {claim.node}); this node no longer leads")
            if term == claim.term:
                if node != claim.node:
                    raise CommandError(f"term {term} is already claimed by node {claim.node}")
                return claim.record()
        self._claim = RecoveryClaim(term=term, node=node, claimed_at=v.iso_from_epoch(at))
        return self._claim.record()

    @_command("recovery.intent")
    def _recovery_intent(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Record that the leader of ``term`` is about to take ``step`` on ``key`` (a host
        or an instance) for a running notification; it acts only once this commits.

        Refused unless ``term`` is the claimed term (lower: a deposed leader, which must not
        act; higher: a leader that did not claim first), unless the notification is running,
        and while the same step and key has an open intent of an earlier term (its result
        comes first: a resuming leader records what Nova shows). A resend of the open
        intent of the same term returns it unchanged."""
        v.check_keys(cmd, ("notification_uuid", "step", "term", "key"), ("detail",))
        notification = self._find_notification(cmd["notification_uuid"])
        step = v.name(cmd["step"], "step")
        key = v.name(cmd["key"], "key")
        detail = v.text(cmd.get("detail"), "detail", RECOVERY_DETAIL_MAX)
        term = self._check_term(cmd["term"])
        if notification.status != "running":
            raise CommandError(f"notification {notification.notification_uuid} is "
                               f"{notification.status}; recovery steps are recorded only while "
                               f"it is running")
        current = notification.open_step(step, key)
        if current is not None:
            if current.term == term:
                return current.record()
            raise CommandError(f"step {step} of {key} has an open intent of term {current.term}; "
                               f"record its result first")
        item = RecoveryStep(step=step, key=key, term=term, attempt=notification.attempts,
                            detail=detail, started_at=v.iso_from_epoch(at))
        notification.steps.append(item)
        notification.updated_at = item.started_at
        return item.record()

    @_command("recovery.result")
    def _recovery_result(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Record the outcome of the open intent for ``step`` and ``key``. The term must be
        the claimed term, as for an intent; it may be later than the intent's (a new leader
        recording what Nova shows for its predecessor's intent). Without an open intent the
        result is refused, except a resend: when the step's latest result has the same term,
        outcome and detail, it is returned unchanged."""
        v.check_keys(cmd, ("notification_uuid", "step", "term", "key", "outcome"), ("detail",))
        notification = self._find_notification(cmd["notification_uuid"])
        step = v.name(cmd["step"], "step")
        key = v.name(cmd["key"], "key")
        outcome = v.choice(cmd["outcome"], "outcome", RECOVERY_OUTCOMES)
        detail = v.text(cmd.get("detail"), "detail", RECOVERY_DETAIL_MAX)
        term = self._check_term(cmd["term"])
        if notification.status != "running":
            raise CommandError(f"notification {notification.notification_uuid} is "
                               f"{notification.status}; recovery steps are recorded only while "
                               f"it is running")
        item = notification.open_step(step, key)
        if item is None:
            latest = next((s for s in reversed(notification.steps)
                           if s.step == step and s.key == key), None)
            if latest is not None and (latest.outcome_term, latest.outcome,
                                       latest.outcome_detail) == (term, outcome, detail):
                return latest.record()
            raise CommandError(f"step {step} of {key} has no open intent in notification "
                               f"{notification.notification_uuid}")
        item.outcome, item.outcome_detail, item.outcome_term = outcome, detail, term
        item.ended_at = v.iso_from_epoch(at)
        notification.updated_at = item.ended_at
        return item.record()

    @_command("voters.register")
    def _voters_register(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """An eligible node records its Raft and forward addresses, key and failure domain
        (idempotent; consensus/voterset.py)."""
        return self._voters.register(cmd, at)

    @_command("voters.bootstrap")
    def _voters_bootstrap(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """The first leader writes the voter set it runs with; later ones change nothing."""
        return self._voters.bootstrap(cmd, at)

    @_command("voters.change")
    def _voters_change(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Start adding or removing one voter (``change``: add | remove)."""
        return self._voters.start_change(cmd, at)

    @_command("voters.progress")
    def _voters_progress(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """The add candidate's catch-up report."""
        return self._voters.progress(cmd, at)

    @_command("voters.commit")
    def _voters_commit(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """The change is done in Raft: the voter set follows."""
        return self._voters.commit(cmd, at)

    @_command("voters.abort")
    def _voters_abort(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """The change is given up; the voter set is unchanged."""
        return self._voters.abort(cmd, at)

    @_command("lease.renew")
    def _lease_renew(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Commit lease renewals, ``hosts`` mapping host name -> renewal sequence number.

        A renewal whose number is lower than the stored one is stale (a delayed resend) and
        changes nothing; an equal or higher one stores the number and ``renewed_at = at``.
        Hosts need not be registered: every agent holds a lease. Returns the stored lease of
        every host named in the command.
        """
        v.check_keys(cmd, ("hosts",))
        hosts = cmd["hosts"]
        if not isinstance(hosts, dict) or not hosts:
            raise CommandError(f"argument 'hosts' must be a non-empty object of host name -> "
                               f"sequence number (got {v.show(hosts)})")
        renewals = {v.hostname(name, "hosts"): v.sequence_number(seq, f"hosts[{name!r}]")
                    for name, seq in hosts.items()}
        for name, seq in renewals.items():
            lease = self._leases.get(name)
            if lease is None:
                self._leases[name] = Lease(host=name, seq=seq, renewed_at=at)
            elif seq >= lease.seq:
                lease.seq, lease.renewed_at = seq, at
        return {name: self._leases[name].record() for name in renewals}

    @_command("host.down")
    def _host_down(self, cmd: dict[str, Any], at: float) -> dict[str, Any] | None:
        """Open an incident for a host that gossip declared dead, with its COMPUTE_HOST
        STOPPED notification (payload HOST_DOWN_PAYLOAD), stored as notification.submit
        stores one; the incident record is returned.

        Exactly one notification per failure: while the host has an open incident, every
        host.down (a resend, another leader's decision) returns that incident unchanged. A
        ``notification_uuid`` already stored returns the incident it opened. ``previous``
        (optional) is the STOPPED uuid of the host's last closed incident as the proposer
        saw it (null: none); when it is given and differs, the proposal is older than that
        incident's end (a delayed resend) and changes nothing: None is returned. Unlike
        notification.submit, no duplicate check: an incident is a new failure by
        construction, and Masakari's window would silently ignore a real second failure
        within ``duplicate_interval``. A host on maintenance gets an ``ignored`` STOPPED (as
        submit does) and an open incident all the same, so it is not declared down again.
        An unregistered host is refused.
        """
        v.check_keys(cmd, ("hostname", "notification_uuid", "generated_time", "source_node"),
                     ("previous",))
        hostname = v.hostname(cmd["hostname"], "hostname")
        uuid = v.uuid(cmd["notification_uuid"], "notification_uuid")
        generated = v.generated_time(cmd["generated_time"], "generated_time")
        source_node = v.name(cmd["source_node"], "source_node")
        previous = v.uuid_or_none(cmd.get("previous"), "previous")
        incident = self._incidents.get(hostname)
        if incident is not None:
            return self._incident_record(incident)
        closed = self._closed_incidents.get(hostname)
        if uuid in self._notifications:
            if closed is not None and closed.notification_uuid == uuid:
                return self._incident_record(closed)
            raise CommandError(f"notification_uuid {uuid} is already used by another "
                               f"notification; a new host.down needs a new uuid")
        if "previous" in cmd and previous != (closed.notification_uuid if closed else None):
            return None
        host = self._registered_host(hostname)
        notification = self._store_notification(uuid, "COMPUTE_HOST", host, generated,
                                                dict(HOST_DOWN_PAYLOAD), source_node, at,
                                                check_duplicates=False)
        incident = Incident(hostname=hostname, host_uuid=host.uuid, notification_uuid=uuid,
                            source_node=source_node, opened_at=v.iso_from_epoch(at))
        self._incidents[hostname] = incident
        return self._incident_record(incident, notification)

    @_command("host.fenced")
    def _host_fenced(self, cmd: dict[str, Any], at: float) -> dict[str, Any] | None:
        """Record that the host of an open incident is fenced (its lease ran out on the
        leader, or a fence driver confirmed power off) and set its STOPPED notification's
        host_status to NORMAL: only then may recovery evacuate it (Masakari's engine
        ignores other values). Idempotent: an incident already fenced is returned
        unchanged. Without an open incident, or when ``incident`` (optional: the STOPPED
        uuid the evidence is about) names another one, nothing changes and None is
        returned: evidence about an earlier failure must never fence a later one."""
        v.check_keys(cmd, ("hostname", "method", "detail"), ("incident",))
        hostname = v.hostname(cmd["hostname"], "hostname")
        method = v.choice(cmd["method"], "method", FENCE_METHODS)
        detail = v.text(cmd["detail"], "detail", FENCE_DETAIL_MAX)
        expected = v.uuid_or_none(cmd.get("incident"), "incident")
        incident = self._incidents.get(hostname)
        if incident is None or ("incident" in cmd and expected != incident.notification_uuid):
            return None
        if incident.fenced_at is None:
            incident.fence_method, incident.fence_detail = method, detail
            incident.fenced_at = v.iso_from_epoch(at)
            notification = self._notifications[incident.notification_uuid]
            self._set_payload(notification, {**notification.payload, "host_status": "NORMAL"})
            notification.updated_at = incident.fenced_at
        return self._incident_record(incident)

    @_command("host.up")
    def _host_up(self, cmd: dict[str, Any], at: float) -> dict[str, Any] | None:
        """Close the host's open incident with a COMPUTE_HOST STARTED notification
        (payload HOST_UP_PAYLOAD, stored as submit stores one, so ``ignored`` while the
        host is on maintenance, as Masakari's API refuses it then); returns the closed
        incident. The closed incident replaces the host's previous closed one.

        Without an open incident, or when ``incident`` (optional: the STOPPED uuid of the
        incident meant) names another one, nothing changes and None is returned; a
        ``notification_uuid`` already stored returns the incident it closed, or None. A
        host deleted meanwhile has no incident to close.
        """
        v.check_keys(cmd, ("hostname", "notification_uuid", "generated_time", "source_node"),
                     ("incident",))
        hostname = v.hostname(cmd["hostname"], "hostname")
        uuid = v.uuid(cmd["notification_uuid"], "notification_uuid")
        generated = v.generated_time(cmd["generated_time"], "generated_time")
        source_node = v.name(cmd["source_node"], "source_node")
        expected = v.uuid_or_none(cmd.get("incident"), "incident")
        if uuid in self._notifications:
            closed = self._closed_incidents.get(hostname)
            if closed is not None and closed.up_notification_uuid == uuid:
                return self._incident_record(closed)
            return None
        incident = self._incidents.get(hostname)
        if incident is None or ("incident" in cmd and expected != incident.notification_uuid):
            return None
        self._store_notification(uuid, "COMPUTE_HOST", self._registered_host(hostname),
                                 generated, dict(HOST_UP_PAYLOAD), source_node, at,
                                 check_duplicates=False)
        incident.closed_at = v.iso_from_epoch(at)
        incident.up_notification_uuid = uuid
        del self._incidents[hostname]
        self._closed_incidents[hostname] = incident
        return self._incident_record(incident)

    # ------------------------------------------------------------------ bookkeeping

    def _find_segment(self, ref: Any, arg: str) -> Segment:
        """A segment by uuid, else by name (the contract lets operators type either)."""
        if isinstance(ref, str):
            segment = self._segments.get(ref) or self._segments.get(
                self._segment_names.get(ref, ""))
            if segment is None:
                try:
                    segment = self._segments.get(v.uuid(ref, arg))
                except CommandError:
                    pass
            if segment is not None:
                return segment
        raise CommandError(f"argument {arg!r}: no segment with uuid or name {v.show(ref)}")

    def _find_host(self, ref: Any, segment_ref: Any = None) -> Host:
        """A host by uuid, else by name; with ``segment`` it must belong to that segment
        (Masakari's HostNotFoundUnderFailoverSegment)."""
        segment = None if segment_ref is None else self._find_segment(segment_ref, "segment")
        host = None
        if isinstance(ref, str):
            host = self._hosts.get(ref) or self._hosts.get(self._host_names.get(ref, ""))
            if host is None:
                try:
                    host = self._hosts.get(v.uuid(ref, "host"))
                except CommandError:
                    pass
        if host is None:
            raise CommandError(f"argument 'host': no host with uuid or name {v.show(ref)}")
        if segment is not None and host.segment_uuid != segment.uuid:
            raise CommandError(f"host {host.name} is not in segment {segment.name}")
        return host

    def _find_notification(self, ref: Any) -> Notification:
        uuid = v.uuid(ref, "notification_uuid")
        notification = self._notifications.get(uuid)
        if notification is None:
            raise CommandError(f"no notification {uuid}")
        return notification

    def _check_term(self, value: Any) -> int:
        """A recovery intent's or result's term: it must be the claimed one."""
        term = v.sequence_number(value, "term")
        claim = self._claim
        if claim is None:
            raise CommandError(f"term {term} has not claimed recovery (recovery.claim first)")
        if term < claim.term:
            raise CommandError(f"{STALE_TERM}: term {term} is older than the claimed term "
                               f"{claim.term} (node {claim.node}); this node no longer leads")
        if term > claim.term:
            raise CommandError(f"term {term} has not claimed recovery (claimed: {claim.term}); "
                               f"recovery.claim first")
        return term

    def _refuse_if_under_recovery(self, segment: Segment, what: str) -> None:
        if self._under_recovery.get(segment.uuid):
            raise CommandError(f"{what}: segment {segment.name} has notifications in status "
                               f"new, running or error (under recovery)")

    def _insert_notification(self, notification: Notification) -> None:
        notification.ordinal = self._next_ordinal
        self._next_ordinal += 1
        self._notifications[notification.notification_uuid] = notification
        self._by_status[notification.status][notification.notification_uuid] = None
        self._count_recovery(notification, +1)
        if notification.accepted:
            key = _duplicate_key(notification)
            latest = self._latest.get(key)
            if latest is None or notification.generated_ts > latest[0]:
                self._latest[key] = (notification.generated_ts, notification.notification_uuid)

    def _set_status(self, notification: Notification, status: str) -> None:
        self._count_recovery(notification, -1)
        del self._by_status[notification.status][notification.notification_uuid]
        notification.status = status
        self._by_status[status][notification.notification_uuid] = None
        self._count_recovery(notification, +1)

    def _set_payload(self, notification: Notification, payload: dict[str, str]) -> None:
        """Change a stored notification's payload and keep the duplicate index equal to
        what a restore would rebuild from the new payloads (replicas restored from a
        snapshot must decide duplicates as the others do)."""
        if not notification.accepted:
            notification.payload = payload
            return
        old_key = _duplicate_key(notification)
        notification.payload = payload
        latest = self._latest.get(old_key)
        if latest is not None and latest[1] == notification.notification_uuid:
            # The latest of its old key moves away: find the next one. A scan, but only
            # once per fenced incident, and only when it was that key's latest.
            best: tuple[float, str] | None = None
            for other in self._notifications.values():  # in commit order, as a rebuild
                if (other.accepted and _duplicate_key(other) == old_key
                        and (best is None or other.generated_ts > best[0])):
                    best = (other.generated_ts, other.notification_uuid)
            if best is None:
                del self._latest[old_key]
            else:
                self._latest[old_key] = best
        new_key = _duplicate_key(notification)
        latest = self._latest.get(new_key)
        if (latest is None or notification.generated_ts > latest[0]
                or (notification.generated_ts == latest[0]
                    and notification.ordinal < self._notifications[latest[1]].ordinal)):
            self._latest[new_key] = (notification.generated_ts, notification.notification_uuid)

    def _rename_incidents(self, old: str, new: str) -> None:
        for book in (self._incidents, self._closed_incidents):
            incident = book.pop(old, None)
            if incident is not None:
                incident.hostname = new
                book[new] = incident

    def _incident_record(self, incident: Incident,
                         notification: Notification | None = None) -> dict[str, Any]:
        """The incident with its STOPPED notification's status (``ignored`` tells the
        policy not to power off a host on maintenance)."""
        notification = notification or self._notifications[incident.notification_uuid]
        return {**incident.record(), "notification_status": notification.status}

    def _count_recovery(self, notification: Notification, delta: int) -> None:
        if notification.status in UNDER_RECOVERY_STATUSES:
            segment = notification.failover_segment_uuid
            count = self._under_recovery.get(segment, 0) + delta
            if count:
                self._under_recovery[segment] = count
            else:
                self._under_recovery.pop(segment, None)

    # ------------------------------------------------------------------ queries

    def list_segments(self, filters: Mapping[str, Any] | None = None, sort_key: str = "created_at",
                      sort_dir: str = "desc", limit: int | None = None,
                      marker: str | None = None) -> list[dict[str, Any]]:
        """Segments, newest first by default. Filters (Masakari's): ``recovery_method``,
        ``service_type`` (exact match), ``enabled`` (boolean). ``marker`` is the uuid of the
        last segment of the previous page. Raises QueryError on a bad argument."""
        wanted = check_filters(filters, ("recovery_method", "service_type", "enabled"))
        if "enabled" in wanted:
            wanted["enabled"] = bool_filter(wanted["enabled"], "enabled")
        items = [s for s in self._segments.values()
                 if all(getattr(s, k) == want for k, want in wanted.items())]
        page = select(items, sort_key=sort_key, sort_dir=sort_dir, sort_keys=_SEGMENT_SORT_KEYS,
                      limit=limit, marker=marker, ident=lambda s: s.uuid)
        return [s.record() for s in page]

    def get_segment(self, ref: str) -> dict[str, Any] | None:
        """One segment by uuid or name, or None."""
        try:
            return self._find_segment(ref, "segment").record()
        except CommandError:
            return None

    def list_hosts(self, segment: str | None = None, filters: Mapping[str, Any] | None = None,
                   sort_key: str = "created_at", sort_dir: str = "desc", limit: int | None = None,
                   marker: str | None = None) -> list[dict[str, Any]]:
        """Hosts of ``segment`` (uuid or name), or of all segments when None. Filters
        (Masakari's host list): ``name``, ``type``, ``control_attributes`` (exact match),
        ``on_maintenance``, ``reserved`` (booleans). ``marker``: a host uuid."""
        seg_uuid = None
        if segment is not None:
            found = self.get_segment(segment)
            if found is None:
                raise QueryError(f"no segment with uuid or name {segment!r}")
            seg_uuid = found["uuid"]
        wanted = check_filters(filters, ("name", "type", "control_attributes",
                                         "on_maintenance", "reserved"))
        for key in ("on_maintenance", "reserved"):
            if key in wanted:
                wanted[key] = bool_filter(wanted[key], key)
        items = [h for h in self._hosts.values()
                 if (seg_uuid is None or h.segment_uuid == seg_uuid)
                 and all(getattr(h, k) == want for k, want in wanted.items())]
        page = select(items, sort_key=sort_key, sort_dir=sort_dir, sort_keys=_HOST_SORT_KEYS,
                      limit=limit, marker=marker, ident=lambda h: h.uuid)
        return [h.record(self._segments[h.segment_uuid]) for h in page]

    def get_host(self, ref: str, segment: str | None = None) -> dict[str, Any] | None:
        """One host by uuid or name (within ``segment`` if given), or None."""
        try:
            host = self._find_host(ref, segment)
        except CommandError:
            return None
        return host.record(self._segments[host.segment_uuid])

    def list_notifications(self, filters: Mapping[str, Any] | None = None,
                           sort_key: str = "created_at", sort_dir: str = "desc",
                           limit: int | None = None,
                           marker: str | None = None) -> list[dict[str, Any]]:
        """Notifications, newest first by default. Filters (Masakari's notification list):
        ``status`` (one status or a list), ``source_host_uuid``, ``type``,
        ``generated-since`` (ISO 8601 string or datetime: generated_time at or after it),
        and ``failover_segment_uuid``, ``hostname`` (exact match). ``marker``: a
        notification_uuid. A status filter reads the per-status index, so the leader's
        "all new notifications" query does not scan the whole history."""
        wanted = check_filters(filters, ("status", "source_host_uuid", "type", "generated-since",
                                         "failover_segment_uuid", "hostname"))
        if "status" in wanted:
            statuses = status_filter(wanted.pop("status"), NOTIFICATION_STATUSES)
            items = sorted((self._notifications[u] for s in statuses for u in self._by_status[s]),
                           key=lambda n: n.ordinal)
        else:
            items = list(self._notifications.values())
        if "generated-since" in wanted:
            since = since_filter(wanted.pop("generated-since"))
            items = [n for n in items if n.generated_ts >= since]
        if wanted:
            items = [n for n in items if all(getattr(n, k) == want for k, want in wanted.items())]
        page = select(items, sort_key=sort_key, sort_dir=sort_dir,
                      sort_keys=_NOTIFICATION_SORT_KEYS, limit=limit, marker=marker,
                      ident=lambda n: n.notification_uuid)
        return [n.record() for n in page]

    def get_notification(self, notification_uuid: str) -> dict[str, Any] | None:
        """One notification (with its vmoves), or None."""
        try:
            return self._find_notification(notification_uuid).record()
        except CommandError:
            return None

    def counts_by_status(self) -> dict[str, int]:
        """Number of notifications in each status (every status present, maybe 0)."""
        return {status: len(uuids) for status, uuids in self._by_status.items()}

    def notification_count(self) -> int:
        return len(self._notifications)

    def get_lease(self, host: str) -> dict[str, Any] | None:
        """The latest committed renewal of ``host``'s lease, or None."""
        lease = self._leases.get(host)
        return None if lease is None else lease.record()

    def list_leases(self) -> list[dict[str, Any]]:
        return [lease.record() for lease in self._leases.values()]

    def incidents(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every open incident and each host's last closed one, by host name, a host's
        open incident before its closed one; ``status`` "open" or "closed" keeps one kind.
        Records carry ``notification_status``, the STOPPED notification's status."""
        books = {"open": (self._incidents,), "closed": (self._closed_incidents,),
                 None: (self._incidents, self._closed_incidents)}
        if status not in books:
            raise QueryError(f"status must be 'open', 'closed' or None (got {status!r})")
        items = [(name, rank, incident) for rank, book in enumerate(books[status])
                 for name, incident in book.items()]
        return [self._incident_record(incident) for _, _, incident in sorted(
            items, key=lambda item: (item[0], item[1]))]

    def incident(self, hostname: str) -> dict[str, Any] | None:
        """The host's open incident, else its last closed one, else None."""
        if not isinstance(hostname, str):
            raise QueryError(f"hostname must be a string (got {hostname!r})")
        found = self._incidents.get(hostname) or self._closed_incidents.get(hostname)
        return None if found is None else self._incident_record(found)

    def recovery_claim(self) -> dict[str, Any] | None:
        """The highest recovery claim ({term, node, claimed_at}), or None."""
        return None if self._claim is None else self._claim.record()

    def voters(self) -> dict[str, Any]:
        """The voter set: ``voters`` (each {node or None, raft_address, forward_address,
        public_key, failure_domain}), ``registry`` (node -> registration), ``change`` (the one
        in flight or None: {op, node, address, phase, term, started_at, auto, progress}),
        ``last_change`` (None or {op, node, address, result, reason, term, at, auto}),
        ``bootstrapped`` and ``term`` (of the last change). See consensus/voterset.py."""
        return self._voters.view()

    # ------------------------------------------------------------------ snapshots

    def to_snapshot(self) -> dict[str, Any]:
        """The whole replicated state as plain, msgpack-able values (see snapshot.py)."""
        return snapshot.dump(self._segments.values(), self._hosts.values(),
                             self._notifications.values(), self._leases.values(),
                             [*self._incidents.values(), *self._closed_incidents.values()],
                             self._claim, self._voters.dump())

    @classmethod
    def from_snapshot(cls, data: Any, duplicate_interval: float = 180.0) -> ClusterState:
        """Rebuild a state from `to_snapshot`'s output; raises snapshot.SnapshotFormatError
        for a snapshot this version can't read."""
        segments, hosts, notifications, leases, incidents, claim, voters = snapshot.load(data)
        state = cls(duplicate_interval)
        state._claim = claim
        state._voters = voters
        for segment in segments:
            state._segments[segment.uuid] = segment
            state._segment_names[segment.name] = segment.uuid
        for host in hosts:
            state._hosts[host.uuid] = host
            state._host_names[host.name] = host.uuid
        for notification in notifications:
            state._insert_notification(notification)
        state._leases = {lease.host: lease for lease in leases}
        for incident in incidents:
            if incident.notification_uuid not in state._notifications:
                raise snapshot.SnapshotFormatError(
                    f"snapshot is malformed: the incident of host {incident.hostname!r} names "
                    f"notification {incident.notification_uuid!r}, which it does not hold")
            book = state._incidents if incident.is_open else state._closed_incidents
            book[incident.hostname] = incident
        return state

    def canonical(self) -> dict[str, Any]:
        """What two replicas must agree on: equal canonical() means equal state."""
        return self.to_snapshot()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterState):
            return NotImplemented
        return self.canonical() == other.canonical()

    __hash__ = None  # type: ignore[assignment]  # mutable
