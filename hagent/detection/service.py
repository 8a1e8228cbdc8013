"""The asyncio shell of host failure detection: feeds `HostEventPolicy` and carries out what
it decides (docs/detection.md).

Runs on every agent, so that the policy's view of gossip is current on whichever node becomes
leader; it acts only on the leader. Each loop turn (every ``tick_interval`` while leader,
``follower_poll`` otherwise, and at once after a gossip event or an answer) it reads
leadership from ``agent.is_leader()``, refreshes the log's incidents while leader
(``await agent.query("incidents")`` every ``refresh_interval`` and after every answer), and
runs the policy's actions: proposals through ``agent.propose`` and fence driver calls, each in
its own task with a deadline, their outcomes fed back to the policy. Every decision is logged
at INFO with the host name.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping, Protocol

from hagent.detection.policy import Action, Fence, HostEventPolicy, Notice, PolicyKnobs, Propose
from hagent.fencing.ipmi import IpmiFenceDriver
from hagent.fencing.lab_bmc import LabBmcFenceDriver
from hagent.fencing.redfish import RedfishFenceDriver
from hagent.membership.events import MemberAlive, MemberDead, MemberLeft, MemberSuspect

log = logging.getLogger(__name__)

# Membership events that carry a verdict -> the policy's gossip state (a graceful leave is
# no failure). MemberUpdated and MemberRefuted say nothing about liveness.
_EVENT_STATES: dict[type, str] = {MemberAlive: "alive", MemberSuspect: "suspect",
                                  MemberDead: "dead", MemberLeft: "left"}
# Fence driver methods host.fenced records (consensus/model.py FENCE_METHODS, but "lease";
# "lab" is the lab's BMC stand-in, hagent/fencing/lab_bmc.py).
_DRIVER_METHODS = ("ipmi", "redfish", "lab")
_DRIVER_CLASSES = ((IpmiFenceDriver, "ipmi"), (RedfishFenceDriver, "redfish"),
                   (LabBmcFenceDriver, "lab"))


class AgentLike(Protocol):
    def is_leader(self) -> bool: ...
    async def query(self, name: str, **kwargs: Any) -> Any: ...
    async def propose(self, command: dict[str, Any]) -> dict[str, Any]: ...


class MembershipLike(Protocol):
    def subscribe(self, callback: Callable[[Any], None]) -> None: ...
    def member_states(self) -> dict[str, str]: ...


class LeaseJudgeLike(Protocol):
    def fenced(self, host: str, now: float) -> bool: ...


class FenceResultLike(Protocol):
    confirmed: bool
    detail: str


class FenceDriverLike(Protocol):
    """hagent.fencing's IpmiFenceDriver/RedfishFenceDriver/LabBmcFenceDriver, or any object
    with a ``method`` ("ipmi" | "redfish" | "lab": what host.fenced records) and this
    coroutine."""

    async def power_off(self) -> FenceResultLike: ...


def fence_method(driver: Any) -> str | None:
    """The host.fenced ``method`` a fence driver's confirmation is recorded with."""
    for cls, method in _DRIVER_CLASSES:
        if isinstance(driver, cls):
            return method
    method = getattr(driver, "method", None)
    return method if method in _DRIVER_METHODS else None


