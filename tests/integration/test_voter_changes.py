"""Voter changes in a real lab (6 agents, 3 bootstrap voters, every node eligible), through
hagentctl over the admin socket: add-voter promotes a non-voter (it re-execs under the same
pid, catches up and becomes a voter), remove-voter demotes it again (it re-execs as a
non-voter), bad requests are refused with the reason and exit 1 with nothing changed, a
whole lab SIGKILLed and restarted keeps the voter set the log committed, not the config's,
and non-voters still find the log, also across a restart, once every original voter was
replaced. A voter that was removed (alive, or while down) keeps no Raft state, so promoting
it again starts it from the current voter set, not from its old log's.

The autopilot is off here: these are an operator's changes. Timings are printed, not
asserted (benchmarks/ holds timing goals)."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from hagent.ctl.main import main as hagentctl
from hagent.lab.cluster import START_MARKER, Lab, LabError

pytestmark = pytest.mark.xdist_group("lab")

DEADLINE = 30.0
#: A stopped candidate never reports: its add is aborted after this (voters.catchup_timeout).
CATCHUP_TIMEOUT = 6.0


def until(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (LabError, KeyError, TypeError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not {what} within {timeout:g} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    lab = Lab.up(tmp_path_factory.mktemp("voters") / "lab", nodes=6, voters=3,
                 config_extra={"voters": {"auto_replace": False,
                                          "catchup_timeout": CATCHUP_TIMEOUT}},
                 failure_domains={"node4": "rack-b"})
    yield lab
    lab.down()


def ctl(lab: Lab, via: str, *argv: str, capsys) -> tuple[int, str, str]:
    """hagentctl on ``via``'s admin socket, as an operator runs it there."""
    code = hagentctl(["--socket", lab.node(via).admin_socket, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def voters(lab: Lab, via: str = "node1") -> list[str]:
    return [v["node"] for v in lab.admin(via, "raft.voters")["voters"]]


def registered(lab: Lab) -> bool:
    view = lab.admin("node1", "raft.voters")
    return (all(v["node"] for v in view["voters"])
            and {e["node"] for e in view["eligible"]} == {"node4", "node5", "node6"})


def not_leading(lab: Lab, name: str) -> None:
    """Make sure ``name`` does not lead (a leader may not remove itself): if it does, crash
    it so that another voter is elected, and start it again."""
    if lab.leader() != name:
        return
    lab.crash(name)
    voters_left = [n for n in lab.names if n != name]
    until("a new leader", lambda: lab.leader(among=voters_left) != name)
    lab.start(name)
    lab.wait_ready([name])


def raft_files(lab: Lab, name: str) -> list[str]:
    """What is left of ``name``'s Raft state (its journal, meta, snapshot)."""
    raft = Path(lab.node(name).config).parent / "state" / "raft"
    return sorted(p.name for p in raft.iterdir()) if raft.exists() else []


def since_last_switch(lab: Lab, name: str) -> str:
    """``name``'s log since its last role switch (re-exec)."""
    return Path(lab.node(name).log).read_text().rsplit("role switch:", 1)[-1]


def promote_again(lab: Lab, name: str, capsys) -> float:
    """add-voter ``name``, a non-voter that was a voter before: it keeps no Raft state, so
    its RaftNode starts from the current voter set (not its old log's) and gets the log from
    the leader. Returns how long the add took."""
    assert raft_files(lab, name) == []
    started = time.monotonic()
    code, _, err = ctl(lab, lab.leader(), "raft", "add-voter", name, capsys=capsys)
    took = time.monotonic() - started
    assert code == 0, err
    current = sorted(lab.node(n).raft_address for n in voters(lab) if n != name)
    restarted = since_last_switch(lab, name)
    assert f"started: voters {', '.join(current)}," in restarted, restarted
    assert "differs from the voters given" not in restarted
    until(f"{name} a voter member", lambda: lab.status(name)["member"])
    with capsys.disabled():
        print(f"\nadd-voter {name} again (a voter before): {took:.2f} s")
    return took


def notify(lab: Lab, via: str, day: int) -> dict[str, Any]:
    return lab.admin(via, "notification.create", {
        "type": "VM", "hostname": via, "generated_time": f"2024-01-{day:02d}T00:00:00Z",
        "payload": {"event": "LIFECYCLE", "instance_uuid": str(uuid.uuid4()),
                    "vir_domain_event": "STOPPED_FAILED"}})


def test_add_voter_promotes_a_non_voter_through_a_re_exec(lab: Lab, capsys):
    until("every node registered", lambda: registered(lab))
    pid = lab.node("node4").pid
    started = time.monotonic()
    code, out, err = ctl(lab, "node2", "raft", "add-voter", "node4", capsys=capsys)
    took = time.monotonic() - started
    assert code == 0, err
    assert out.startswith("Voter added: node4 (" + lab.node("node4").raft_address)
    with capsys.disabled():
        print(f"\nadd-voter node4 (re-exec, catch-up, membership change, commit): {took:.2f} s")
    # The same process (pid) now runs as a Raft voter and counts toward quorum.
    assert lab.node("node4").pid == pid and lab.state("node4") == "running"
    until("node4 a voter member", lambda: lab.status("node4")["role"] in ("follower", "leader")
          and lab.status("node4")["member"])
    view = lab.admin("node3", "raft.voters")
    assert sorted(v["node"] for v in view["voters"]) == ["node1", "node2", "node3", "node4"]
    assert sorted(view["members"]) == sorted(lab.node(n).raft_address
                                             for n in ("node1", "node2", "node3", "node4"))
    assert {v["node"]: v["failure_domain"] for v in view["voters"]}["node4"] == "rack-b"
    assert view["last_change"]["op"] == "add" and view["last_change"]["result"] == "committed"
    assert [e["node"] for e in view["eligible"]] == ["node5", "node6"]
    code, out, _ = ctl(lab, "node5", "raft", "voters", capsys=capsys)
    assert code == 0 and "Voters (4, target 3, autopilot off):" in out
    # The non-voter follows the committed set: it forwards to node4 too, and reads through it.
    until("node5 knowing 4 voters", lambda: len(lab.status("node5")["voter_set"]["voters"]) == 4)
    # A commit now needs 3 of the 4 voters; it still commits.
    assert notify(lab, "node5", 1)["committed"]


def test_refusals_say_why_exit_1_and_change_nothing(lab: Lab, capsys):
    before = lab.admin("node1", "raft.voters")
    leader = lab.leader()
    follower = next(n for n in ("node1", "node2", "node3") if n != leader)
    for argv, why in ((("add-voter", "node9"), "unknown node node9: not registered"),
                      (("add-voter", "node2"), "already a voter"),
                      (("remove-voter", "node5"), "is not a voter"),
                      (("remove-voter", leader), "is the leader")):
        code, out, err = ctl(lab, follower, "raft", *argv, capsys=capsys)
        assert code == 1 and why in err and not out, (argv, err)
    # From a non-voter: refused, naming where to go.
    code, _, err = ctl(lab, "node5", "raft", "remove-voter", "node4", capsys=capsys)
    assert code == 1 and "this node is a non-voter" in err
    # A candidate that never catches up (stopped): the add is aborted after catchup_timeout;
    # a second change while it is in flight is refused.
    lab.stop("node5")
    try:
        answer: dict[str, Any] = {}

        def add() -> None:
            answer["code"] = hagentctl(["--socket", lab.node(leader).admin_socket, "raft",
                                        "add-voter", "node5"])

        adding = threading.Thread(target=add)
        adding.start()
        until("the add of node5 in flight",
              lambda: (lab.admin(follower, "raft.voters")["change"] or {}).get("node") == "node5")
        code, out, err = ctl(lab, follower, "raft", "remove-voter", "node4", capsys=capsys)
        assert code == 1 and "another change is in flight: add of node5" in err, err
        adding.join(CATCHUP_TIMEOUT + 20)
        assert answer["code"] == 1
        err = capsys.readouterr().err
        assert f"add node5 aborted: node5 did not catch up within {CATCHUP_TIMEOUT:g} s" in err
    finally:
        lab.start("node5")
        lab.wait_ready(["node5"])
    after = lab.admin("node1", "raft.voters")
    assert after["voters"] == before["voters"] and after["members"] == before["members"]
    assert after["last_change"]["result"] == "aborted"
    assert lab.status("node5")["role"] == "replica"  # it never became a voter


def test_a_new_leader_aborts_an_add_the_old_one_was_watching(lab: Lab, capsys):
    """An add in flight (its candidate stopped, so it stays in flight) when the leader dies:
    the next leader finds it begun under an older term and not done in Raft, and aborts it;
    the operator's hagentctl (waiting on a follower) exits 1 with that reason."""
    before = sorted(voters(lab))
    lab.stop("node6")
    leader = lab.leader()
    follower = next(n for n in before if n != leader)
    try:
        answer: dict[str, Any] = {}

        def add() -> None:
            answer["code"] = hagentctl(["--socket", lab.node(follower).admin_socket, "raft",
                                        "add-voter", "node6"])

        adding = threading.Thread(target=add)
        adding.start()
        until("the add of node6 in flight",
              lambda: (lab.admin(follower, "raft.voters")["change"] or {}).get("node") == "node6")
        lab.crash(leader)
        adding.join(DEADLINE)
        assert answer["code"] == 1
        err = capsys.readouterr().err
        assert "add node6 aborted: the leader changed while node6 was catching up" in err, err
    finally:
        lab.start(leader)
        lab.start("node6")
        lab.wait_ready([leader, "node6"])
    assert sorted(voters(lab)) == before
    assert lab.status("node6")["role"] == "replica"


def test_remove_voter_demotes_it_and_the_floor_of_three_holds(lab: Lab, capsys):
    not_leading(lab, "node4")  # the last test's election may have made it the leader
    pid = lab.node("node4").pid
    started = time.monotonic()
    code, out, err = ctl(lab, "node1", "raft", "remove-voter", "node4", capsys=capsys)
    took = time.monotonic() - started
    assert code == 0 and out.startswith("Voter removed: node4"), err
    with capsys.disabled():
        print(f"\nremove-voter node4 (membership change, commit; it re-execs after): {took:.2f} s")
    assert sorted(voters(lab)) == ["node1", "node2", "node3"]
    # node4 applied its removal and re-executed as a non-voter, same pid.
    until("node4 a non-voter again", lambda: lab.status("node4")["role"] == "replica"
          and lab.status("node4")["ready"])
    assert lab.node("node4").pid == pid
    # A non-voter keeps no Raft state: its old log's voter set would outlive the set it is
    # given when it is promoted again.
    assert raft_files(lab, "node4") == []
    assert "removed the Raft state it kept as one" in since_last_switch(lab, "node4")
    leader = lab.leader()
    other = next(n for n in ("node1", "node2", "node3") if n != leader)
    code, _, err = ctl(lab, leader, "raft", "remove-voter", other, capsys=capsys)
    assert code == 1 and "would leave 2 voter(s); a manual change keeps at least 3" in err
    assert sorted(voters(lab)) == ["node1", "node2", "node3"]
    for argv in (("raft", "add-voter"), ("raft", "remove-voter", "a", "b")):
        with pytest.raises(SystemExit) as exc:
            ctl(lab, "node1", *argv, capsys=capsys)
        assert exc.value.code == 2


def test_a_whole_lab_killed_and_restarted_keeps_the_committed_voter_set(lab: Lab, capsys):
    """Promote node4, demote bootstrap voter node1 (not the leader: ask from it, pick another
    leader first if needed), so the committed set {node2, node3, node4} differs from every
    config's raft.voters; then SIGKILL every agent and start them all again."""
    not_leading(lab, "node1")
    promote_again(lab, "node4", capsys)  # added, removed, added again
    code, _, err = ctl(lab, "node2", "raft", "remove-voter", "node1", capsys=capsys)
    assert code == 0, err
    until("node1 a non-voter", lambda: lab.status("node1")["role"] == "replica")
    committed = sorted(voters(lab, "node2"))
    assert committed == ["node2", "node3", "node4"]
    note = notify(lab, "node5", 2)["notification"]
    for name in lab.names:
        lab.crash(name)
    for name in lab.names:
        lab.start(name)
    lab.wait_ready()
    leader = lab.leader(timeout=20.0)
    assert leader in ("node2", "node3", "node4")
    for name in lab.names:
        assert sorted(voters(lab, name)) == committed, name
    roles = {name: lab.status(name)["role"] for name in lab.names}
    assert roles["node1"] == roles["node5"] == roles["node6"] == "replica", roles
    # node1's config still names it a voter: it follows the log and says so in its log.
    since_restart = Path(lab.node("node1").log).read_text().rsplit(START_MARKER, 1)[-1]
    assert "differs from raft.voters in the config" in since_restart
    assert lab.admin("node1", "notification.show",
                     {"notification_uuid": note["notification_uuid"]})["hostname"] == "node5"


def test_non_voters_find_the_log_after_every_original_voter_was_replaced(lab: Lab, capsys):
    """From {node2, node3, node4}: add node5, remove node2, add node6, remove node3. The
    original voters are then non-voters whose configs name only themselves as voters: they
    reach the log through the voters' records they saved, also after a restart."""
    for kind, node in (("add", "node5"), ("remove", "node2"), ("add", "node6"),
                       ("remove", "node3")):
        if kind == "remove":
            not_leading(lab, node)
        via = lab.leader()
        code, _, err = ctl(lab, via, "raft", f"{kind}-voter", node, capsys=capsys)
        assert code == 0, (kind, node, err)
    assert sorted(voters(lab, "node4")) == ["node4", "node5", "node6"]
    originals = ["node1", "node2", "node3"]
    until("the originals non-voters", lambda: all(lab.status(n)["role"] == "replica"
                                                  for n in originals))
    for name in originals:
        lab.crash(name)
    for name in originals:
        lab.start(name)
    lab.wait_ready(originals)
    new_set = sorted(lab.node(n).raft_address for n in ("node4", "node5", "node6"))
    for name in originals:
        status = lab.status(name)
        assert status["role"] == "replica" and status["forward_voter"] in new_set, status
        assert sorted(voters(lab, name)) == ["node4", "node5", "node6"]
    assert notify(lab, "node2", 3)["committed"]


def test_a_voter_removed_while_down_whose_saved_set_names_no_leader_comes_back(lab: Lab,
                                                                             capsys):
    """node1 is promoted, stopped, and removed while down; its saved voter set (edited here
    to name no leader, as after the set moved on while it was away) reaches only followers,
    which never send it the log. It hears no leader, asks the voters it knows, learns it is
    out and comes back as a non-voter, before its lease would have fenced its host."""
    from consensus import voterfile

    # node1 was removed before the set moved on to {node4, node5, node6}: its old log's set
    # ({node2, node3, node4}) names two non-voters now.
    promote_again(lab, "node1", capsys)
    lab.stop("node1")
    leader = lab.leader()
    code, _, err = ctl(lab, leader, "raft", "remove-voter", "node1", capsys=capsys)
    assert code == 0, err
    saved = Path(lab.node("node1").config).parent / "state" / "voters.json"
    gone = lab.node(leader).raft_address
    before = voterfile.load(saved)
    assert gone in before.voters and lab.node("node1").raft_address in before.voters
    voterfile.update(saved, voters=[a for a in before.voters if a != gone],
                     records=[r for r in before.extra["records"] if r["raft_address"] != gone])
    started = time.monotonic()
    lab.start("node1")
    until("node1 a ready non-voter", lambda: lab.status("node1")["role"] == "replica"
          and lab.status("node1")["ready"])
    with capsys.disabled():
        print(f"\nremoved voter back as a non-voter {time.monotonic() - started:.2f} s after "
              f"its start")
    assert lab.power_state("node1")["on"] and lab.state("node1") == "running"
    log_text = Path(lab.node("node1").log).read_text().rsplit(START_MARKER, 1)[-1]
    assert "as a voter that knows the leader says" in log_text
    assert "self-fencing" not in log_text
    assert sorted(voters(lab, "node1")) == ["node4", "node5", "node6"]
    # Back as a non-voter it dropped the log it kept while it was away (it never learned its
    # removal from it), and its next promotion starts from the current set.
    assert "removed the Raft state it kept as one" in since_last_switch(lab, "node1")
    promote_again(lab, "node1", capsys)
