"""hagentctl: argument parsing, output shapes and exit codes, with the agent in-process.

``main(argv, call=...)`` takes the transport as an argument; here it is the admin
server's own request handler on a FakeNode, so every verb runs the real server code
and the real state machine without a socket.
"""
import asyncio
import json

import pytest

from hagent.admin import protocol
from hagent.admin.client import AdminUnavailable
from hagent.admin.server import AdminServer
from hagent.config import AdminConfig
from hagent.ctl.main import build_parser, main
from tests.fakes import FakeNode

PAYLOAD = '{"event": "STOPPED", "host_status": "NORMAL", "cluster_status": "OFFLINE"}'
VM_PAYLOAD = ('{"event": "LIFECYCLE", "instance_uuid": "dddddddd-0000-4000-8000-000000000004", '
              '"vir_domain_event": "STOPPED_FAILED"}')


@pytest.fixture
def node():
    return FakeNode()


@pytest.fixture
def ctl(node, tmp_path, capsys):
    server = AdminServer(node, AdminConfig(socket=tmp_path / "hagent.sock"))
    calls = []

    def call(verb, args):
        calls.append((verb, args))
        # through the wire encoding both ways, as over the socket
        reply = asyncio.run(server.answer(protocol.encode_request(verb, args)))
        return protocol.decode_reply(protocol.encode(reply))

    def run(*argv):
        code = main(list(argv), call=call)
        out, err = capsys.readouterr()
        return code, out, err

    run.calls = calls
    return run


def jrun(ctl, *argv):
    code, out, err = ctl(*argv, "-f", "json")
    assert code == 0, err
    return json.loads(out)


