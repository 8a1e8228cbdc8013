"""The autopilot's shell (hagent.voters.autopilot): it reads the log and gossip, acts only on
the leader, hands one decision at a time to the changer, leaves a node whose change failed
alone for a while, and counts outcomes in the registry. Fakes for the agent, gossip and the
changer; turns are driven one by one (no timers)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hagent.voters.autopilot import Autopilot, build_view
from hagent.voters.changer import VoterChangeRefused

NODES = ["node1", "node2", "node3", "node4", "node5"]


class FakeAgent:
    def __init__(self) -> None:
        self.leader = True
        self.voters = ["node1", "node2", "node3"]
        self.change: dict[str, Any] | None = None
        self.incidents: list[dict[str, Any]] = []
        self.bootstrapped = True
        self.unreachable: set[str] = set()  # voters the leader does not hear from over Raft

    def is_leader(self) -> bool:
        return self.leader

    async def query(self, name: str, **kwargs: Any) -> Any:
        assert (name, kwargs) == ("incidents", {"status": "open"})
        return self.incidents

    def leader_view(self) -> SimpleNamespace:
        """The changer's leader_view() as the autopilot reads it."""
        doc = {"voters": [{"node": n, "raft_address": f"{n}:7170"} for n in self.voters],
               "registry": {n: {"node": n, "raft_address": f"{n}:7170",
                                "failure_domain": ""} for n in NODES},
               "change": self.change, "last_change": None, "bootstrapped": self.bootstrapped}
        return SimpleNamespace(voters=doc, reachable=frozenset(
            f"{n}:7170" for n in self.voters if n not in self.unreachable))

    def kill(self, host: str, fenced: bool) -> None:
        self.unreachable.add(host)
        self.incidents = [i for i in self.incidents if i["hostname"] != host]
        self.incidents.append({"hostname": host, "status": "open", "fenced": fenced})


class FakeMembership:
    def __init__(self) -> None:
        self.states = {n: "alive" for n in NODES}

    def member_states(self) -> dict[str, str]:
        return dict(self.states)


