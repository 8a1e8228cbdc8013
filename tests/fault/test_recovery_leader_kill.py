"""Issue 5, Must show: the leader SIGKILLed mid-recovery at each point; the new leader
finishes, each instance is evacuated exactly once, nothing runs twice.

A 5-agent lab with the Nova simulator at real Nova's timings. A host that is not the leader
(the highest-numbered one) crashes with four HA instances; while the leader recovers it, the leader is SIGKILLed (``lab crash``) at one
of three points, each made a window the test can wait for by a fault the
simulator injects on the leader's next request, seen in the log (``notification show``:
intents without results, vmoves) and in the simulator's records:

- ``intent_before_call``: every evacuate intent committed, the calls never reach Nova
  (held without an answer and not applied: as if the leader died between its intent and
  its call);
- ``call_before_result``: Nova accepted every evacuation (applied, reply held), no result
  committed;
- ``between_instances``: one evacuation at a time; the first instance succeeded, the
  leader's first read of the next one is held, so no intent about it exists.

Evacuations go to one chosen survivor (the other hosts' compute services are disabled
through openstacksdk first), never to the leader the test kills: an instance placed there
would need a second recovery. All five agents vote: with non-voters, a SIGKILLed leader
made a healthy non-voter miss its lease renewals for 6-10 s and fence itself in about half
the trials, default settings included (a forwarding bug reported apart); with non-voters
this test would test that bug instead of the recovery.

The witness is the simulator: evacuate calls Nova accepted and evacuate instance actions
it recorded, per instance, and its invariant report (double runs, lost instances). The
log's records say who did what: the dead leader's open intent confirmed by the new
leader (the call happened) or closed and repeated (it did not).
"""
from __future__ import annotations

import time

import pytest

