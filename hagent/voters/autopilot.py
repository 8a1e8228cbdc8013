"""The autopilot: on the leader, every second, the voter set's view in, at most one change out
(docs/voters.md).

Each turn (every ``interval``, and at once after the log applies a command that may call
for a change: a host fenced or up, a node registered, a voter change ended; or after its
own change returned) while this node leads the log it builds a `VoterView` from the log (the
changer's ``leader_view()``: the ``voters`` query, with the committed set, the registry and
the change in flight, and the voters this leader hears from over Raft; query
``incidents``: who is declared dead, who is fenced) and from gossip
(``membership.member_states()``), asks
`hagent.voters.policy.assess` for a decision and hands it to the `VoterChanger`
(``add_voter`` / ``remove_voter``), one at a time: while its call runs, or while the log
shows a change in flight, the policy sees that change and decides nothing.

What callers may rely on:

- it acts only while ``agent.is_leader()``; a follower's autopilot only watches;
- every decision is logged at INFO with its reason, its outcome at INFO (done) or WARNING
  (refused, failed), and a reason for standing still is logged once each time it changes;
- a node a change was refused or failed for is left out of the policy's view for
  ``retry_after`` seconds (a candidate that cannot catch up is not retried in a loop; the
  next best one is taken meanwhile);
- ``status()`` says what it did last and why it does nothing now, for ``/status``;
- ``hagent_voters_autopilot_changes_total{op, result}`` counts its changes by result (done;
  refused: the log refused or aborted it, nothing changed; failed: no answer) on the
  agent's registry.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping, Protocol

from prometheus_client import CollectorRegistry, Counter

from hagent.metrics import PREFIX
from hagent.voters.changer import VoterChangeRefused
from hagent.voters.policy import Assessment, Decision, Registered, VoterView, assess

log = logging.getLogger(__name__)

#: Longest time between two turns when nothing wakes the autopilot: one ``voters`` and one
#: ``incidents`` read a second cost the log nothing, and a turn also follows at once every
#: applied command of ``WAKE_OPS``, so a replacement does not wait for the next tick.
INTERVAL = 1.0
#: Applied commands after which a turn runs at once: what makes a voter replaceable (its
#: host fenced), a candidate (registered, its incident closed), or the next change possible.
WAKE_OPS = frozenset({"host.fenced", "host.up", "voters.register", "voters.commit",
                      "voters.abort", "voters.bootstrap"})
#: Seconds a node whose change was refused or failed is left out of the view: long enough
#: not to hammer a candidate that cannot catch up (its own attempt lasts up to
#: ``voters.catchup_timeout``), short enough to try it again within a minute.
RETRY_AFTER = 30.0
RESULTS = ("done", "refused", "failed")


class AgentLike(Protocol):
    def is_leader(self) -> bool: ...
    async def query(self, name: str, **kwargs: Any) -> Any: ...


class MembershipLike(Protocol):
    def member_states(self) -> dict[str, str]: ...


class ApplyObservable(Protocol):
    """The voter backend: calls ``fn(command, result)`` after each applied log entry (on
    the Raft thread)."""

    def add_apply_observer(self, fn: Callable[[dict, dict], None]) -> None: ...
    def remove_apply_observer(self, fn: Callable[[dict, dict], None]) -> None: ...


class LeaderViewLike(Protocol):
    voters: Mapping[str, Any]     # the ``voters`` query of the leader's state
    reachable: frozenset[str]     # Raft addresses of the members it hears from, itself too


class ChangerLike(Protocol):
    """hagent.voters.changer.VoterChanger as the autopilot uses it."""

    def leader_view(self) -> LeaderViewLike: ...
    async def add_voter(self, node: str, *, auto: bool = False) -> dict[str, Any]: ...
    async def remove_voter(self, node: str, *, auto: bool = False) -> dict[str, Any]: ...


def build_view(doc: Mapping[str, Any], incidents: list[Mapping[str, Any]],
               gossip: Mapping[str, str], target: int, *, busy: str | None = None,
               reachable: frozenset[str] = frozenset(), excluded: frozenset[str] = frozenset(),
               lags: Mapping[str, int] | None = None) -> VoterView:
    """The policy's view from the log's ``voters`` query ``doc``, its open ``incidents``,
    gossip, the Raft addresses the leader hears from (``reachable``), and what only the
    autopilot knows: its own change being made (``busy``), the nodes left out for now, the
    last catch-up lag each node reported."""
    voters = tuple(v.get("node") or v["raft_address"] for v in doc["voters"])
    heard = frozenset(v.get("node") or v["raft_address"] for v in doc["voters"]
                      if v["raft_address"] in reachable)
    lags = lags or {}
    registered = {name: Registered(str(info.get("failure_domain") or ""), lags.get(name))
                  for name, info in doc.get("registry", {}).items()}
    change = doc.get("change")
    in_flight = busy
    if change is not None:
        in_flight = f"{change['op']} {change['node']}, {change.get('phase', 'pending')}"
    open_incidents = [i for i in incidents if i.get("status", "open") == "open"]
    return VoterView(
        voters=voters, target=target, gossip=dict(gossip), reachable=heard,
        incidents=frozenset(i["hostname"] for i in open_incidents),
        fenced=frozenset(i["hostname"] for i in open_incidents if i.get("fenced")),
        registered=registered, change=in_flight, excluded=excluded)


class Autopilot:
    """Keeps the voter set at ``target`` healthy voters; `start` after the changer."""

    def __init__(self, agent: AgentLike, membership: MembershipLike, changer: ChangerLike,
                 target: int, *, registry: CollectorRegistry | None = None,
                 wake_on: ApplyObservable | None = None, interval: float = INTERVAL,
                 retry_after: float = RETRY_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._agent = agent
        self._membership = membership
        self._changer = changer
        self.target = target
        self._interval = interval
        self._retry_after = retry_after
        self._clock = clock
        self._wake_on = wake_on
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leading = False
        self._running = False
        self._loop_task: asyncio.Task | None = None
        self._change_task: asyncio.Task | None = None
        self._busy: str | None = None
        self._excluded: dict[str, float] = {}   # node -> until (clock)
        self._lags: dict[str, int] = {}
        self._last_reason: str | None = None
        self._last_decision: dict[str, Any] | None = None
        self.counts = {(op, result): 0 for op in ("add", "remove") for result in RESULTS}
        self._counter = None
        if registry is not None:
            self._counter = Counter(
                f"{PREFIX}_voters_autopilot_changes",
                "Voter changes the autopilot made as leader, by op (add, remove) and result "
                "(done; refused: refused or aborted by the log, nothing changed; failed: the "
                "changer raised)",
                ["op", "result"], registry=registry)

    async def start(self) -> None:
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._loop_task = self._loop.create_task(self._run(), name="voters autopilot")
        if self._wake_on is not None:
            self._wake_on.add_apply_observer(self.observe)
        log.info("voter autopilot started: target %d voters", self.target)

    async def stop(self) -> None:
        self._running = False
        if self._wake_on is not None:
            self._wake_on.remove_apply_observer(self.observe)
        tasks = [t for t in (self._loop_task, self._change_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = self._change_task = None

    def status(self) -> dict[str, Any]:
        """For /status: whether it acts (this node leads), the target, why it does nothing
        now (or what it is doing) and its last decision with its outcome."""
        return {"active": self._leading, "target": self.target, "reason": self._last_reason,
                "in_flight": self._busy, "last_decision": self._last_decision,
                "excluded": sorted(self._excluded)}

    def observe(self, command: dict[str, Any], result: Any) -> None:
        """An apply observer (any thread): a turn at once after a command of WAKE_OPS."""
        if command.get("op") in WAKE_OPS and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # --- the loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        # ``while self._running``: a cancellation landing as the wake event fires can be lost
        # (asyncio.wait_for on 3.11), and stop() must still end this loop.
        while self._running:
            self._wake.clear()  # a wake during the turn runs another one at once
            try:
                await self.turn()
            except Exception:  # a failed read must not end the autopilot; next turn retries
                log.exception("voter autopilot turn failed")
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def turn(self) -> Assessment | None:
        """One turn: read, assess, hand a decision on. None on a follower (it only watches)
        or while the log has no voter set yet."""
        leader = self._agent.is_leader()
        if leader != self._leading:
            self._leading = leader
            self._last_reason = None
            log.info("voter autopilot %s", "active: this node leads the log" if leader
                     else "passive: this node no longer leads the log")
        if not leader:
            return None
        leader_view = self._changer.leader_view()
        doc = leader_view.voters
        if not doc.get("bootstrapped"):
            self._note("the log holds no voter set yet")
            return None
        incidents = await self._agent.query("incidents", status="open")
        now = self._clock()
        self._excluded = {n: until for n, until in self._excluded.items() if until > now}
        change = doc.get("change")
        progress = (change or {}).get("progress")
        if progress and progress.get("lag") is not None:
            self._lags[change["node"]] = int(progress["lag"])
        view = build_view(doc, incidents, self._membership.member_states(), self.target,
                          busy=self._busy, reachable=leader_view.reachable,
                          excluded=frozenset(self._excluded), lags=self._lags)
        assessment = assess(view)
        if assessment.decision is None:
            self._note(assessment.reason)
        else:
            self._make(assessment.decision)
        return assessment

    def _note(self, reason: str) -> None:
        if reason != self._last_reason:
            log.info("voter autopilot: no change: %s", reason)
            self._last_reason = reason

    def _make(self, decision: Decision) -> None:
        verb = "adding" if decision.op == "add" else "removing"
        log.info("voter autopilot: %s %s: %s", verb, decision.node, decision.reason)
        self._last_reason = f"{verb} {decision.node}: {decision.reason}"
        self._busy = f"{decision.op} {decision.node}, being made by the autopilot"
        self._last_decision = {"op": decision.op, "node": decision.node,
                               "reason": decision.reason, "at": time.time(), "result": None}
        self._change_task = asyncio.create_task(self._change(decision),
                                                name=f"voters autopilot {decision.op}")

    async def _change(self, decision: Decision) -> None:
        call = (self._changer.add_voter if decision.op == "add"
                else self._changer.remove_voter)
        error = None
        try:
            # auto: the log lets the autopilot's own remove take the set to 2 voters for the
            # moment before the replacement is added.
            await call(decision.node, auto=True)
            result = "done"
        except VoterChangeRefused as exc:  # refused by the log or aborted: nothing changed
            result, error = "refused", str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the log or the changer failed: counted, retried later
            result, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self._busy = None
            self._wake.set()  # the next change (an add after a remove) need not wait a tick
        if result == "done":
            log.info("voter autopilot: %s %s done", decision.op, decision.node)
        else:
            self._excluded[decision.node] = self._clock() + self._retry_after
            log.warning("voter autopilot: %s %s %s: %s; leaving %s out for %g s", decision.op,
                        decision.node, result, error, decision.node, self._retry_after)
        self.counts[(decision.op, result)] += 1
        if self._counter is not None:
            self._counter.labels(decision.op, result).inc()
        if self._last_decision is not None and self._last_decision["node"] == decision.node:
            self._last_decision.update(result=result, error=error)
