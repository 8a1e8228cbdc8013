"""Masakari's recovery workflows as data: which named steps recover which notification.

Why data: an operator (and a test) can read what a recovery does without reading code, a
notification's recorded steps (``recovery_steps``) use these names, and the engine resumes a
workflow after a leader change by walking the same list and skipping what the log shows done.

Sources (copied as behaviour, not code): masakari/engine/manager.py (which notifications are
recovered, ignored or finished), masakari/engine/drivers/taskflow/driver.py (the four
host-failure recovery methods and their fall-backs), host_failure.py, instance_failure.py,
process_failure.py (the tasks), masakari/engine/instance_events.py (the VM events acted on).

Pure: no I/O. ``plan(notification, segment)`` says what to do with a notification; the step
code lives in recovery/steps.py, the driving in recovery/engine.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# --- step names (what ``recovery_steps`` shows) ----------------------------------------------

# Host failure. ``wait_fenced`` replaces Masakari's 180 s sleep after disabling the service:
# the host is known to be powered off (lease expired or a fence driver confirmed) before
# anything else happens, so its service may be forced down at once.
WAIT_FENCED = "wait_fenced"
FORCE_DOWN = "force_down"            # before disable_service: the other order blocks 60 s
DISABLE_SERVICE = "disable_service"
PREPARE_INSTANCES = "prepare_instances"
ENABLE_RESERVED_HOST = "enable_reserved_host"  # reserved_host: aggregate, enable, unreserve
EVACUATE_INSTANCES = "evacuate_instances"
# Per instance, keyed by the instance uuid, inside evacuate_instances:
RESET_STATE = "reset_state"          # to error first, when Nova would refuse the evacuation
EVACUATE = "evacuate"
STOP = "stop"                        # after evacuation, when the instance was not active
RESTORE_ERROR = "restore_error"      # back to error, when it was in error before
ADD_TO_AGGREGATE = "add_to_aggregate"  # per aggregate, inside enable_reserved_host
ENABLE_SERVICE = "enable_service"    # inside enable_reserved_host, and process STARTED

# Instance failure.
STOP_INSTANCE = "stop_instance"
START_INSTANCE = "start_instance"
CONFIRM_ACTIVE = "confirm_active"


@dataclass(frozen=True)
class Workflow:
    """A named list of steps run in order; ``target`` says whether evacuations go to a
    reserved host (``reserved_host``) or wherever Nova's scheduler puts them (``auto``)."""

    name: str
    steps: tuple[str, ...]
    target: str | None = None


HOST_AUTO = Workflow("host_auto", (WAIT_FENCED, FORCE_DOWN, DISABLE_SERVICE, PREPARE_INSTANCES,
                                   EVACUATE_INSTANCES), target="auto")
# Masakari's reserved-host flow retries prepare + evacuate once per reserved host
# (taskflow ParameterizedForEach over reserved_host_list); the engine does the same with
# ENABLE_RESERVED_HOST + EVACUATE_INSTANCES.
HOST_RESERVED = Workflow("host_reserved_host",
                         (WAIT_FENCED, FORCE_DOWN, DISABLE_SERVICE, PREPARE_INSTANCES,
                          ENABLE_RESERVED_HOST, EVACUATE_INSTANCES), target="reserved_host")
INSTANCE = Workflow("instance", (STOP_INSTANCE, START_INSTANCE, CONFIRM_ACTIVE))
PROCESS_STOPPED = Workflow("process_stopped", (DISABLE_SERVICE,))
PROCESS_STARTED = Workflow("process_started", (ENABLE_SERVICE,))

# Recovery method of the segment -> workflows tried in order: the next one runs only when
# the previous one failed (not when it ended early because nothing needed recovering).
# masakari/engine/drivers/taskflow/driver.py: _execute_auto_priority_workflow and
# _execute_rh_priority_workflow.
HOST_METHODS: dict[str, tuple[Workflow, ...]] = {
    "auto": (HOST_AUTO,),
    "reserved_host": (HOST_RESERVED,),
    "auto_priority": (HOST_AUTO, HOST_RESERVED),
    "rh_priority": (HOST_RESERVED, HOST_AUTO),
}

