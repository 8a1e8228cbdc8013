"""Host failure recovery against a fake Nova with Nova's rules: the auto workflow, HA
filtering, instance states, fencing first, force_down before disable, bounded concurrency,
the reserved_host / auto_priority / rh_priority methods, reserved hosts running out,
maintenance."""
from __future__ import annotations

import asyncio
from uuid import uuid4

from test_recovery_support import (
    Cluster, FakeCloud, engine, settle, turns, until,
)

HOSTS = ["cmp1", "cmp2", "cmp3"]


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recover(cluster: Cluster, cloud: FakeCloud, uuid: str, **changes) -> dict:
    eng, _, _ = engine(cluster, cloud, **changes)
    await eng.start()
    try:
        return await settle(cluster, uuid)
    finally:
        await eng.stop()


def crash(cluster: Cluster, cloud: FakeCloud, host: str = "cmp1", fenced: bool = True) -> str:
    cloud.power_off(host)
    return cluster.host_down(host, fenced=fenced)


def test_host_crash_evacuates_ha_instances_and_leaves_the_others():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    ha = [cloud.boot("cmp1", ha=True) for _ in range(3)]
    stopped = cloud.boot("cmp1", ha=True, vm_state="stopped")
    other = cloud.boot("cmp1", ha=False)
    untagged = cloud.boot("cmp1", ha=None)
    elsewhere = cloud.boot("cmp2", ha=True)
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid, evacuate_all_instances=False))

    assert record["status"] == "finished", record["message"]
    assert record["message"] == "host cmp1 recovered: 4 instance(s) evacuated, 2 left alone"
    for server in ha:
        assert cloud.servers[server].host != "cmp1"
        assert cloud.servers[server].vm_state == "active"
    assert cloud.servers[stopped].host != "cmp1" and cloud.servers[stopped].vm_state == "stopped"
    for server in (other, untagged):
        assert cloud.servers[server].host == "cmp1"
    assert cloud.servers[elsewhere].host == "cmp2" and cloud.evacuate_calls[elsewhere] == 0
    assert sorted(cloud.evacuate_calls.values()) == [1, 1, 1, 1]
    assert cloud.double_runs == []
    # the compute service: forced down first, then disabled with hagent's reason
    service_calls = [(op, args) for op, args in cloud.calls if op in ("force_down", "disable")]
    assert service_calls == [("force_down", ("cmp1",)),
                             ("disable", ("cmp1", "hagent detected host failed."))]
    assert cloud.hosts["cmp1"].forced_down and cloud.hosts["cmp1"].status == "disabled"
    # the host is on maintenance, as Masakari leaves it
    assert cluster.state.get_host("cmp1")["on_maintenance"] is True
    # vmoves: HA ones succeeded with their destination, the others ignored with the reason
    vmoves = {v["instance_uuid"]: v for v in record["vmoves"]}
    assert {i: v["status"] for i, v in vmoves.items()} == {
        **{s: "succeeded" for s in (*ha, stopped)}, other: "ignored", untagged: "ignored"}
    assert vmoves[ha[0]]["dest_host"] == cloud.servers[ha[0]].host
    assert "not HA" in vmoves[other]["message"]
    # the steps the notification shows, in order
    steps = [(s, o) for s, k, o in cluster.steps(uuid) if k == "cmp1"]
    assert steps == [("wait_fenced", "done"), ("force_down", "done"),
                     ("disable_service", "done"), ("prepare_instances", "done"),
                     ("evacuate_instances", "done")]
    assert all(s["term"] == 1 for s in record["recovery_steps"])
    assert record["recovery_attempts"] == 1


def test_evacuate_all_instances_takes_ha_ones_first_and_error_ones_unless_told():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    plain = cloud.boot("cmp1", ha=False)
    ha = cloud.boot("cmp1", ha=True)
    broken = cloud.boot("cmp1", ha=True, vm_state="error")
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))  # Masakari's default: evacuate all
    assert record["status"] == "finished", record["message"]
    assert [v["instance_uuid"] for v in record["vmoves"]][:2] == [ha, broken]  # HA first
    assert cloud.servers[plain].host != "cmp1" and cloud.servers[plain].vm_state == "active"
    # an instance in error ends in error on its new host: evacuated, stopped, reset (Masakari)
    assert cloud.servers[broken].host != "cmp1" and cloud.servers[broken].vm_state == "error"
    ops = [op for op, args in cloud.calls if args and args[0] == broken]
    assert ops == ["evacuate", "stop", "reset_state"]

    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    broken = cloud.boot("cmp1", ha=True, vm_state="error")
    fine = cloud.boot("cmp1", ha=True)
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid, ignore_instances_in_error_state=True))
    assert cloud.servers[broken].host == "cmp1" and cloud.evacuate_calls[broken] == 0
    assert cloud.servers[fine].host != "cmp1"
    assert {v["instance_uuid"]: v["status"] for v in record["vmoves"]} == {
        broken: "ignored", fine: "succeeded"}


