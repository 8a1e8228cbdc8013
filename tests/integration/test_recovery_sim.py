"""The recovery engine end to end through openstacksdk: RecoveryEngine + the real NovaClient
over HTTP against the Nova simulator (hagent/lab/nova), the log a real ClusterState behind
the in-test agent of tests/unit/test_recovery_support.py. The simulator's state and its
invariant report (evacuate calls per server, double runs) are the independent witness.

Durations are a tenth of real Nova's, except service_down_time, kept long so that a
powered-off host's compute service stays "up" unless the engine forces it down: Nova then
refuses evacuations, so a recovery that did not force the service down would fail here.
"""
from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from hagent.lab.nova import NovaSim, Timings
from recovery.engine import RecoveryEngine
from recovery.nova import NovaClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_recovery_support import Cluster, FakeAgent, config, settle  # noqa: E402

HOSTS = ["cmp1", "cmp2", "cmp3"]
TIMINGS = dataclasses.replace(Timings().scaled(0.1), service_down_time=600.0)


@pytest.fixture
def sim(tmp_path: Path):
    sim = NovaSim.start(tmp_path / "nova", HOSTS, timings=TIMINGS)
    yield sim
    sim.stop()


class Killable:
    """A NovaClient that a test can kill: every call after ``kill()`` hangs (a SIGKILLed
    leader sends nothing more); ``after(op, args, result)`` hooks run once a call returned."""

    def __init__(self, client: NovaClient) -> None:
        self._client = client
        self.dead = False
        self.after: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        async def call(*args: Any) -> Any:
            if self.dead:
                await asyncio.Event().wait()
            result = await method(*args)
            for hook in self.after:
                hook(name, args, result)
            return result
        return call


def engine(cluster: Cluster, client: Any, name: str, **changes: Any) -> RecoveryEngine:
    settings = dict(poll_interval=0.05, evacuate_timeout=30.0, nova_timeout=10.0,
                    stop_timeout=30.0, start_timeout=30.0)
    settings.update(changes)
    return RecoveryEngine(FakeAgent(cluster, name), client, config(**settings), name,
                          scan_interval=0.05, call_pause=0.05, deposed_grace=0.5)


def crash(sim: NovaSim, n_ha: int, n_non_ha: int = 0) -> tuple[Cluster, dict[str, list[str]], str]:
    ids = sim.boot(n_ha=n_ha, n_non_ha=n_non_ha, hosts=["cmp1"])
    cluster = Cluster(HOSTS)
    sim.power("cmp1", "off")
    return cluster, ids, cluster.host_down("cmp1")


async def _recover(sim: NovaSim, cluster: Cluster, uuid: str, **changes: Any) -> dict:
    client = NovaClient.from_clouds_yaml(sim.clouds_yaml, sim.cloud, timeout=10.0)
    eng = engine(cluster, client, "a", **changes)
    await eng.start()
    try:
        return await settle(cluster, uuid, timeout=60)
    finally:
        await eng.stop()
        client.close()


def test_host_crash_through_openstacksdk(sim):
    cluster, ids, uuid = crash(sim, n_ha=6, n_non_ha=2)
    record = asyncio.run(_recover(sim, cluster, uuid, evacuate_all_instances=False))
    assert record["status"] == "finished", record["message"]
    state = sim.state()
    for server in ids["ha"]:
        moved = state["servers"][server]
        assert moved["host"] in ("cmp2", "cmp3") and moved["status"] == "ACTIVE"
    for server in ids["non_ha"]:
        assert state["servers"][server]["host"] == "cmp1"
    report = sim.report()
    assert report["double_runs"] == []
    assert {s: report["evacuations"].get(s) for s in ids["ha"]} == {s: 1 for s in ids["ha"]}
    assert not any(report["evacuations"].get(s) for s in ids["non_ha"])
    assert len(report["lost"]) == len(ids["non_ha"])  # left on the dead host, as configured
    host = state["hosts"]["cmp1"]
    assert host["forced_down"] and host["disabled"]
    assert host["disabled_reason"] == "hagent detected host failed."


