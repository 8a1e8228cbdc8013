"""ClusterState: segment, host and lease commands, and every refused argument."""
from __future__ import annotations

import pytest

from consensus.state import ClusterState
from test_state_support import (
    AT, cluster, host_create, ok, refused, segment_create, submit, transition, uid,
)


def test_segment_create_returns_masakari_record():
    state = ClusterState()
    record = ok(state, segment_create(description="rack 1", enabled="no"))
    assert record == {
        "uuid": uid("segment/seg1"), "name": "seg1", "description": "rack 1",
        "recovery_method": "auto", "service_type": "COMPUTE", "enabled": False,
        "created_at": "2024-05-01T10:00:00.000000+00:00", "updated_at": None,
    }


def test_uuid_is_normalised_and_lookup_accepts_either_spelling():
    state = ClusterState()
    upper = uid("segment/x").upper()
    record = ok(state, segment_create("x", uuid=upper))
    assert record["uuid"] == upper.lower()
    assert state.get_segment(upper)["name"] == "x"
    assert state.get_segment("x")["uuid"] == upper.lower()


def test_results_are_copies():
    state = cluster()
    record = ok(state, submit("a"))
    record["payload"]["event"] = "STARTED"
    record["status"] = "finished"
    stored = state.get_notification(uid("n/a"))
    assert stored["payload"]["event"] == "STOPPED" and stored["status"] == "new"


def test_segment_names_are_unique():
    state = cluster()
    refused(state, segment_create("seg1", uuid=uid("other")), "already exists")
    refused(state, segment_create("seg1"), "already exists")


def test_segment_update_and_rename():
    state = cluster()
    ok(state, segment_create("seg2"))
    record = ok(state, {"op": "segment.update", "at": AT + 5, "segment": "seg1",
                        "name": "renamed", "recovery_method": "reserved_host", "enabled": False})
    assert record["name"] == "renamed" and record["recovery_method"] == "reserved_host"
    assert record["updated_at"] == "2024-05-01T10:00:05.000000+00:00"
    assert state.get_segment("seg1") is None and state.get_segment("renamed")
    assert state.get_host("node1")["failover_segment"]["name"] == "renamed"
    refused(state, {"op": "segment.update", "at": AT, "segment": "renamed", "name": "seg2"},
            "already exists")
    ok(state, {"op": "segment.update", "at": AT, "segment": "renamed", "name": "renamed"})


def test_segment_update_refused_while_under_recovery():
    state = cluster()
    ok(state, submit("a"))
    refused(state, {"op": "segment.update", "at": AT, "segment": "seg1", "description": "x"},
            "under recovery")
    ok(state, transition("a", "running"))
    refused(state, {"op": "segment.update", "at": AT, "segment": "seg1", "description": "x"},
            "under recovery")
    ok(state, transition("a", "finished"))
    ok(state, {"op": "segment.update", "at": AT, "segment": "seg1", "description": "x"})


def test_segment_delete_refused_while_it_holds_hosts():
    state = cluster("node1", "node2")
    refused(state, {"op": "segment.delete", "at": AT, "segment": "seg1"}, "holds 2 host(s)")
    ok(state, {"op": "host.delete", "at": AT, "host": "node1"})
    ok(state, {"op": "host.delete", "at": AT, "host": uid("host/node2"), "segment": "seg1"})
    assert ok(state, {"op": "segment.delete", "at": AT, "segment": "seg1"}) is None
    assert state.list_segments() == []
    ok(state, segment_create("seg1"))  # the name is free again


def test_host_names_are_unique_across_segments():
    state = cluster()
    ok(state, segment_create("seg2"))
    refused(state, host_create("node1", "seg2", uuid=uid("x")), "already exists")
    refused(state, host_create("node1", "seg2"), "already exists")


def test_host_update_and_segment_scope():
    state = cluster()
    ok(state, segment_create("seg2"))
    record = ok(state, {"op": "host.update", "at": AT, "host": "node1", "segment": "seg1",
                        "reserved": "true", "type": "BAREMETAL", "name": "node1b"})
    assert (record["reserved"], record["type"], record["name"]) == (True, "BAREMETAL", "node1b")
    refused(state, {"op": "host.update", "at": AT, "host": "node1b", "segment": "seg2",
                    "reserved": False}, "not in segment seg2")
    refused(state, {"op": "host.delete", "at": AT, "host": "node1b", "segment": "seg2"},
            "not in segment")


