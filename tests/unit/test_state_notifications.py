"""ClusterState: notification submit (maintenance, duplicates, idempotency), status
transitions, vmoves, and every refused notification argument."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest

from consensus.model import NOTIFICATION_STATUSES, NOTIFICATION_TRANSITIONS
from test_state_support import (
    AT, GEN, cluster, host_create, ok, refused, submit, transition, uid, vmove,
)


def _walk_to(state, label, status):
    """Drive notification ``label`` (status new) to ``status`` along legal transitions."""
    paths = {"new": [], "running": ["running"], "error": ["running", "error"],
             "failed": ["failed"], "ignored": ["ignored"], "finished": ["running", "finished"]}
    for step in paths[status]:
        ok(state, transition(label, step))


def test_submit_stores_a_new_notification():
    state = cluster()
    record = ok(state, submit("a", generated_time="2024-05-01T12:00:00+02:00"))
    assert record["status"] == "new" and record["message"] is None
    assert record["source_host_uuid"] == uid("host/node1")
    assert record["failover_segment_uuid"] == uid("segment/seg1")
    assert record["generated_time"] == "2024-05-01T10:00:00.000000+00:00"
    assert record["source_node"] == "node2" and record["vmoves"] == []
    assert state.counts_by_status()["new"] == 1 and state.notification_count() == 1


@pytest.mark.parametrize("text,normalised", [
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.000000+00:00"),
    ("2024-05-01T10:00:00", "2024-05-01T10:00:00.000000+00:00"),  # naive is UTC
    ("2024-05-01T10:00:00.123456", "2024-05-01T10:00:00.123456+00:00"),
    ("2024-05-01 10:00:00.5+00:00", "2024-05-01T10:00:00.500000+00:00"),
    ("2024-05-01T05:00:00-05:00", "2024-05-01T10:00:00.000000+00:00"),
    ("20240501T100000Z", "2024-05-01T10:00:00.000000+00:00"),
    ("2024-05-01", "2024-05-01T00:00:00.000000+00:00"),
])
def test_generated_time_formats(text, normalised):
    state = cluster()
    assert ok(state, submit("a", generated_time=text))["generated_time"] == normalised


def test_resubmitting_a_known_uuid_returns_the_stored_record_unchanged():
    state = cluster()
    first = ok(state, submit("a"))
    again = ok(state, submit("a", type="PROCESS", hostname="elsewhere", payload={"x": 1},
                             at=AT + 99))
    assert again == first
    assert state.notification_count() == 1
    # the same uuid spelled in upper case is the same notification
    assert ok(state, submit("a", notification_uuid=uid("n/a").upper())) == first


def test_host_on_maintenance_gives_ignored():
    state = cluster()
    ok(state, host_create("node2", on_maintenance=True))
    record = ok(state, submit("a", hostname="node2"))
    assert record["status"] == "ignored" and "maintenance" in record["message"]
    # an ignored notification neither blocks the segment nor counts as a duplicate source
    ok(state, {"op": "host.update", "at": AT, "host": "node2", "on_maintenance": False})
    assert ok(state, submit("b", hostname="node2"))["status"] == "new"


def test_unknown_host_is_refused_as_masakari_does():
    refused(cluster(), submit("a", hostname="ghost"), "no host named 'ghost'")


@pytest.mark.parametrize("offset,duplicate", [
    (0, True), (179.999, True), (180, True), (180.001, False), (-500, True), (3600, False),
])
def test_duplicate_window(offset, duplicate):
    """Masakari's check: same type, host, payload with generated_time >= this one - 180 s
    (so a later-generated earlier submission also counts)."""
    state = cluster()
    ok(state, submit("a"))
    when = datetime.fromisoformat(GEN) + timedelta(seconds=offset)
    record = ok(state, submit("b", generated_time=when.isoformat()))
    assert (record["status"] == "ignored") is duplicate
    if duplicate:
        assert record["message"].startswith(f"duplicate of notification {uid('n/a')}")


def test_duplicate_interval_comes_from_the_constructor():
    state = cluster(duplicate_interval=10.0)
    ok(state, submit("a"))
    assert ok(state, submit("b", generated_time="2024-05-01T10:00:11Z"))["status"] == "new"
    assert ok(state, submit("c", generated_time="2024-05-01T10:00:20Z"))["status"] == "ignored"


@pytest.mark.parametrize("change", [
    {"type": "PROCESS", "payload": {"process_name": "nova-compute", "event": "STOPPED"}},
    {"hostname": "node2"},
    {"payload": {"event": "STOPPED", "host_status": "UNKNOWN", "cluster_status": "OFFLINE"}},
    {"payload": {"event": "STOPPED"}},
])
def test_not_a_duplicate_when_type_host_or_payload_differ(change):
    state = cluster("node1", "node2")
    ok(state, submit("a"))
    assert ok(state, submit("b", **change))["status"] == "new"


@pytest.mark.parametrize("status", NOTIFICATION_STATUSES)
def test_duplicate_check_covers_every_status_of_an_accepted_notification(status):
    """Masakari's duplicate query has no status filter: a finished notification still
    suppresses the same event inside the window."""
    state = cluster()
    ok(state, submit("a"))
    _walk_to(state, "a", status)
    assert ok(state, submit("b"))["status"] == "ignored"


def test_ignored_duplicates_do_not_extend_the_window():
    """Masakari stores nothing it refuses, so a stream of repeats can't postpone a real
    event forever."""
    state = cluster()
    ok(state, submit("a", generated_time="2024-05-01T10:00:00Z"))
    assert ok(state, submit("b", generated_time="2024-05-01T10:02:00Z"))["status"] == "ignored"
    assert ok(state, submit("c", generated_time="2024-05-01T10:03:01Z"))["status"] == "new"


def test_payload_order_does_not_matter_for_duplicates():
    state = cluster()
    ok(state, submit("a", payload={"event": "STOPPED", "host_status": "NORMAL"}))
    assert ok(state, submit("b", payload={"host_status": "NORMAL", "event": "STOPPED"}))[
        "status"] == "ignored"


ALL_PAIRS = list(itertools.product(NOTIFICATION_STATUSES, NOTIFICATION_STATUSES))


@pytest.mark.parametrize("start,target", ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_every_transition(start, target):
    state = cluster()
    ok(state, submit("a"))
    _walk_to(state, "a", start)
    command = transition("a", target, message="why")
    if target in NOTIFICATION_TRANSITIONS[start]:
        record = ok(state, command)
        assert record["status"] == target and record["message"] == "why"
        assert record["updated_at"] == "2024-05-01T10:00:01.000000+00:00"
        counts = state.counts_by_status()
        assert counts[target] == 1 and sum(counts.values()) == 1
    else:
        refused(state, command, f"can't go from {start} to {target}")


def test_transition_table_matches_masakari_engine():
    assert NOTIFICATION_TRANSITIONS == {
        "new": {"running", "ignored", "failed"},
        "running": {"finished", "error", "ignored", "failed"},
        "error": {"running", "failed"},
        "failed": set(), "ignored": set(), "finished": set(),
    }


def test_transition_without_message_keeps_the_old_one():
    state = cluster()
    ok(state, submit("a"))
    ok(state, transition("a", "running", message="started"))
    ok(state, transition("a", "finished"))
    assert state.get_notification(uid("n/a"))["message"] == "started"


def test_vmove_lifecycle():
    state = cluster()
    ok(state, submit("a"))
    ok(state, transition("a", "running"))
    rec = ok(state, vmove("a", "vm1", "pending", instance_name="web", source_host="node1"))
    (vm,) = rec["vmoves"]
    assert vm["status"] == "pending" and vm["instance_name"] == "web"
    assert vm["source_host"] == "node1" and vm["type"] == "evacuation"
    rec = ok(state, vmove("a", "vm1", "ongoing"))
    assert rec["vmoves"][0]["start_time"] == "2024-05-01T10:00:02.000000+00:00"
    rec = ok(state, vmove("a", "vm1", "succeeded", dest_host="node3"))
    vm = rec["vmoves"][0]
    assert (vm["status"], vm["dest_host"], vm["end_time"]) == (
        "succeeded", "node3", "2024-05-01T10:00:02.000000+00:00")
    refused(state, vmove("a", "vm1", "pending"), "can't go from succeeded to pending")
    ok(state, vmove("a", "vm2", "pending"))
    ok(state, vmove("a", "vm2", "failed", message="timeout"))
    rec = ok(state, vmove("a", "vm2", "pending"))  # retried
    assert rec["vmoves"][1]["end_time"] is None and rec["vmoves"][1]["message"] == "timeout"
    assert [v["instance_uuid"] for v in state.get_notification(uid("n/a"))["vmoves"]] == [
        uid("vm/vm1"), uid("vm/vm2")]


@pytest.mark.parametrize("status,legal", [
    ("pending", True), ("ignored", True), ("ongoing", False), ("failed", False),
    ("succeeded", False),
])
def test_vmove_initial_status(status, legal):
    state = cluster()
    ok(state, submit("a"))
    ok(state, transition("a", "running"))
    if legal:
        ok(state, vmove("a", "vm1", status))
    else:
        refused(state, vmove("a", "vm1", status), "a new vmove must start as")


def test_vmove_needs_a_running_compute_host_notification():
    state = cluster()
    ok(state, submit("a"))
    refused(state, vmove("a", "vm1", "pending"), "running COMPUTE_HOST")
    ok(state, submit("p", type="PROCESS", payload={"process_name": "libvirtd", "event": "STOPPED"}))
    ok(state, transition("p", "running"))
    refused(state, vmove("p", "vm1", "pending"), "running COMPUTE_HOST")
    refused(state, vmove("zzz", "vm1", "pending"), "no notification")


_VM_PAYLOAD = {"instance_uuid": uid("vm"), "vir_domain_event": "STOPPED_FAILED",
               "event": "LIFECYCLE"}
_PROC_PAYLOAD = {"process_name": "nova-compute", "event": "STOPPED"}

NOTIFICATION_REJECTED = [
    (submit("x", notification_uuid="nope"), ["'notification_uuid'"]),
    (submit("x", type="HOST"), ["'type'", "COMPUTE_HOST, PROCESS, VM"]),
    (submit("x", type=None), ["'type'"]),
    (submit("x", hostname="node 1"), ["'hostname'"]),
    (submit("x", hostname=""), ["'hostname'"]),
    (submit("x", generated_time="yesterday"), ["'generated_time'", "ISO 8601"]),
    (submit("x", generated_time=AT), ["'generated_time'"]),
    (submit("x", generated_time="2024-13-01T00:00:00"), ["'generated_time'"]),
    (submit("x", payload="STOPPED"), ["'payload'", "object"]),
    (submit("x", payload={}), ["'payload'", "'event'"]),
    (submit("x", payload={"event": "DOWN"}), ["'event'", "STARTED, STOPPED"]),
    (submit("x", payload={"event": "STOPPED", "host_status": "BAD"}), ["'host_status'"]),
    (submit("x", payload={"event": "STOPPED", "cluster_status": "on"}), ["'cluster_status'"]),
    (submit("x", payload={"event": "STOPPED", "extra": "1"}), ["may not contain 'extra'"]),
    (submit("x", payload={"event": "STOPPED", "bad/key": "1"}), ["invalid key"]),
    (submit("x", payload={"event": "STOPPED", 5: "1"}), ["invalid key"]),
    (submit("x", payload={"event": 1}), ["'event'"]),
    (submit("x", type="PROCESS", payload={"event": "STOPPED"}), ["'process_name'"]),
    (submit("x", type="PROCESS", payload=dict(_PROC_PAYLOAD, process_name="")),
     ["'process_name'"]),
    (submit("x", type="PROCESS", payload=dict(_PROC_PAYLOAD, process_name="p" * 256)),
     ["'process_name'"]),
    (submit("x", type="PROCESS", payload=dict(_PROC_PAYLOAD, event="CRASHED")), ["'event'"]),
    (submit("x", type="VM", payload=dict(_VM_PAYLOAD, instance_uuid="vm1")),
     ["payload.instance_uuid"]),
    (submit("x", type="VM", payload={"instance_uuid": uid("vm"), "event": "LIFECYCLE"}),
     ["'vir_domain_event'"]),
    (submit("x", type="VM", payload=dict(_VM_PAYLOAD, event="")), ["'event'"]),
    (submit("x", type="VM", payload=_PROC_PAYLOAD), ["may not contain"]),
    (submit("x", source_node=""), ["'source_node'"]),
    (submit("x", source_node=None), ["'source_node'"]),
    (submit("x", status="new"), ["unexpected argument 'status'"]),
    ({k: v for k, v in submit("x").items() if k != "payload"}, ["missing argument 'payload'"]),
    ({k: v for k, v in submit("x").items() if k != "source_node"}, ["'source_node'"]),
    (transition("a", "done"), ["'status'"]),
    (transition("a", "running", message=3), ["'message'"]),
    (transition("zzz", "running"), ["no notification"]),
    (dict(transition("a", "running"), notification_uuid=5), ["'notification_uuid'"]),
    (dict(transition("a", "running"), extra=1), ["unexpected argument 'extra'"]),
    (vmove("a", "vm1", "moving"), ["'status'"]),
    (dict(vmove("a", "vm1", "pending"), instance_uuid="vm1"), ["'instance_uuid'"]),
    (vmove("a", "vm1", "pending", dest_host=7), ["'dest_host'"]),
    (vmove("a", "vm1", "pending", start_time="now"), ["unexpected argument 'start_time'"]),
]


@pytest.mark.parametrize("command,fragments", NOTIFICATION_REJECTED,
                         ids=[f"{c['op']}-{i}" for i, (c, _) in enumerate(NOTIFICATION_REJECTED)])
def test_rejected_notification_argument(command, fragments):
    state = cluster()
    ok(state, submit("a"))
    ok(state, transition("a", "running"))
    error = refused(state, command, *fragments)
    assert error.startswith(command["op"] + ": ")


def test_valid_payloads_of_each_type():
    state = cluster()
    ok(state, submit("p", type="PROCESS", payload=_PROC_PAYLOAD))
    ok(state, submit("v", type="VM", payload=_VM_PAYLOAD))
    ok(state, submit("h", payload={"event": "STARTED"}))
    assert state.counts_by_status()["new"] == 3


def test_submit_times_use_the_command():
    state = cluster()
    record = ok(state, submit("a", at=AT + 0.25, generated_time=GEN))
    assert record["created_at"] == "2024-05-01T10:00:00.250000+00:00"
