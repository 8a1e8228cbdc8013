"""ClusterState host incidents: host.down / host.fenced / host.up and the incident queries.

The property that matters: exactly one STOPPED notification per failure, whatever the
resends, leader changes and duplicate proposals, and fencing evidence never applied to an
incident it was not about.
"""
from __future__ import annotations

import pytest

from consensus.model import HOST_DOWN_PAYLOAD, HOST_UP_PAYLOAD
from consensus.queries import QueryError
from consensus.state import ClusterState
from test_state_support import (
    AT, cluster, host_create, host_down, host_fenced, host_up, ok, refused, submit, transition,
    uid,
)


def _stopped(state: ClusterState, hostname: str = "node1") -> list[dict]:
    return [n for n in state.list_notifications({"hostname": hostname}, sort_dir="asc")
            if n["payload"]["event"] == "STOPPED"]


def test_host_down_opens_an_incident_with_masakaris_stopped_notification():
    state = cluster()
    incident = ok(state, host_down("d"))
    assert incident == {
        "hostname": "node1", "status": "open", "host_uuid": uid("host/node1"),
        "notification_uuid": uid("n/d"), "source_node": "node2",
        "opened_at": "2024-05-01T10:00:00.000000+00:00", "fenced": False, "fence_method": None,
        "fence_detail": None, "fenced_at": None, "closed_at": None,
        "up_notification_uuid": None, "notification_status": "new"}
    note = state.get_notification(uid("n/d"))
    assert note["type"] == "COMPUTE_HOST" and note["hostname"] == "node1"
    assert note["payload"] == HOST_DOWN_PAYLOAD == {
        "event": "STOPPED", "cluster_status": "OFFLINE", "host_status": "UNKNOWN"}
    assert note["status"] == "new" and note["source_node"] == "node2"
    assert note["failover_segment_uuid"] == uid("segment/seg1")


def test_host_down_for_a_host_with_an_open_incident_changes_nothing():
    """Resends, other leaders' decisions (other uuids, other times) all land on the one
    open incident: exactly one STOPPED notification per failure."""
    state = cluster()
    first = ok(state, host_down("d"))
    before = state.canonical()
    for command in (host_down("d"), host_down("other", at=AT + 5, source_node="node3"),
                    host_down("third", generated_time="2024-05-01T11:00:00Z")):
        assert ok(state, command) == first
    assert state.canonical() == before
    assert len(_stopped(state)) == 1


def test_host_on_maintenance_gets_an_ignored_stopped_and_an_open_incident():
    state = cluster()
    ok(state, host_create("node2", on_maintenance=True))
    incident = ok(state, host_down("d", hostname="node2"))
    assert incident["status"] == "open" and incident["notification_status"] == "ignored"
    note = state.get_notification(uid("n/d"))
    assert note["status"] == "ignored" and "maintenance" in note["message"]
    ok(state, host_down("again", hostname="node2"))  # no second notification
    assert len(_stopped(state, "node2")) == 1


def test_unregistered_host_is_refused_naming_it():
    refused(cluster(), host_down("d", hostname="ghost"), "host.down:",
            "no host named 'ghost' is registered")


def test_host_down_with_a_uuid_another_notification_uses_is_refused():
    state = cluster()
    ok(state, submit("taken"))
    refused(state, host_down("taken"), "already used by another notification")


@pytest.mark.parametrize("change,fragment", [
    ({"hostname": "bad name"}, "'hostname'"),
    ({"notification_uuid": "nope"}, "'notification_uuid' must be a UUID"),
    ({"generated_time": "yesterday"}, "'generated_time'"),
    ({"source_node": ""}, "'source_node'"),
    ({"previous": "nope"}, "'previous' must be a UUID"),
    ({"payload": {}}, "unexpected argument 'payload'"),
])
def test_host_down_arguments_are_checked(change, fragment):
    refused(cluster(), {**host_down("d"), **change}, fragment)


def test_host_fenced_sets_host_status_normal_once():
    state = cluster()
    ok(state, host_down("d"))
    fenced = ok(state, host_fenced(method="ipmi", detail="Chassis Power is off",
                                   incident=uid("n/d")))
    assert fenced["fenced"] and fenced["fence_method"] == "ipmi"
    assert fenced["fence_detail"] == "Chassis Power is off"
    assert fenced["fenced_at"] == "2024-05-01T10:00:20.000000+00:00"
    note = state.get_notification(uid("n/d"))
    assert note["payload"] == {"event": "STOPPED", "cluster_status": "OFFLINE",
                               "host_status": "NORMAL"}
    assert note["updated_at"] == fenced["fenced_at"]
    before = state.canonical()
    # idempotent: another method, another leader, later: the first evidence stands
    assert ok(state, host_fenced(method="lease", at=AT + 99)) == fenced
    assert state.canonical() == before