def test_leader_killed_after_an_evacuate_call_new_leader_finishes_exactly_once(sim):
    cluster, ids, uuid = crash(sim, n_ha=6)
    victim = ids["ha"][2]

    async def scenario() -> dict:
        client_a = Killable(NovaClient.from_clouds_yaml(sim.clouds_yaml, sim.cloud, timeout=10.0))
        client_b = NovaClient.from_clouds_yaml(sim.clouds_yaml, sim.cloud, timeout=10.0)
        killed = asyncio.Event()

        def kill(op, args, result):
            if op == "evacuate" and args[0] == victim:
                client_a.dead = True
                eng_a._agent.kill()
                killed.set()
        client_a.after.append(kill)
        eng_a = engine(cluster, client_a, "a", max_concurrent_evacuations=2)
        await eng_a.start()
        try:
            await asyncio.wait_for(killed.wait(), 30)
            cluster.leader, cluster.term = "b", 2
            eng_b = engine(cluster, client_b, "b")
            await eng_b.start()
            try:
                return await settle(cluster, uuid, timeout=60)
            finally:
                await eng_b.stop()
        finally:
            await eng_a.stop()
            client_a._client.close()
            client_b.close()

    record = asyncio.run(scenario())
    assert record["status"] == "finished", record["message"]
    report = sim.report()
    assert report["double_runs"] == [] and report["lost"] == []
    assert {s: report["evacuations"].get(s) for s in ids["ha"]} == {s: 1 for s in ids["ha"]}
    steps = [s for s in record["recovery_steps"] if s["key"] == victim and s["step"] == "evacuate"]
    assert [(s["term"], s["outcome"], s["outcome_term"]) for s in steps] == [(1, "done", 2)]


def test_nova_errors_and_lost_replies_are_retried_without_repeating_an_evacuation(sim):
    cluster, ids, uuid = crash(sim, n_ha=3)
    sim.inject(r"/servers/[^/]+/action", "error", count=2)  # 500s: not applied
    sim.inject(r"/servers/[^/]+/action", "timeout", delay=0.5, apply=True, count=1)
    record = asyncio.run(_recover(sim, cluster, uuid, nova_timeout=2.0))
    assert record["status"] == "finished", record["message"]
    report = sim.report()
    assert {s: report["evacuations"].get(s) for s in ids["ha"]} == {s: 1 for s in ids["ha"]}
    assert report["double_runs"] == []


#: finish_evacuation holds the destination's resource lock 1 s (real Nova 34 under load):
#: evacuations sent together herd onto one host and the k-th shows ACTIVE, no task, on the
#: dead host for ~k s before its host moves, 20 polls or more.
SLOW_FINISH = dataclasses.replace(TIMINGS, resource_lock=1.0)


def test_a_new_leader_that_finds_instances_active_on_the_dead_host_confirms_not_repeats(
        tmp_path: Path):
    """Leader "a" is killed the moment it reads an evacuated instance ACTIVE with no task on
    its dead host (the rebuild done, host not moved yet: the reading it once took for "not
    evacuated"); "b" resumes from Nova's migration records. No evacuation is repeated and no
    step fails, though every instance sits in that window for seconds."""
    sim = NovaSim.start(tmp_path / "nova", HOSTS, timings=SLOW_FINISH)
    try:
        cluster, ids, uuid = crash(sim, n_ha=6)
        seen_in_window: set[str] = set()

        async def scenario() -> dict:
            client_a = Killable(NovaClient.from_clouds_yaml(sim.clouds_yaml, sim.cloud,
                                                            timeout=10.0))
            client_b = NovaClient.from_clouds_yaml(sim.clouds_yaml, sim.cloud, timeout=10.0)
            killed = asyncio.Event()
            called: set[str] = set()

            def kill(op, args, result):
                if op == "evacuate":
                    called.add(args[0])
                elif (op == "server" and result is not None and result.id in called
                        and (result.vm_state, result.task_state, result.host)
                        == ("active", None, "cmp1")):
                    seen_in_window.add(result.id)
                    client_a.dead = True
                    eng_a._agent.kill()
                    killed.set()
            client_a.after.append(kill)
            eng_a = engine(cluster, client_a, "a", max_concurrent_evacuations=6)
            await eng_a.start()
            try:
                await asyncio.wait_for(killed.wait(), 30)
                cluster.leader, cluster.term = "b", 2
                eng_b = engine(cluster, client_b, "b", max_concurrent_evacuations=6)
                await eng_b.start()
                try:
                    return await settle(cluster, uuid, timeout=60)
                finally:
                    await eng_b.stop()
            finally:
                await eng_a.stop()
                client_a._client.close()
                client_b.close()

        record = asyncio.run(scenario())
        assert seen_in_window, "leader a never saw an instance in the window"
        assert record["status"] == "finished", record["message"]
        assert record["recovery_attempts"] == 1
        report = sim.report()
        assert report["double_runs"] == [] and report["lost"] == []
        assert {s: report["evacuations"].get(s) for s in ids["ha"]} == {s: 1 for s in ids["ha"]}
        for server in ids["ha"]:
            steps = [(s["term"], s["outcome"]) for s in record["recovery_steps"]
                     if s["key"] == server and s["step"] == "evacuate"]
            assert steps == [(1, "done")], (server, steps)  # a's intents, confirmed by b
        migrations = sim.state()["migrations"]
        assert sorted(m["instance"] for m in migrations) == sorted(ids["ha"])
        assert {m["status"] for m in migrations} == {"done"}
    finally:
        sim.stop()
