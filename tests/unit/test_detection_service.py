"""DetectionService with fakes: tests.fakes.FakeNode (the real ClusterState behind propose and
query), a fake membership, lease judge and fence drivers. No sockets; waits poll with a
deadline."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from hagent.detection.policy import PolicyKnobs
from hagent.detection.service import DetectionService, fence_method
from hagent.fencing.factory import make_fence_driver
from hagent.membership.events import MemberAlive, MemberDead, MemberSuspect, MemberUpdated
from tests.fakes import FakeNode

DAMPING = 0.3
FAST = dict(tick_interval=0.01, follower_poll=0.01, refresh_interval=0.02,
            reconcile_interval=0.05, propose_timeout=0.5, fence_timeout=0.2)


def alive(name: str) -> MemberAlive:
    return MemberAlive(name, f"tcp://{name}:7172", 2)


def suspect(name: str) -> MemberSuspect:
    return MemberSuspect(name, 1, "cn3")


def dead(name: str) -> MemberDead:
    return MemberDead(name, 1, "cn3")


class FakeMembership:
    def __init__(self, states: dict[str, str]) -> None:
        self.states = dict(states)
        self.callbacks: list[Callable[[Any], None]] = []

    def subscribe(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def member_states(self) -> dict[str, str]:
        return dict(self.states)

    def emit(self, event: Any) -> None:
        self.states[event.name] = {"MemberAlive": "alive", "MemberSuspect": "suspect",
                                   "MemberDead": "dead"}.get(type(event).__name__,
                                                              self.states.get(event.name))
        for callback in self.callbacks:
            callback(event)


class FakeJudge:
    def __init__(self) -> None:
        self.expired: set[str] = set()

    def fenced(self, host: str, now: float) -> bool:
        return host in self.expired


@dataclass
class FenceResult:
    confirmed: bool
    detail: str


class FakeDriver:
    def __init__(self, method: str = "ipmi", outcomes: list[Any] | None = None) -> None:
        self.method = method
        self.outcomes = list(outcomes or [FenceResult(True, "Chassis Power is off")])
        self.calls = 0

    async def power_off(self) -> FenceResult:
        self.calls += 1
        outcome = self.outcomes[min(self.calls, len(self.outcomes)) - 1]
        if outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class CountingNode(FakeNode):
    """Counts the service's loop turns (each asks is_leader once) and its reads, so a test
    waits for progress, not for time."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.queries = 0
        self.turns = 0

    def is_leader(self) -> bool:
        self.turns += 1
        return super().is_leader()

    async def query(self, name: str, **kwargs: Any) -> Any:
        self.queries += 1
        return await super().query(name, **kwargs)

    async def turns_pass(self, count: int) -> None:
        start = self.turns
        await _wait_for(lambda: self.turns >= start + count)


def _node(*hosts: str, leader: bool = True) -> CountingNode:
    node = CountingNode("cn1", leader=leader)
    node.state.apply({"op": "segment.create", "at": 1.0, "uuid": "11111111-1111-1111-1111-"
                      "111111111111", "name": "seg", "recovery_method": "auto",
                      "service_type": "COMPUTE"})
    for i, host in enumerate(hosts or ("cn1", "cn2", "cn3")):
        assert node.state.apply({"op": "host.create", "at": 1.0,
                                 "uuid": f"22222222-2222-2222-2222-{i:012d}", "name": host,
                                 "type": "COMPUTE", "control_attributes": "",
                                 "segment": "seg"})["ok"]
    return node


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met within the deadline")
        await asyncio.sleep(0.005)


def _events(node: FakeNode, host: str) -> list[str]:
    return node.read(lambda s: [n["payload"]["event"] for n in s.list_notifications(
        {"hostname": host}, sort_dir="asc")])


def _ops(node: FakeNode) -> list[str]:
    return [c["op"] for c in node.proposed]


async def _service(node, membership, judge=None, drivers=None) -> DetectionService:
    service = DetectionService(node, membership, judge, "cn1", PolicyKnobs(
        up_damping=DAMPING, retry_initial=0.02, retry_max=0.05, refused_retry=0.2,
        fence_retry_initial=0.02, fence_retry_max=0.05), drivers, **FAST)
    await service.start()
    return service