# The VM notifications Masakari recovers (masakari/engine/instance_events.py): payload
# ``event`` -> the ``vir_domain_event`` values acted on. Any other VM notification is ignored.
INSTANCE_EVENTS: dict[str, tuple[str, ...]] = {
    "LIFECYCLE": ("STOPPED_FAILED",),
    "QEMU_GUEST_AGENT_ERROR": ("STOPPED_FAILED",),
    "IO_ERROR": ("IO_ERROR_REPORT",),
}

# Masakari's process failure flow exists only for this process (driver.py).
COMPUTE_PROCESS = "nova-compute"

# strutils.bool_from_string's true values, as Masakari reads the HA metadata key.
_TRUE = frozenset({"1", "t", "true", "on", "y", "yes"})


def is_true(value: Any) -> bool:
    """Masakari's ``strutils.bool_from_string`` (non-strict): "True", "yes", "1", ..."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in _TRUE


@dataclass(frozen=True)
class Plan:
    """What to do with a notification: ``workflows`` to run (in fall-back order), or an
    immediate end ``status`` (finished | ignored) with ``message``, or ``wait`` (a host
    failure not yet fenced: nothing may happen yet)."""

    workflows: tuple[Workflow, ...] = ()
    status: str | None = None
    message: str | None = None
    wait: bool = False


def plan(notification: Mapping[str, Any], segment: Mapping[str, Any] | None,
         incident: Mapping[str, Any] | None = None) -> Plan:
    """Decide, as Masakari's manager does, what a notification in status ``new`` needs.

    ``segment`` is the record of the notification's failover segment (None: deleted);
    ``incident`` the host's incident record from the ``incident`` query, if any. A
    COMPUTE_HOST STOPPED is recovered only once fenced: payload ``host_status`` NORMAL
    (host.fenced sets it) or its incident says ``fenced``. While its incident is open and
    not fenced, the plan is to wait; with no open incident of its own and host_status not
    NORMAL it is ignored, as Masakari ignores it (never evacuate a host that may run).
    """
    uuid = notification["notification_uuid"]
    payload = notification["payload"]
    kind = notification["type"]
    if segment is None:
        return Plan(status="ignored", message="Recovery aborted: the failover segment no "
                                              "longer exists.")
    if not segment["enabled"]:
        # masakari/engine/manager.py process_notification
        return Plan(status="ignored", message="Recovery aborted: the segment HA is disabled.")
    event = str(payload.get("event", "")).upper()
    if kind == "COMPUTE_HOST":
        if event == "STOPPED":
            own = incident is not None and incident.get("notification_uuid") == uuid
            if payload.get("host_status", "").upper() == "NORMAL" or (own and incident["fenced"]):
                return Plan(workflows=HOST_METHODS[segment["recovery_method"]])
            if own and incident["status"] == "open":
                return Plan(wait=True)
            return Plan(status="ignored", message=(
                f"host_status is {payload.get('host_status') or 'not given'}: the host was "
                f"never known to be fenced, so its instances must not be evacuated"))
        if event == "STARTED":
            if payload.get("host_status", "").upper() != "NORMAL":
                status = payload.get("host_status") or "not given"
                return Plan(status="ignored", message=f"host_status is {status}")
            return Plan(status="finished", message="host is back; nothing to recover")
        return Plan(status="ignored", message=f"invalid event {payload.get('event')!r}")
    if kind == "VM":
        allowed = INSTANCE_EVENTS.get(str(payload.get("event")), ())
        if payload.get("vir_domain_event") not in allowed:
            return Plan(status="ignored", message=(
                f"event {payload.get('event')}/{payload.get('vir_domain_event')} is not one "
                f"recovery acts on"))
        return Plan(workflows=(INSTANCE,))
    if kind == "PROCESS":
        process = payload.get("process_name")
        if event == "STOPPED":
            if process != COMPUTE_PROCESS:
                return Plan(status="finished", message=f"no recovery for process {process}")
            return Plan(workflows=(PROCESS_STOPPED,))
        if event == "STARTED":
            if process != COMPUTE_PROCESS:
                return Plan(status="finished", message=f"process {process} started")
            return Plan(workflows=(PROCESS_STARTED,))
        return Plan(status="ignored", message=f"invalid event {payload.get('event')!r}")
    return Plan(status="ignored", message=f"unknown notification type {kind!r}")


def describe(workflows: tuple[Workflow, ...]) -> str:
    """One line for logs: ``host_auto (wait_fenced > force_down > ...), then ...``."""
    return ", then ".join(f"{w.name} ({' > '.join(w.steps)})" for w in workflows)
