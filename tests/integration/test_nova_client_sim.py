"""NovaClient through real openstacksdk and HTTP against the Nova simulator (hagent/lab/nova).

Nothing is mocked: the client reads the simulator's clouds.yaml, authenticates with its
Keystone, negotiates microversions and calls the compute API over loopback. The simulator's
own state (``/_sim/state``) and invariant report are the independent witness of what each
call did. Durations are a tenth of real Nova's, except service_down_time, kept long so that
a powered-off host's service stays "up" for the whole test unless it is forced down.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from hagent.lab.nova import NovaSim, Timings
from recovery.nova import NovaClient, NovaError

HOSTS = ["cmp1", "cmp2", "cmp3"]
TIMINGS = dataclasses.replace(Timings().scaled(0.1), service_down_time=60.0)
REASON = "hagent detected host failed."


@pytest.fixture
def sim(tmp_path: Path):
    sim = NovaSim.start(tmp_path / "nova", HOSTS, timings=TIMINGS)
    yield sim
    sim.stop()


def run(sim: NovaSim, coro_fn, *, timeout: float = 10.0):
    """``coro_fn(client)`` on a fresh event loop with a client for the simulator's cloud."""
    async def main():
        client = NovaClient.from_clouds_yaml(sim.clouds_yaml, sim.cloud, timeout=timeout)
        try:
            return await coro_fn(client)
        finally:
            client.close()
    return asyncio.run(main())


async def wait_server(client: NovaClient, server_id: str, done, timeout: float = 10.0):
    """Poll ``client.server`` until ``done(view)``; the view."""
    deadline = time.monotonic() + timeout
    while True:
        view = await client.server(server_id)
        if view is not None and done(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"server {server_id} still {view} after {timeout} s")
        await asyncio.sleep(0.05)


def test_service_force_down_disable_enable_and_unset(sim):
    async def scenario(client: NovaClient):
        seen = [await client.compute_service("cmp1")]
        seen.append(await client.force_down("cmp1"))
        seen.append(await client.disable("cmp1", REASON))
        mid = sim.state()["hosts"]["cmp1"]
        seen.append(await client.enable("cmp1"))
        seen.append(await client.unset_force_down("cmp1"))
        seen.append(await client.compute_service("cmp1"))
        return seen, mid, await client.compute_service("cmp9")

    (before, forced, disabled, enabled, unset, after), mid, unknown = run(sim, scenario)
    assert (before.host, before.state, before.status, before.forced_down) == (
        "cmp1", "up", "enabled", False)
    assert (forced.state, forced.forced_down, forced.status) == ("down", True, "enabled")
    assert (disabled.status, disabled.disabled_reason, disabled.forced_down) == (
        "disabled", REASON, True)
    assert (mid["forced_down"], mid["disabled"], mid["disabled_reason"]) == (True, True, REASON)
    assert (enabled.status, enabled.disabled_reason) == ("enabled", None)
    assert (unset.state, unset.forced_down) == ("up", False)
    assert after == unset and len({before.id, after.id}) == 1
    assert unknown is None
    assert sim.state()["hosts"]["cmp1"]["forced_down"] is False


def test_changing_an_unknown_hosts_service_is_a_404(sim):
    with pytest.raises(NovaError) as caught:
        run(sim, lambda c: c.disable("cmp9", REASON))
    assert (caught.value.status, caught.value.retryable) == (404, False)


def test_servers_on_host_lists_every_project_and_only_that_host(sim):
    demo_conn = sim.connect(demo=True)  # a tenant cannot pick a host: the scheduler does
    try:
        demo = demo_conn.compute.create_server(name="tenant-vm", flavor_id="1",
                                               image_id="cirros", networks="none").id
    finally:
        demo_conn.close()
    sim.wait_for(lambda s: s["servers"][demo]["status"] == "ACTIVE", 10, "tenant server")
    host = sim.state()["servers"][demo]["host"]
    others = [h for h in HOSTS if h != host]
    ha = sim.boot(n_ha=2, hosts=[host])["ha"]
    sim.boot(n_non_ha=2, hosts=others)

    views = run(sim, lambda c: c.servers_on_host(host))
    assert sorted(v.id for v in views) == sorted(ha + [demo])
    assert {v.host for v in views} == {host}
    assert len({v.project_id for v in views}) == 2
    by_id = {v.id: v for v in views}
    assert all(by_id[i].metadata.get("HA_Enabled") == "True" for i in ha)
    assert "HA_Enabled" not in by_id[demo].metadata
    assert all((v.status, v.vm_state, v.task_state, v.power_state) == ("ACTIVE", "active", None, 1)
               for v in views)
    sim.boot(n_non_ha=1, hosts=[others[0]])
    assert len(run(sim, lambda c: c.servers_on_host(others[0]))) == 2
    assert run(sim, lambda c: c.servers_on_host("cmp9")) == []