def test_an_instance_mid_task_is_reset_to_error_then_evacuated():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    busy = cloud.boot("cmp1", task_state="powering-off")
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished", record["message"]
    assert [op for op, args in cloud.calls if args and args[0] == busy] == [
        "reset_state", "evacuate"]
    assert cloud.servers[busy].vm_state == "active" and cloud.servers[busy].host != "cmp1"


def test_nothing_happens_before_the_host_is_fenced():
    async def scenario():
        cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
        server = cloud.boot("cmp1")
        uuid = cluster.host_down("cmp1", fenced=False)  # dead in gossip, still powered
        eng, _, _ = engine(cluster, cloud)
        await eng.start()
        try:
            # several scans pass: the notification waits, Nova is only ever read
            await until(lambda: eng.counters["claims"] == 1)
            await turns(eng)
            assert cluster.notification(uuid)["status"] == "new"
            assert cloud.calls == [] and cloud.evacuate_calls[server] == 0
            cloud.power_off("cmp1")  # the watchdog fired
            cluster.fence("cmp1")
            record = await settle(cluster, uuid)
        finally:
            await eng.stop()
        assert record["status"] == "finished"
        assert cloud.double_runs == []
        (wait,) = [s for s in record["recovery_steps"] if s["step"] == "wait_fenced"]
        assert wait["outcome_detail"].startswith("fenced by lease at ")
    run(scenario())


def test_a_host_back_before_it_was_fenced_is_never_evacuated():
    async def scenario():
        cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
        server = cloud.boot("cmp1")
        uuid = cluster.host_down("cmp1", fenced=False)
        cluster.ok({"op": "host.up", "hostname": "cmp1", "generated_time": "2030-01-01T00:00:00Z",
                    "notification_uuid": "4a1e3f0c-0000-4000-8000-00000000000a",
                    "source_node": "a"})
        record = await recover(cluster, cloud, uuid)
        assert record["status"] == "ignored" and "never known to be fenced" in record["message"]
        assert cloud.calls == [] and cloud.servers[server].host == "cmp1"
    run(scenario())


def test_evacuations_run_at_most_max_concurrent_at_a_time():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS, looks=5)
    servers = [cloud.boot("cmp1") for _ in range(12)]
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid, max_concurrent_evacuations=4))
    assert record["status"] == "finished"
    assert cloud.max_in_flight == 4
    assert all(cloud.servers[s].host != "cmp1" for s in servers)
    assert all(cloud.evacuate_calls[s] == 1 for s in servers)


def test_a_host_without_instances_finishes_at_once():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished"
    assert record["message"] == "no instances to evacuate from host cmp1"
    assert cloud.hosts["cmp1"].forced_down and cloud.hosts["cmp1"].status == "disabled"


def test_a_host_on_maintenance_is_left_alone():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    cluster.ok({"op": "host.update", "host": "cmp1", "on_maintenance": True})
    uuid = crash(cluster, cloud)
    record = cluster.notification(uuid)
    assert record["status"] == "ignored"  # stored so by the log; the engine never sees it

    async def scenario():
        other = crash(cluster, cloud, "cmp2")  # a real failure runs meanwhile
        await recover(cluster, cloud, other)
    run(scenario())
    assert cloud.servers[server].host == "cmp1" and cloud.evacuate_calls[server] == 0
    assert ("force_down", ("cmp1",)) not in cloud.calls


def test_already_forced_down_and_disabled_is_recorded_skipped():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    cloud.boot("cmp1")
    cloud.hosts["cmp1"].forced_down = True
    cloud.hosts["cmp1"].status, cloud.hosts["cmp1"].disabled_reason = "disabled", "by hand"
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished"
    outcomes = {s: o for s, k, o in cluster.steps(uuid) if k == "cmp1"}
    assert outcomes["force_down"] == outcomes["disable_service"] == "skipped"
    assert not any(op in ("force_down", "disable") for op, _ in cloud.calls)


# --- recovery methods -----------------------------------------------------------------------

def test_reserved_host_method_enables_the_reserved_host_and_evacuates_to_it():
    hosts = ["cmp1", "cmp2", "spare"]
    cluster = Cluster(hosts, recovery_method="reserved_host", reserved=("spare",))
    cloud = FakeCloud(hosts)
    cloud.hosts["spare"].status = "disabled"
    cloud.aggregates["7"] = {"id": "7", "name": "fast", "hosts": ["cmp1", "cmp2"]}
    servers = [cloud.boot("cmp1") for _ in range(3)]
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid, add_reserved_host_to_aggregate=True))
    assert record["status"] == "finished", record["message"]
    assert all(cloud.servers[s].host == "spare" for s in servers)
    assert cloud.hosts["spare"].status == "enabled"
    assert "spare" in cloud.aggregates["7"]["hosts"]
    assert cluster.state.get_host("spare")["reserved"] is False
    assert [(s, k) for s, k, _ in cluster.steps(uuid) if s in (
        "enable_reserved_host", "add_to_aggregate", "enable_service")] == [
        ("enable_reserved_host", "spare"), ("add_to_aggregate", "spare aggregate 7"),
        ("enable_service", "spare")]
    assert [args[1] for op, args in cloud.calls if op == "evacuate"] == ["spare"] * 3


