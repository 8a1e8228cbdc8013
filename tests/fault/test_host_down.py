"""Host-down detection end to end, in a 5-node netns lab (voters node1-3, non-voters node4-5):
real agents, real gossip over CURVE ZeroMQ, real nftables partitions, the lab's simulated
power switches as the hosts' watchdogs.

- a SIGKILLed agent gives exactly one COMPUTE_HOST STOPPED, committed and visible on every
  node, later marked fenced (host_status NORMAL) once its lease ran out;
- an agent SIGSTOPped for 3 s gives no notification at all;
- a voter and a non-voter partitioned away: the minority commits nothing; the majority
  declares them fenced only after their leases ran out, and each minority host's watchdog
  powered it off before that (timestamps on this machine's monotonic clock).

Every wait polls with a deadline; the 3 s pause is the fault itself, not synchronisation.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any, Callable

import pytest

from hagent.lab.cluster import Lab, LabError

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

NODES = ["node1", "node2", "node3", "node4", "node5"]
LEASE_TTL = 15.0  # the default fencing.lease_ttl the lab runs with
SAFETY_MARGIN = 5.0


def until(what: str, cond: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except LabError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def host_notifications(lab: Lab, node: str) -> list[dict[str, Any]]:
    records = lab.admin(node, "notification.list", {}, timeout=5)
    return [r for r in records if r["type"] == "COMPUTE_HOST"]


def members_alive(lab: Lab, node: str, names: list[str]) -> bool:
    states = {m["name"]: m["state"] for m in lab.status(node)["members"]}
    return all(states.get(n) == "alive" for n in names)


def to_monotonic(iso: str, offset: float) -> float:
    """A record time (the proposer's wall clock, ISO 8601) on this machine's monotonic
    clock; ``offset`` is time.time() - time.monotonic(), the same for every process here."""
    return datetime.fromisoformat(iso).timestamp() - offset


@pytest.fixture
def lab(tmp_path):
    lab = Lab.up(tmp_path / "lab", nodes=5, netns=True)
    try:
        until("every node sees all five alive",
              lambda: all(members_alive(lab, n, NODES) for n in NODES), 30)
        yield lab
    finally:
        lab.down()


def test_a_killed_agent_gives_one_stopped_notification_seen_everywhere(lab: Lab) -> None:
    victim = lab.leader()  # the hardest case: detection must survive the leader's own death
    survivors = [n for n in NODES if n != victim]
    killed_at = time.monotonic()
    lab.crash(victim)

    def stopped_everywhere() -> bool:
        return all(len(host_notifications(lab, n)) == 1 for n in survivors)

    until("one STOPPED notification on every survivor", stopped_everywhere, 30)
    seen_after = time.monotonic() - killed_at
    for node in survivors:
        (record,) = host_notifications(lab, node)
        assert record["hostname"] == victim
        assert record["payload"]["event"] == "STOPPED"
        assert record["payload"]["cluster_status"] == "OFFLINE"
    # Fenced once its lease ran out on the new leader: still exactly one notification.
    until("the notification marked fenced (host_status NORMAL)",
          lambda: host_notifications(lab, survivors[0])[0]["payload"]["host_status"] == "NORMAL",
          LEASE_TTL + 15)
    assert lab.power_state(victim)["on"] is False, "the victim's watchdog powered it off"
    for node in survivors:
        records = host_notifications(lab, node)
        assert [r["hostname"] for r in records] == [victim], records
    assert seen_after < LEASE_TTL, f"STOPPED took {seen_after:.1f} s"


def test_an_agent_paused_for_3_s_gives_no_notification(lab: Lab) -> None:
    victim = "node4"
    lab.pause(victim)
    time.sleep(3.0)  # the fault: a 3 s stall of the whole process
    lab.resume(victim)
    others = [n for n in NODES if n != victim]
    until("everybody sees the paused node alive again",
          lambda: all(members_alive(lab, n, [victim]) for n in others), 15)
    # The slowest path to a notification after a resume is a suspicion raised just before
    # it expiring: wait out the longest suspicion timeout, then look everywhere.
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        assert host_notifications(lab, "node1") == []
        time.sleep(0.25)
    for node in NODES:
        assert host_notifications(lab, node) == []
    assert lab.power_state(victim)["on"] is True


def test_a_partitioned_minority_is_fenced_by_its_watchdog_before_the_majority_says_so(
        lab: Lab) -> None:
    minority, majority = ["node3", "node5"], ["node1", "node2", "node4"]
    offset = time.time() - time.monotonic()
    lab.partition([majority, minority])
    partitioned_at = time.monotonic()

    # The minority commits nothing: its voter's commit index stays where it was a moment
    # after the cut (an entry in flight at the cut may still land) until its watchdog kills it.
    time.sleep(1.0)  # let an entry in flight at the cut settle
    frozen = lab.status("node3")["commit_index"]
    samples = []
    while True:
        try:
            samples.append(lab.status("node3", timeout=1.0)["commit_index"])
        except LabError:
            break  # powered off by its watchdog
        assert time.monotonic() - partitioned_at < LEASE_TTL, "node3 was never fenced"
        time.sleep(0.2)
    assert samples and set(samples) == {frozen}, samples

    def fenced_on_majority() -> dict[str, dict[str, Any]] | None:
        records = {r["hostname"]: r for r in host_notifications(lab, "node1")}
        if set(records) == set(minority) and all(
                r["payload"]["host_status"] == "NORMAL" for r in records.values()):
            return records
        return None

    records = until("both minority hosts declared fenced by the majority", fenced_on_majority,
                    LEASE_TTL + 30)
    for host in minority:
        power = lab.power_state(host)
        assert power["on"] is False and power["reason"] == "watchdog", power
        fired = power["off_at_monotonic"]
        declared = to_monotonic(records[host]["updated_at"], offset)
        assert fired < declared, (f"{host}: watchdog fired at {fired:.3f}, the majority "
                                  f"declared it fenced at {declared:.3f}")
        # Never before a whole lease after the cut stopped the host's renewals.
        assert declared - partitioned_at >= LEASE_TTL - SAFETY_MARGIN, (host, declared - partitioned_at)
    # The majority kept committing all along (its leases, the two notifications).
    assert lab.status("node1")["commit_index"] > frozen
