"""The leader's side of a voter change (hagent.voters.changer.ChangeDriver), without I/O:
bootstrap, an add that waits for a fresh close catch-up report, its timeout, a remove that
keeps a reachable majority, reconciling a half-done change after a leader change, and the
one-action-at-a-time rule with its timeout."""
from __future__ import annotations

from typing import Any

from hagent.voters.changer import (
    ADD, KIND, REMOVE, AddMember, ChangeDriver, LeaderView, Propose, RemoveMember)

A, B, C, D = (f"10.0.0.{i}:7170" for i in range(1, 5))
T0 = 1_700_000_000.0


def change(kind: str, node: str, address: str, term: int = 5, started_at: float = T0,
           progress: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"op": kind, "node": node, "address": address, "phase": "catching_up",
            "term": term, "started_at": started_at, "progress": progress}


def view(ch: dict[str, Any] | None = None, *, members=(A, B, C), reachable=None, term: int = 5,
         commit: int = 1000, wall: float = T0 + 1, mono: float = 100.0,
         bootstrapped: bool = True) -> LeaderView:
    return LeaderView(term=term, self_address=A,
                      voters={"bootstrapped": bootstrapped, "change": ch},
                      members=frozenset(members),
                      reachable=frozenset(members if reachable is None else reachable),
                      commit_index=commit, wall=wall, mono=mono)


def driver(**kw: Any) -> ChangeDriver:
    return ChangeDriver(max_catchup_lag=kw.pop("lag", 100), catchup_timeout=kw.pop("timeout", 60.0),
                        **kw)


def test_the_first_leader_writes_its_voter_set_into_the_log():
    d = driver()
    action = d.step(view(bootstrapped=False))
    assert action == Propose({"op": "voters.bootstrap", "voters": sorted([A, B, C])})
    assert d.step(view(bootstrapped=False)) is None  # one action at a time
    d.done(action, True)
    assert d.step(view()) is None  # bootstrapped, nothing in flight


def test_an_add_waits_for_a_fresh_report_within_the_lag_then_adds_and_commits():
    d = driver(lag=100)
    ch = change(ADD, "node4", D)
    assert d.step(view(ch)) is None  # no report yet
    far = change(ADD, "node4", D, progress={"applied": 700, "leader_commit": 900, "at": T0 + 1})
    assert d.step(view(far, commit=1000)) is None  # 300 behind
    close = change(ADD, "node4", D, progress={"applied": 950, "leader_commit": 990, "at": T0 + 2})
    action = d.step(view(close, commit=1000, mono=101.0))
    assert action == AddMember(D)
    assert d.step(view(close, commit=1000, mono=101.5)) is None  # waiting for pysyncobj
    d.done(action, True)
    # pysyncobj has it now: commit with this leader's term.
    assert d.step(view(close, members=(A, B, C, D), mono=102.0)) == Propose(
        {"op": "voters.commit", KIND: ADD, "node": "node4", "term": 5})


def test_a_stale_report_does_not_promote_even_when_close():
    d = driver(lag=100)
    ch = change(ADD, "node4", D, progress={"applied": 1000, "leader_commit": 1000, "at": T0})
    assert d.step(view(ch, commit=1200, mono=100.0)) is None  # first seen 200 behind
    # The same report, 5 s later by the leader's clock, even though the commit index would
    # now make it look close: stale, so it says nothing about the candidate now.
    assert d.step(view(ch, commit=1000, mono=105.0)) is None
    fresh = change(ADD, "node4", D, progress={"applied": 1000, "leader_commit": 1000, "at": T0 + 5})
    assert d.step(view(fresh, commit=1000, mono=105.5)) == AddMember(D)


def test_an_add_that_does_not_catch_up_in_time_is_aborted_with_the_lag():
    d = driver(lag=100, timeout=60.0)
    ch = change(ADD, "node4", D, progress={"applied": 10, "leader_commit": 900, "at": T0 + 59})
    action = d.step(view(ch, commit=1000, wall=T0 + 61))
    assert isinstance(action, Propose) and action.command["op"] == "voters.abort"
    assert action.command["node"] == "node4"
    assert "did not catch up within 60 s (last lag 990 entries" in action.command["reason"]
    silent = driver(timeout=60.0).step(view(change(ADD, "node4", D), wall=T0 + 61))
    assert "no catch-up report" in silent.command["reason"]


def test_a_failed_membership_change_is_retried_on_the_next_step():
    d = driver()
    ch = change(ADD, "node4", D, progress={"applied": 1000, "leader_commit": 1000, "at": T0})
    action = d.step(view(ch))
    d.done(action, False, "REQUEST_DENIED")
    assert "REQUEST_DENIED" in d.last_error
    assert d.step(view(ch, mono=100.5)) == AddMember(D)


def test_an_action_without_an_answer_is_given_up_after_the_timeout():
    d = driver(action_timeout=10.0)
    ch = change(REMOVE, "node3", C)
    first = d.step(view(ch, mono=100.0))
    assert first == RemoveMember(C)
    assert d.step(view(ch, mono=109.0)) is None
    assert d.step(view(ch, mono=110.5)) == RemoveMember(C)  # looked again
    d.done(first, True)  # the late answer to the abandoned action is ignored
    assert d.busy == RemoveMember(C)