def test_reserved_hosts_are_tried_in_turn_and_can_run_out():
    hosts = ["cmp1", "cmp2", "spare1", "spare2"]
    cluster = Cluster(hosts, recovery_method="reserved_host", reserved=("spare1", "spare2"))
    cloud = FakeCloud(hosts)
    cloud.power_off("spare1")  # its nova-compute is down: skipped at once
    cloud.hosts["spare2"].capacity = 2  # takes two of three
    servers = [cloud.boot("cmp1") for _ in range(3)]
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid, max_retries=1))
    assert record["status"] == "failed"
    assert record["message"].startswith("failed after 2 attempt(s): reserved hosts ran out")
    assert "spare1: reserved host spare1: nova-compute down" in record["message"]
    placed = [s for s in servers if cloud.servers[s].host == "spare2"]
    assert len(placed) == 2
    assert cluster.state.get_host("spare2")["reserved"] is False
    assert cluster.state.get_host("spare1")["reserved"] is True  # never used
    # the second attempt found no reserved host left at all
    assert record["recovery_attempts"] == 2
    assert cloud.double_runs == []


def test_rh_priority_falls_back_to_auto_without_reserved_hosts():
    cluster = Cluster(HOSTS, recovery_method="rh_priority")
    cloud = FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished", record["message"]
    assert cloud.servers[server].host in ("cmp2", "cmp3")
    assert [args[1] for op, args in cloud.calls if op == "evacuate"] == [None]


def test_auto_priority_falls_back_to_a_reserved_host_when_auto_fails():
    hosts = ["cmp1", "cmp2", "spare"]
    cluster = Cluster(hosts, recovery_method="auto_priority", reserved=("spare",))
    cloud = FakeCloud(hosts)
    cloud.hosts["spare"].status = "disabled"  # the scheduler can't use it: auto finds no host
    cloud.hosts["cmp2"].capacity = 0
    server = cloud.boot("cmp1")
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished", record["message"]
    assert cloud.servers[server].host == "spare"
    assert cloud.servers[server].vm_state == "active"
    # auto tried (Nova put the instance in ERROR: no valid host), then the reserved host
    assert [args[1] for op, args in cloud.calls if op == "evacuate"] == [None, "spare"]
    outcomes = [(s, o) for s, k, o in cluster.steps(uuid) if s == "evacuate_instances"]
    assert outcomes == [("evacuate_instances", "failed"), ("evacuate_instances", "done")]


# --- a recovered host comes back --------------------------------------------------------------

async def _crash_recover_return(cluster: Cluster, cloud: FakeCloud, operator=None, **changes):
    server = cloud.boot("cmp1")
    uuid = crash(cluster, cloud)
    eng, _, _ = engine(cluster, cloud, **changes)
    await eng.start()
    try:
        assert (await settle(cluster, uuid))["status"] == "finished"
        cloud.hosts["cmp1"].powered = True
        if operator:
            operator()
        cluster.ok({"op": "host.up", "hostname": "cmp1", "notification_uuid": str(uuid4()),
                    "generated_time": "2030-01-01T00:00:00Z", "source_node": "a"})
        await turns(eng)  # restore, when on, happens in the first of them
    finally:
        await eng.stop()
    return server


def test_restore_host_on_return_undoes_hagents_marks():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    run(_crash_recover_return(cluster, cloud, restore_host_on_return=True))
    host = cloud.hosts["cmp1"]
    assert (host.forced_down, host.status, host.disabled_reason) == (False, "enabled", None)
    assert cluster.state.get_host("cmp1")["on_maintenance"] is False
    assert [op for op, _ in cloud.calls][-2:] == ["unset_force_down", "enable"]


def test_without_restore_a_returned_host_stays_down_disabled_and_on_maintenance():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    run(_crash_recover_return(cluster, cloud))
    host = cloud.hosts["cmp1"]
    assert (host.forced_down, host.status) == (True, "disabled")
    assert cluster.state.get_host("cmp1")["on_maintenance"] is True


def test_restore_leaves_a_host_an_operator_took_over():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)

    def operator():
        host = cloud.hosts["cmp1"]
        host.forced_down = False
        host.status, host.disabled_reason = "disabled", "disk replacement"
    run(_crash_recover_return(cluster, cloud, operator, restore_host_on_return=True))
    assert cloud.hosts["cmp1"].status == "disabled"
    assert cluster.state.get_host("cmp1")["on_maintenance"] is True
    assert not any(op in ("unset_force_down", "enable") for op, _ in cloud.calls)