def test_dead_member_gets_one_stopped_then_started_after_damping(caplog):
    caplog.set_level(logging.INFO, logger="hagent.detection")

    async def main() -> None:
        node = _node()
        membership = FakeMembership({"cn1": "alive", "cn2": "alive", "cn3": "alive"})
        service = await _service(node, membership)
        try:
            membership.emit(suspect("cn2"))
            membership.emit(MemberUpdated("cn2", "tcp://cn2:7173", {}, 3))  # no verdict
            membership.emit(dead("cn2"))
            await _wait_for(lambda: _events(node, "cn2") == ["STOPPED"])
            membership.emit(alive("cn2"))
            await _wait_for(lambda: _events(node, "cn2") == ["STOPPED", "STARTED"])
            await node.turns_pass(50)  # well past another damping: nothing more comes
            assert _ops(node) == ["host.down", "host.up"]
        finally:
            await service.stop()

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("host cn2: proposing host.down: dead in gossip") for m in messages)
    assert any(m.startswith("host cn2: incident opened: STOPPED notification") for m in messages)
    assert any(m.startswith("host cn2: proposing host.up: alive for") for m in messages)
    assert any("detection active" in m for m in messages)


def test_member_dead_before_start_is_reported_and_followers_do_nothing():
    async def main() -> None:
        node = _node(leader=False)
        membership = FakeMembership({"cn1": "alive", "cn2": "dead"})
        service = await _service(node, membership)
        try:
            await node.turns_pass(10)
            assert node.proposed == [] and node.queries == 0  # a follower reads nothing
            node.leader = True
            await _wait_for(lambda: _events(node, "cn2") == ["STOPPED"])
            node.leader = False
            await node.turns_pass(2)
            queries = node.queries
            await node.turns_pass(10)
            assert node.queries == queries
        finally:
            await service.stop()

    asyncio.run(main())


def test_lease_expiry_fences_and_the_payload_turns_normal():
    async def main() -> None:
        node = _node()
        judge = FakeJudge()
        membership = FakeMembership({"cn1": "alive", "cn2": "alive"})
        service = await _service(node, membership, judge)
        try:
            membership.emit(dead("cn2"))
            await _wait_for(lambda: _events(node, "cn2") == ["STOPPED"])
            judge.expired.add("cn2")
            await _wait_for(lambda: node.read(lambda s: s.incident("cn2")["fenced"]))
            note = node.read(lambda s: s.list_notifications({"hostname": "cn2"})[0])
            assert note["payload"]["host_status"] == "NORMAL"
            await node.turns_pass(10)
            assert _ops(node) == ["host.down", "host.fenced"]
        finally:
            await service.stop()

    asyncio.run(main())


def test_fence_driver_failures_timeouts_then_confirmation(caplog):
    async def main() -> None:
        node = _node()
        driver = FakeDriver("redfish", [OSError("BMC unreachable"), "hang",
                                        FenceResult(False, "power state On"),
                                        FenceResult(True, "power state Off")])
        membership = FakeMembership({"cn1": "alive", "cn2": "alive"})
        service = await _service(node, membership, FakeJudge(), {"cn2": driver})
        try:
            membership.emit(dead("cn2"))
            await _wait_for(lambda: node.read(lambda s: (s.incident("cn2") or {}).get("fenced")))
            incident = node.read(lambda s: s.incident("cn2"))
            assert incident["fence_method"] == "redfish"
            assert incident["fence_detail"] == "power state Off"
            assert driver.calls == 4 and service.counters["fence_failures"] == 3
        finally:
            await service.stop()

    caplog.set_level(logging.INFO, logger="hagent.detection")
    asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("OSError: BMC unreachable" in m for m in warnings)
    assert any("no answer within 0.2 s" in m for m in warnings)