def test_host_maintenance_and_reserved_may_change_during_recovery_but_nothing_else():
    state = cluster()
    ok(state, submit("a"))
    ok(state, transition("a", "running"))
    record = ok(state, {"op": "host.update", "at": AT, "host": "node1",
                        "on_maintenance": True, "reserved": False})
    assert record["on_maintenance"] is True
    refused(state, {"op": "host.update", "at": AT, "host": "node1", "on_maintenance": False,
                    "type": "X"}, "under recovery")
    refused(state, {"op": "host.delete", "at": AT, "host": "node1"}, "under recovery")


def test_notifications_of_another_segment_do_not_block():
    state = cluster()
    ok(state, segment_create("seg2"))
    ok(state, host_create("node9", "seg2"))
    ok(state, submit("a", hostname="node9"))
    ok(state, {"op": "host.update", "at": AT, "host": "node1", "type": "X"})
    ok(state, {"op": "host.delete", "at": AT, "host": "node1"})


def test_lease_renew_keeps_the_highest_sequence():
    state = ClusterState()
    result = ok(state, {"op": "lease.renew", "at": 10.0, "hosts": {"a": 5, "b": 1}})
    assert result == {"a": {"host": "a", "seq": 5, "renewed_at": 10.0},
                      "b": {"host": "b", "seq": 1, "renewed_at": 10.0}}
    result = ok(state, {"op": "lease.renew", "at": 20.0, "hosts": {"a": 4, "b": 1}})
    assert result["a"] == {"host": "a", "seq": 5, "renewed_at": 10.0}  # stale: unchanged
    assert result["b"] == {"host": "b", "seq": 1, "renewed_at": 20.0}  # resend counts
    ok(state, {"op": "lease.renew", "at": 30.0, "hosts": {"a": 6}})
    assert state.get_lease("a") == {"host": "a", "seq": 6, "renewed_at": 30.0}
    assert state.get_lease("zzz") is None
    assert [lease["host"] for lease in state.list_leases()] == ["a", "b"]


def test_apply_refuses_non_commands():
    state = ClusterState()
    for junk in (None, 1, "segment.create", [], ["op"], {"at": AT}, {"op": None},
                 {"op": ["segment.create"]}, {"op": "segment.drop", "at": AT}):
        refused(state, junk)
    refused(state, {"op": "segment.create"}, "missing argument 'at'")


def _bad(command: dict, **changes) -> dict:
    command = dict(command, **changes)
    return {k: v for k, v in command.items() if v is not _DROP}


_DROP = object()
_SEGMENT_UPDATE = {"op": "segment.update", "at": AT, "segment": "seg1", "description": "d"}
_HOST_UPDATE = {"op": "host.update", "at": AT, "host": "node1", "reserved": True}