def test_host_fenced_without_the_incident_it_is_about_changes_nothing():
    state = cluster()
    before = state.canonical()
    assert ok(state, host_fenced()) is None  # no incident at all
    ok(state, host_down("d"))
    before = state.canonical()
    # evidence about an earlier failure (another incident) must not fence this one
    assert ok(state, host_fenced(incident=uid("n/earlier"))) is None
    assert state.canonical() == before
    assert not state.incident("node1")["fenced"]


@pytest.mark.parametrize("change,fragment", [
    ({"method": "stonith"}, "'method' must be one of lease, ipmi, redfish"),
    ({"detail": 5}, "'detail' must be a string or null"),
    ({"detail": "x" * 1001}, "'detail' must be at most 1000 characters"),
    ({"incident": 7}, "'incident' must be a UUID"),
])
def test_host_fenced_arguments_are_checked(change, fragment):
    state = cluster()
    ok(state, host_down("d"))
    refused(state, {**host_fenced(), **change}, fragment)


def test_host_up_closes_the_incident_with_a_started_notification():
    state = cluster()
    ok(state, host_down("d"))
    closed = ok(state, host_up("u", incident=uid("n/d")))
    assert closed["status"] == "closed"
    assert closed["closed_at"] == "2024-05-01T10:01:00.000000+00:00"
    assert closed["up_notification_uuid"] == uid("n/u")
    note = state.get_notification(uid("n/u"))
    assert note["payload"] == HOST_UP_PAYLOAD == {
        "event": "STARTED", "cluster_status": "ONLINE", "host_status": "NORMAL"}
    assert note["status"] == "new" and note["source_node"] == "node3"
    assert state.incidents(status="open") == []


def test_host_up_without_an_open_incident_is_a_no_op():
    state = cluster()
    before = state.canonical()
    assert ok(state, host_up("u")) is None
    assert state.canonical() == before and state.notification_count() == 0


def test_host_up_resent_returns_the_closed_incident_and_never_closes_a_later_one():
    state = cluster()
    ok(state, host_down("d1"))
    closed = ok(state, host_up("u1"))
    assert ok(state, host_up("u1")) == closed  # a resend after its commit
    ok(state, host_down("d2", previous=uid("n/d1"), at=AT + 100))
    before = state.canonical()
    assert ok(state, host_up("u1", at=AT + 101)) == closed  # late resend: its own incident
    assert ok(state, host_up("u9", incident=uid("n/d1"))) is None  # meant the first one
    assert state.canonical() == before
    assert state.incident("node1")["status"] == "open"


def test_host_up_on_maintenance_stores_an_ignored_started():
    """Masakari's engine puts a recovered host on maintenance; its API then refuses the
    host's STARTED (409). hagent stores it ignored, and the incident closes."""
    state = cluster()
    ok(state, host_down("d"))
    ok(state, {"op": "host.update", "at": AT, "host": "node1", "on_maintenance": True})
    assert ok(state, host_up("u"))["status"] == "closed"
    assert state.get_notification(uid("n/u"))["status"] == "ignored"


def test_previous_turns_a_delayed_host_down_into_a_no_op():
    """A host.down proposed during the first failure but committed after its host.up
    (a stale leader's resend) must not open a second incident for a live host."""
    state = cluster()
    ok(state, host_down("d1", previous=None))
    ok(state, host_up("u1"))
    before = state.canonical()
    assert ok(state, host_down("late", previous=None, at=AT + 70)) is None
    assert state.canonical() == before
    # a proposer that saw the first incident closed opens the next one
    assert ok(state, host_down("d2", previous=uid("n/d1"), at=AT + 80))["status"] == "open"
    # while d2 is open, any host.down (d1's resend included) returns d2
    assert ok(state, host_down("d1"))["notification_uuid"] == uid("n/d2")


def test_a_closed_incidents_resend_returns_it():
    state = cluster()
    ok(state, host_down("d1"))
    closed = ok(state, host_up("u1"))
    before = state.canonical()
    assert ok(state, host_down("d1", at=AT + 90)) == closed
    assert state.canonical() == before


def test_a_second_failure_within_the_duplicate_window_is_a_new_failure():
    """Masakari's duplicate window would ignore it; an incident is a new failure."""
    state = cluster()
    ok(state, host_down("d1"))
    ok(state, host_up("u1"))
    ok(state, host_down("d2", at=AT + 61, generated_time="2024-05-01T10:01:01Z"))
    assert [n["status"] for n in _stopped(state)] == ["new", "new"]


def test_only_the_last_closed_incident_is_kept():
    state = cluster("node1", "node2")
    for i in range(5):
        ok(state, host_down(f"d{i}", at=AT + 100 * i))
        ok(state, host_up(f"u{i}", at=AT + 100 * i + 50))
    ok(state, host_down("other", hostname="node2"))
    assert [(i["hostname"], i["status"], i["notification_uuid"]) for i in state.incidents()] == [
        ("node1", "closed", uid("n/d4")), ("node2", "open", uid("n/other"))]
    assert len(_stopped(state)) == 5  # the notifications themselves stay


