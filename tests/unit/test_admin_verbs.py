"""Admin verbs end to end through AdminServer.answer, on a FakeNode (no socket)."""
import asyncio
import uuid

import pytest

from hagent.admin import protocol
from hagent.admin.server import AdminServer
from hagent.config import AdminConfig
from tests.fakes import FakeNode

PAYLOAD = {"event": "STOPPED", "host_status": "NORMAL", "cluster_status": "OFFLINE"}


@pytest.fixture
def node():
    return FakeNode()


@pytest.fixture
def server(node, tmp_path):
    return AdminServer(node, AdminConfig(socket=tmp_path / "hagent.sock"))


def ask(server, verb, args=None):
    return asyncio.run(server.answer(protocol.encode_request(verb, args)))


def result(server, verb, args=None):
    reply = ask(server, verb, args)
    assert reply["ok"], reply
    return reply["result"]


def sample(node, name, labels=None):
    return node.registry.get_sample_value(name, labels or {}) or 0.0


def make_segment(server, name="s1", **extra):
    return result(server, "segment.create", {"name": name, "recovery_method": "auto",
                                             "service_type": "COMPUTE", **extra})


def make_host(server, name="cn1", segment="s1", **extra):
    return result(server, "host.create", {"name": name, "type": "COMPUTE",
                                          "control_attributes": "SSH", "segment": segment, **extra})


# --- node-wide ---------------------------------------------------------------------------
def test_status_members_raft(server, node):
    assert result(server, "status")["node"] == "node-1"
    assert [m["name"] for m in result(server, "members")] == ["node-1", "node-2", "node-3"]
    raft = result(server, "raft")
    assert raft["role"] == "leader" and raft["term"] == 4
    assert "notifications" not in raft
    plain = node.status
    node.status = lambda: {**plain(), "recovery": {"leading_term": 4}, "lease": {}, "monitors": {}}
    assert not {"recovery", "lease", "monitors"} & set(result(server, "raft"))
    assert result(server, "status")["recovery"] == {"leading_term": 4}


def test_node_verbs_take_no_arguments(server):
    assert ask(server, "status", {"x": 1}) == {"ok": False, "error": "unknown arguments: x"}


# --- segments ----------------------------------------------------------------------------
def test_segment_create_proposes_the_replicated_command(server, node):
    seg = make_segment(server, description="first", enabled=False)
    cmd = node.proposed[-1]
    assert cmd["op"] == "segment.create"
    assert uuid.UUID(cmd["uuid"]).version == 4
    assert "at" not in cmd  # times come from node.propose
    assert seg["uuid"] == cmd["uuid"] and seg["description"] == "first" and seg["enabled"] is False


def test_segment_show_by_name_or_uuid(server):
    seg = make_segment(server)
    assert result(server, "segment.show", {"segment": "s1"}) == seg
    assert result(server, "segment.show", {"segment": seg["uuid"]}) == seg
    assert ask(server, "segment.show", {"segment": "nope"}) == {"ok": False,
                                                              "error": "segment not found: nope"}


def test_segment_list_sort_limit_filters(server):
    for name in ("a", "b", "c"):
        make_segment(server, name)
    make_segment(server, "d", recovery_method="reserved_host")
    assert [s["name"] for s in result(server, "segment.list")] == ["d", "c", "b", "a"]
    assert [s["name"] for s in result(server, "segment.list",
                                      {"sort_key": "name", "sort_dir": "asc", "limit": 2})] == ["a", "b"]
    assert [s["name"] for s in result(server, "segment.list",
                                      {"filters": {"recovery_method": "reserved_host"}})] == ["d"]


@pytest.mark.parametrize("args, reason", [
    ({"sort_key": "colour"}, "sort_key must be one of"),
    ({"sort_dir": "up"}, "sort_dir must be asc or desc"),
    ({"limit": 0}, "limit must be a positive integer"),
    ({"limit": "3"}, "argument 'limit' must be int"),
    ({"filters": {"colour": "red"}}, "unknown filter colour"),
    ({"marker": "nope"}, "marker 'nope' not found"),
])
def test_segment_list_bad_query_is_refused(server, args, reason):
    reply = ask(server, "segment.list", args)
    assert not reply["ok"] and reason in reply["error"]


