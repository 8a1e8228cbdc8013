"""Issue 5, Must show: a partitioned host's VMs are never started elsewhere before its
watchdog fired.

A netns lab (each agent in its own network namespace, real nftables partitions) with the
Nova simulator, which the agents reach through the lab bridge's address (partitions cut
traffic between the namespaces, not to the host). A host is cut off from every other
agent while its VMs run; its agent keeps running, cannot get its lease renewals committed,
and its watchdog (the lab's power switch) powers it off. The switch records that moment
(``off_at_monotonic``) and the simulator records when it accepted each evacuation, both
on this machine's CLOCK_MONOTONIC: the first accepted evacuation must come after the
power-off, and the invariant checker must see no instance running on two hosts.

- a non-voter partitioned away (node1-3 vote);
- the leader itself partitioned away (all five vote, so four remain a majority; it still
  reaches Nova): a leader of a later term recovers its host once it is fenced, and every
  step recorded is that later leader's.
"""
from __future__ import annotations

import time

import pytest

from recovery_helpers import (
    first_accepted_evacuation, follow, host_stopped, nova_lab, steps_of, until,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]


def partition_and_recover(lab, victim: str) -> tuple[dict, list[str], float]:
    """Boot 3 HA instances on ``victim``, cut it off, follow its STOPPED to the end."""
    ids = lab.nova.boot(n_ha=3, hosts=[victim])["ha"]
    rest = [n for n in lab.names if n != victim]
    lab.partition([rest, [victim]])
    cut_at = time.monotonic()
    stopped = until(f"{victim}'s STOPPED", lambda: host_stopped(lab, victim), 30)
    record, seen = follow(lab, stopped["notification_uuid"])
    print(f"\n{victim} cut off: recovery {record['status']} "
          f"{time.monotonic() - cut_at:.1f} s after the cut ({seen})")
    assert record["status"] == "finished", record["message"]
    return record, ids, cut_at


def check_never_early(lab, victim: str, ids: list[str], cut_at: float) -> None:
    power = lab.power_state(victim)
    assert power["on"] is False and power["reason"] == "watchdog", power
    report = lab.nova.report()
    first = first_accepted_evacuation(report, ids)
    fired = power["off_at_monotonic"]
    print(f"{victim}: watchdog fired {fired - cut_at:.1f} s after the cut, first evacuation "
          f"accepted {first - cut_at:.1f} s after it ({first - fired:.1f} s later)")
    assert fired < first, f"evacuation accepted at {first:.3f}, watchdog fired at {fired:.3f}"
    assert report["double_runs"] == [] and report["lost"] == []
    assert {i: report["evacuations"].get(i) for i in ids} == {i: 1 for i in ids}
    servers = lab.nova.state()["servers"]
    assert all(servers[i]["status"] == "ACTIVE" and servers[i]["host"] != victim for i in ids)


def test_a_partitioned_non_voter_s_vms_start_elsewhere_only_after_its_watchdog_fired(tmp_path):
    with nova_lab(tmp_path / "lab", netns=True) as lab:
        assert lab.nova.url.split("//")[1].split(":")[0] == lab.network.gateway
        record, ids, cut_at = partition_and_recover(lab, "node5")
        check_never_early(lab, "node5", ids, cut_at)
        assert [s["outcome"] for s in steps_of(record, "wait_fenced")] == ["done"]
        assert "lease" in steps_of(record, "wait_fenced")[0]["outcome_detail"]


def test_a_partitioned_leader_s_vms_move_only_after_its_watchdog_fired(
        tmp_path):
    with nova_lab(tmp_path / "lab", netns=True, voters=5) as lab:
        leader = lab.leader()
        old_term = lab.status(leader)["term"]
        record, ids, cut_at = partition_and_recover(lab, leader)
        check_never_early(lab, leader, ids, cut_at)
        # Every step of the recovery was taken by a leader of a later term; the cut-off
        # leader committed nothing about its own host.
        assert record["recovery_steps"] and all(
            s["term"] > old_term for s in record["recovery_steps"]), record["recovery_steps"]
