"""An evacuation is judged by Nova's migration record, not by the server's host.

Real Nova saves a rebuilt instance ACTIVE with no task while its ``host`` is still the dead
source, and moves ``host`` only later (docs/nova-real.md): the fake shows that window for
``window`` looks. Read as "not evacuated", it made the engine close successful evacuations
failed and could make a retry or a new leader evacuate a second time. These tests hold the
window open longer than any number of looks the engine could count, and check that the
evacuation is confirmed, never repeated; that an older evacuation of the same instance from
the same host is not taken for this one; and that a failed migration fails the step, so
the retry evacuates again (correctly: the first never ran the guest)."""
from __future__ import annotations

import asyncio

from recovery.nova import MigrationView
from test_recovery_support import Cluster, FakeCloud, engine, settle, uid

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


def evacuate_steps(record: dict, server: str) -> list[tuple[int, str]]:
    return [(s["term"], s["outcome"]) for s in record["recovery_steps"]
            if s["key"] == server and s["step"] == "evacuate"]


def test_an_instance_active_on_its_dead_host_after_the_rebuild_is_confirmed_not_failed():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS, window=200)
    servers = [cloud.boot("cmp1") for _ in range(4)]
    cloud.power_off("cmp1")
    uuid = cluster.host_down("cmp1")
    record = run(recover(cluster, cloud, uuid, max_concurrent_evacuations=4))
    assert record["status"] == "finished", record["message"]
    assert record["recovery_attempts"] == 1
    for server in servers:
        assert evacuate_steps(record, server) == [(1, "done")]
        assert cloud.evacuate_calls[server] == 1 and cloud.servers[server].host != "cmp1"
        assert [m.status for m in cloud.migrations if m.instance == server] == ["done"]
    assert cloud.double_runs == []


def test_a_new_leader_reading_in_the_window_resumes_the_evacuation_not_repeats_it():
    """The leader dies right after Nova accepted the evacuation; when the new leader first
    looks, the rebuild has ended and the server shows ACTIVE, no task, on the dead host
    (the reading that used to mean "not carried out"). Its migration says otherwise."""
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS, window=200)
    server = cloud.boot("cmp1")
    cloud.power_off("cmp1")
    uuid = cluster.host_down("cmp1")

    async def scenario() -> dict:
        eng_a, agent_a, nova_a = engine(cluster, cloud, "a")
        killed = asyncio.Event()

        def kill(nova, op, args) -> None:
            if op == "evacuate":
                agent_a.kill()
                nova_a.kill()
                killed.set()
        nova_a.after.append(kill)
        await eng_a.start()
        await asyncio.wait_for(killed.wait(), 10)
        for _ in range(cloud.looks):  # time passes: the rebuild ends, host not yet moved
            cloud._server(server)
        seen = cloud.servers[server]
        assert (seen.vm_state, seen.task_state, seen.host) == ("active", None, "cmp1")
        cluster.leader, cluster.term = "b", 2
        eng_b, _, _ = engine(cluster, cloud, "b")
        await eng_b.start()
        try:
            return await settle(cluster, uuid)
        finally:
            await eng_b.stop()
            await eng_a.stop()

    record = run(scenario())
    assert record["status"] == "finished", record["message"]
    assert evacuate_steps(record, server) == [(1, "done")]  # term 1's intent, confirmed
    assert cloud.evacuate_calls[server] == 1 and cloud.double_runs == []
    assert cloud.servers[server].host != "cmp1"


def test_an_older_evacuation_from_the_same_host_is_not_taken_for_this_one():
    """The instance was evacuated from cmp1 once before and has come back there since: that
    done migration is older than anything this recovery did, so it is evacuated again."""
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    old = MigrationView(id=next(cloud._migration_ids), uuid=uid("mig/old"), instance=server,
                        source="cmp1", dest="cmp2", status="completed", created_at=None)
    cloud.migrations.append(old)
    cloud.power_off("cmp1")
    uuid = cluster.host_down("cmp1")
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished", record["message"]
    assert evacuate_steps(record, server) == [(1, "done")]
    assert cloud.evacuate_calls[server] == 1 and cloud.servers[server].host != "cmp1"
    intent = [s for s in record["recovery_steps"] if s["step"] == "evacuate"][0]
    assert f"evacuations newer than migration {old.id}" in intent["detail"]


def test_a_failed_evacuation_migration_fails_the_step_and_the_retry_evacuates_again():
    """No host had room: Nova accepted the call, then put the migration in error and the
    server in ERROR where it was. The step fails on the migration's status; the retry
    evacuates again once a host has room, and that second evacuation is the only run."""
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    for host in ("cmp2", "cmp3"):
        cloud.hosts[host].capacity = 0
    cloud.power_off("cmp1")
    uuid = cluster.host_down("cmp1")

    def room(agent, command, answer) -> None:
        if command["op"] == "notification.transition" and command["status"] == "error":
            cloud.hosts["cmp2"].capacity = 10
    cluster.hooks.append(room)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished", record["message"]
    assert record["recovery_attempts"] == 2
    steps = [s for s in record["recovery_steps"] if s["step"] == "evacuate"]
    assert [(s["attempt"], s["outcome"]) for s in steps] == [(1, "failed"), (2, "done")]
    assert "error in Nova" in steps[0]["outcome_detail"]
    assert [m.status for m in cloud.migrations] == ["error", "done"]
    assert cloud.evacuate_calls[server] == 2 and cloud.double_runs == []
    assert (cloud.servers[server].host, cloud.servers[server].vm_state) == ("cmp2", "active")