def test_evacuation_refused_while_source_is_up_then_active_elsewhere_after_force_down(sim):
    ids = sim.boot(n_ha=3, hosts=["cmp1"])["ha"]
    sim.power("cmp1", "off")

    async def scenario(client: NovaClient):
        with pytest.raises(NovaError) as refused:
            await client.evacuate(ids[0])
        await client.force_down("cmp1")
        await client.disable("cmp1", REASON)
        started = time.monotonic()
        for server_id in ids:
            await client.evacuate(server_id)
        views = [await wait_server(client, i, lambda v: v.status == "ACTIVE"
                                   and v.task_state is None and v.host != "cmp1")
                 for i in ids]
        elapsed = time.monotonic() - started
        actions = {i: await client.instance_actions(i) for i in ids}
        return refused.value, views, actions, elapsed

    refused, views, actions, elapsed = run(sim, scenario)
    assert (refused.status, refused.retryable) == (400, False)
    assert "still in use" in str(refused)
    for view in views:
        assert view.host in ("cmp2", "cmp3")
        assert (view.vm_state, view.power_state) == ("active", 1)
    for server_id in ids:
        assert [a["action"] for a in actions[server_id]].count("evacuate") == 1
        assert {a["action"] for a in actions[server_id]} == {"create", "evacuate"}
    report = sim.report()
    assert report["ok"], report
    assert report["evacuate_actions"] == {i: 1 for i in ids}
    print(f"3 evacuations POST -> all ACTIVE elsewhere: {elapsed:.2f} s (simulated durations x0.1)")


def test_evacuations_follow_the_migration_record_through_its_statuses(sim):
    """``evacuations`` through openstacksdk's GET /os-migrations: the evacuation's record
    exists as soon as Nova accepted the call, goes accepted > pre-migrating > done, and is
    the server's only one from its source host; one that finds no host ends ``error``."""
    (moved, stranded) = sim.boot(n_ha=2, hosts=["cmp1"])["ha"]
    sim.power("cmp1", "off")

    async def scenario(client: NovaClient):
        await client.force_down("cmp1")
        before = await client.evacuations(moved, "cmp1")
        await client.evacuate(moved)
        statuses = []
        deadline = time.monotonic() + 10
        while not statuses or statuses[-1] != "done":
            (record,) = await client.evacuations(moved, "cmp1")
            if not statuses or statuses[-1] != record.status:
                statuses.append(record.status)
            assert time.monotonic() < deadline, statuses
            await asyncio.sleep(0.005)
        view = await client.server(moved)
        other_source = await client.evacuations(moved, "cmp2")
        for host in ("cmp2", "cmp3"):  # no room anywhere: no valid host
            await client.force_down(host)
        await client.evacuate(stranded)
        deadline = time.monotonic() + 10
        while (failed := await client.evacuations(stranded, "cmp1"))[0].status != "error":
            assert time.monotonic() < deadline, failed
            await asyncio.sleep(0.02)
        return before, statuses, record, view, other_source, failed

    before, statuses, record, view, other_source, failed = run(sim, scenario)
    assert before == [] and other_source == []
    assert statuses[0] == "accepted" and statuses[-1] == "done", statuses
    assert set(statuses) <= {"accepted", "pre-migrating", "done"}, statuses
    assert (record.instance, record.source, record.dest) == (moved, "cmp1", view.host)
    assert [(m.instance, m.status) for m in failed] == [(stranded, "error")]
    assert failed[0].id > record.id  # Nova's ids grow: a later migration has a higher id


def test_without_the_pin_an_evacuated_server_ends_shutoff(sim):
    """The control for the test above: openstacksdk's own choice of microversion (the highest)
    makes Nova leave the evacuated server SHUTOFF, which is why the client pins 2.94."""
    (server_id,) = sim.boot(n_ha=1, hosts=["cmp1"])["ha"]
    sim.power("cmp1", "off")
    run(sim, lambda c: c.force_down("cmp1"))
    conn = sim.connect()
    try:
        conn.compute.evacuate_server(server_id)
    finally:
        conn.close()

    async def settle(client: NovaClient):
        return await wait_server(client, server_id,
                                 lambda v: v.host != "cmp1" and v.task_state is None
                                 and v.status in ("ACTIVE", "SHUTOFF"))
    assert run(sim, settle).status == "SHUTOFF"


def test_stop_start_and_reset_state(sim):
    (server_id,) = sim.boot(n_ha=1, hosts=["cmp2"])["ha"]

    async def scenario(client: NovaClient):
        await client.stop(server_id)
        stopped = await wait_server(client, server_id, lambda v: v.status == "SHUTOFF")
        await client.start(server_id)
        started = await wait_server(client, server_id, lambda v: v.status == "ACTIVE")
        await client.reset_state(server_id, "error")
        errored = await client.server(server_id)
        await client.reset_state(server_id, "active")
        reset = await client.server(server_id)
        return stopped, started, errored, reset, await client.instance_actions(server_id)

    stopped, started, errored, reset, actions = run(sim, scenario)
    assert (stopped.vm_state, stopped.power_state) == ("stopped", 4)
    assert (started.vm_state, started.power_state, started.host) == ("active", 1, "cmp2")
    assert (errored.status, errored.vm_state) == ("ERROR", "error")
    assert (reset.status, reset.vm_state) == ("ACTIVE", "active")
    assert [a["action"] for a in actions] == [  # newest first, as Nova lists them
        "resetState", "resetState", "start", "stop", "create"]


