"""ClusterState snapshots: round trip, plain values, format refusal."""
from __future__ import annotations

import json

import msgpack
import pytest

from consensus.snapshot import FORMAT, SnapshotFormatError
from consensus.state import ClusterState
from test_state_support import (
    AT, cluster, host_create, host_down, host_fenced, host_up, ok, submit, transition, uid, vmove,
)


def _busy_state() -> ClusterState:
    state = cluster("n1", "n2")
    ok(state, host_create("n3", on_maintenance=True))
    ok(state, submit("a", hostname="n1"))
    ok(state, submit("dup", hostname="n1", at=AT + 1))
    ok(state, submit("m", hostname="n3"))
    ok(state, transition("a", "running"))
    ok(state, vmove("a", "vm1", "pending", source_host="n1"))
    ok(state, vmove("a", "vm1", "ongoing"))
    ok(state, {"op": "lease.renew", "at": AT, "hosts": {"n1": 4, "n2": 9}})
    ok(state, host_down("down1", hostname="n2"))
    ok(state, host_fenced("n2", method="ipmi", detail="power is off"))
    ok(state, host_up("up1", hostname="n2"))
    ok(state, host_down("down2", hostname="n2", at=AT + 100))
    ok(state, host_down("down3", hostname="n1", at=AT + 100))
    return state


def test_round_trip_gives_an_equal_state_that_behaves_the_same():
    state = _busy_state()
    data = state.to_snapshot()
    assert data["format"] == FORMAT == 2
    restored = ClusterState.from_snapshot(msgpack.unpackb(msgpack.packb(data)))
    assert restored == state
    assert restored.counts_by_status() == state.counts_by_status()
    assert restored.list_notifications() == state.list_notifications()
    assert restored.incidents() == state.incidents()
    assert [(i["hostname"], i["status"]) for i in state.incidents()] == [
        ("n1", "open"), ("n2", "open"), ("n2", "closed")]
    # derived indexes were rebuilt: duplicate detection and the under-recovery check
    for s in (state, restored):
        assert ok(s, submit("again", hostname="n1", at=AT + 5))["status"] == "ignored"
        assert not s.apply({"op": "host.delete", "at": AT, "host": "n2"})["ok"]
    assert restored == state


def test_snapshot_is_plain_json_and_a_copy():
    state = _busy_state()
    data = state.to_snapshot()
    json.dumps(data)  # only plain values
    data["notifications"][0]["payload"]["event"] = "STARTED"
    data["segments"][0]["name"] = "changed"
    assert state.get_segment("seg1") is not None
    assert state.get_notification(uid("n/a"))["payload"]["event"] == "STOPPED"


def test_restore_does_not_share_the_document():
    data = _busy_state().to_snapshot()
    restored = ClusterState.from_snapshot(data)
    data["notifications"][0]["payload"]["event"] = "STARTED"
    assert restored.get_notification(uid("n/a"))["payload"]["event"] == "STOPPED"


def test_empty_state_round_trip():
    assert ClusterState.from_snapshot(ClusterState().to_snapshot()) == ClusterState()


def test_equality_sees_differences():
    a, b = cluster(), cluster()
    assert a == b
    ok(b, {"op": "lease.renew", "at": AT, "hosts": {"n1": 1}})
    assert a != b
    assert a != "state"


def test_newer_format_is_refused_with_upgrade_advice():
    data = ClusterState().to_snapshot()
    data["format"] = 7
    with pytest.raises(SnapshotFormatError) as err:
        ClusterState.from_snapshot(data)
    assert str(err.value) == ("snapshot format 7 is newer than this hagent understands (2); "
                              "upgrade hagent")


def test_format_1_snapshot_reads_as_a_state_without_incidents():
    """What an hagent without incidents wrote (no "incidents" list) still loads."""
    state = cluster("n1", "n2")
    ok(state, submit("a", hostname="n1"))
    data = state.to_snapshot()
    del data["incidents"]
    data["format"] = 1
    restored = ClusterState.from_snapshot(data)
    assert restored == state and restored.incidents() == []
    # and it then opens incidents like any other state
    assert ok(restored, host_down("d", hostname="n2"))["status"] == "open"


def test_incident_naming_a_missing_notification_is_refused():
    state = cluster()
    ok(state, host_down("d"))
    data = state.to_snapshot()
    data["incidents"][0]["notification_uuid"] = uid("n/missing")
    with pytest.raises(SnapshotFormatError, match="does not hold"):
        ClusterState.from_snapshot(data)


@pytest.mark.parametrize("data,fragment", [
    (None, "no integer 'format'"),
    ({"segments": []}, "no integer 'format'"),
    ({"format": "1"}, "no integer 'format'"),
    ({"format": 0}, "not a known format"),
    ({"format": 1}, "malformed"),
    ({"format": 1, "segments": [{"uuid": "x"}], "hosts": [], "notifications": [],
      "leases": []}, "malformed"),
    ({"format": 2, "segments": [], "hosts": [], "notifications": [], "leases": []},
     "malformed"),
    ({"format": 2, "segments": [], "hosts": [], "notifications": [], "leases": [],
      "incidents": [{"hostname": "x"}]}, "malformed"),
])
def test_malformed_snapshots_are_refused(data, fragment):
    with pytest.raises(SnapshotFormatError, match=fragment):
        ClusterState.from_snapshot(data)
