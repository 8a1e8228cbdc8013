"""Issue 5, Must show: a host crash is recovered through Nova, end to end in the lab.

Five real agents (node1-3 vote), the lab's power switches as the hosts' watchdogs, the
Nova simulator at real Nova's timings; the leader's recovery engine calls it through
openstacksdk over HTTP. The victim host runs HA instances (one of them stopped) and
non-HA ones; another host runs instances of its own.

- ``lab crash`` (the agent only: the host's switch powers it off when its lease deadline
  passes) with ``evacuate_all_instances = false``: every HA instance back in its previous
  state (ACTIVE, or SHUTOFF for the stopped one) on another host, evacuated once; the
  non-HA ones left alone (never evacuated, recorded ``ignored``); the host's compute
  service forced down and disabled with hagent's reason; the notification ``finished``.
- ``lab kill-host`` (agent and host off at once), Masakari's default
  ``evacuate_all_instances = true``: every instance back, none lost.

Both: no evacuation before the host's power went off, no double run (the simulator's
invariant report), instances on other hosts untouched.
"""
from __future__ import annotations

import pytest

from recovery_helpers import (
    crash_and_follow, first_accepted_evacuation, nova_lab, steps_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

VICTIM = "node5"
BYSTANDER = "node4"
REASON = "hagent detected host failed."  # recovery.service_disable_reason's default


def boot_workload(lab) -> dict[str, list[str]]:
    """On the victim: 3 active HA, 1 stopped HA, 2 non-HA; on the bystander: 1 HA, 1 not."""
    nova = lab.nova
    on_victim = nova.boot(n_ha=4, n_non_ha=2, hosts=[VICTIM])
    elsewhere = nova.boot(n_ha=1, n_non_ha=1, hosts=[BYSTANDER])
    stopped = on_victim["ha"][3]
    conn = nova.connect()
    conn.compute.stop_server(stopped)
    nova.wait_for(lambda s: s["servers"][stopped]["status"] == "SHUTOFF", 30,
                  "the stopped HA instance SHUTOFF")
    return {"active_ha": on_victim["ha"][:3], "stopped_ha": [stopped],
            "non_ha": on_victim["non_ha"], "elsewhere": elsewhere["ha"] + elsewhere["non_ha"]}


@pytest.mark.parametrize("how", ["crash", "kill_host"])
def test_a_crashed_host_s_instances_come_back_in_their_previous_state(tmp_path, how):
    evacuate_all = how == "kill_host"
    with nova_lab(tmp_path / "lab",
                  config_extra={"recovery": {"evacuate_all_instances": evacuate_all}}) as lab:
        ids = boot_workload(lab)

        record, timeline = crash_and_follow(lab, VICTIM, kill_host=how == "kill_host")
        print(f"\n{how} {VICTIM}: {timeline}")
        assert record["status"] == "finished", record["message"]

        # Through openstacksdk, as an operator sees it: the failed host fenced off in Nova.
        conn = lab.nova.connect()
        (service,) = [s for s in conn.compute.services()
                      if s.binary == "nova-compute" and s.host == VICTIM]
        assert service.is_forced_down and service.status == "disabled", service
        assert service.disabled_reason == REASON

        moved = ids["active_ha"] + ids["stopped_ha"] + (ids["non_ha"] if evacuate_all else [])
        servers = {s.id: s for s in conn.compute.servers(all_projects=True)}
        for server in moved:
            want = "SHUTOFF" if server in ids["stopped_ha"] else "ACTIVE"
            got = servers[server]
            assert got.compute_host not in (VICTIM, None) and got.status == want, \
                (server, got.compute_host, got.status)
        for server in ids["elsewhere"]:
            assert servers[server].compute_host == BYSTANDER
            assert servers[server].status == "ACTIVE"

        report = lab.nova.report()
        assert report["double_runs"] == []
        assert {s: report["evacuations"].get(s) for s in moved} == {s: 1 for s in moved}
        left = [] if evacuate_all else ids["non_ha"]
        for server in left:  # left alone: never evacuated, still on the dead host
            assert server not in report["evacuate_calls"]
            assert servers[server].compute_host == VICTIM
        assert not any(s in report["evacuate_calls"] for s in ids["elsewhere"])
        # Nothing lost but what the configuration left on the dead host.
        assert sorted(report["lost"]) == sorted(left)

        # The log tells the same story: one vmove per instance of the host.
        vmoves = {v["instance_uuid"]: v for v in record["vmoves"]}
        assert {i: vmoves[i]["status"] for i in moved} == {i: "succeeded" for i in moved}
        assert {i: vmoves[i]["status"] for i in left} == {i: "ignored" for i in left}
        assert all(vmoves[i]["dest_host"] not in (VICTIM, None) for i in moved)
        for step in ("wait_fenced", "force_down", "disable_service", "prepare_instances",
                     "evacuate_instances"):
            assert [s["outcome"] for s in steps_of(record, step)] == ["done"], step
        assert all(len(steps_of(record, "evacuate", i)) == 1 for i in moved)

        # Safety: Nova accepted no evacuation before the host's power was off.
        power = lab.power_state(VICTIM)
        assert power["on"] is False
        assert power["reason"] == ("lab" if how == "kill_host" else "watchdog"), power
        first = first_accepted_evacuation(report, moved)
        assert power["off_at_monotonic"] < first, (power, first)
        print(f"{how}: power off -> first evacuation accepted "
              f"{first - power['off_at_monotonic']:.1f} s")