def table_rows(out):
    """Cell texts of a boxed table's body rows."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


@pytest.fixture
def populated(ctl):
    assert ctl("segment", "create", "s1", "auto", "COMPUTE", "--description", "first")[0] == 0
    assert ctl("host", "create", "cn1", "COMPUTE", "SSH", "s1")[0] == 0
    assert ctl("host", "create", "cn2", "COMPUTE", "SSH", "s1", "--reserved", "True")[0] == 0
    return ctl


# --- verbs: tables ------------------------------------------------------------------------
def test_status_table(ctl):
    code, out, err = ctl("status")
    assert code == 0 and err == ""
    rows = dict((r[0], r[1]) for r in table_rows(out) if r[0])
    assert rows["node"] == "node-1" and rows["role"] == "leader" and rows["term"] == "4"
    assert "127.0.0.1:7103 (unreachable)" in out


def test_status_table_shows_lease_and_monitors(ctl, node):
    plain = node.status

    def status():
        st = plain()
        st["lease"] = {"seq": 9, "deadline_in": 8.2, "self_fenced": False,
                       "watchdog": {"detail": "lab power switch"}}
        st["monitors"] = {"process": {"events_seen": 4, "notifications_sent": 1,
                                      "notifications_failed": 0, "queue_depth": 0, "restarts": 2}}
        return st

    node.status = status
    code, out, _ = ctl("status")
    assert code == 0
    assert "seq 9, self-fence in 8.2 s, watchdog lab power switch" in out
    assert "process: 4 events, 1 sent, 0 failed, queue 0, 2 restarts" in out


def test_incident_verbs(ctl):
    code, out, _ = ctl("incident", "list", "--status", "open")
    assert code == 0 and table_rows(out) == []
    code, _, err = ctl("incident", "show", "cn9")
    assert code == 1 and "cn9" in err
    with pytest.raises(SystemExit) as exc:
        ctl("incident", "list", "--status", "all")
    assert exc.value.code == 2


def test_members_and_raft(ctl):
    code, out, _ = ctl("members")
    assert code == 0 and [r[0] for r in table_rows(out)] == ["node-1", "node-2", "node-3"]
    code, out, _ = ctl("raft")
    assert code == 0 and "| role " in out


def test_segment_create_prints_the_stored_record(ctl, node):
    code, out, _ = ctl("segment", "create", "s1", "auto", "COMPUTE", "--is_enabled", "false")
    assert code == 0
    rows = dict(r for r in table_rows(out) if r[0])
    assert rows["name"] == "s1" and rows["enabled"] == "False"
    assert rows["uuid"] == node.read(lambda s: s.get_segment("s1"))["uuid"]


def test_segment_list_show_update_delete(populated):
    ctl = populated
    code, out, _ = ctl("segment", "list")
    assert code == 0 and table_rows(out)[0][1:5] == ["s1", "first", "COMPUTE", "auto"]
    code, out, _ = ctl("segment", "show", "s1")
    assert code == 0 and "| description     | first" in out
    code, out, _ = ctl("segment", "update", "s1", "--description", "second",
                       "--recovery-method", "reserved_host")
    assert code == 0 and "second" in out and "reserved_host" in out
    assert ctl("host", "delete", "s1", "cn1") == (0, "Host deleted: cn1\n", "")
    assert ctl("host", "delete", "s1", "cn2")[0] == 0
    assert ctl("segment", "delete", "s1") == (0, "Segment deleted: s1\n", "")


def test_host_verbs(populated):
    ctl = populated
    code, out, _ = ctl("host", "list", "s1", "--sort-key", "name", "--sort-dir", "asc")
    assert code == 0 and [r[1] for r in table_rows(out)] == ["cn1", "cn2"]
    code, out, _ = ctl("host", "list", "s1", "--filters", "reserved=True")
    assert [r[1] for r in table_rows(out)] == ["cn2"]
    code, out, _ = ctl("host", "show", "s1", "cn1")
    assert code == 0 and "failover_segment_id" in out and "| failover_segment " not in out
    code, out, _ = ctl("host", "update", "s1", "cn1", "--on_maintenance", "True")
    assert code == 0 and dict(r for r in table_rows(out) if r[0])["on_maintenance"] == "True"
    code, out, _ = ctl("host", "update", "s1", "cn1", "--on-maintenance", "no")
    assert dict(r for r in table_rows(out) if r[0])["on_maintenance"] == "False"


def test_host_create_accepts_both_maintenance_spellings(populated, node):
    assert populated("host", "create", "cn3", "COMPUTE", "SSH", "s1", "--on-maintenance", "True")[0] == 0
    assert populated("host", "create", "cn4", "COMPUTE", "SSH", "s1", "--on_maintenance", "True")[0] == 0
    assert all(node.read(lambda s: s.get_host(h))["on_maintenance"] for h in ("cn3", "cn4"))


def test_notification_verbs(populated, node):
    ctl = populated
    code, out, err = ctl("notification", "create", "COMPUTE_HOST", "cn1",
                         "2024-01-01T01:00:00.000", PAYLOAD)
    assert code == 0 and err == ""
    rows = dict(r for r in table_rows(out) if r[0])
    assert rows["status"] == "new" and rows["hostname"] == "cn1"
    nid = rows["notification_uuid"]
    code, out, _ = ctl("notification", "show", nid)
    assert code == 0 and nid in out
    code, out, _ = ctl("notification", "list", "--filters", "status=new", "--limit", "5")
    assert code == 0 and table_rows(out)[0][0] == nid


def test_notification_not_yet_committed_warns_but_succeeds(populated, node):
    node.commit_submissions = False
    code, out, err = populated("notification", "create", "VM", "cn1", "2024-01-01T01:00:00", "{}")
    assert code == 0 and "not committed to the log yet" in err and "pending" in out


VM_A, VM_B, VM_C = ("aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002",
                    "cccccccc-0000-4000-8000-000000000003")


def recovering(ctl, node):
    """A COMPUTE_HOST notification of cn1 part way through its recovery, as the leader's
    engine records it: two steps done (one resumed by a later term's leader), one intent
    still open; one instance evacuated, one under way, one left alone. Returns its uuid."""
    code, out, _ = ctl("notification", "create", "COMPUTE_HOST", "cn1", "2024-01-01T01:00:00",
                       PAYLOAD, "-f", "json")
    nid = json.loads(out)["notification_uuid"]

    def apply(op, **fields):
        answer = asyncio.run(node.propose({"op": op, "notification_uuid": nid, **fields}))
        assert answer["ok"], answer

    asyncio.run(node.propose({"op": "recovery.claim", "term": 3, "node": "node-1"}))
    apply("notification.transition", status="running")
    apply("recovery.intent", step="force_down", key="cn1", term=3,
          detail="host fenced: mark nova-compute down now")
    asyncio.run(node.propose({"op": "recovery.claim", "term": 4, "node": "node-2"}))
    apply("recovery.result", step="force_down", key="cn1", term=4, outcome="done",
          detail="nova-compute down, enabled, forced down")
    apply("recovery.intent", step="evacuate", key=VM_A, term=4,
          detail="from vm_state=active task_state=- power_state=1; to a host the scheduler "
                 "picks, which is a long text that wraps")
    apply("recovery.result", step="evacuate", key=VM_A, term=4, outcome="done",
          detail="ACTIVE on cn2")
    apply("recovery.intent", step="evacuate", key=VM_B, term=4, detail="from vm_state=active")
    for uuid_, name in ((VM_A, "vm-a"), (VM_B, "vm-b")):
        apply("notification.vmove", instance_uuid=uuid_, instance_name=name, status="pending",
              source_host="cn1")
        apply("notification.vmove", instance_uuid=uuid_, status="ongoing")
    apply("notification.vmove", instance_uuid=VM_A, status="succeeded", dest_host="cn2",
          message="ACTIVE on cn2")
    apply("notification.vmove", instance_uuid=VM_C, instance_name="vm-c", status="ignored",
          source_host="cn1", message="not HA")
    return nid


def test_notification_show_tables_the_steps_and_the_instances(populated, node):
    nid = recovering(populated, node)
    code, out, err = populated("notification", "show", nid)
    assert code == 0 and err == ""
    head, _, rest = out.partition("Steps taken (recovery_steps):")
    steps_part, _, vmoves_part = rest.partition("Instances (vmoves):")
    fields = dict(r for r in table_rows(head) if r[0])
    assert fields["status"] == "running" and fields["recovery_attempts"] == "1"
    assert fields["recovery_steps"] == "3: 2 done, 1 open"
    assert fields["vmoves"] == "3: 1 ignored, 1 ongoing, 1 succeeded"
    steps = [r for r in table_rows(steps_part) if r[0]]  # wrapped lines have an empty step
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in steps] == [
        ("force_down", "cn1", "3", "1", "done (term 4)"),   # resumed by term 4's leader
        ("evacuate", VM_A, "4", "1", "done"),
        ("evacuate", VM_B, "4", "1", "open"),
    ]
    # times to the millisecond in UTC, how long each step took, both texts
    assert steps[0][5] == "2023-11-14T22:13:27.000Z" and steps[0][6] == "22:13:29.000Z"
    assert steps[0][7] == "2.000 s"
    assert steps[2][6] == "None" and steps[2][7] == "None"
    assert steps[0][8] == "host fenced: mark nova-compute down now"
    assert steps[0][9] == "nova-compute down, enabled, forced down"
    assert all(len(r[8]) <= 40 and len(r[9]) <= 40 for r in table_rows(steps_part))  # wrapped
    assert "which is a long text that wraps" in " ".join(
        r[8] for r in table_rows(steps_part)).replace("  ", " ")
    vmoves = table_rows(vmoves_part)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in vmoves] == [
        (VM_A, "vm-a", "succeeded", "cn1", "cn2"),
        (VM_B, "vm-b", "ongoing", "cn1", "None"),
        (VM_C, "vm-c", "ignored", "cn1", "None"),
    ]
    assert vmoves[0][7] == "ACTIVE on cn2" and vmoves[1][6] == "None"


def test_notification_show_json_is_the_record_as_stored(populated, node):
    nid = recovering(populated, node)
    record = jrun(populated, "notification", "show", nid)
    assert record == node.read(lambda s: s.get_notification(nid))
    assert len(record["recovery_steps"]) == 3 and len(record["vmoves"]) == 3


def test_notification_show_without_recovery_has_no_sub_tables(populated):
    code, out, _ = populated("notification", "create", "VM", "cn1", "2024-01-01T01:00:00",
                                VM_PAYLOAD)
    nid = dict(r for r in table_rows(out) if r[0])["notification_uuid"]
    code, out, _ = populated("notification", "show", nid)
    assert code == 0 and "Steps taken" not in out and "Instances" not in out
    fields = dict(r for r in table_rows(out) if r[0])
    assert fields["recovery_steps"] == "none" and fields["vmoves"] == "none"


def test_vmove_list(populated, node):
    nid = recovering(populated, node)
    code, out, err = populated("vmove", "list", nid)
    assert code == 0 and err == ""
    assert out.splitlines()[1].split("|")[1:-1] == [
        " instance_uuid                        ", " instance_name ", " status    ",
        " source_host ", " dest_host ", " start_time               ", " end_time                 ",
        " message       "]
    rows = table_rows(out)
    # created_at desc, as Masakari lists vmoves
    assert [(r[0], r[2]) for r in rows] == [(VM_C, "ignored"), (VM_B, "ongoing"),
                                            (VM_A, "succeeded")]
    assert rows[2][5].endswith("Z") and rows[2][6].endswith("Z")
    code, out, _ = populated("vmove", "list", nid, "--filters", "status=succeeded")
    assert [r[0] for r in table_rows(out)] == [VM_A]
    code, out, _ = populated("vmove", "list", nid, "--sort", "instance_name:asc", "--limit", "2")
    assert [r[1] for r in table_rows(out)] == ["vm-a", "vm-b"]
    code, out, _ = populated("vmove", "list", nid, "--sort-key", "instance_name",
                             "--sort-dir", "asc", "--marker", VM_A)
    assert [r[1] for r in table_rows(out)] == ["vm-b", "vm-c"]
    listed = jrun(populated, "vmove", "list", nid, "--sort-dir", "asc")
    assert listed == node.read(lambda s: s.get_notification(nid))["vmoves"]


def test_vmove_list_refusals_exit_1(populated, node):
    nid = recovering(populated, node)
    code, _, err = populated("vmove", "list", "nope")
    assert code == 1 and "notification not found: nope" in err
    code, _, err = populated("vmove", "list", nid, "--filters", "host=cn1")
    assert code == 1 and "unknown filter host" in err
    code, _, err = populated("vmove", "list", nid, "--sort-key", "payload")
    assert code == 1 and "sort_key must be one of" in err
    code, _, err = populated("vmove", "list", nid, "--marker", "nope")
    assert code == 1 and "marker 'nope' not found" in err
    code, out, _ = populated("notification", "create", "VM", "cn1", "2024-01-01T01:00:00",
                             VM_PAYLOAD)
    vm = dict(r for r in table_rows(out) if r[0])["notification_uuid"]
    code, _, err = populated("vmove", "list", vm)
    assert code == 1 and "only COMPUTE_HOST notifications have vmoves" in err


def test_status_table_shows_the_recovery_engine(ctl, node):
    plain = node.status
    engine = {"leading_term": 7, "in_progress": ["u1"], "runs": 9, "finished": 5, "ignored": 1,
              "errors": 2, "failed": 1, "expired": 1, "evacuations_succeeded": 30,
              "evacuations_failed": 3, "nova_calls": 80, "nova_errors": 4}
    node.status = lambda: {**plain(), "recovery": engine}
    code, out, _ = ctl("status")
    assert code == 0
    for line in ("leading in term 7", "1 in progress",
                 "9 runs: 5 finished, 1 ignored, 2 errors, 1 failed (1 expired)",
                 "evacuations: 30 succeeded, 3 failed", "Nova: 80 calls, 4 errors"):
        assert line in out
    engine["leading_term"] = None
    assert "not leading" in ctl("status")[1]


# --- -f json --------------------------------------------------------------------------------
def test_json_shapes_use_masakari_field_names(populated):
    ctl = populated
    segs = jrun(ctl, "segment", "list")
    assert isinstance(segs, list) and {"uuid", "name", "recovery_method", "service_type",
                                       "description", "enabled", "created_at"} <= set(segs[0])
    host = jrun(ctl, "host", "show", "s1", "cn2")
    assert host["reserved"] is True and host["failover_segment_id"] == segs[0]["uuid"]
    note = jrun(ctl, "notification", "create", "COMPUTE_HOST", "cn1", "2024-01-01T01:00:00", PAYLOAD)
    assert {"notification_uuid", "status", "type", "source_host_uuid", "payload", "generated_time",
            "created_at", "hostname"} <= set(note)
    assert note["payload"] == json.loads(PAYLOAD)
    assert jrun(ctl, "notification", "list") == [note]
    assert jrun(ctl, "notification", "show", note["notification_uuid"]) == note
    assert jrun(ctl, "status")["node"] == "node-1"
    assert len(jrun(ctl, "members")) == 3


def test_format_before_or_after_the_verb(ctl):
    code, out, _ = ctl("-f", "json", "status")
    assert json.loads(out)["role"] == "leader"
    code, out, _ = ctl("status", "--format", "json")
    assert json.loads(out)["role"] == "leader"


def test_json_delete_lists_what_was_deleted(populated):
    populated("host", "delete", "s1", "cn1")
    populated("host", "delete", "s1", "cn2")
    assert jrun(populated, "segment", "delete", "s1") == ["s1"]


# --- list options ------------------------------------------------------------------------------
def test_list_options_reach_the_agent(ctl):
    ctl("segment", "list", "--filters", "recovery_method=auto;service_type=COMPUTE",
        "--filters", "enabled=True", "--sort", "name:asc", "--limit", "3")
    assert ctl.calls[-1] == ("segment.list", {
        "filters": {"recovery_method": "auto", "service_type": "COMPUTE", "enabled": "True"},
        "sort_key": "name", "sort_dir": "asc", "limit": 3})


def test_bad_sort_key_is_refused_by_the_agent(ctl):
    code, out, err = ctl("segment", "list", "--sort-key", "colour")
    assert code == 1 and out == "" and "sort_key must be one of" in err


# --- exit codes -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["notification", "create", "VM", "cn1", "2024-01-01T00:00:00", "{not json"],
    ["notification", "create", "VM", "cn1", "2024-01-01T00:00:00", "[1, 2]"],
    ["notification", "create", "VM", "cn1", "yesterday", "{}"],
    ["notification", "create", "DISK", "cn1", "2024-01-01T00:00:00", "{}"],
    ["host", "create", "cn1", "COMPUTE", "SSH", "s1", "--reserved", "maybe"],
    ["host", "update", "s1", "cn1", "--on-maintenance", "2"],
    ["host", "update", "s1", "cn1"],
    ["segment", "update", "s1"],
    ["segment", "create", "s1", "sometimes", "COMPUTE"],
    ["segment", "create", "s1"],
    ["segment", "list", "--limit", "0"],
    ["segment", "list", "--filters", "novalue"],
    ["segment", "list", "--sort", "name:sideways"],
    ["segment", "list", "-f", "yaml"],
    ["host", "list"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(ctl, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv, call=lambda verb, args: pytest.fail("must not reach the agent"))
    assert exc.value.code == 2
    assert "usage: hagentctl" in capsys.readouterr().err


def test_refused_operation_exits_1_with_the_reason(ctl):
    assert ctl("segment", "show", "nope") == (1, "", "hagentctl: segment not found: nope\n")


def test_refused_delete_of_one_of_several(populated):
    code, out, err = populated("segment", "delete", "nope", "s1")
    assert code == 1
    assert "segment.delete" in err and "'nope'" in err and "still holds 2 host(s)" in err


def test_log_unavailable_exits_1(ctl, node):
    node.refuse_log = "the log did not commit within 8 s"
    assert ctl("segment", "create", "s1", "auto", "COMPUTE") == \
        (1, "", "hagentctl: the log did not commit within 8 s\n")


def test_unreachable_agent_exits_1_naming_the_socket(capsys):
    def call(verb, args):
        raise AdminUnavailable("cannot connect to /run/x.sock: no such socket")
    assert main(["--socket", "/run/x.sock", "status"], call=call) == 1
    assert capsys.readouterr().err == "hagentctl: cannot connect to /run/x.sock: no such socket\n"


def test_bad_reply_exits_1(capsys):
    def call(verb, args):
        raise protocol.ProtocolError("reply is not JSON")
    assert main(["--socket", "/run/x.sock", "status"], call=call) == 1
    assert "bad answer from /run/x.sock" in capsys.readouterr().err


def test_socket_option_default_and_positions():
    parser = build_parser()
    assert str(parser.parse_args(["status"]).socket) == "/run/hagent/hagent.sock"
    assert str(parser.parse_args(["--socket", "/a", "status"]).socket) == "/a"
    assert str(parser.parse_args(["status", "--socket", "/b"]).socket) == "/b"


def voter_set(node: FakeNode, nodes: int = 5, voters: int = 3) -> None:
    """Bootstrap node-1..node-<voters> and register node-1..node-<nodes>."""
    addresses = [f"127.0.0.1:710{i}" for i in range(1, nodes + 1)]
    asyncio.run(node.propose({"op": "voters.bootstrap", "voters": addresses[:voters]}))
    for i, address in enumerate(addresses, start=1):
        answer = asyncio.run(node.propose({
            "op": "voters.register", "node": f"node-{i}", "raft_address": address,
            "forward_address": address[:-1] + "9", "public_key": f"key-{i}",
            "failure_domain": "rack-a" if i % 2 else "rack-b"}))
        assert answer["ok"], answer


def test_raft_voters_tables_the_voters_the_eligible_and_the_changes(ctl, node):
    voter_set(node)
    code, out, _ = ctl("raft", "voters")
    assert code == 0
    assert "Voters (3, target 3, autopilot on):" in out
    rows = [r for r in table_rows(out) if r[0] != "node"]  # two tables: skip the 2nd header
    assert [r[0] for r in rows] == ["node-1", "node-2", "node-3", "node-4", "node-5"]
    assert rows[0][4:] == ["yes", "yes"] and rows[2][4] == "NO"  # reachable, leader
    assert "Eligible non-voters (2):" in out and "Change in flight: none" in out
    doc = jrun(ctl, "raft", "voters")
    assert [e["node"] for e in doc["eligible"]] == ["node-4", "node-5"]
    assert doc["voters"][1]["failure_domain"] == "rack-b"


def test_add_and_remove_voter_and_their_refusals(ctl, node):
    voter_set(node)
    code, out, err = ctl("raft", "add-voter", "node-4")
    assert code == 0 and out.startswith("Voter added: node-4 (127.0.0.1:7104") and not err
    assert [v["node"] for v in jrun(ctl, "raft", "voters")["voters"]] == \
        ["node-1", "node-2", "node-3", "node-4"]
    assert "last change: add node-4 committed (term 4)" in ctl("status")[1]
    answer = jrun(ctl, "raft", "remove-voter", "node-4")
    assert answer["op"] == "remove" and answer["result"] == "committed"
    before = node.read(lambda s: s.voters())
    for argv, why in ((("add-voter", "node-9"), "unknown node node-9"),
                      (("add-voter", "node-2"), "already a voter"),
                      (("remove-voter", "node-5"), "is not a voter"),
                      (("remove-voter", "node-1"), "is the leader"),
                      (("remove-voter", "node-2"), "would leave 2 voter(s)")):
        code, out, err = ctl("raft", *argv)
        assert code == 1 and why in err and not out, (argv, err)
    assert node.read(lambda s: s.voters())["voters"] == before["voters"]  # nothing changed
    for argv in (("raft", "add-voter"), ("raft", "remove-voter", "a", "b"), ("raft", "promote")):
        with pytest.raises(SystemExit) as exc:
            ctl(*argv)
        assert exc.value.code == 2
