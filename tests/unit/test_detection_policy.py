"""HostEventPolicy in virtual time against the real ClusterState as the log.

Each `Node` is one agent's policy; `World` holds the one replicated state they propose to,
the virtual clock, the lease verdicts and the fence drivers' behaviour. Proposals commit at
once unless the test holds them (in flight) or the log is down.
"""
from __future__ import annotations

import itertools
import uuid as uuidlib
from typing import Any

import pytest

from consensus.model import HOST_DOWN_PAYLOAD, HOST_UP_PAYLOAD
from hagent.detection.policy import Fence, HostEventPolicy, Notice, PolicyKnobs, Propose
from test_state_support import AT, cluster, host_create, ok

DAMPING = 30.0


class World:
    def __init__(self, *hosts: str) -> None:
        self.state = cluster(*(hosts or ("cn1", "cn2", "cn3")))
        self.now = 0.0
        self.lease_out: set[str] = set()   # hosts the LeaseJudge calls fenced
        self.log_up = True                 # False: proposals fail as without quorum
        self.hold = False                  # True: proposals stay in flight (not answered)
        self.held: list[tuple[Node, Propose]] = []
        self.fence_confirms = True
        self.fence_calls: list[tuple[str, str, str]] = []  # (node, host, driver)
        self.proposed: list[tuple[str, dict[str, Any]]] = []  # (node, command)
        self._ids = itertools.count(1)

    def uuid(self) -> uuidlib.UUID:
        return uuidlib.UUID(int=next(self._ids))

    def commit(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.state.apply({"at": AT + self.now, **command})

    def stopped(self, host: str) -> list[dict]:
        return [n for n in self.state.list_notifications({"hostname": host}, sort_dir="asc")
                if n["payload"]["event"] == "STOPPED"]

    def events(self, host: str) -> list[str]:
        return [n["payload"]["event"]
                for n in self.state.list_notifications({"hostname": host}, sort_dir="asc")]


class Node:
    def __init__(self, world: World, name: str = "leader1",
                 drivers: dict[str, str] | None = None) -> None:
        self.world = world
        self.name = name
        self.policy = HostEventPolicy(
            name, fenced=lambda host, now: host in world.lease_out,
            knobs=PolicyKnobs(up_damping=DAMPING), fence_drivers=drivers,
            uuid_factory=world.uuid, wall_clock=lambda: AT + world.now)
        self.notices: list[Notice] = []

    def lead(self, refresh: bool = True) -> None:
        self.policy.leadership(True, self.world.now)
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        self.policy.incidents_refreshed(self.world.state.incidents(), self.world.now)

    def gossip(self, host: str, state: str | None) -> None:
        self.policy.gossip(host, state, self.world.now)

    def tick(self) -> list:
        world = self.world
        actions = self.policy.tick(world.now)
        for action in actions:
            if isinstance(action, Notice):
                self.notices.append(action)
            elif isinstance(action, Propose):
                world.proposed.append((self.name, action.command))
                if world.hold:
                    world.held.append((self, action))
                elif world.log_up:
                    self.policy.proposal_result(action, world.commit(action.command), world.now)
                else:
                    self.policy.proposal_result(action, {
                        "ok": False, "retryable": True, "error": "no quorum"}, world.now)
            elif isinstance(action, Fence):
                world.fence_calls.append((self.name, action.host, action.driver))
                detail = "Chassis Power is off" if world.fence_confirms else "BMC timed out"
                self.policy.fence_result(action, world.fence_confirms, detail, world.now)
        return [a for a in actions if not isinstance(a, Notice)]


def run(world: World, nodes: list[Node], seconds: float, step: float = 0.5,
        refresh_every: float = 1.0) -> None:
    """Advance virtual time, ticking every node and refreshing the leaders' views."""
    end = world.now + seconds
    next_refresh = world.now
    while world.now < end - 1e-9:
        world.now = round(world.now + step, 6)
        if world.now >= next_refresh:
            for node in nodes:
                if node.policy.is_leader:
                    node.refresh()
            next_refresh = world.now + refresh_every
        for node in nodes:
            node.tick()


def ops(world: World, node: str | None = None) -> list[str]:
    return [c["op"] for n, c in world.proposed if node is None or n == node]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def leader(world: World) -> Node:
    node = Node(world)
    for host in ("cn1", "cn2", "cn3"):
        node.gossip(host, "alive")
    node.lead()
    return node


# --- host.down -------------------------------------------------------------------------

def test_dead_host_gets_exactly_one_stopped(world, leader):
    leader.gossip("cn2", "suspect")
    run(world, [leader], 5)
    assert world.proposed == []
    leader.gossip("cn2", "dead")
    run(world, [leader], 60)
    assert ops(world) == ["host.down"]
    (command,) = [c for _, c in world.proposed]
    assert command == {"op": "host.down", "hostname": "cn2",
                       "notification_uuid": str(uuidlib.UUID(int=1)),
                       "generated_time": "2024-05-01T10:00:05.500000+00:00",
                       "source_node": "leader1", "previous": None}
    (note,) = world.stopped("cn2")
    assert note["payload"] == HOST_DOWN_PAYLOAD and note["status"] == "new"
    assert any("incident opened" in n.text and n.host == "cn2" for n in leader.notices)


def test_suspected_then_refuted_produces_nothing(world, leader):
    for _ in range(10):
        leader.gossip("cn3", "suspect")
        run(world, [leader], 2)
        leader.gossip("cn3", "alive")
        run(world, [leader], 2)
    assert world.proposed == [] and world.state.notification_count() == 0


def test_a_follower_proposes_nothing(world):
    follower = Node(world, "follower")
    follower.gossip("cn2", "dead")
    follower.refresh()  # ignored: not leader
    run(world, [follower], 30)
    assert world.proposed == []


def test_a_new_leader_acts_only_on_a_view_read_after_it_became_leader(world):
    node = Node(world)
    node.gossip("cn2", "dead")
    node.refresh()
    node.lead(refresh=False)
    node.tick()
    assert world.proposed == []
    node.policy.incidents_refreshed([], asked_at=world.now - 1)  # read before leadership
    node.tick()
    assert world.proposed == []
    node.refresh()
    node.tick()
    assert ops(world) == ["host.down"]


def test_unregistered_host_is_refused_once_and_retried_slowly(world, leader):
    leader.gossip("ghost", "dead")
    run(world, [leader], 59)
    assert ops(world) == ["host.down"]
    warnings = [n for n in leader.notices if n.warning and n.host == "ghost"]
    assert len(warnings) == 1 and "no host named 'ghost' is registered" in warnings[0].text
    run(world, [leader], 2)  # 60 s on: decided afresh (a new uuid), not logged again
    assert ops(world) == ["host.down"] * 2
    assert world.proposed[0][1]["notification_uuid"] != world.proposed[1][1]["notification_uuid"]
    assert len([n for n in leader.notices if n.warning]) == 1
    # registered meanwhile: the next decision goes through
    ok(world.state, host_create("ghost"))
    run(world, [leader], 61)
    assert len(world.stopped("ghost")) == 1


def test_uncommitted_proposals_are_resent_with_the_same_uuid_and_backoff(world, leader):
    world.log_up = False
    leader.gossip("cn2", "dead")
    times = []
    for _ in range(480):  # 4 minutes without quorum
        before = len(world.proposed)
        run(world, [leader], 0.5)
        if len(world.proposed) > before:
            times.append(world.now)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[-3:] == [30.0, 30.0, 30.0]  # the doubling stops at retry_max
    uuids = {c["notification_uuid"] for _, c in world.proposed}
    assert len(uuids) == 1  # every resend is the same proposal
    world.log_up = True
    run(world, [leader], 31)
    assert len(world.stopped("cn2")) == 1


def test_backoff_doubles_from_one_second(world, leader):
    world.log_up = False
    leader.gossip("cn2", "dead")
    seen = []
    for _ in range(64):
        before = len(world.proposed)
        run(world, [leader], 0.5)
        if len(world.proposed) > before:
            seen.append(world.now)
    assert [b - a for a, b in zip(seen, seen[1:])][:5] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_a_timeout_that_did_commit_is_resent_harmlessly(world, leader):
    """The log committed but the answer was lost: the resend (same uuid) lands on the open
    incident, and no second notification appears."""
    leader.gossip("cn2", "dead")
    world.hold = True
    run(world, [leader], 1)
    (node, action), = world.held
    world.commit(action.command)  # it did commit...
    node.policy.proposal_result(action, {"ok": False, "retryable": True,
                                         "error": "the log did not commit within 8 s"}, world.now)
    world.hold = False
    run(world, [leader], 10)
    assert ops(world) == ["host.down", "host.down"]
    assert len(world.stopped("cn2")) == 1


def test_one_proposal_in_flight_per_host(world, leader):
    world.hold = True
    leader.gossip("cn1", "dead")
    leader.gossip("cn2", "dead")
    run(world, [leader], 20)
    assert sorted(c["hostname"] for _, c in world.proposed) == ["cn1", "cn2"]


def test_a_refresh_read_before_a_commit_does_not_undo_it(world, leader):
    leader.gossip("cn2", "dead")
    asked = world.now
    stale_view = world.state.incidents()  # read before the commit
    world.now += 0.5
    leader.tick()  # proposes and commits host.down
    leader.policy.incidents_refreshed(stale_view, asked)  # arrives late
    run(world, [leader], 0.5, refresh_every=100)
    assert ops(world) == ["host.down"]


# --- fencing ---------------------------------------------------------------------------

def test_lease_expiry_fences_the_incident_once(world, leader):
    leader.gossip("cn2", "dead")
    run(world, [leader], 10)
    world.lease_out.add("cn2")
    run(world, [leader], 30)
    assert ops(world) == ["host.down", "host.fenced"]
    fenced = [c for _, c in world.proposed][1]
    assert fenced["method"] == "lease" and fenced["incident"] == world.stopped("cn2")[0][
        "notification_uuid"]
    assert world.stopped("cn2")[0]["payload"]["host_status"] == "NORMAL"


def test_fence_driver_runs_for_a_dead_host_and_its_confirmation_is_committed(world):
    leader = Node(world, drivers={"cn2": "ipmi"})
    leader.gossip("cn2", "dead")
    leader.lead()
    run(world, [leader], 5)
    assert world.fence_calls == [("leader1", "cn2", "ipmi")]
    assert ops(world) == ["host.down", "host.fenced"]
    incident = world.state.incident("cn2")
    assert incident["fence_method"] == "ipmi"
    assert incident["fence_detail"] == "Chassis Power is off"
    run(world, [leader], 60)
    assert len(world.fence_calls) == 1 and ops(world) == ["host.down", "host.fenced"]


def test_fence_driver_failures_are_retried_with_backoff(world):
    world.fence_confirms = False
    leader = Node(world, drivers={"cn2": "redfish"})
    leader.gossip("cn2", "dead")
    leader.lead()
    calls = []
    for _ in range(200):
        before = len(world.fence_calls)
        run(world, [leader], 0.5)
        if len(world.fence_calls) > before:
            calls.append(world.now)
    assert [b - a for a, b in zip(calls, calls[1:])] == [5.0, 10.0, 20.0, 40.0]
    assert ops(world) == ["host.down"]
    world.fence_confirms = True
    run(world, [leader], 61)
    assert ops(world) == ["host.down", "host.fenced"]


def test_no_fence_driver_for_a_host_on_maintenance_or_alive(world):
    ok(world.state, host_create("cn4", on_maintenance=True))
    leader = Node(world, drivers={"cn4": "ipmi", "cn2": "ipmi"})
    leader.gossip("cn4", "dead")
    leader.gossip("cn2", "suspect")
    leader.lead()
    run(world, [leader], 20)
    assert world.fence_calls == []
    assert world.state.incident("cn4")["notification_status"] == "ignored"
    world.lease_out.add("cn4")  # lease evidence is still recorded: it only observes
    run(world, [leader], 2)
    assert world.state.incident("cn4")["fence_method"] == "lease"


def test_a_driver_confirmation_for_an_earlier_incident_is_not_used(world):
    leader = Node(world, drivers={"cn2": "ipmi"})
    leader.gossip("cn2", "dead")
    leader.lead()
    world.hold = True
    run(world, [leader], 1)  # host.down in flight
    (_, down), = world.held
    leader.policy.proposal_result(down, world.commit(down.command), world.now)
    world.held.clear()
    run(world, [leader], 1)  # fence action issued; its host.fenced is held
    first_incident = world.state.incident("cn2")["notification_uuid"]
    # the incident closes and a new one opens before the held proposal is answered
    world.commit({"op": "host.up", "hostname": "cn2", "notification_uuid": str(world.uuid()),
                  "generated_time": "2024-05-01T10:05:00Z", "source_node": "other"})
    world.commit({"op": "host.down", "hostname": "cn2", "notification_uuid": str(world.uuid()),
                  "generated_time": "2024-05-01T10:06:00Z", "source_node": "other"})
    (_, fenced), = world.held
    assert fenced.command["incident"] == first_incident
    leader.policy.proposal_result(fenced, world.commit(fenced.command), world.now)
    assert not world.state.incident("cn2")["fenced"]  # the evidence stayed with its failure


# --- host.up, flapping -----------------------------------------------------------------

def test_started_only_after_up_damping_of_continuous_life(world, leader):
    leader.gossip("cn2", "dead")
    run(world, [leader], 5)
    leader.gossip("cn2", "alive")
    run(world, [leader], DAMPING - 1)
    assert ops(world) == ["host.down"]
    run(world, [leader], 1.5)
    assert ops(world) == ["host.down", "host.up"]
    assert world.events("cn2") == ["STOPPED", "STARTED"]
    started = world.state.list_notifications({"hostname": "cn2"}, sort_dir="asc")[1]
    assert started["payload"] == HOST_UP_PAYLOAD
    assert world.state.incident("cn2")["status"] == "closed"
    run(world, [leader], 60)
    assert ops(world) == ["host.down", "host.up"]


def test_a_flapping_host_yields_one_stopped_and_one_started(world, leader):
    for _ in range(50):  # dead/alive every 3 s for 5 minutes
        leader.gossip("cn2", "dead")
        run(world, [leader], 3)
        leader.gossip("cn2", "alive")
        run(world, [leader], 3)
    assert world.events("cn2") == ["STOPPED"]
    run(world, [leader], DAMPING)
    assert world.events("cn2") == ["STOPPED", "STARTED"]
    leader.gossip("cn2", "dead")  # a later failure is a new one
    run(world, [leader], 5)
    assert world.events("cn2") == ["STOPPED", "STARTED", "STOPPED"]
    assert world.proposed[-1][1]["previous"] == world.stopped("cn2")[0]["notification_uuid"]


def test_alive_in_gossip_but_lease_expired_is_not_up(world, leader):
    leader.gossip("cn2", "dead")
    run(world, [leader], 2)
    world.lease_out.add("cn2")
    leader.gossip("cn2", "alive")
    run(world, [leader], DAMPING + 10)
    assert ops(world) == ["host.down", "host.fenced"]
    world.lease_out.discard("cn2")
    run(world, [leader], 1)
    assert ops(world) == ["host.down", "host.fenced", "host.up"]


def test_a_no_op_answer_waits_for_a_fresh_view(world, leader):
    leader.gossip("cn2", "dead")
    run(world, [leader], 2)
    # another leader closed the incident meanwhile; this one still believes it open
    world.commit({"op": "host.up", "hostname": "cn2", "notification_uuid": str(world.uuid()),
                  "generated_time": "2024-05-01T10:01:00Z", "source_node": "other"})
    world.lease_out.add("cn2")
    leader.tick()
    assert ops(world) == ["host.down", "host.fenced"]
    leader.tick()
    assert any("changed nothing" in n.text for n in leader.notices)
    for _ in range(10):  # no fresh view: nothing more for cn2
        world.now += 0.5
        leader.tick()
    assert ops(world) == ["host.down", "host.fenced"]
    leader.refresh()  # the view shows no incident, cn2 still dead: a new failure
    leader.tick()
    assert ops(world)[-1] == "host.down" and len(world.stopped("cn2")) == 2


# --- leadership ------------------------------------------------------------------------

def test_leadership_moves_mid_incident_and_the_new_leader_continues(world):
    a, b = Node(world, "a"), Node(world, "b")
    for node in (a, b):
        for host in ("cn1", "cn2", "cn3"):
            node.gossip(host, "alive")
    a.lead()
    for node in (a, b):
        node.gossip("cn2", "dead")
    run(world, [a, b], 5)
    world.lease_out.add("cn2")
    run(world, [a, b], 2)
    assert ops(world) == ["host.down", "host.fenced"]
    # a loses leadership with a host.down for cn3 not yet answered
    for node in (a, b):
        node.gossip("cn3", "dead")
    world.hold = True
    run(world, [a, b], 0.5)
    a.policy.leadership(False, world.now)
    world.hold = False
    b.lead()
    run(world, [a, b], 1)
    # b saw no incident for cn3 yet and decided afresh: its host.down opened it
    assert ops(world, "b") == ["host.down"]
    (_, stale), = world.held
    a.policy.proposal_result(stale, world.commit(stale.command), world.now)  # commits late
    assert len(world.stopped("cn3")) == 1  # not re-notified
    # cn2: already fenced, b does not fence again; it comes back, b closes once
    world.lease_out.discard("cn2")
    for node in (a, b):
        node.gossip("cn2", "alive")
    run(world, [a, b], DAMPING + 5)
    assert ops(world, "b") == ["host.down", "host.up"]
    assert ops(world, "a") == ["host.down", "host.fenced", "host.down"]
    assert world.events("cn2") == ["STOPPED", "STARTED"]


def test_a_former_leader_drops_its_resends(world):
    a = Node(world, "a")
    a.gossip("cn2", "dead")
    a.lead()
    world.log_up = False
    run(world, [a], 0.5)
    a.policy.leadership(False, world.now)
    world.log_up = True
    run(world, [a], 60)
    assert ops(world) == ["host.down"] and world.stopped("cn2") == []


def test_two_leaders_at_once_still_store_one_stopped(world):
    """A deposed leader that does not know it yet and the new one both decide."""
    a, b = Node(world, "a"), Node(world, "b")
    for node in (a, b):
        node.gossip("cn2", "dead")
        node.lead()
    for node in (a, b):
        node.tick()
    assert ops(world) == ["host.down", "host.down"]
    assert len(world.stopped("cn2")) == 1


# --- inputs ----------------------------------------------------------------------------

def test_reconcile_forgets_members_gossip_dropped(world, leader):
    leader.gossip("cn2", "dead")
    leader.policy.reconcile({"cn1": "alive", "cn3": "alive"}, world.now)
    world.hold = True
    run(world, [leader], 5)
    assert world.proposed == []


def test_unknown_gossip_state_is_a_programming_error(world, leader):
    with pytest.raises(ValueError, match="gossip state must be one of"):
        leader.gossip("cn1", "zombie")


def test_same_inputs_same_actions():
    def trace() -> list:
        world = World()
        leader = Node(world, drivers={"cn1": "ipmi"})
        leader.lead()
        for host, state in [("cn1", "dead"), ("cn2", "dead"), ("cn2", "alive")]:
            leader.gossip(host, state)
            run(world, [leader], 20)
        return world.proposed + world.fence_calls
    assert trace() == trace()
