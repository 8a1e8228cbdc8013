"""ClusterState: the recovery engine's replicated ops (recovery.claim, recovery.intent,
recovery.result), term fencing, attempts, and the steps a notification record shows."""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings, strategies as st

from consensus.model import STALE_TERM
from consensus.state import ClusterState
from test_state_support import (
    AT, claim, cluster, intent, ok, refused, result, submit, transition, uid,
)

VM = uid("vm/1")


def _running(label: str = "a", term: int | None = 2) -> ClusterState:
    """node1's notification ``label`` running, and (unless term is None) a claim of ``term``."""
    state = cluster()
    ok(state, submit(label))
    ok(state, transition(label, "running"))
    if term is not None:
        ok(state, claim(term))
    return state


# --- recovery.claim ---------------------------------------------------------------------------

def test_claims_keep_the_highest_term():
    state = cluster()
    assert state.recovery_claim() is None
    assert ok(state, claim(3, "n1")) == {"term": 3, "node": "n1",
                                         "claimed_at": "2024-05-01T10:00:03.000000+00:00"}
    assert ok(state, claim(5, "n2"))["node"] == "n2"
    error = refused(state, claim(4, "n1"), STALE_TERM, "claimed term 5 (node n2)")
    assert error.startswith("recovery.claim: stale term")
    assert state.recovery_claim()["term"] == 5


def test_a_claim_resent_is_unchanged_and_a_term_has_one_claimant():
    state = cluster()
    first = ok(state, claim(2, "n1"))
    assert ok(state, claim(2, "n1", at=AT + 50)) == first
    refused(state, claim(2, "n2"), "term 2 is already claimed by node n1")


@pytest.mark.parametrize("cmd,fragment", [
    (claim(-1), "'term' must be an integer"),
    (claim(True), "'term' must be an integer"),
    (claim("3"), "'term' must be an integer"),
    (claim(2**63), "'term' must be an integer"),
    (claim(1, node=""), "'node' must be a string"),
    (claim(1, extra=1), "unexpected argument 'extra'"),
    ({"op": "recovery.claim", "at": AT, "term": 1}, "missing argument 'node'"),
])
def test_bad_claims_are_refused(cmd, fragment):
    refused(cluster(), cmd, fragment)


# --- recovery.intent / recovery.result -------------------------------------------------------

def test_intent_then_result_is_shown_as_one_step_of_the_notification():
    state = _running()
    step = ok(state, intent("a", "evacuate", VM, 2, detail="vm_state=active"))
    assert step == {"step": "evacuate", "key": VM, "term": 2, "attempt": 1,
                    "detail": "vm_state=active", "outcome": None, "outcome_detail": None,
                    "outcome_term": None, "started_at": "2024-05-01T10:00:04.000000+00:00",
                    "ended_at": None}
    done = ok(state, result("a", "evacuate", VM, 2, detail="ACTIVE on node2"))
    assert done["outcome"] == "done" and done["outcome_detail"] == "ACTIVE on node2"
    assert done["outcome_term"] == 2 and done["ended_at"] == "2024-05-01T10:00:05.000000+00:00"
    record = state.get_notification(uid("n/a"))
    assert record["recovery_steps"] == [done]
    assert record["recovery_attempts"] == 1
    assert record["updated_at"] == done["ended_at"]


def test_intents_need_the_claimed_term():
    state = _running(term=None)
    refused(state, intent("a", "force_down", "node1", 1), "has not claimed recovery")
    ok(state, claim(3))
    error = refused(state, intent("a", "force_down", "node1", 2), STALE_TERM,
                    "older than the claimed term 3")
    assert error.startswith("recovery.intent: stale term")
    refused(state, intent("a", "force_down", "node1", 4), "term 4 has not claimed recovery")
    ok(state, intent("a", "force_down", "node1", 3))


def test_a_deposed_leaders_intent_and_result_change_nothing():
    """Leader of term 2 commits an intent; term 3 claims; the old leader can then neither
    record its result nor start another step."""
    state = _running(term=2)
    ok(state, intent("a", "evacuate", VM, 2))
    ok(state, claim(3, "node2"))
    refused(state, result("a", "evacuate", VM, 2), STALE_TERM)
    refused(state, intent("a", "force_down", "node1", 2), STALE_TERM)
    # the new leader records what Nova shows for the old intent, then may repeat the step
    resumed = ok(state, result("a", "evacuate", VM, 3, outcome="failed",
                               detail="no evacuation seen in Nova"))
    assert (resumed["term"], resumed["outcome_term"]) == (2, 3)
    ok(state, intent("a", "evacuate", VM, 3))
    steps = state.get_notification(uid("n/a"))["recovery_steps"]
    assert [(s["term"], s["outcome"]) for s in steps] == [(2, "failed"), (3, None)]


def test_an_open_intent_of_an_earlier_term_blocks_a_new_one_until_its_result():
    state = _running(term=2)
    ok(state, intent("a", "evacuate", VM, 2))
    ok(state, claim(3))
    refused(state, intent("a", "evacuate", VM, 3), "open intent of term 2",
            "record its result first")
    # other steps and keys are free
    ok(state, intent("a", "evacuate", uid("vm/2"), 3))
    ok(state, intent("a", "stop", VM, 3))