class FakeChanger:
    """Applies each change to the fake log when released (``hold``: wait for ``release``)."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent
        self.calls: list[tuple[str, str]] = []
        self.hold = False
        self.released = asyncio.Event()
        self.refuse: str | None = None
        self.fail: Exception | None = None
        self.leader_view = agent.leader_view

    async def _do(self, op: str, node: str) -> dict[str, Any]:
        self.calls.append((op, node))
        if self.hold:
            await self.released.wait()
        if self.refuse:
            raise VoterChangeRefused(self.refuse)
        if self.fail:
            raise self.fail
        if op == "add":
            self.agent.voters.append(node)
        else:
            self.agent.voters.remove(node)
        return {"op": op, "node": node, "result": "committed"}

    async def add_voter(self, node: str, *, auto: bool = False) -> dict[str, Any]:
        assert auto, "the autopilot's changes are marked as its own"
        return await self._do("add", node)

    async def remove_voter(self, node: str, *, auto: bool = False) -> dict[str, Any]:
        assert auto, "the autopilot's changes are marked as its own"
        return await self._do("remove", node)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world():
    agent = FakeAgent()
    membership = FakeMembership()
    changer = FakeChanger(agent)
    clock = Clock()
    registry = CollectorRegistry()
    pilot = Autopilot(agent, membership, changer, 3, registry=registry, retry_after=30.0,
                      clock=clock)
    return agent, membership, changer, clock, registry, pilot


async def settle(pilot: Autopilot) -> None:
    """Let the change task the last turn started run to its end (or to its hold)."""
    for _ in range(5):
        await asyncio.sleep(0)


def metric(registry: CollectorRegistry, op: str, result: str) -> float:
    value = registry.get_sample_value("hagent_voters_autopilot_changes_total",
                                      {"op": op, "result": result})
    return value or 0.0


def test_a_dead_fenced_voter_is_replaced_in_two_changes_one_at_a_time(world) -> None:
    agent, membership, changer, clock, registry, pilot = world

    async def run() -> None:
        membership.states["node2"] = "dead"
        agent.kill("node2", fenced=True)
        changer.hold = True
        a = await pilot.turn()
        assert (a.decision.op, a.decision.node) == ("remove", "node2")
        await settle(pilot)
        # While the remove is being made, nothing else is decided.
        a = await pilot.turn()
        assert a.decision is None and "being made by the autopilot" in a.reason
        assert pilot.status()["in_flight"] == "remove node2, being made by the autopilot"
        changer.released.set()
        await settle(pilot)
        a = await pilot.turn()
        assert (a.decision.op, a.decision.node) == ("add", "node4")
        await settle(pilot)
        assert (await pilot.turn()).decision is None
        assert changer.calls == [("remove", "node2"), ("add", "node4")]
        assert agent.voters == ["node1", "node3", "node4"]
        assert metric(registry, "remove", "done") == 1 and metric(registry, "add", "done") == 1
        assert pilot.status()["last_decision"]["result"] == "done"

    asyncio.run(run())


def test_a_change_in_flight_in_the_log_stops_every_decision(world) -> None:
    agent, membership, changer, clock, registry, pilot = world

    async def run() -> None:
        membership.states["node2"] = "dead"
        agent.kill("node2", fenced=True)
        agent.change = {"op": "add", "node": "node5", "phase": "catching_up",
                        "progress": {"applied": 10, "leader_commit": 40, "lag": 30}}
        a = await pilot.turn()
        assert a.decision is None
        assert a.reason == "a change is in flight (add node5, catching_up); one at a time"
        assert changer.calls == []

    asyncio.run(run())


def test_a_follower_only_watches(world) -> None:
    agent, membership, changer, clock, registry, pilot = world

    async def run() -> None:
        agent.leader = False
        membership.states["node2"] = "dead"
        agent.kill("node2", fenced=True)
        assert await pilot.turn() is None
        assert changer.calls == [] and pilot.status()["active"] is False

    asyncio.run(run())


def test_an_unfenced_dead_voter_waits_for_its_fencing(world) -> None:
    agent, membership, changer, clock, registry, pilot = world

    async def run() -> None:
        membership.states["node2"] = "dead"
        agent.kill("node2", fenced=False)
        a = await pilot.turn()
        assert a.decision is None and "not fenced" in a.reason
        assert pilot.status()["reason"] == a.reason
        agent.kill("node2", fenced=True)
        assert (await pilot.turn()).decision.node == "node2"

    asyncio.run(run())


@pytest.mark.parametrize("outcome", ["refused", "failed"])
def test_a_failed_candidate_is_left_out_for_retry_after_seconds(world, outcome: str) -> None:
    agent, membership, changer, clock, registry, pilot = world
    agent.voters = ["node1", "node3"]
    membership.states["node2"] = "dead"

    async def run() -> None:
        if outcome == "refused":
            changer.refuse = "node4 is not registered"
        else:
            changer.fail = TimeoutError("no answer within 60 s")
        assert (await pilot.turn()).decision.node == "node4"
        await settle(pilot)
        assert metric(registry, "add", outcome) == 1
        assert pilot.status()["last_decision"]["result"] == outcome
        assert pilot.status()["excluded"] == ["node4"]
        changer.refuse = changer.fail = None
        assert (await pilot.turn()).decision.node == "node5"  # the next best meanwhile
        await settle(pilot)
        agent.voters.remove("node5")
        clock.now += 30.0
        assert (await pilot.turn()).decision.node == "node4"  # tried again after retry_after

    asyncio.run(run())


def test_nothing_before_the_log_holds_a_voter_set(world) -> None:
    agent, membership, changer, clock, registry, pilot = world
    agent.bootstrapped = False
    assert asyncio.run(pilot.turn()) is None
    assert pilot.status()["reason"] == "the log holds no voter set yet"


def test_build_view_names_unregistered_voters_by_address_and_reads_incidents() -> None:
    doc = {"voters": [{"node": None, "raft_address": "10.0.0.1:7170"},
                      {"node": "node2", "raft_address": "10.0.0.2:7170"}],
           "registry": {"node2": {"failure_domain": "rack-a"}, "node4": {}},
           "change": None, "bootstrapped": True}
    incidents = [{"hostname": "node3", "status": "open", "fenced": False},
                 {"hostname": "node5", "status": "open", "fenced": True}]
    v = build_view(doc, incidents, {"node2": "alive"}, 3, lags={"node4": 7},
                   reachable=frozenset({"10.0.0.1:7170"}), excluded=frozenset({"node9"}))
    assert v.voters == ("10.0.0.1:7170", "node2")
    assert v.reachable == {"10.0.0.1:7170"}
    assert v.incidents == {"node3", "node5"} and v.fenced == {"node5"}
    assert v.registered["node2"].failure_domain == "rack-a"
    assert v.registered["node4"].lag == 7
    assert v.change is None and v.excluded == {"node9"}


def test_the_loop_runs_turns_until_stopped(world) -> None:
    agent, membership, changer, _, _, _ = world
    pilot = Autopilot(agent, membership, changer, 3, interval=0.01)

    async def run() -> None:
        membership.states["node2"] = "dead"
        agent.kill("node2", fenced=True)
        await pilot.start()
        deadline = asyncio.get_running_loop().time() + 5
        while agent.voters != ["node1", "node3", "node4"]:
            assert asyncio.get_running_loop().time() < deadline, agent.voters
            await asyncio.sleep(0.01)
        await pilot.stop()

    asyncio.run(run())


class FakeBackend:
    def __init__(self) -> None:
        self.observers: list = []

    def add_apply_observer(self, fn) -> None:
        self.observers.append(fn)

    def remove_apply_observer(self, fn) -> None:
        self.observers.remove(fn)


def test_a_fencing_applied_and_a_change_ended_each_wake_it_before_the_interval(world) -> None:
    agent, membership, changer, _, _, _ = world
    backend = FakeBackend()
    pilot = Autopilot(agent, membership, changer, 3, wake_on=backend, interval=3600.0)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await pilot.start()
        assert backend.observers == [pilot.observe]
        await asyncio.sleep(0.05)  # the first turn: nothing to do
        membership.states["node2"] = "dead"
        agent.kill("node2", fenced=True)
        pilot.observe({"op": "lease.renew"}, {})  # not a reason to look again
        await asyncio.sleep(0.05)
        assert changer.calls == []
        # Applied on the Raft thread: the remove, then at once (its end wakes it) the add.
        await loop.run_in_executor(None, pilot.observe, {"op": "host.fenced"}, {})
        deadline = loop.time() + 5
        while agent.voters != ["node1", "node3", "node4"]:
            assert loop.time() < deadline, (agent.voters, changer.calls)
            await asyncio.sleep(0.01)
        await pilot.stop()
        assert backend.observers == []

    asyncio.run(run())