def test_segment_update_and_delete(server, node):
    make_segment(server)
    seg = result(server, "segment.update", {"segment": "s1", "name": "s2", "enabled": False})
    assert seg["name"] == "s2" and seg["enabled"] is False
    assert node.proposed[-1] == {"op": "segment.update", "segment": "s1", "name": "s2", "enabled": False}
    assert ask(server, "segment.update", {"segment": "s2"})["error"].startswith("nothing to update")
    assert result(server, "segment.delete", {"segment": "s2"}) is None
    assert result(server, "segment.list") == []


def test_refused_command_returns_the_state_machines_reason(server):
    reply = ask(server, "segment.create", {"name": "s1", "recovery_method": "sometimes",
                                           "service_type": "COMPUTE"})
    assert not reply["ok"] and "recovery_method" in reply["error"]


def test_missing_and_mistyped_arguments(server):
    assert ask(server, "segment.create", {"name": "s1"})["error"] == "missing argument 'recovery_method'"
    reply = ask(server, "segment.create", {"name": "s1", "recovery_method": "auto",
                                           "service_type": "COMPUTE", "enabled": "yes"})
    assert reply["error"] == "argument 'enabled' must be bool, not str"


def test_log_that_cannot_commit_is_reported(server, node):
    node.refuse_log = "the log did not commit within 8 s"
    reply = ask(server, "segment.create", {"name": "s1", "recovery_method": "auto",
                                           "service_type": "COMPUTE"})
    assert reply == {"ok": False, "error": "the log did not commit within 8 s"}
    assert sample(node, "hagent_admin_requests_total", {"verb": "segment.create", "result": "error"}) == 1


# --- hosts -------------------------------------------------------------------------------
def test_reads_a_non_voter_cannot_make_are_refused_with_the_reason(server, node):
    node.unavailable = "no connection to 10.0.0.1:7171, 10.0.0.2:7171 within 3 s"
    for verb, args in (("segment.list", {}), ("host.show", {"host": "cn1"}),
                       ("notification.list", {})):
        reply = ask(server, verb, args)
        assert reply == {"ok": False, "error": "cannot read the cluster state: no connection to "
                         "10.0.0.1:7171, 10.0.0.2:7171 within 3 s"}


def test_reads_are_named_queries_with_their_arguments(server, node, monkeypatch):
    asked = []
    real = node.query

    async def spy(name, **kwargs):
        asked.append((name, kwargs))
        return await real(name, **kwargs)

    monkeypatch.setattr(node, "query", spy)
    make_segment(server)
    result(server, "host.list", {"segment": "s1", "limit": 2})
    result(server, "segment.show", {"segment": "s1"})
    assert asked == [
        ("list_hosts", {"segment": "s1", "filters": {}, "sort_key": "created_at",
                        "sort_dir": "desc", "limit": 2, "marker": None}),
        ("get_segment", {"ref": "s1"})]


def test_host_lifecycle(server, node):
    seg = make_segment(server)
    host = make_host(server, reserved=True)
    assert host["failover_segment_id"] == seg["uuid"] and host["reserved"] is True
    assert node.proposed[-1]["op"] == "host.create" and uuid.UUID(node.proposed[-1]["uuid"])
    make_host(server, "cn2")
    assert [h["name"] for h in result(server, "host.list", {"segment": "s1", "sort_key": "name",
                                                            "sort_dir": "asc"})] == ["cn1", "cn2"]
    assert [h["name"] for h in result(server, "host.list", {"segment": "s1",
                                                            "filters": {"reserved": "True"}})] == ["cn1"]
    assert result(server, "host.show", {"segment": "s1", "host": "cn1"})["uuid"] == host["uuid"]
    updated = result(server, "host.update", {"segment": "s1", "host": "cn1", "on_maintenance": True})
    assert updated["on_maintenance"] is True
    assert node.proposed[-1] == {"op": "host.update", "host": "cn1", "segment": "s1",
                                 "on_maintenance": True}
    assert result(server, "host.delete", {"segment": "s1", "host": "cn1"}) is None
    assert ask(server, "host.show", {"segment": "s1", "host": "cn1"})["error"] == "host not found: cn1"


