"""ClusterState snapshots: round trip, plain values, format refusal."""
from __future__ import annotations

import json

import msgpack
import pytest

from consensus.snapshot import FORMAT, SnapshotFormatError
from consensus.state import ClusterState
from test_state_support import (
    AT, claim, cluster, host_create, host_down, host_fenced, host_up, intent, ok, result, submit,
    transition, uid, vmove,
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
    ok(state, claim(4, "n2"))
    ok(state, intent("a", "force_down", "n1", 4, detail="service up"))
    ok(state, result("a", "force_down", "n1", 4, detail="forced down"))
    ok(state, intent("a", "evacuate", uid("vm/vm1"), 4))
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
    assert data["format"] == FORMAT == 4
    restored = ClusterState.from_snapshot(msgpack.unpackb(msgpack.packb(data)))
    assert restored == state
    assert restored.counts_by_status() == state.counts_by_status()
    assert restored.list_notifications() == state.list_notifications()
    assert restored.incidents() == state.incidents()
    assert restored.recovery_claim() == state.recovery_claim() == {
        "term": 4, "node": "n2", "claimed_at": "2024-05-01T10:00:03.000000+00:00"}
    steps = restored.get_notification(uid("n/a"))["recovery_steps"]
    assert [(s["step"], s["outcome"]) for s in steps] == [("force_down", "done"), ("evacuate", None)]
    assert [(i["hostname"], i["status"]) for i in state.incidents()] == [
        ("n1", "open"), ("n2", "open"), ("n2", "closed")]
    # derived indexes were rebuilt: duplicate detection and the under-recovery check
    for s in (state, restored):
        assert ok(s, submit("again", hostname="n1", at=AT + 5))["status"] == "ignored"
        assert not s.apply({"op": "host.delete", "at": AT, "host": "n2"})["ok"]
        # the claim and the open intent came back: a stale term is refused, a result fits
        assert not s.apply(intent("a", "disable", "n1", 3))["ok"]
        assert ok(s, result("a", "evacuate", uid("vm/vm1"), 4))["outcome"] == "done"
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
    assert str(err.value) == ("snapshot format 7 is newer than this hagent understands (4); "
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


def test_format_2_snapshot_reads_as_a_state_without_recovery_records():
    """What an hagent without the recovery ops wrote still loads: no claim, no attempts,
    no steps; the first claim then works as on a fresh state."""
    state = cluster("n1")
    ok(state, submit("a", hostname="n1"))
    ok(state, transition("a", "running"))
    data = state.to_snapshot()
    del data["recovery_claim"]
    for item in data["notifications"]:
        del item["attempts"], item["steps"]
    data["format"] = 2
    restored = ClusterState.from_snapshot(data)
    assert restored.recovery_claim() is None
    record = restored.get_notification(uid("n/a"))
    assert record["recovery_attempts"] == 0 and record["recovery_steps"] == []
    assert ok(restored, claim(1))["term"] == 1
    assert ok(restored, intent("a", "force_down", "n1", 1))["attempt"] == 0


def test_format_3_snapshot_reads_as_a_state_without_a_voter_set():
    """What an hagent without the voter set wrote still loads, not bootstrapped: the first
    leader then writes the set it runs with."""
    state = _busy_state()
    data = state.to_snapshot()
    del data["voters"]
    data["format"] = 3
    restored = ClusterState.from_snapshot(data)
    assert restored.list_notifications() == state.list_notifications()
    assert restored.voters()["bootstrapped"] is False
    assert ok(restored, {"op": "voters.bootstrap", "at": AT,
                         "voters": ["10.0.0.1:7170"]})["changed"] is True


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
    ({"format": 3, "segments": [], "hosts": [], "notifications": [], "leases": [],
      "incidents": []}, "malformed"),
    ({"format": 3, "segments": [], "hosts": [], "notifications": [], "leases": [],
      "incidents": [], "recovery_claim": {"term": 1}}, "malformed"),
    ({"format": 4, "segments": [], "hosts": [], "notifications": [], "leases": [],
      "incidents": [], "recovery_claim": None}, "malformed"),
    ({"format": 4, "segments": [], "hosts": [], "notifications": [], "leases": [],
      "incidents": [], "recovery_claim": None,
      "voters": {"voters": [], "registry": [{"node": "x"}], "change": None,
                 "last_change": None, "term": 0}}, "malformed"),
    ({"format": 4, "segments": [], "hosts": [], "notifications": [], "leases": [],
      "incidents": [], "recovery_claim": None,
      "voters": {"voters": [], "registry": [], "change": None, "last_change": None,
                 "term": "1"}}, "malformed"),
])
def test_malformed_snapshots_are_refused(data, fragment):
    with pytest.raises(SnapshotFormatError, match=fragment):
        ClusterState.from_snapshot(data)