def test_a_remove_keeps_a_reachable_majority_or_is_aborted():
    d = driver()
    assert d.step(view(change(REMOVE, "node3", C), members=(A, B, C, D))) == RemoveMember(C)
    # 3 voters, one unreachable: removing a reachable one leaves 1 of 2 answering.
    d = driver()
    action = d.step(view(change(REMOVE, "node2", B), members=(A, B, C), reachable=(A, B)))
    assert action.command["op"] == "voters.abort"
    assert "only 1 answer the leader: no majority" in action.command["reason"]
    assert action.command["term"] == 5  # a deposed leader's abort is refused by the log
    # The leader itself: pysyncobj would ignore it, so it is aborted with the reason.
    action = driver().step(view(change(REMOVE, "node1", A)))
    assert "node1 is the leader" in action.command["reason"]
    # Removing the unreachable one itself is fine: both left answer.
    d = driver()
    assert d.step(view(change(REMOVE, "node3", C), members=(A, B, C), reachable=(A, B))) == \
        RemoveMember(C)


def test_a_remove_already_done_in_the_cluster_is_committed():
    d = driver()
    assert d.step(view(change(REMOVE, "node3", C), members=(A, B))) == Propose(
        {"op": "voters.commit", KIND: REMOVE, "node": "node3", "term": 5})


def test_a_new_leader_reconciles_a_change_begun_under_an_earlier_term():
    # add: done in pysyncobj before the old leader could commit it -> commit.
    ch = change(ADD, "node4", D, term=4)
    assert driver().step(view(ch, members=(A, B, C, D), term=6)) == Propose(
        {"op": "voters.commit", KIND: ADD, "node": "node4", "term": 6})
    # add: not done -> abort (its catch-up was watched by a leader that is gone).
    action = driver().step(view(ch, term=6))
    assert action.command["op"] == "voters.abort" and "leader changed" in action.command["reason"]
    # remove: not done -> remove again; done -> commit.
    rm = change(REMOVE, "node3", C, term=4)
    assert driver().step(view(rm, term=6)) == RemoveMember(C)
    assert driver().step(view(rm, members=(A, B), term=6)).command["op"] == "voters.commit"


def test_losing_leadership_forgets_what_was_in_flight():
    d = driver()
    d.step(view(change(REMOVE, "node3", C)))
    d.reset()
    assert d.busy is None


def test_the_drivers_commands_carry_changes_through_the_real_state():
    """Driver and ClusterState together, pysyncobj's cluster a set: bootstrap, register, an
    add that commits after catch-up, a remove, and refusals the log makes itself."""
    from consensus.state import ClusterState

    state = ClusterState()
    members = {A, B, C}
    clock = [T0]

    def apply(command: dict[str, Any]) -> dict[str, Any]:
        clock[0] += 0.1
        return state.apply({"at": clock[0], **command})

    def run(d: ChangeDriver, term: int = 5, commit: int = 1000) -> None:
        """Step the driver until it has nothing to do, carrying out each action."""
        for _ in range(20):
            action = d.step(LeaderView(term=term, self_address=A, voters=state.voters(),
                                       members=frozenset(members), reachable=frozenset(members),
                                       commit_index=commit, wall=clock[0], mono=clock[0]))
            if action is None:
                return
            if isinstance(action, Propose):
                answer = apply(action.command)
                d.done(action, answer["ok"], answer.get("error"))
            elif isinstance(action, AddMember):
                members.add(action.address)
                d.done(action, True)
            else:
                members.discard(action.address)
                d.done(action, True)
        raise AssertionError("the driver did not settle")

    d = driver()
    run(d)
    assert state.voters()["bootstrapped"] and len(state.voters()["voters"]) == 3
    for i, address in enumerate((A, B, C, D), start=1):
        assert apply({"op": "voters.register", "node": f"node{i}", "raft_address": address,
                      "forward_address": address.replace("7170", "7171"),
                      "public_key": f"key{i}"})["ok"]
    assert apply({"op": "voters.change", KIND: ADD, "node": "node4", "term": 5,
                  "leader": "node1"})["ok"]
    # A second change while one is in flight is refused by the log, with the reason.
    refused = apply({"op": "voters.change", KIND: REMOVE, "node": "node2", "term": 5})
    assert not refused["ok"] and "another change is in flight" in refused["error"]
    run(d)
    assert D not in members  # no report yet
    assert apply({"op": "voters.progress", "node": "node4", "applied": 990,
                  "leader_commit": 995})["ok"]
    run(d)
    view = state.voters()
    assert D in members and view["change"] is None
    assert [v["node"] for v in view["voters"]] == ["node1", "node2", "node3", "node4"]
    assert view["last_change"]["result"] == "committed" and view["last_change"]["op"] == ADD
    assert apply({"op": "voters.change", KIND: REMOVE, "node": "node4", "term": 5,
                  "leader": "node1"})["ok"]
    run(d)
    assert members == {A, B, C} and len(state.voters()["voters"]) == 3
    # The leader itself and below three voters are refused by the log.
    for node, why in (("node1", "is the leader"), ("node2", "would leave 2 voter(s)")):
        answer = apply({"op": "voters.change", KIND: REMOVE, "node": node, "term": 5,
                        "leader": "node1"})
        assert not answer["ok"] and why in answer["error"], answer


def test_the_changers_status_names_the_action_waited_on_and_the_last_failure():
    from hagent.voters.changer import VoterChanger

    changer = VoterChanger(None, max_catchup_lag=100, catchup_timeout=60.0)
    assert changer.status() == {"action": None, "last_error": None}
    action = changer.driver.step(view(change(REMOVE, "node3", C)))
    assert changer.status()["action"] == f"RemoveMember({C})"
    changer.driver.done(action, False, "NOT_LEADER")
    assert changer.status() == {"action": None,
                                "last_error": f"RemoveMember({C}) failed: NOT_LEADER"}