def test_host_list_of_unknown_segment(server):
    reply = ask(server, "host.list", {"segment": "nope"})
    assert not reply["ok"] and "nope" in reply["error"]


# --- notifications -----------------------------------------------------------------------
def test_notification_create_show_list(server, node):
    make_segment(server)
    make_host(server)
    answer = result(server, "notification.create", {
        "type": "COMPUTE_HOST", "hostname": "cn1", "generated_time": "2024-01-01T00:00:00",
        "payload": PAYLOAD})
    assert answer["committed"] is True
    note = answer["notification"]
    assert note["status"] == "new" and note["hostname"] == "cn1" and note["source_node"] == "node-1"
    assert result(server, "notification.show", {"notification_uuid": note["notification_uuid"]}) == note
    assert result(server, "notification.list", {"filters": {"status": "new"}}) == [note]
    assert result(server, "notification.list", {"filters": {"status": "finished"}}) == []
    assert ask(server, "notification.show", {"notification_uuid": "x"})["error"] == \
        "notification not found: x"


def test_notification_create_keeps_a_given_uuid(server, node):
    make_segment(server)
    make_host(server)
    nid = str(uuid.uuid4())
    answer = result(server, "notification.create", {
        "type": "COMPUTE_HOST", "hostname": "cn1", "generated_time": "2024-01-01T00:00:00",
        "payload": PAYLOAD, "notification_uuid": nid})
    assert answer["notification"]["notification_uuid"] == nid


def test_notification_not_committed_in_time(server, node):
    node.commit_submissions = False
    answer = result(server, "notification.create", {
        "type": "VM", "hostname": "cn1", "generated_time": "2024-01-01T00:00:00",
        "payload": {"event": "LIFECYCLE"}})
    assert answer["committed"] is False and answer["notification"]["status"] == "pending"


def test_notification_for_unknown_host_is_refused(server):
    reply = ask(server, "notification.create", {
        "type": "COMPUTE_HOST", "hostname": "ghost", "generated_time": "2024-01-01T00:00:00",
        "payload": PAYLOAD})
    assert not reply["ok"] and "ghost" in reply["error"]


def test_notification_payload_must_be_an_object(server):
    reply = ask(server, "notification.create", {"type": "VM", "hostname": "cn1",
                                                "generated_time": "2024-01-01T00:00:00",
                                                "payload": [1]})
    assert reply == {"ok": False, "error": "argument 'payload' must be dict, not list"}


# --- robustness and metrics ---------------------------------------------------------------
def test_malformed_lines_are_counted_and_answered(server, node):
    assert ask(server, "status")["ok"]
    for line in (b"{nope\n", b"[]\n", b'{"verb": 1}\n'):
        reply = asyncio.run(server.answer(line))
        assert not reply["ok"] and reply["error"].startswith("malformed request")
    assert sample(node, "hagent_admin_malformed_requests_total") == 3
    assert ask(server, "status")["ok"]  # still serving


def test_unknown_verb_is_malformed_not_a_new_label(server, node):
    reply = ask(server, "segment.frobnicate")
    assert not reply["ok"] and "unknown verb 'segment.frobnicate'" in reply["error"]
    assert sample(node, "hagent_admin_malformed_requests_total") == 1
    assert sample(node, "hagent_admin_requests_total",
                  {"verb": "segment.frobnicate", "result": "error"}) == 0