from recovery_helpers import (
    first_accepted_evacuation, follow, host_stopped, keep_off, nova_lab, show, steps_of, until,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

N_HA = 4
HOLD = 60.0  # how long the simulator holds a faulted request: far beyond the test's window
WINDOW = 60.0


def evacuate_intents(record: dict, ids: list[str]) -> dict[str, list[dict]]:
    return {i: steps_of(record, "evacuate", i) for i in ids}


def wait_for_window(lab, uuid: str, ids: list[str], point: str) -> dict:
    """Return the notification once the leader is inside the window of ``point``."""
    nova = lab.nova

    if point == "between_instances":
        # The first instance is under way (its vmove ongoing): hold the leader's first read
        # of each other instance, which is what it does first for the next one.
        record = until("the first evacuation under way",
                       lambda: (r := show(lab, uuid)) and any(
                           v["status"] == "ongoing" for v in r["vmoves"]) and r, WINDOW)
        first = next(v["instance_uuid"] for v in record["vmoves"] if v["status"] == "ongoing")
        others = [i for i in ids if i != first]
        for other in others:
            nova.inject(rf"/servers/{other}$", "delay", method="GET", delay=HOLD)

        def inside() -> dict | None:
            r = show(lab, uuid)
            status = {v["instance_uuid"]: v["status"] for v in r["vmoves"]}
            held = sum(f["hits"] for f in nova.faults())
            opened = [i for i in others if evacuate_intents(r, [i])[i]]
            return r if (status[first] == "succeeded" and held == 1 and not opened
                         and all(status[i] == "pending" for i in others)) else None
        return until("the first instance succeeded, the next one's read held", inside, WINDOW)

    def inside() -> dict | None:
        r = show(lab, uuid)
        intents = evacuate_intents(r, ids)
        if not all(len(s) == 1 and s[0]["outcome"] is None for s in intents.values()):
            return None
        calls = nova.report()["evacuate_calls"]
        held = sum(f["hits"] for f in nova.faults())
        if point == "intent_before_call":  # every call held before Nova, none applied
            return r if held == N_HA and not any(i in calls for i in ids) else None
        # call_before_result: Nova accepted each, once
        return r if held == N_HA and all(
            [c["status"] for c in calls.get(i, [])] == [200] for i in ids) else None
    return until(f"every evacuate intent open ({point})", inside, WINDOW)


@pytest.mark.parametrize("point", ["intent_before_call", "call_before_result",
                                   "between_instances"])
def test_leader_killed_mid_recovery_new_leader_finishes_exactly_once(tmp_path, point):
    extra = {"recovery": {"max_concurrent_evacuations": 1}} \
        if point == "between_instances" else {}
    with nova_lab(tmp_path / "lab", config_extra=extra, voters=5) as lab:
        nova = lab.nova
        leader = lab.leader()
        # Not the leader: its crash would change the leader before the window.
        victim = next(n for n in reversed(lab.names) if n != leader)
        ids = nova.boot(n_ha=N_HA, hosts=[victim])["ha"]
        target = next(n for n in lab.names if n not in (victim, leader))
        keep_off(lab, [n for n in lab.names if n not in (victim, target)])
        actions = rf"/servers/({'|'.join(ids)})/action$"
        if point == "intent_before_call":
            nova.inject(actions, "timeout", method="POST", delay=HOLD, count=N_HA)
        elif point == "call_before_result":
            nova.inject(actions, "timeout", method="POST", delay=HOLD, apply=True,
                        count=N_HA)

        lab.crash(victim)
        uuid = until(f"{victim}'s STOPPED", lambda: host_stopped(lab, victim), 30)[
            "notification_uuid"]
        inside = wait_for_window(lab, uuid, ids, point)
        old_leader = lab.leader()
        assert old_leader == leader, "the leader changed before the window"
        old_term = lab.status(old_leader)["recovery"]["leading_term"]
        assert {s["term"] for s in inside["recovery_steps"]} == {old_term}, \
            "the window was reached by the leader the test kills"
        killed_at = time.monotonic()
        lab.crash(old_leader)  # SIGKILL: no clean-up, no more calls
        nova.clear_faults()    # what the new leader sends is answered normally

        record, seen = follow(lab, uuid)
        took = time.monotonic() - killed_at
        new_leader = lab.leader()
        new_term = lab.status(new_leader)["recovery"]["leading_term"]
        print(f"\n{point}: finished {took:.1f} s after the leader ({old_leader}, term "
              f"{old_term}) was killed; new leader {new_leader} (term {new_term}); "
              f"statuses {seen}")
        assert record["status"] == "finished", record["message"]
        assert new_leader != old_leader and new_term > old_term
        assert "error" not in seen

        report = nova.report()
        assert report["double_runs"] == [] and report["lost"] == []
        assert {i: report["evacuations"].get(i) for i in ids} == {i: 1 for i in ids}
        assert {i: report["evacuate_actions"].get(i) for i in ids} == {i: 1 for i in ids}
        servers = nova.state()["servers"]
        for i in ids:
            assert servers[i]["status"] == "ACTIVE" and servers[i]["host"] == target, \
                servers[i]
        assert all(v["status"] == "succeeded" for v in record["vmoves"])

        # Who did what, from the log's records (term, outcome, outcome_term) per instance.
        done = {i: [(s["term"], s["outcome"], s["outcome_term"]) for s in steps]
                for i, steps in evacuate_intents(record, ids).items()}
        if point == "intent_before_call":
            # The dead leader's intents are closed as not carried out; the new leader calls.
            assert done == {i: [(old_term, "failed", new_term), (new_term, "done", new_term)]
                            for i in ids}
            assert first_accepted_evacuation(report, ids) > killed_at
        elif point == "call_before_result":
            # The calls happened: the new leader confirms them, calls nothing.
            assert done == {i: [(old_term, "done", new_term)] for i in ids}
            assert first_accepted_evacuation(report, ids) < killed_at
        else:
            first = [i for i in ids if done[i] == [(old_term, "done", old_term)]]
            assert len(first) == 1, done
            assert all(done[i] == [(new_term, "done", new_term)] for i in ids if i not in first)

        # The new leader also recovers the dead leader's own host (nothing to evacuate).
        other = until(f"{old_leader}'s STOPPED", lambda: host_stopped(lab, old_leader), 30)
        last, _ = follow(lab, other["notification_uuid"])
        assert last["status"] == "finished", last["message"]
        assert lab.power_state(old_leader)["reason"] == "watchdog"
        survivors = [n for n in lab.names if n not in (victim, old_leader)]
        assert all(lab.power_state(n)["on"] for n in survivors), "a survivor fenced itself"