def test_resends_are_no_ops():
    state = _running()
    first = ok(state, intent("a", "force_down", "node1", 2, detail="up"))
    assert ok(state, intent("a", "force_down", "node1", 2, detail="other", at=AT + 9)) == first
    done = ok(state, result("a", "force_down", "node1", 2, detail="forced down"))
    before = state.canonical()
    assert ok(state, result("a", "force_down", "node1", 2, detail="forced down",
                            at=AT + 9)) == done
    assert state.canonical() == before
    # a different result without an open intent is refused
    refused(state, result("a", "force_down", "node1", 2, outcome="failed"), "no open intent")
    # a new intent after the result starts a new step record
    ok(state, intent("a", "force_down", "node1", 2))
    assert len(state.get_notification(uid("n/a"))["recovery_steps"]) == 2


def test_results_must_match_an_intent():
    state = _running()
    refused(state, result("a", "force_down", "node1", 2), "step force_down of node1 has no "
                                                          "open intent")
    ok(state, intent("a", "force_down", "node1", 2))
    refused(state, result("a", "force_down", "node2", 2), "no open intent")
    refused(state, result("a", "disable_service", "node1", 2), "no open intent")


def test_steps_are_recorded_only_while_running():
    state = cluster()
    ok(state, submit("a"))
    ok(state, claim(1))
    refused(state, intent("a", "force_down", "node1", 1), "is new; recovery steps")
    ok(state, transition("a", "running"))
    ok(state, intent("a", "force_down", "node1", 1))
    ok(state, transition("a", "error", message="boom"))
    refused(state, result("a", "force_down", "node1", 1), "is error")
    ok(state, transition("a", "running"))
    ok(state, result("a", "force_down", "node1", 1, outcome="failed"))


def test_attempts_count_each_run_and_steps_carry_theirs():
    state = _running()
    ok(state, intent("a", "force_down", "node1", 2))
    ok(state, result("a", "force_down", "node1", 2, outcome="failed"))
    ok(state, transition("a", "error"))
    ok(state, transition("a", "running"))
    ok(state, intent("a", "force_down", "node1", 2))
    record = state.get_notification(uid("n/a"))
    assert record["recovery_attempts"] == 2
    assert [s["attempt"] for s in record["recovery_steps"]] == [1, 2]
    assert state.list_notifications()[0]["recovery_attempts"] == 2


@pytest.mark.parametrize("cmd,fragment", [
    (intent("a", "", "node1", 2), "'step' must be a string"),
    (intent("a", "evacuate", " x", 2), "'key' must be printable"),
    (intent("a", "evacuate", "node1", 2, detail="x" * 1001), "at most 1000 characters"),
    (intent("a", "evacuate", "node1", 2, detail=5), "'detail' must be a string or null"),
    (intent("a", "evacuate", "node1", 2.0), "'term' must be an integer"),
    (intent("zz", "evacuate", "node1", 2), "no notification"),
    (intent("a", "evacuate", "node1", 2, outcome="done"), "unexpected argument 'outcome'"),
    (result("a", "evacuate", "node1", 2, outcome="ok"), "'outcome' must be one of done, "
                                                        "failed, skipped"),
    ({**result("a", "evacuate", "node1", 2), "outcome": None}, "'outcome' must be one of"),
])
def test_bad_steps_are_refused(cmd, fragment):
    refused(_running(), cmd, fragment)


# --- property: replicas agree, term fencing ------------------------------------------------

_TERMS = st.integers(0, 4)
_OPS = st.one_of(
    st.builds(lambda t, n: claim(t, n), _TERMS, st.sampled_from(["n1", "n2"])),
    st.builds(lambda s, k, t, d: intent("a", s, k, t, detail=d),
              st.sampled_from(["force_down", "evacuate"]), st.sampled_from(["node1", VM]),
              _TERMS, st.sampled_from([None, "x"])),
    st.builds(lambda s, k, t, o: result("a", s, k, t, outcome=o),
              st.sampled_from(["force_down", "evacuate"]), st.sampled_from(["node1", VM]),
              _TERMS, st.sampled_from(["done", "failed", "skipped"])),
    st.sampled_from([transition("a", "error"), transition("a", "running")]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_OPS, min_size=1, max_size=60))
def test_replicas_agree_and_no_stale_term_step_is_ever_recorded(commands):
    """Two replicas fed the same claims, intents and results agree; an intent or result
    whose term is below the highest claim is refused and changes nothing; every accepted
    one carries exactly the highest claimed term; a step and key never has two open
    intents; a result always closes an intent."""
    a, b = _running(term=None), _running(term=None)
    highest: int | None = None
    for command in commands:
        before = a.canonical()
        steps_before = a.get_notification(uid("n/a"))["recovery_steps"]
        answer = a.apply(copy.deepcopy(command))
        assert b.apply(copy.deepcopy(command)) == answer
        op, term = command["op"], command.get("term")
        if op == "recovery.claim" and answer["ok"]:
            highest = term
        if op in ("recovery.intent", "recovery.result"):
            if highest is None or term != highest:
                assert not answer["ok"]
                assert a.canonical() == before
            if highest is not None and term < highest:
                assert STALE_TERM in answer["error"]
            if answer["ok"]:
                assert term == highest
        steps = a.get_notification(uid("n/a"))["recovery_steps"]
        open_keys = [(s["step"], s["key"]) for s in steps if s["outcome"] is None]
        assert len(open_keys) == len(set(open_keys))
        if op == "recovery.result" and answer["ok"] and steps != steps_before:
            assert len(steps) == len(steps_before)  # closed an intent, added nothing
    assert a == b
    restored = ClusterState.from_snapshot(a.to_snapshot())
    assert restored == a