class DetectionService:
    """Host failure detection for one agent; `start` after membership and leases.

    ``judge`` gives the lease verdicts (None: no lease fencing, only drivers);
    ``fence_drivers`` maps a host name to its fence driver. ``clock`` must be the monotonic
    clock the judge's ``now`` is measured on.
    """

    def __init__(self, agent: AgentLike, membership: MembershipLike,
                 judge: LeaseJudgeLike | None, node_name: str, knobs: PolicyKnobs,
                 fence_drivers: Mapping[str, FenceDriverLike] | None = None, *,
                 tick_interval: float = 0.5, follower_poll: float = 1.0,
                 refresh_interval: float = 1.0, reconcile_interval: float = 5.0,
                 propose_timeout: float = 15.0, fence_timeout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._drivers = dict(fence_drivers or {})
        methods = {host: fence_method(driver) for host, driver in self._drivers.items()}
        for host, method in methods.items():
            if method is None:
                raise ValueError(f"the fence driver of host {host!r} ({self._drivers[host]!r}) "
                                 f"is neither an IPMI, a Redfish nor a lab driver, nor has a "
                                 f"`method` of {' or '.join(_DRIVER_METHODS)}")
        self._agent = agent
        self._membership = membership
        self._judge = judge
        self._clock = clock
        self.policy = HostEventPolicy(
            node_name, fenced=self._fenced, knobs=knobs,
            fence_drivers=methods)
        self._tick_interval = tick_interval
        self._follower_poll = follower_poll
        self._refresh_interval = refresh_interval
        self._reconcile_interval = reconcile_interval
        self._propose_timeout = propose_timeout
        self._fence_timeout = fence_timeout
        self._wake = asyncio.Event()
        self._running = False
        self._loop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._next_refresh = 0.0
        self._refresh_wanted = False
        self._next_reconcile = 0.0
        self._last_refresh_error: str | None = None
        self.counters = {"proposals": 0, "proposal_failures": 0, "fence_calls": 0,
                         "fence_failures": 0, "refreshes": 0, "refresh_failures": 0}

    async def start(self) -> None:
        self._running = True
        self._membership.subscribe(self._on_event)
        self.policy.reconcile(self._membership.member_states(), self._clock())
        self._next_reconcile = self._clock() + self._reconcile_interval
        self._loop_task = asyncio.create_task(self._run(), name="detection")
        log.info("host failure detection started (up damping %g s, fence drivers for %d "
                 "host(s))", self.policy.knobs.up_damping, len(self._drivers))

    async def stop(self) -> None:
        self._running = False
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._tasks.clear()

    # --- inputs ------------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        state = _EVENT_STATES.get(type(event))
        if state is None or not self._running:
            return
        self.policy.gossip(event.name, state, self._clock())
        self._wake.set()

    def _fenced(self, host: str, now: float) -> bool:
        if self._judge is None:
            return False
        try:
            return bool(self._judge.fenced(host, now))
        except Exception:  # a broken judge must not stop detection; not fenced is safe
            log.exception("host %s: the lease judge failed; taking it as not fenced", host)
            return False

    # --- the loop ----------------------------------------------------------------------
    async def _run(self) -> None:
        # ``while self._running``: a cancellation that lands as the wake event fires can be
        # lost (asyncio.wait_for on 3.11), and stop() must still end this loop.
        while self._running:
            now = self._clock()
            leader = self._agent.is_leader()
            if leader != self.policy.is_leader:
                self.policy.leadership(leader, now)
                log.info("detection %s", "active: this node leads the log" if leader
                         else "passive: this node no longer leads the log")
                self._next_refresh = now
            if now >= self._next_reconcile:
                self.policy.reconcile(self._membership.member_states(), now)
                self._next_reconcile = now + self._reconcile_interval
            if leader and (self._refresh_wanted or now >= self._next_refresh):
                await self._refresh()
            self._execute(self.policy.tick(self._clock()))
            self._wake.clear()
            try:
                async with asyncio.timeout(self._tick_interval if leader else self._follower_poll):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _refresh(self) -> None:
        self._refresh_wanted = False
        asked = self._clock()
        self._next_refresh = asked + self._refresh_interval
        try:
            records = await self._agent.query("incidents")
        except Exception as exc:
            self.counters["refresh_failures"] += 1
            error = f"{type(exc).__name__}: {exc}"
            if error != self._last_refresh_error:
                log.warning("cannot read the log's incidents (%s); trying again in %g s",
                            error, self._refresh_interval)
                self._last_refresh_error = error
            return
        self._last_refresh_error = None
        self.counters["refreshes"] += 1
        self.policy.incidents_refreshed(records, asked)

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Notice):
                (log.warning if action.warning else log.info)("host %s: %s", action.host,
                                                              action.text)
            elif isinstance(action, Propose):
                log.info("host %s: proposing %s: %s", action.host, action.op, action.reason)
                self._spawn(self._propose(action))
            elif isinstance(action, Fence):
                log.info("host %s: %s", action.host, action.reason)
                self._spawn(self._fence(action))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _propose(self, action: Propose) -> None:
        self.counters["proposals"] += 1
        try:
            answer = await asyncio.wait_for(self._agent.propose(dict(action.command)),
                                            self._propose_timeout)
        except asyncio.TimeoutError:
            answer = {"ok": False, "retryable": True,
                      "error": f"no answer within {self._propose_timeout:g} s"}
        except Exception as exc:  # the agent's transport failed: retry like a timeout
            answer = {"ok": False, "retryable": True, "error": f"{type(exc).__name__}: {exc}"}
        if not answer.get("ok"):
            self.counters["proposal_failures"] += 1
        self.policy.proposal_result(action, answer, self._clock())
        self._refresh_wanted = True
        self._wake.set()

    async def _fence(self, action: Fence) -> None:
        self.counters["fence_calls"] += 1
        try:
            result = await asyncio.wait_for(self._drivers[action.host].power_off(),
                                            self._fence_timeout)
            confirmed, detail = bool(result.confirmed), str(result.detail)
        except asyncio.TimeoutError:
            confirmed, detail = False, f"no answer within {self._fence_timeout:g} s"
        except Exception as exc:
            confirmed, detail = False, f"{type(exc).__name__}: {exc}"
        if not confirmed:
            self.counters["fence_failures"] += 1
        self.policy.fence_result(action, confirmed, detail, self._clock())
        self._wake.set()