def test_stopping_a_stopped_server_is_a_conflict_and_a_gone_server_is_none(sim):
    (server_id,) = sim.boot(n_ha=1, hosts=["cmp2"])["ha"]

    async def scenario(client: NovaClient):
        await client.stop(server_id)
        await wait_server(client, server_id, lambda v: v.status == "SHUTOFF")
        with pytest.raises(NovaError) as again:
            await client.stop(server_id)
        return again.value, await client.server("00000000-0000-0000-0000-000000000000")

    again, gone = run(sim, scenario)
    assert (again.status, again.retryable) == (409, True)
    assert gone is None


def test_aggregates(sim):
    conn = sim.connect()
    try:
        aggregate = conn.compute.create_aggregate(name="ssd", availability_zone="az-ssd")
        conn.compute.add_host_to_aggregate(aggregate, "cmp1")
        conn.compute.create_aggregate(name="empty")
    finally:
        conn.close()

    async def scenario(client: NovaClient):
        of_cmp1 = await client.aggregates_with_host("cmp1")
        before = await client.aggregates_with_host("cmp3")
        await client.add_host_to_aggregate(of_cmp1[0]["id"], "cmp3")
        after = await client.aggregates_with_host("cmp3")
        with pytest.raises(NovaError) as twice:
            await client.add_host_to_aggregate(of_cmp1[0]["id"], "cmp3")
        return of_cmp1, before, after, twice.value

    of_cmp1, before, after, twice = run(sim, scenario)
    assert [(a["name"], a["hosts"], a["availability_zone"]) for a in of_cmp1] == [
        ("ssd", ["cmp1"], "az-ssd")]
    assert before == []
    assert [(a["name"], sorted(a["hosts"])) for a in after] == [("ssd", ["cmp1", "cmp3"])]
    assert (twice.status, twice.retryable) == (409, True)


def test_nova_5xx_is_retryable_and_names_the_call(sim):
    sim.inject("os-services", "error", status=503, count=1)
    with pytest.raises(NovaError) as caught:
        run(sim, lambda c: c.compute_service("cmp1"))
    assert (caught.value.status, caught.value.retryable) == (503, True)
    assert str(caught.value).startswith("look up nova-compute on host cmp1: HTTP 503")
    assert run(sim, lambda c: c.compute_service("cmp1")).state == "up"  # the rule is used up


def test_a_lost_reply_times_out_as_retryable_though_the_call_happened(sim):
    """The case the engine's "ask Nova before repeating" exists for."""
    (server_id,) = sim.boot(n_ha=1, hosts=["cmp1"])["ha"]
    sim.power("cmp1", "off")
    run(sim, lambda c: c.force_down("cmp1"))
    sim.inject(r"/servers/[^/]+/action", "timeout", method="POST", delay=5.0, apply=True)

    async def scenario(client: NovaClient):
        started = time.monotonic()
        with pytest.raises(NovaError) as lost:
            await client.evacuate(server_id)
        waited = time.monotonic() - started
        moved = await wait_server(client, server_id,
                                  lambda v: v.host != "cmp1" and v.status == "ACTIVE")
        return lost.value, waited, moved

    lost, waited, moved = run(sim, scenario, timeout=1.0)
    assert (lost.status, lost.retryable) == (None, True)
    assert waited < 3.0
    assert moved.host in ("cmp2", "cmp3")
    assert sim.report()["evacuate_actions"] == {server_id: 1}


def test_wrong_credentials_are_a_401_not_retried(sim, tmp_path: Path):
    bad = tmp_path / "bad-clouds.yaml"
    bad.write_text(sim.clouds_yaml.read_text().replace(
        "password: ", "password: wrong-", 1))
    bad.chmod(0o600)

    async def scenario():
        client = NovaClient.from_clouds_yaml(bad, sim.cloud, timeout=5.0)
        try:
            await client.compute_service("cmp1")
        finally:
            client.close()

    with pytest.raises(NovaError) as caught:
        asyncio.run(scenario())
    assert (caught.value.status, caught.value.retryable) == (401, False)
    assert "credentials" in str(caught.value)


def test_a_nova_without_microversion_294_is_refused_by_name(tmp_path: Path):
    sim = NovaSim.start(tmp_path / "old-nova", HOSTS, timings=TIMINGS, max_version="2.90")
    try:
        with pytest.raises(NovaError) as caught:
            run(sim, lambda c: c.compute_service("cmp1"))
    finally:
        sim.stop()
    assert caught.value.retryable is False
    assert "2.94" in str(caught.value)