def test_fencing_keeps_duplicate_detection_equal_to_a_restored_replica():
    """Fencing changes a stored payload; Masakari's duplicate check compares payloads, so
    the index must move with it, and a replica restored from a snapshot must agree."""
    state = cluster(duplicate_interval=180)
    ok(state, host_down("d"))
    ok(state, host_fenced())
    restored = ClusterState.from_snapshot(state.to_snapshot(), duplicate_interval=180)
    fenced_payload = {**HOST_DOWN_PAYLOAD, "host_status": "NORMAL"}
    for s in (state, restored):
        # a monitor reporting the same fenced failure is a duplicate of the incident's ...
        assert ok(s, submit("mon1", payload=fenced_payload, at=AT + 30))["status"] == "ignored"
        # ... but the UNKNOWN form no longer is (no accepted notification carries it now)
        assert ok(s, submit("mon2", payload=dict(HOST_DOWN_PAYLOAD), at=AT + 31))["status"] == "new"
    assert restored == state


def test_fencing_a_notification_that_was_not_its_keys_latest_leaves_that_latest():
    state = cluster()
    ok(state, submit("older", payload=dict(HOST_DOWN_PAYLOAD),
                     generated_time="2024-05-01T10:00:30Z"))  # generated later: stays latest
    ok(state, host_down("d"))
    ok(state, host_fenced())
    restored = ClusterState.from_snapshot(state.to_snapshot())
    for s in (state, restored):
        record = ok(s, submit("mon", payload=dict(HOST_DOWN_PAYLOAD), at=AT + 40))
        assert record["message"] == f"duplicate of notification {uid('n/older')} (within 180 s)"


def test_deleting_a_host_forgets_its_incidents_and_renaming_keeps_them():
    state = cluster("node1", "node2")
    ok(state, host_create("node3", on_maintenance=True))
    ok(state, host_down("d3", hostname="node3"))  # ignored STOPPED: segment not in recovery
    ok(state, host_down("d2", hostname="node2"))
    ok(state, transition("d2", "ignored"))  # the segment is no longer under recovery
    ok(state, {"op": "host.delete", "at": AT, "host": "node3"})
    assert state.incident("node3") is None
    ok(state, {"op": "host.update", "at": AT, "host": "node2", "name": "node2b"})
    assert state.incident("node2") is None
    assert state.incident("node2b")["hostname"] == "node2b"
    assert ok(state, host_up("u", hostname="node2b"))["status"] == "closed"
    restored = ClusterState.from_snapshot(state.to_snapshot())
    assert restored == state


def test_incident_queries():
    state = cluster("node1", "node2")
    ok(state, host_down("d1"))
    ok(state, host_up("u1"))
    ok(state, host_down("d1b", previous=uid("n/d1"), at=AT + 100))
    ok(state, host_down("d2", hostname="node2"))
    assert [(i["hostname"], i["status"]) for i in state.incidents()] == [
        ("node1", "open"), ("node1", "closed"), ("node2", "open")]
    assert [i["notification_uuid"] for i in state.incidents(status="closed")] == [uid("n/d1")]
    assert len(state.incidents(status="open")) == 2
    assert state.incident("node1")["notification_uuid"] == uid("n/d1b")  # open one first
    assert state.incident("ghost") is None
    with pytest.raises(QueryError, match="status must be 'open', 'closed'"):
        state.incidents(status="all")
    with pytest.raises(QueryError, match="hostname must be a string"):
        state.incident(None)


def test_exactly_one_stopped_per_failure_under_duplicate_proposals_from_two_leaders():
    """Two leaders (an old one resending, a new one deciding afresh) interleave every
    proposal of three failures; each failure yields one STOPPED and one STARTED."""
    state = cluster()
    previous = None
    for n in range(3):
        at = AT + 1000 * n
        old = {"source_node": "old", "at": at}
        new = {"source_node": "new", "at": at + 1}
        ok(state, host_down(f"old-d{n}", previous=previous, **old))
        ok(state, host_down(f"new-d{n}", previous=previous, **new))
        ok(state, host_down(f"old-d{n}", previous=previous, **old))
        incident = state.incident("node1")["notification_uuid"]
        for source in (old, new, old):
            ok(state, host_fenced(incident=incident, at=source["at"] + 10))
        ok(state, host_up(f"old-u{n}", incident=incident, **old))
        ok(state, host_up(f"new-u{n}", incident=incident, **new))
        ok(state, host_down(f"old-d{n}", previous=previous, **old))  # very late resend
        previous = incident
    events = [n["payload"]["event"]
              for n in state.list_notifications({"hostname": "node1"}, sort_dir="asc")]
    assert events == ["STOPPED", "STARTED"] * 3