# (command, fragments the error must contain): each changes one argument of a valid command.
REJECTED = [
    (_bad(segment_create("s2"), at="now"), ["'at'", "UNIX time"]),
    (_bad(segment_create("s2"), at=True), ["'at'"]),
    (_bad(segment_create("s2"), at=float("nan")), ["'at'"]),
    (_bad(segment_create("s2"), at=-1), ["'at'"]),
    (_bad(segment_create("s2"), at=1e300), ["'at'"]),
    (_bad(segment_create("s2"), uuid="not-a-uuid"), ["'uuid'", "UUID"]),
    (_bad(segment_create("s2"), uuid=7), ["'uuid'"]),
    (_bad(segment_create("s2"), uuid=_DROP), ["missing argument 'uuid'"]),
    (_bad(segment_create("s2"), name=""), ["'name'"]),
    (_bad(segment_create("s2"), name=" lead"), ["'name'", "whitespace"]),
    (_bad(segment_create("s2"), name="trail "), ["'name'"]),
    (_bad(segment_create("s2"), name="x" * 256), ["'name'"]),
    (_bad(segment_create("s2"), name="tab\there"), ["'name'"]),
    (_bad(segment_create("s2"), name=["s"]), ["'name'"]),
    (_bad(segment_create("s2"), recovery_method="manual"), ["'recovery_method'", "rh_priority"]),
    (_bad(segment_create("s2"), recovery_method=_DROP), ["missing argument 'recovery_method'"]),
    (_bad(segment_create("s2"), service_type=""), ["'service_type'"]),
    (_bad(segment_create("s2"), description=5), ["'description'"]),
    (_bad(segment_create("s2"), description="bell\x07"), ["'description'"]),
    (_bad(segment_create("s2"), enabled="maybe"), ["'enabled'", "boolean"]),
    (_bad(segment_create("s2"), enabled=1), ["'enabled'"]),
    (_bad(segment_create("s2"), colour="red"), ["unexpected argument 'colour'"]),
    (_bad(_SEGMENT_UPDATE, description=_DROP), ["nothing to update"]),
    (_bad(_SEGMENT_UPDATE, segment="nope"), ["'segment'", "no segment"]),
    (_bad(_SEGMENT_UPDATE, segment=None), ["'segment'"]),
    (_bad(_SEGMENT_UPDATE, enabled="x"), ["'enabled'"]),
    (_bad(_SEGMENT_UPDATE, uuid=uid("x")), ["unexpected argument 'uuid'"]),
    ({"op": "segment.delete", "at": AT, "segment": "nope"}, ["no segment"]),
    ({"op": "segment.delete", "at": AT}, ["missing argument 'segment'"]),
    (_bad(host_create("n2"), segment="nope"), ["'segment'", "no segment"]),
    (_bad(host_create("n2"), type="has space"), ["'type'"]),
    (_bad(host_create("n2"), type=None), ["'type'"]),
    (_bad(host_create("n2"), control_attributes=None), ["'control_attributes'"]),
    (_bad(host_create("n2"), control_attributes=_DROP), ["missing argument 'control_attributes'"]),
    (_bad(host_create("n2"), reserved="perhaps"), ["'reserved'"]),
    (_bad(host_create("n2"), on_maintenance=None), ["'on_maintenance'"]),
    (_bad(host_create("n2"), name=""), ["'name'"]),
    (_bad(host_create("n2"), uuid="x"), ["'uuid'"]),
    (_bad(_HOST_UPDATE, host="nope"), ["'host'", "no host"]),
    (_bad(_HOST_UPDATE, host=3), ["'host'"]),
    (_bad(_HOST_UPDATE, reserved=_DROP), ["nothing to update"]),
    (_bad(_HOST_UPDATE, segment="nope"), ["'segment'"]),
    (_bad(_HOST_UPDATE, segment_uuid=uid("x")), ["unexpected argument 'segment_uuid'"]),
    (_bad(_HOST_UPDATE, name="x" * 300), ["'name'"]),
    ({"op": "host.delete", "at": AT, "host": "nope"}, ["no host"]),
    ({"op": "lease.renew", "at": AT, "hosts": {}}, ["'hosts'"]),
    ({"op": "lease.renew", "at": AT, "hosts": [["a", 1]]}, ["'hosts'"]),
    ({"op": "lease.renew", "at": AT, "hosts": {"a b": 1}}, ["'hosts'", "host name"]),
    ({"op": "lease.renew", "at": AT, "hosts": {"a": -1}}, ["hosts['a']"]),
    ({"op": "lease.renew", "at": AT, "hosts": {"a": 1.5}}, ["hosts['a']"]),
    ({"op": "lease.renew", "at": AT, "hosts": {"a": True}}, ["hosts['a']"]),
    ({"op": "lease.renew", "at": AT, "hosts": {"a": 2**63}}, ["hosts['a']"]),
    ({"op": "lease.renew", "at": AT, "hosts": {"ok": 1, "bad": "1"}}, ["hosts['bad']"]),
    ({"op": "lease.renew", "at": AT}, ["missing argument 'hosts'"]),
]


@pytest.mark.parametrize("command,fragments", REJECTED,
                         ids=[f"{c['op']}-{i}" for i, (c, _) in enumerate(REJECTED)])
def test_rejected_argument(command, fragments):
    state = cluster()
    error = refused(state, command, *fragments)
    assert error.startswith(command["op"] + ": ")
