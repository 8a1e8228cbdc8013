"""recovery.workflows (what each notification needs, as Masakari's manager decides) and the
per-instance evacuation decisions of recovery.steps (Masakari's _evacuate_and_confirm)."""
from __future__ import annotations

import pytest

from recovery.evacuation import evacuation_plan
from recovery.steps import InstanceState, describe_state, parse_state
from recovery.workflows import (
    HOST_AUTO, HOST_METHODS, HOST_RESERVED, INSTANCE, PROCESS_STARTED, PROCESS_STOPPED,
    describe, is_true, plan,
)

SEGMENT = {"enabled": True, "recovery_method": "auto"}
UUID = "0b5e8c1e-0000-4000-8000-000000000001"


def note(kind: str, **payload: str) -> dict:
    return {"notification_uuid": UUID, "type": kind, "payload": payload}


def incident(status: str = "open", fenced: bool = False, uuid: str = UUID) -> dict:
    return {"notification_uuid": uuid, "status": status, "fenced": fenced}


def test_a_fenced_host_failure_runs_its_segments_method():
    for method, workflows in HOST_METHODS.items():
        got = plan(note("COMPUTE_HOST", event="STOPPED", host_status="NORMAL"),
                   {"enabled": True, "recovery_method": method})
        assert got.workflows == workflows and not got.wait and got.status is None
    assert HOST_METHODS["auto_priority"] == (HOST_AUTO, HOST_RESERVED)
    assert HOST_METHODS["rh_priority"] == (HOST_RESERVED, HOST_AUTO)


def test_a_host_failure_waits_for_its_incident_to_be_fenced():
    stopped = note("COMPUTE_HOST", event="STOPPED", host_status="UNKNOWN")
    assert plan(stopped, SEGMENT, incident()).wait
    assert plan(stopped, SEGMENT, incident(fenced=True)).workflows == (HOST_AUTO,)
    # closed without a fence (the host came back), another incident, none: never evacuate
    for other in (incident(status="closed"), incident(uuid="x"), None):
        got = plan(stopped, SEGMENT, other)
        assert got.status == "ignored" and "never known to be fenced" in got.message


def test_force_down_comes_before_disable_and_every_host_workflow_waits_for_the_fence():
    for workflow in (HOST_AUTO, HOST_RESERVED):
        assert workflow.steps[:3] == ("wait_fenced", "force_down", "disable_service")
    assert "wait_fenced > force_down > disable_service" in describe((HOST_AUTO,))


@pytest.mark.parametrize("kind,payload,status,workflows", [
    ("COMPUTE_HOST", {"event": "STARTED", "host_status": "NORMAL"}, "finished", ()),
    ("COMPUTE_HOST", {"event": "STARTED", "host_status": "UNKNOWN"}, "ignored", ()),
    ("COMPUTE_HOST", {"event": "STOPPED"}, "ignored", ()),
    ("VM", {"event": "LIFECYCLE", "vir_domain_event": "STOPPED_FAILED"}, None, (INSTANCE,)),
    ("VM", {"event": "QEMU_GUEST_AGENT_ERROR", "vir_domain_event": "STOPPED_FAILED"}, None,
     (INSTANCE,)),
    ("VM", {"event": "IO_ERROR", "vir_domain_event": "IO_ERROR_REPORT"}, None, (INSTANCE,)),
    ("VM", {"event": "LIFECYCLE", "vir_domain_event": "STOPPED_DESTROYED"}, "ignored", ()),
    ("VM", {"event": "REBOOT", "vir_domain_event": "UNKNOWN"}, "ignored", ()),
    ("PROCESS", {"event": "STOPPED", "process_name": "nova-compute"}, None, (PROCESS_STOPPED,)),
    ("PROCESS", {"event": "STARTED", "process_name": "nova-compute"}, None, (PROCESS_STARTED,)),
    ("PROCESS", {"event": "STOPPED", "process_name": "libvirtd"}, "finished", ()),
    ("PROCESS", {"event": "STARTED", "process_name": "libvirtd"}, "finished", ()),
])
def test_what_each_notification_needs(kind, payload, status, workflows):
    got = plan(note(kind, **payload), SEGMENT)
    assert (got.status, got.workflows) == (status, workflows)


def test_a_disabled_or_deleted_segment_ignores_everything():
    stopped = note("COMPUTE_HOST", event="STOPPED", host_status="NORMAL")
    assert plan(stopped, {"enabled": False, "recovery_method": "auto"}).message == (
        "Recovery aborted: the segment HA is disabled.")
    assert plan(stopped, None).status == "ignored"


@pytest.mark.parametrize("value,truth", [
    ("True", True), ("true", True), ("1", True), ("yes", True), ("on", True), ("Y", True),
    ("False", False), ("", False), (None, False), ("HA", False), (True, True)])
def test_ha_metadata_reads_like_masakari(value, truth):
    assert is_true(value) is truth


@pytest.mark.parametrize("vm,task,power,reset,expect,stop,restore", [
    ("active", None, 1, False, "active", False, False),
    ("stopped", None, 4, False, "stopped", False, False),
    ("error", None, 1, False, "active", True, True),
    ("active", "powering-off", 1, True, "active", False, False),
    ("stopped", "powering-on", 4, True, "active", True, False),
    ("resized", None, 1, True, "active", False, False),
    ("resized", None, 4, True, "active", True, False),
    ("paused", None, 3, True, "active", True, False),
])
def test_evacuation_plan_is_masakaris(vm, task, power, reset, expect, stop, restore):
    got = evacuation_plan(InstanceState(vm, task, power))
    assert (got.reset_first, got.expect, got.stop_after, got.restore_error) == (
        reset, expect, stop, restore)


def test_instance_state_survives_the_intent_detail():
    state = InstanceState("stopped", None, 4)
    assert parse_state(f"from {describe_state(state)}; to cmp2") == state
    assert parse_state("vm_state=active task_state=rebuilding power_state=-") == (
        InstanceState("active", "rebuilding", None))
    assert parse_state("disable with reason 'x'") is None
