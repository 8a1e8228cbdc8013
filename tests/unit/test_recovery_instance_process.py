"""Instance failure (stop > start > confirm ACTIVE for HA instances) and process failure
(nova-compute STOPPED disables the service, STARTED re-enables it only if hagent disabled
it) against the fake Nova."""
from __future__ import annotations

import asyncio

from test_recovery_support import Cluster, FakeCloud, engine, settle

HOSTS = ["cmp1", "cmp2"]
CRASHED = {"event": "LIFECYCLE", "vir_domain_event": "STOPPED_FAILED"}


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recover(cluster: Cluster, cloud: FakeCloud, *uuids: str, **changes) -> list[dict]:
    eng, _, _ = engine(cluster, cloud, **changes)
    await eng.start()
    try:
        return [await settle(cluster, uuid) for uuid in uuids]
    finally:
        await eng.stop()


def vm_note(cluster: Cluster, server: str, payload=CRASHED, host: str = "cmp1") -> str:
    return cluster.submit("VM", host, {**payload, "instance_uuid": server})


def test_a_crashed_ha_instance_is_stopped_started_and_confirmed_active():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    uuid = vm_note(cluster, server)
    (record,) = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished", record["message"]
    assert record["message"] == f"instance {server} recovered (ACTIVE)"
    assert [op for op, _ in cloud.calls] == ["stop", "start"]
    assert cloud.servers[server].vm_state == "active" and cloud.servers[server].host == "cmp1"
    assert [(s, o) for s, _, o in cluster.steps(uuid)] == [
        ("stop_instance", "done"), ("start_instance", "done"), ("confirm_active", "done")]


def test_each_event_masakari_acts_on_is_recovered_and_others_ignored():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    servers = [cloud.boot("cmp1") for _ in range(4)]
    acted = [vm_note(cluster, servers[0], {"event": "QEMU_GUEST_AGENT_ERROR",
                                           "vir_domain_event": "STOPPED_FAILED"}),
             vm_note(cluster, servers[1], {"event": "IO_ERROR",
                                           "vir_domain_event": "IO_ERROR_REPORT"})]
    skipped = vm_note(cluster, servers[2], {"event": "LIFECYCLE",
                                            "vir_domain_event": "STOPPED_SHUTDOWN"})
    records = run(recover(cluster, cloud, *acted, skipped))
    assert [r["status"] for r in records] == ["finished", "finished", "ignored"]
    assert "is not one recovery acts on" in records[2]["message"]
    assert {args[0] for _, args in cloud.calls} == {servers[0], servers[1]}


def test_a_non_ha_instance_is_ignored_unless_process_all_instances():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    plain = cloud.boot("cmp1", ha=False)
    (record,) = run(recover(cluster, cloud, vm_note(cluster, plain)))
    assert record["status"] == "ignored" and "is not HA" in record["message"]
    assert cloud.calls == []

    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    plain = cloud.boot("cmp1", ha=None)
    (record,) = run(recover(cluster, cloud, vm_note(cluster, plain), process_all_instances=True))
    assert record["status"] == "finished"
    assert [op for op, _ in cloud.calls] == ["stop", "start"]


def test_paused_and_deleted_instances_are_ignored_and_a_stopped_one_only_started():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    paused = cloud.boot("cmp1", vm_state="paused")
    gone = cloud.boot("cmp1")
    down = cloud.boot("cmp1", vm_state="stopped")
    notes = [vm_note(cluster, s) for s in (paused, gone, down)]
    del cloud.servers[gone]
    records = run(recover(cluster, cloud, *notes))
    assert [r["status"] for r in records] == ["ignored", "ignored", "finished"]
    assert "paused state" in records[0]["message"]
    assert "no longer exists" in records[1]["message"]
    assert cloud.calls == [("start", (down,))]
    outcomes = [(s, o) for s, _, o in cluster.steps(notes[2])]
    assert outcomes[0] == ("stop_instance", "skipped")


def test_an_instance_that_never_becomes_active_fails_after_the_retries():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS, looks=10_000)  # start never finishes
    server = cloud.boot("cmp1", vm_state="stopped")
    (record,) = run(recover(cluster, cloud, vm_note(cluster, server), start_timeout=0.05,
                            max_retries=1))
    assert record["status"] == "failed"
    assert record["message"].startswith(f"failed after 2 attempt(s): instance {server} ACTIVE: "
                                        f"not within 0.05 s")
    assert [op for op, _ in cloud.calls] == ["start"]  # the retry saw it powering on


def test_nova_compute_stopped_disables_and_started_re_enables_only_what_hagent_disabled():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    stopped = cluster.submit("PROCESS", "cmp1", {"process_name": "nova-compute",
                                                 "event": "STOPPED"})
    (record,) = run(recover(cluster, cloud, stopped))
    assert record["status"] == "finished"
    assert (cloud.hosts["cmp1"].status, cloud.hosts["cmp1"].disabled_reason) == (
        "disabled", "hagent detected process failed.")
    assert not cloud.hosts["cmp1"].forced_down
    # the host is not put on maintenance, so that its STARTED is taken
    started = cluster.submit("PROCESS", "cmp1", {"process_name": "nova-compute",
                                                 "event": "STARTED"})
    (record,) = run(recover(cluster, cloud, started))
    assert record["status"] == "finished" and record["message"] == "compute service of cmp1 enabled"
    assert cloud.hosts["cmp1"].status == "enabled"

    # disabled by an operator: STARTED leaves it so
    cloud.hosts["cmp2"].status, cloud.hosts["cmp2"].disabled_reason = "disabled", "hardware swap"
    started = cluster.submit("PROCESS", "cmp2", {"process_name": "nova-compute",
                                                 "event": "STARTED"})
    (record,) = run(recover(cluster, cloud, started))
    assert record["status"] == "finished" and "left as it is" in record["message"]
    assert cloud.hosts["cmp2"].status == "disabled"
    assert ("enable", ("cmp2",)) not in cloud.calls


def test_other_processes_need_no_recovery():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    uuid = cluster.submit("PROCESS", "cmp1", {"process_name": "libvirtd", "event": "STOPPED"})
    (record,) = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished" and record["message"] == "no recovery for process libvirtd"
    assert cloud.calls == []


def test_a_disabled_segment_ignores_its_notifications():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    cluster.ok({"op": "segment.update", "segment": "s", "enabled": False})
    (record,) = run(recover(cluster, cloud, vm_note(cluster, server)))
    assert record["status"] == "ignored"
    assert record["message"] == "Recovery aborted: the segment HA is disabled."
    assert cloud.calls == []
