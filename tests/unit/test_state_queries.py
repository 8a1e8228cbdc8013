"""ClusterState read-only queries: filters, sorting, paging, counts."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from consensus.queries import QueryError
from consensus.state import ClusterState
from test_state_support import (
    AT, cluster, host_create, ok, segment_create, submit, transition, uid,
)


def _names(records, key="name"):
    return [r[key] for r in records]


def test_segments_sorted_newest_first_by_default_with_filters():
    state = ClusterState()
    ok(state, segment_create("a", at=AT + 1))
    ok(state, segment_create("b", at=AT + 3, recovery_method="reserved_host", enabled=False))
    ok(state, segment_create("c", at=AT + 2, service_type="OTHER"))
    assert _names(state.list_segments()) == ["b", "c", "a"]
    assert _names(state.list_segments(sort_key="name", sort_dir="asc")) == ["a", "b", "c"]
    assert _names(state.list_segments({"recovery_method": "auto"})) == ["c", "a"]
    assert _names(state.list_segments({"service_type": "OTHER"})) == ["c"]
    assert _names(state.list_segments({"enabled": "false"})) == ["b"]
    assert _names(state.list_segments({"enabled": True}, sort_dir="asc")) == ["a", "c"]


def test_ties_break_by_insertion_order_in_the_sort_direction():
    state = ClusterState()
    for name in "xyz":
        ok(state, segment_create(name))  # same created_at
    assert _names(state.list_segments()) == ["z", "y", "x"]
    assert _names(state.list_segments(sort_dir="asc")) == ["x", "y", "z"]


def test_none_sorts_first_ascending():
    state = ClusterState()
    ok(state, segment_create("a", description="zz"))
    ok(state, segment_create("b"))
    assert _names(state.list_segments(sort_key="description", sort_dir="asc")) == ["b", "a"]


def test_paging_with_limit_and_marker():
    state = ClusterState()
    for i in range(5):
        ok(state, segment_create(f"s{i}", at=AT + i))
    first = state.list_segments(sort_dir="asc", limit=2)
    assert _names(first) == ["s0", "s1"]
    second = state.list_segments(sort_dir="asc", limit=2, marker=first[-1]["uuid"])
    assert _names(second) == ["s2", "s3"]
    assert state.list_segments(limit=0) == []


@pytest.mark.parametrize("kwargs,fragment", [
    ({"sort_key": "colour"}, "sort_key"),
    ({"sort_dir": "up"}, "sort_dir"),
    ({"limit": -1}, "limit"),
    ({"limit": "3"}, "limit"),
    ({"marker": uid("nothing")}, "marker"),
    ({"filters": {"name": "x"}}, "unknown filter name"),
    ({"filters": {"enabled": "sometimes"}}, "'enabled'"),
    ({"filters": ["enabled"]}, "mapping"),
])
def test_bad_segment_queries(kwargs, fragment):
    state = cluster()
    with pytest.raises(QueryError, match=fragment):
        state.list_segments(**kwargs)


def test_get_segment_and_host_by_uuid_or_name():
    state = cluster()
    assert state.get_segment(uid("segment/seg1"))["name"] == "seg1"
    assert state.get_segment("nope") is None
    assert state.get_host("node1")["uuid"] == uid("host/node1")
    assert state.get_host(uid("host/node1"), segment="seg1")["name"] == "node1"
    ok(state, segment_create("seg2"))
    assert state.get_host("node1", segment="seg2") is None
    assert state.get_host("node1", segment="nope") is None


def test_list_hosts_by_segment_and_filters():
    state = cluster("n1", "n2")
    ok(state, segment_create("seg2"))
    ok(state, host_create("n3", "seg2", reserved=True, type="BIG"))
    assert _names(state.list_hosts(sort_dir="asc")) == ["n1", "n2", "n3"]
    assert _names(state.list_hosts("seg1", sort_dir="asc")) == ["n1", "n2"]
    assert _names(state.list_hosts(filters={"reserved": "yes"})) == ["n3"]
    assert _names(state.list_hosts(filters={"type": "COMPUTE", "name": "n2"})) == ["n2"]
    assert _names(state.list_hosts(filters={"on_maintenance": False}, sort_dir="asc")) == [
        "n1", "n2", "n3"]
    with pytest.raises(QueryError, match="no segment"):
        state.list_hosts("nope")
    with pytest.raises(QueryError, match="unknown filter"):
        state.list_hosts(filters={"segment": "seg1"})


def _notifications_state():
    state = cluster("n1", "n2")
    ok(state, submit("a", hostname="n1", at=AT + 1, generated_time="2024-05-01T10:00:00Z"))
    ok(state, submit("b", hostname="n2", at=AT + 2, generated_time="2024-05-01T11:00:00Z"))
    ok(state, submit("c", hostname="n1", at=AT + 3, generated_time="2024-05-01T12:00:00Z",
                     type="PROCESS", payload={"process_name": "libvirtd", "event": "STOPPED"}))
    ok(state, transition("b", "running"))
    return state


def _ids(records):
    labels = {uid(f"n/{x}"): x for x in "abc"}
    return [labels[r["notification_uuid"]] for r in records]


@pytest.mark.parametrize("filters,expected", [
    (None, ["c", "b", "a"]),
    ({"status": "new"}, ["c", "a"]),
    ({"status": ["new", "running"]}, ["c", "b", "a"]),
    ({"status": "finished"}, []),
    ({"type": "PROCESS"}, ["c"]),
    ({"source_host_uuid": uid("host/n1")}, ["c", "a"]),
    ({"hostname": "n2"}, ["b"]),
    ({"failover_segment_uuid": uid("segment/seg1")}, ["c", "b", "a"]),
    ({"generated-since": "2024-05-01T11:00:00Z"}, ["c", "b"]),
    ({"generated-since": datetime(2024, 5, 1, 11, 30, tzinfo=timezone.utc)}, ["c"]),
    ({"generated-since": "2024-05-01T11:00:00", "status": "new"}, ["c"]),
])
def test_notification_filters(filters, expected):
    assert _ids(_notifications_state().list_notifications(filters)) == expected


def test_notification_sorting_and_paging():
    state = _notifications_state()
    assert _ids(state.list_notifications(sort_key="generated_time", sort_dir="asc")) == [
        "a", "b", "c"]
    page = state.list_notifications(limit=1, marker=uid("n/c"))
    assert _ids(page) == ["b"]
    assert _ids(state.list_notifications({"status": "new"}, sort_dir="asc")) == ["a", "c"]


@pytest.mark.parametrize("filters,fragment", [
    ({"status": "done"}, "status filter"),
    ({"status": ["new", 3]}, "status filter"),
    ({"generated-since": "soon"}, "generated-since"),
    ({"since": "2024-01-01"}, "unknown filter since"),
])
def test_bad_notification_filters(filters, fragment):
    with pytest.raises(QueryError, match=fragment):
        _notifications_state().list_notifications(filters)


def test_counts_and_get_notification():
    state = _notifications_state()
    assert state.counts_by_status() == {"new": 2, "running": 1, "error": 0, "failed": 0,
                                        "ignored": 0, "finished": 0}
    assert state.notification_count() == 3
    assert state.get_notification(uid("n/b"))["status"] == "running"
    assert state.get_notification(uid("n/zzz")) is None
    assert state.get_notification("not a uuid") is None
