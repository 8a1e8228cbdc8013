"""The voter set in the replicated state (``voters.*`` ops, query ``voters``): one change at a
time, refusals that change nothing, term stamps, idempotent resends, snapshots."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest

from consensus.state import ClusterState
from test_state_support import AT, ok, refused

A, B, C, D, E = (f"10.0.0.{i}:7170" for i in range(1, 6))


def register(node: str, address: str, domain: str = "", **kw: Any) -> dict[str, Any]:
    return {"op": "voters.register", "at": AT, "node": node, "raft_address": address,
            "forward_address": address.replace("7170", "7171"), "public_key": f"key-{node}",
            "failure_domain": domain, **kw}


def change(kind: str, node: str, term: int = 2, **kw: Any) -> dict[str, Any]:
    return {"op": "voters.change", "at": AT + 1, "change": kind, "node": node, "term": term,
            **kw}


def commit(kind: str, node: str, term: int = 2) -> dict[str, Any]:
    return {"op": "voters.commit", "at": AT + 3, "change": kind, "node": node, "term": term}


def abort(node: str, reason: str = "timed out", **kw: Any) -> dict[str, Any]:
    return {"op": "voters.abort", "at": AT + 3, "node": node, "reason": reason, **kw}


def progress(node: str, applied: int, leader_commit: int) -> dict[str, Any]:
    return {"op": "voters.progress", "at": AT + 2, "node": node, "applied": applied,
            "leader_commit": leader_commit}


def three_voters() -> ClusterState:
    """Voters n1..n3 at A, B, C; n4 (D) and n5 (E) registered, eligible."""
    state = ClusterState()
    for node, address in zip(("n1", "n2", "n3", "n4", "n5"), (A, B, C, D, E)):
        ok(state, register(node, address, domain="rack2" if node == "n5" else "rack1"))
    ok(state, {"op": "voters.bootstrap", "at": AT, "voters": [A, B, C]})
    return state


def addresses(state: ClusterState) -> list[str]:
    return [v["raft_address"] for v in state.voters()["voters"]]


def test_query_of_a_fresh_state():
    assert ClusterState().voters() == {"voters": [], "registry": {}, "change": None,
                                       "last_change": None, "bootstrapped": False, "term": 0}


def test_bootstrap_sets_the_voters_once_and_joins_the_registry():
    state = ClusterState()
    ok(state, register("n1", A, domain="rack1"))
    assert ok(state, {"op": "voters.bootstrap", "at": AT, "voters": [A, B, C]}) == {
        "changed": True, "voters": [A, B, C]}
    # a later leader's bootstrap changes nothing
    assert ok(state, {"op": "voters.bootstrap", "at": AT, "voters": [D]}) == {
        "changed": False, "voters": [A, B, C]}
    view = state.voters()
    assert view["bootstrapped"] is True
    assert view["voters"][0] == {"node": "n1", "raft_address": A, "forward_address":
                                 "10.0.0.1:7171", "public_key": "key-n1",
                                 "failure_domain": "rack1"}
    assert view["voters"][1] == {"node": None, "raft_address": B, "forward_address": None,
                                 "public_key": None, "failure_domain": None}


@pytest.mark.parametrize("voters,fragment", [
    ([], "non-empty list"),
    ("10.0.0.1:7170", "non-empty list"),
    ([A, A], "twice"),
    (["10.0.0.1"], "host:port"),
    (["10.0.0.1:0"], "host:port"),
    (["10.0.0.1:70000"], "host:port"),
    ([":7170"], "host:port"),
    (["a b:7170"], "host:port"),
])
def test_bootstrap_refuses_bad_sets(voters, fragment):
    refused(ClusterState(), {"op": "voters.bootstrap", "at": AT, "voters": voters}, fragment)


def test_register_is_idempotent_and_keeps_the_first_time():
    state = ClusterState()
    first = ok(state, register("n4", D, domain="rack1"))
    assert first["registered_at"] == AT
    assert ok(state, {**register("n4", D, domain="rack1"), "at": AT + 50}) == first
    # a new key or domain is an update
    updated = ok(state, {**register("n4", D, domain="rack2"), "at": AT + 60})
    assert updated["failure_domain"] == "rack2" and updated["registered_at"] == AT + 60
    assert state.voters()["registry"]["n4"] == updated


def test_register_refusals():
    state = three_voters()
    refused(state, register("n9", A), "raft address 10.0.0.1:7170 is registered to node n1")
    refused(state, register("n1", "10.0.0.9:7170"), "n1 is a voter at 10.0.0.1:7170")
    ok(state, change("add", "n4"))
    refused(state, register("n4", "10.0.0.9:7170"), "target of the add in flight")
    refused(state, register("n6", "nonsense"), "raft_address", "host:port")
    refused(state, {**register("n6", "10.0.0.6:7170"), "public_key": ""}, "public_key")
    refused(state, {**register("n6", "10.0.0.6:7170"), "extra": 1}, "unexpected argument")
    # a node that is neither a voter nor a target may move
    assert ok(state, register("n5", "10.0.0.9:7170"))["raft_address"] == "10.0.0.9:7170"


def test_add_runs_catching_up_progress_commit():
    state = three_voters()
    started = ok(state, change("add", "n4"))
    assert started == {"op": "add", "node": "n4", "address": D, "phase": "catching_up",
                       "term": 2, "started_at": AT + 1, "auto": False, "progress": None}
    assert ok(state, progress("n4", 40, 100))["progress"] == {
        "applied": 40, "leader_commit": 100, "lag": 60, "at": AT + 2}
    # a report of an applied index past the leader's commit as heard: lag 0, not negative
    assert ok(state, progress("n4", 101, 100))["progress"]["lag"] == 0
    assert addresses(state) == [A, B, C]  # not a voter until the commit
    last = ok(state, commit("add", "n4"))
    assert last == {"op": "add", "node": "n4", "address": D, "result": "committed",
                    "reason": None, "term": 2, "at": AT + 3, "auto": False}
    view = state.voters()
    assert addresses(state) == [A, B, C, D] and view["change"] is None
    assert view["last_change"] == last and view["term"] == 2
    assert view["voters"][3]["node"] == "n4"
    # the same commit resent (its answer was lost) returns the record, changes nothing
    assert ok(state, commit("add", "n4")) == last
    # progress after the commit is refused: the candidate learns it is done
    refused(state, progress("n4", 120, 120), "no add of n4 is in flight")


def test_remove_by_name_or_by_address_of_an_unregistered_voter():
    state = three_voters()
    ok(state, change("add", "n4"))
    ok(state, commit("add", "n4"))
    assert ok(state, change("remove", "n2", term=3))["phase"] == "removing"
    ok(state, commit("remove", "n2", term=3))
    assert addresses(state) == [A, C, D]
    state = three_voters()
    ok(state, change("add", "n4"))
    ok(state, commit("add", "n4"))
    bare = ClusterState.from_snapshot(state.to_snapshot())
    # C never registered in this state: a remove may name its address
    snap = bare.to_snapshot()
    snap["voters"]["registry"] = [r for r in snap["voters"]["registry"] if r["node"] != "n3"]
    bare = ClusterState.from_snapshot(snap)
    assert bare.voters()["voters"][2]["node"] is None
    ok(bare, change("remove", C, term=3))
    assert ok(bare, commit("remove", C, term=3))["address"] == C
    assert addresses(bare) == [A, B, D]


def test_change_refusals_change_nothing():
    state = three_voters()
    refused(ClusterState(), change("add", "n4"), "not bootstrapped")
    refused(state, change("add", "n9"), "unknown node n9", "not registered")
    refused(state, change("add", "n1"), "n1 (10.0.0.1:7170) is already a voter")
    refused(state, change("remove", "n4"), "n4 (10.0.0.4:7170) is not a voter")
    refused(state, change("remove", "10.0.0.9:7170"), "unknown node")
    refused(state, change("remove", "n1", leader="n1"), "n1 is the leader")
    refused(state, change("remove", A, leader="n1"), "is the leader")
    refused(state, change("remove", "n2"), "would leave 2 voter(s)", "manual change",
            "at least 3")
    refused(state, change("swap", "n4"), "argument 'change'")
    refused(state, change("add", "n4", term=-1), "argument 'term'")
    refused(state, {**change("add", "n4"), "auto": "maybe"}, "argument 'auto'")
    # the autopilot may go to 2 voters, not to 1
    ok(state, change("remove", "n2", auto=True))
    assert ok(state, commit("remove", "n2"))["auto"] is True
    refused(state, change("remove", "n3", auto=True), "would leave 1 voter(s)", "autopilot")


def test_one_change_at_a_time_and_a_resend_is_not_a_second_change():
    state = three_voters()
    first = ok(state, change("add", "n4"))
    assert ok(state, change("add", "n4")) == first  # resend: same op, node, term
    refused(state, change("add", "n5"), "another change is in flight: add of n4",
            "phase catching_up")
    refused(state, change("add", "n4", term=3), "another change is in flight")
    refused(state, change("remove", "n1", auto=True), "another change is in flight")
    ok(state, abort("n4"))
    assert ok(state, change("add", "n5"))["node"] == "n5"


def test_commit_and_abort_must_match_the_change_in_flight():
    state = three_voters()
    refused(state, commit("add", "n4"), "no add of n4 is in flight")
    refused(state, abort("n4"), "no change of n4 is in flight")
    ok(state, change("add", "n4"))
    refused(state, commit("remove", "n4"), "no remove of n4 is in flight")
    refused(state, commit("add", "n5"), "no add of n5 is in flight")
    refused(state, progress("n5", 1, 2), "no add of n5 is in flight")
    refused(state, progress("n4", -1, 2), "argument 'applied'")
    # the change's address names it too
    assert ok(state, progress(D, 5, 6))["progress"]["lag"] == 1


def test_terms_stale_leaders_cannot_commit_or_abort_what_a_newer_one_took_over():
    state = three_voters()
    ok(state, change("add", "n4", term=5))
    # a commit from before the change's term: refused
    refused(state, commit("add", "n4", term=4), "stale term")
    # a newer leader reconciles the half-done change: commits it at its own term
    assert ok(state, commit("add", "n4", term=7))["term"] == 7
    assert state.voters()["term"] == 7
    # the deposed leader of term 5 cannot start (or abort) anything now
    refused(state, change("remove", "n1", term=5), "stale term", "older than term 7")
    ok(state, change("remove", "n1", term=7))
    refused(state, abort("n1", term=6), "stale term")
    last = ok(state, abort("n1", reason="majority unreachable", term=8))
    assert last["result"] == "aborted" and last["reason"] == "majority unreachable"
    assert last["term"] == 8 and state.voters()["term"] == 8
    # resent abort: same record; the voter set is untouched
    assert ok(state, abort("n1", reason="majority unreachable", term=8)) == last
    assert addresses(state) == [A, B, C, D]


def test_abort_without_term_keeps_the_change_term():
    state = three_voters()
    ok(state, change("add", "n4", term=3, auto=True))
    last = ok(state, abort("n4", reason="n4 did not catch up within 60 s"))
    assert last == {"op": "add", "node": "n4", "address": D, "result": "aborted",
                    "reason": "n4 did not catch up within 60 s", "term": 3, "at": AT + 3,
                    "auto": True}
    refused(state, abort("n4", reason="x" * 1001), "at most 1000")


def test_snapshot_round_trip_keeps_change_in_flight_and_history():
    state = three_voters()
    ok(state, change("add", "n4", term=4))
    ok(state, commit("add", "n4", term=4))
    ok(state, change("remove", "n2", term=4, auto=True))
    refused(state, progress("n2", 1, 1), "no add of n2")
    data = msgpack.unpackb(msgpack.packb(state.to_snapshot()))
    restored = ClusterState.from_snapshot(data)
    assert restored == state and restored.voters() == state.voters()
    # and it goes on the same way
    for s in (state, restored):
        refused(s, change("add", "n5", term=4), "another change is in flight")
        ok(s, commit("remove", "n2", term=4))
        assert addresses(s) == [A, C, D]
    assert restored == state


def test_query_is_a_copy():
    state = three_voters()
    ok(state, change("add", "n4"))
    ok(state, progress("n4", 1, 2))
    view = state.voters()
    view["voters"].clear()
    view["registry"]["n1"]["raft_address"] = "x"
    view["change"]["progress"]["lag"] = 99
    assert addresses(state) == [A, B, C]
    assert state.voters()["registry"]["n1"]["raft_address"] == A
    assert state.voters()["change"]["progress"]["lag"] == 1
