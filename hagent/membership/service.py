"""MembershipService: the SWIM core (``hagent.membership.swim``) driven on the agent's asyncio
loop over the gossip wire (``hagent.membership.shell``).

The core is sans-IO; this module gives it a clock (``time.monotonic()``), a timer (one asyncio
timer handle, re-armed at ``Membership.next_deadline()`` after every step, so an idle node
wakes only when the protocol has work), the wire, and subscribers. Every step runs on the loop
thread: a received message or a due timer goes into the core, the events that come out are
handled first (a new member's CURVE key is learned before the reply to it is sent), then the
messages are sent.

What callers may rely on:

- ``subscribe(callback)``: every MemberAlive / MemberSuspect / MemberDead (and any other event
  the core emits) in the order the core emitted them, called on the loop; an exception in a
  callback is logged and does not stop the others.
- ``member_states()``: a name -> state dict (self included), safe from any thread.
- ``members()`` / ``snapshot()``: rows and figures for hagentctl, ``/status`` and ``/metrics``;
  safe from any thread. From another thread they ask the loop and wait up to
  ``SNAPSHOT_WAIT``; a loop that does not answer in time (busy, stalled) gets the last snapshot
  served instead, so the status endpoint keeps answering.
- Joining: the seeds (minus this node's own address) get a join push-pull at start and again
  every ``REJOIN_INTERVAL`` while no other member is alive, so a node that started before its
  seeds, or whose every peer died or was cut off, finds the cluster once a seed answers.
- ``stop(leave=True)`` tells the others this node is leaving (state "left", not "dead": an
  agent stopped on purpose is not a failed host) and closes every socket without hanging.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hagent.config import Config
from hagent.forward.keys import KeyPair
from hagent.membership import swim
from hagent.membership.events import (Event, MemberAlive, MemberDead, MemberLeft, MemberRefuted,
                                      MemberSuspect, MemberUpdated)
from hagent.membership.knobs import MembershipKnobs
from hagent.membership.messages import Message
from hagent.membership.shell import GossipWire

log = logging.getLogger(__name__)

#: Seconds between join attempts while no other member is alive.
REJOIN_INTERVAL = 1.0
#: Seconds another thread waits for the loop to take a fresh snapshot before it is served
#: the previous one.
SNAPSHOT_WAIT = 0.5
#: Longest the timer sleeps even when the core has nothing due (it always has a probe round;
#: this only guards against an infinite deadline).
MAX_SLEEP = 60.0
#: Seconds ``stop(leave=True)`` gives the leave messages to go out before the sockets close.
LEAVE_FLUSH = 0.2

STATES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True)
class Snapshot:
    """Membership as seen at one moment (``taken_at``: time.monotonic())."""

    taken_at: float
    members: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    health_score: int = 0
    wire: dict[str, Any] = field(default_factory=dict)

    def by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self.members:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return counts


def member_row(view: Any, voters: list[str]) -> dict[str, Any]:
    """One MemberView as the plain dict hagentctl and /status show.

    ``voter`` is whether the member's gossiped Raft address (meta["raft"]) is one of
    ``raft.voters``; ``key`` is its CURVE public key as gossiped."""
    meta = dict(getattr(view, "meta", None) or {})
    raft = meta.get("raft") or None
    return {
        "name": view.name,
        "address": view.address,
        "state": view.state,
        "incarnation": view.incarnation,
        "last_heard_ago": view.last_heard_ago,
        "confirmations": view.confirmations,
        "suspect_deadline_in": view.suspect_deadline_in,
        "raft_address": raft,
        "voter": raft is not None and raft in voters,
    }


class MembershipService:
    """One agent's membership: the core, the wire, the timer and the subscribers."""

    def __init__(self, config: Config, key_pair: KeyPair, node_name: str, *,
                 knobs: MembershipKnobs | None = None, rng: random.Random | None = None) -> None:
        gossip = config.gossip
        if not gossip.bind:
            raise ValueError("gossip.bind is empty: this node takes no part in membership")
        self.name = node_name
        self.address = gossip.advertise or gossip.bind
        self.knobs = knobs or MembershipKnobs()
        self.voters = list(config.raft.voters)
        self.seeds = [s for s in gossip.seeds if s != self.address]
        self.meta = {"key": key_pair.public}
        if config.is_voter:
            self.meta["raft"] = config.raft.bind
        self._rng = rng or random.Random()
        allowed = set(config.security.allowed_keys)
        for seed, key in zip(gossip.seeds, gossip.seed_keys):
            if seed != self.address and key not in allowed:
                log.warning("gossip seed %s: its key %s is not in security.allowed_keys, so its "
                            "replies will be refused; add it there", seed, key)
        self.wire = GossipWire(gossip.bind, key_pair, list(config.security.allowed_keys),
                               dict(zip(gossip.seeds, gossip.seed_keys)),
                               self.knobs.max_message_bytes, self._on_message)
        self.core: swim.Membership | None = None
        self._subscribers: list[Callable[[Event], None]] = []
        self._states: dict[str, str] = {}     # replaced, never mutated: readable from any thread
        self._snapshot = Snapshot(taken_at=0.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._rejoin: asyncio.TimerHandle | None = None
        self.joins = 0       # join attempts made (push-pulls to every seed)
        self._asking_seeds = False

    # --- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the gossip socket (raises shell.GossipBindError if it cannot) and join
        through the seeds."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        now = time.monotonic()
        self.core = swim.Membership(self.name, self.address, self.knobs, self._rng, now,
                                    meta=dict(self.meta))
        self._states = {self.name: "alive"}
        await self.wire.start()
        self._join()
        self._arm()
        self._take_snapshot()
        log.info("membership started as %s at %s; seeds %s", self.name, self.address,
                 ", ".join(self.seeds) or "(none: first node)")

    async def stop(self, leave: bool = True) -> None:
        """Stop (after a graceful leave unless ``leave`` is False) and close the sockets."""
        if self.core is None:
            return
        for handle in (self._timer, self._rejoin):
            if handle is not None:
                handle.cancel()
        self._timer = self._rejoin = None
        if leave:
            leave_fn = getattr(self.core, "leave", None)
            if leave_fn is not None:
                self._apply(leave_fn(time.monotonic()))
                await self._flush(LEAVE_FLUSH)
        self._take_snapshot()
        await self.wire.stop()
        self.core = None

    async def _flush(self, limit: float) -> None:
        """Wait (at most ``limit`` s) until no send is waiting for a connection."""
        deadline = time.monotonic() + limit
        while self.wire.waiting_sends and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # --- readers (any thread) ---------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` on the loop for every membership event from now on."""
        self._subscribers.append(callback)

    def member_states(self) -> dict[str, str]:
        """name -> "alive" | "suspect" | "dead" | "left", this node included."""
        return self._states

    def members(self) -> list[dict[str, Any]]:
        """One row per known member (see ``member_row``), sorted by name."""
        return self.snapshot().members

    def snapshot(self) -> Snapshot:
        """Members, core counters, health score and wire figures, taken now on the loop."""
        if self.core is None or self._loop is None or self._loop.is_closed():
            return self._snapshot
        if threading.get_ident() == self._loop_thread:
            return self._take_snapshot()
        future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._take_snapshot())
                except Exception as exc:  # reported to the waiting thread
                    future.set_exception(exc)
        try:
            self._loop.call_soon_threadsafe(take)
            return future.result(SNAPSHOT_WAIT)
        except (concurrent.futures.TimeoutError, RuntimeError):
            future.cancel()
            return self._snapshot

    def _take_snapshot(self) -> Snapshot:
        core = self.core
        if core is None:
            return self._snapshot
        now = time.monotonic()
        rows = sorted((member_row(v, self.voters) for v in core.members(now)),
                      key=lambda r: r["name"])
        w = self.wire
        self._snapshot = Snapshot(
            taken_at=now, members=rows, counters=dict(core.counters),
            health_score=core.health_score,
            wire={"received": w.received, "sent": w.sent, "dropped_in": dict(w.dropped_in),
                  "dropped_out": dict(w.dropped_out), "refused_keys": w.refused_keys,
                  "peer_sockets": w.peer_sockets, "joins": self.joins})
        return self._snapshot

    # --- the loop side ----------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        if self.core is None:
            return
        self._apply(self.core.receive(msg, time.monotonic()))
        self._arm()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self.core is None:
            return
        try:
            self._apply(self.core.tick(time.monotonic()))
        finally:
            self._arm()

    def _arm(self) -> None:
        """(Re)arm the one timer at the core's next deadline, if that moved earlier or fired."""
        if self.core is None or self._loop is None:
            return
        deadline = self.core.next_deadline()
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= deadline:
                return
            self._timer.cancel()
        # loop.time() is time.monotonic() for asyncio's default loops; call_later keeps the
        # service correct on any loop whose clock differs.
        delay = min(max(0.0, deadline - time.monotonic()), MAX_SLEEP)
        self._timer = self._loop.call_later(delay, self._on_timer)
        self._timer_at = deadline

    def _join(self) -> None:
        """Push-pull to every seed now, and again later while no one else is alive."""
        self._rejoin = None
        if self.core is None or not self.seeds:
            return
        alone = not any(state in ("alive", "suspect") for name, state in self._states.items()
                        if name != self.name)
        if alone:
            if not self._asking_seeds:
                log.info("no other member alive: asking the seeds (%s) every %g s until one "
                         "answers", ", ".join(self.seeds), REJOIN_INTERVAL)
            self.joins += 1
            self._apply(self.core.join(list(self.seeds), time.monotonic()))
            self._arm()
        self._asking_seeds = alone
        assert self._loop is not None
        self._rejoin = self._loop.call_later(REJOIN_INTERVAL, self._join)

    def _apply(self, out: swim.Output) -> None:
        """Events first (keys learned, states logged, subscribers told), then messages."""
        for event in out.events:
            self._on_event(event)
        for address, msg in out.messages:
            self.wire.send(address, msg)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (MemberAlive, MemberUpdated)):
            self.wire.learn_key(event.address, event.meta.get("key"))
        state = _EVENT_STATES.get(type(event))
        if state is not None:
            self._log_transition(event, self._states.get(event.name), state)
            states = dict(self._states)
            states[event.name] = state
            self._states = states
        elif isinstance(event, MemberRefuted):
            log.info("refuted a suspicion of this node: incarnation now %d", event.incarnation)
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("membership subscriber %r failed on %s", callback, event)

    def _log_transition(self, event: Event, before: str | None, after: str) -> None:
        name = event.name
        if after == "alive":
            if before is None:
                log.info("member %s alive at %s, incarnation %d", name, event.address,
                         event.incarnation)
            elif before != "alive":
                log.info("member %s alive again, incarnation %d", name, event.incarnation)
        elif after == "suspect":
            log.info("member %s suspect (confirmations %d)", name, self._confirmations(name))
        elif after == "dead":
            log.info("member %s dead", name)
        else:
            log.info("member %s left", name)

    def _confirmations(self, name: str) -> int:
        assert self.core is not None
        for view in self.core.members(time.monotonic()):
            if view.name == name:
                return view.confirmations
        return 0


_EVENT_STATES: dict[type, str] = {MemberAlive: "alive", MemberSuspect: "suspect",
                                  MemberDead: "dead", MemberLeft: "left"}