def test_a_log_without_quorum_is_retried_until_it_commits_once():
    async def main() -> None:
        node = _node()
        node.refuse_log = "the log did not commit within 8 s"
        membership = FakeMembership({"cn1": "alive", "cn2": "alive"})
        service = await _service(node, membership)
        try:
            membership.emit(dead("cn2"))
            await _wait_for(lambda: service.counters["proposal_failures"] >= 3)
            node.refuse_log = None
            await _wait_for(lambda: _events(node, "cn2") == ["STOPPED"])
            uuids = {c["notification_uuid"] for c in node.proposed}
            assert len(uuids) == 1  # resends of one proposal
        finally:
            await service.stop()

    asyncio.run(main())


def test_unregistered_host_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="hagent.detection")

    async def main() -> None:
        node = _node()
        membership = FakeMembership({"cn1": "alive", "ghost": "alive"})
        service = await _service(node, membership)
        try:
            membership.emit(dead("ghost"))
            await _wait_for(lambda: len(node.proposed) >= 3)  # refused_retry is 0.2 s here
        finally:
            await service.stop()

    asyncio.run(main())
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    assert "no host named 'ghost' is registered" in refusals[0].getMessage()


def test_unreadable_incidents_are_logged_once_and_detection_resumes(caplog):
    caplog.set_level(logging.INFO, logger="hagent.detection")

    async def main() -> None:
        node = _node()
        node.unavailable = "no voter answered"
        membership = FakeMembership({"cn1": "alive", "cn2": "dead"})
        service = await _service(node, membership)
        try:
            await _wait_for(lambda: service.counters["refresh_failures"] >= 5)
            assert node.proposed == []  # no view of the log: no decision
            node.unavailable = None
            await _wait_for(lambda: _events(node, "cn2") == ["STOPPED"])
        finally:
            await service.stop()

    asyncio.run(main())
    assert len([r for r in caplog.records if "cannot read the log's incidents" in
                r.getMessage()]) == 1


def test_a_hung_proposal_times_out_and_is_resent():
    async def main() -> None:
        node = _node()
        hang = asyncio.Event()
        real_propose = node.propose

        async def propose(command: dict[str, Any]) -> dict[str, Any]:
            if not hang.is_set():
                hang.set()
                await asyncio.Event().wait()
            return await real_propose(command)

        node.propose = propose  # type: ignore[method-assign]
        membership = FakeMembership({"cn1": "alive", "cn2": "alive"})
        service = await _service(node, membership)
        try:
            membership.emit(dead("cn2"))
            await _wait_for(lambda: _events(node, "cn2") == ["STOPPED"])
            assert service.counters["proposal_failures"] == 1
        finally:
            await service.stop()

    asyncio.run(main())


def test_stop_cancels_calls_in_flight():
    async def main() -> None:
        node = _node()
        driver = FakeDriver("ipmi", ["hang"])
        membership = FakeMembership({"cn1": "alive", "cn2": "alive"})
        service = DetectionService(node, membership, None, "cn1", PolicyKnobs(), {"cn2": driver},
                                   **{**FAST, "fence_timeout": 60.0})
        await service.start()
        membership.emit(dead("cn2"))
        await _wait_for(lambda: driver.calls == 1)
        await service.stop()  # returns although the driver call hangs
        proposed = len(node.proposed)
        membership.emit(dead("cn3"))  # after stop: ignored, nothing runs
        await asyncio.sleep(0)
        assert len(node.proposed) == proposed and not service._tasks

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_driver_without_a_known_method_is_refused_at_construction():
    with pytest.raises(ValueError, match="fence driver of host 'cn2' .* is neither an IPMI"):
        DetectionService(_node(), FakeMembership({}), None, "cn1", PolicyKnobs(),
                         {"cn2": FakeDriver("stonith")})


def test_the_real_drivers_are_recorded_by_their_kind(tmp_path):
    password = tmp_path / "bmc.pw"
    password.write_text("secret\n")
    password.chmod(0o600)
    specs = {"cn2": {"driver": "ipmi", "address": "10.0.0.2", "username": "admin",
                     "password_file": str(password)},
             "cn3": {"driver": "redfish", "address": "10.0.0.3", "username": "admin",
                     "password_file": str(password)}}
    drivers = {host: make_fence_driver(spec, host=host) for host, spec in specs.items()}
    assert {h: fence_method(d) for h, d in drivers.items()} == {"cn2": "ipmi", "cn3": "redfish"}