def test_requests_counted_by_verb_and_result(server, node):
    result(server, "status")
    result(server, "status")
    ask(server, "segment.show", {"segment": "nope"})
    assert sample(node, "hagent_admin_requests_total", {"verb": "status", "result": "ok"}) == 2
    assert sample(node, "hagent_admin_requests_total", {"verb": "segment.show", "result": "error"}) == 1


def test_a_crashing_verb_is_an_error_reply(server, node, monkeypatch):
    def boom():
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(node, "status", boom)
    reply = ask(server, "status")
    assert reply == {"ok": False, "error": "internal error in status: RuntimeError: disk on fire"}
    assert ask(server, "members")["ok"]


def test_a_verb_that_never_finishes_is_answered_at_the_request_timeout(server, node, monkeypatch):
    monkeypatch.setattr("hagent.admin.server.REQUEST_TIMEOUT", 0.01)
    cancelled = []

    async def never(fields):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
    monkeypatch.setattr(node, "submit_notification", never)
    reply = ask(server, "notification.create", {"type": "VM", "hostname": "cn1",
                                                "generated_time": "2026-01-01T00:00:00Z",
                                                "payload": PAYLOAD})
    assert reply == {"ok": False, "error": "notification.create did not finish within 0.01 s"}
    assert cancelled == [True]
    assert sample(node, "hagent_admin_requests_total",
                  {"verb": "notification.create", "result": "error"}) == 1



def test_incident_verbs(server, node):
    make_segment(server)
    make_host(server)
    assert result(server, "incident.list") == []
    reply = ask(server, "incident.show", {"hostname": "cn1"})
    assert not reply["ok"] and "cn1" in reply["error"]
    assert not ask(server, "incident.list", {"status": "all"})["ok"]
    answer = asyncio.run(node.propose({"op": "host.down", "hostname": "cn1",
                                       "notification_uuid": str(uuid.uuid4()),
                                       "generated_time": "2026-01-01T00:00:00",
                                       "source_node": "node-1"}))
    assert answer["ok"], answer
    (incident,) = result(server, "incident.list", {"status": "open"})
    assert incident["hostname"] == "cn1" and incident["fenced"] is False
    assert result(server, "incident.show", {"hostname": "cn1"})["status"] == "open"
    assert result(server, "incident.list", {"status": "closed"}) == []


def test_vmove_list_reads_the_notifications_vmoves(server, node):
    make_segment(server)
    make_host(server)
    nid = result(server, "notification.create", {
        "type": "COMPUTE_HOST", "hostname": "cn1", "generated_time": "2024-01-01T00:00:00",
        "payload": PAYLOAD})["notification"]["notification_uuid"]
    assert result(server, "vmove.list", {"notification_uuid": nid}) == []
    for command in ({"op": "notification.transition", "status": "running"},
                    {"op": "notification.vmove", "instance_uuid": str(uuid.uuid4()),
                     "status": "pending", "source_host": "cn1"},
                    {"op": "notification.vmove", "instance_uuid": str(uuid.uuid4()),
                     "status": "ignored", "source_host": "cn1", "message": "not HA"}):
        assert asyncio.run(node.propose({**command, "notification_uuid": nid}))["ok"]
    rows = result(server, "vmove.list", {"notification_uuid": nid, "sort_dir": "asc"})
    assert [r["status"] for r in rows] == ["pending", "ignored"]
    assert rows == node.read(lambda s: s.get_notification(nid))["vmoves"]
    assert [r["status"] for r in result(server, "vmove.list", {
        "notification_uuid": nid, "filters": {"status": "ignored"}})] == ["ignored"]
    assert ask(server, "vmove.list", {})["error"] == "missing argument 'notification_uuid'"
    assert ask(server, "vmove.list", {"notification_uuid": nid, "host": "x"})["error"] == \
        "unknown arguments: host"
    assert sample(node, "hagent_admin_requests_total",
                  {"verb": "vmove.list", "result": "ok"}) == 3
