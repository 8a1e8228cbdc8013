"""SWIM with Lifeguard as a pure state machine: fed messages and ``now``, it returns messages
to send and events. No sockets, no threads, no clock reads; randomness only from the injected
``random.Random``, so the same seed and inputs give the same outputs.

Mechanisms (docs/membership.md explains each and its numbers):
- probe rounds: every probe_interval one member, taken from a shuffled round robin, gets a
  Ping; without an Ack by probe_timeout, ``indirect_checks`` peers are asked to try
  (IndirectPing) and answer Nack if they cannot reach it either (Lifeguard); no Ack after
  indirect_timeout more makes the target suspect.
- suspicion: a suspect gets a Suspicion timer (suspicion.py) that shrinks with independent
  confirmations; members hearing of a new suspicion probe the suspect at once with a small
  probability, so confirmations arrive within about one round. An expiring timer declares
  the member dead only if our own probe of it failed (no verdict on hearsay) and we heard
  nothing from it since; otherwise it probes first. Every message to a suspect (ping, ack,
  nack, gossip) carries our suspicion, so a live suspect that talks to us learns of it.
- refutation: a member hearing itself suspected or dead (at its incarnation or above) bumps
  its incarnation and gossips Alive, also straight to the accuser; an accusation of an older
  incarnation gets the current Alive sent back. A member that notices it was stalled (called
  later than pause_threshold after its deadline) refutes pre-emptively and resyncs.
- awareness (awareness.py): missed nacks and refutations stretch this node's probe timeout and
  interval.
- dissemination (broadcasts.py): updates ride on every message and on gossip rounds.
- push-pull: full state exchange on join and periodically; also with a dead or left member,
  so two sides of a healed partition, or a restarted node that reaches no one, find each other
  again.
- telling the gone (memberlist's gossip to the dead): a member we list dead or left that
  sends us anything is sent our verdict at once, and for gossip_to_the_dead_time after the
  verdict gossip rounds also send it to such members; a live one (a restarted agent back at
  incarnation 0, the far side of a healed partition) refutes with a higher incarnation and
  push-pulls with us, so it cannot stay "left" or "dead" at a peer while it runs.
- reclaim: dead and left members are forgotten after dead_reclaim_time.

Cost: receive() and tick() are O(updates + k + log(timers)); only push-pull and the probe
order reshuffle (once per n rounds) walk the member table.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from dataclasses import dataclass, field

from .awareness import Awareness
from .broadcasts import BroadcastQueue
from .events import (Event, MemberAlive, MemberDead, MemberLeft, MemberRefuted, MemberSuspect,
                     MemberUpdated)
from .knobs import MembershipKnobs
from .members import ALIVE, DEAD, LEFT, LIVE_STATES, SUSPECT, Member, MemberView
from .messages import (Ack, Alive, Dead, Gossip, IndirectPing, MemberState, Message, Nack,
                       Ping, PushPull, Suspect, Update, estimate_size)
from .suspicion import Suspicion

log = logging.getLogger(__name__)

__all__ = ["Membership", "Output"]

COUNTERS = ("probes_sent", "indirect_probes_sent", "acks_received", "nacks_received",
            "probe_failures", "suspicions_raised", "suspicions_received", "refutations",
            "false_suspicions", "deaths_declared", "messages_in", "messages_out", "push_pulls",
            "pauses_detected", "misdirected", "address_conflicts", "verdicts_deferred",
            "gone_told")

# Timer kinds; the kind is also the tie-break at equal deadlines, so a probe's end is handled
# before the next probe round starts.
_T_PROBE, _T_RELAY, _T_SUSPICION, _T_RECLAIM, _T_ROUND, _T_PUSH_PULL, _T_GONE = range(7)


@dataclass(slots=True)
class Output:
    """What one call produced: (destination address, message) pairs and events, in order."""
    messages: list[tuple[str, Message]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class _Probe:
    """One probe of ``target`` in flight: direct stage, then indirect stage, then verdict."""
    __slots__ = ("seq", "target", "indirect", "due", "expected_nacks", "nacks")

    def __init__(self, seq: int, target: str, due: float) -> None:
        self.seq = seq
        self.target = target
        self.indirect = False
        self.due = due
        self.expected_nacks = 0
        self.nacks = 0


class _Relay:
    """An IndirectPing we relay: our own Ping ``seq`` stands for the origin's ``origin_seq``."""
    __slots__ = ("seq", "origin", "origin_address", "origin_seq", "nack")

    def __init__(self, seq: int, origin: str, origin_address: str, origin_seq: int,
                 nack: bool) -> None:
        self.seq = seq
        self.origin = origin
        self.origin_address = origin_address
        self.origin_seq = origin_seq
        self.nack = nack


class _NameSet:
    """Names with O(1) add, remove and uniform random pick (list + position index)."""
    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, name: str) -> None:
        if name not in self.pos:
            self.pos[name] = len(self.items)
            self.items.append(name)

    def discard(self, name: str) -> None:
        i = self.pos.pop(name, None)
        if i is None:
            return
        last = self.items.pop()
        if last != name:
            self.items[i] = last
            self.pos[last] = i

    def __len__(self) -> int:
        return len(self.items)


class Membership:
    """The SWIM + Lifeguard state machine of one member (see the module docstring)."""

    def __init__(self, name: str, address: str, knobs: MembershipKnobs, rng: random.Random,
                 now: float, meta: dict[str, str] | None = None) -> None:
        self.name = name
        self.address = address
        self.knobs = knobs
        self.meta: dict[str, str] = dict(meta or {})
        self.incarnation = 0
        self._rng = rng
        self._left = False
        self._members: dict[str, Member] = {}
        self._by_address: dict[str, str] = {}
        self._live = _NameSet()        # alive or suspect, self excluded
        self._dead = _NameSet()        # dead or left, until forgotten
        self._gone = _NameSet()        # dead or left for less than gossip_to_the_dead_time
        self._suspects: set[str] = set()
        self._awareness = Awareness(knobs.awareness_max_multiplier)
        self._queue = BroadcastQueue()
        self._timers: list[tuple[float, int, int, object]] = []
        self._timer_seq = 0
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        self._probing: dict[str, int] = {}     # target name -> probe seq
        self._relays: dict[int, _Relay] = {}
        self._order: list[str] = []
        self._order_index = 0
        self._counters = dict.fromkeys(COUNTERS, 0)
        # Start probing and push-pull at a random phase, so members started together do not
        # probe in lockstep.
        self._next_round = now + rng.uniform(0, knobs.probe_interval)
        self._push(self._next_round, _T_ROUND, None)
        self._next_push_pull = now + rng.uniform(0, knobs.push_pull_interval)
        self._push(self._next_push_pull, _T_PUSH_PULL, None)
        self._next_gossip = now
        self._expect = now
        self._reannounce = False
        self._queue.queue(self._self_alive())

    # --- public API ---------------------------------------------------------------------------

    def join(self, seed_addresses: list[str], now: float) -> Output:
        """Send a PushPull(join=True) to each seed (full state sync on join)."""
        out = Output()
        self._enter(now, out)
        rows = self._state_rows()
        for address in seed_addresses:
            if address != self.address:
                self._send(out, address, PushPull(self.name, self.address, True, False, rows))
                self._counters["push_pulls"] += 1
        resync = now + self._rng.uniform(1, 2) * self.knobs.join_resync
        if resync < self._next_push_pull:
            self._next_push_pull = resync
            self._push(resync, _T_PUSH_PULL, None)
        self._reannounce = True
        return self._leave_call(now, out)

    def receive(self, msg: Message, now: float) -> Output:
        """Handle one decoded message from the network."""
        out = Output()
        self._enter(now, out)
        self._counters["messages_in"] += 1
        sender = self._members.get(msg.source)
        gone_sender = False
        if sender is not None:
            sender.last_heard = now
            gone_sender = sender.state not in LIVE_STATES
        members = self._members
        for u in msg.updates:
            if type(u) is Alive:
                # Fast path: most gossip repeats what we know (an epidemic sends each update
                # ~retransmit_limit times to everyone).
                m = members.get(u.name)
                if m is not None and u.incarnation <= m.incarnation:
                    continue
            self._apply(u, now, out)
        t = type(msg)
        if gone_sender and t is not PushPull and sender.state not in LIVE_STATES:
            # A member we list dead or left talks to us and did not refute in this message: it
            # runs again (a restart at incarnation 0, a healed partition) without knowing our
            # verdict. A push-pull needs no reminder: our rows carry the verdict.
            self._tell_gone(sender, now, out)
        if t is Ping:
            if msg.target != self.name:
                self._counters["misdirected"] += 1
            else:
                self._send(out, msg.source_address, Ack(self.name, self.address, msg.seq,
                                                        self._piggyback(msg.source)))
        elif t is Ack:
            self._on_ack(msg, now, out)
        elif t is Nack:
            probe = self._probes.get(msg.seq)
            if probe is not None:
                probe.nacks += 1
                self._counters["nacks_received"] += 1
        elif t is IndirectPing:
            self._on_indirect_ping(msg, now, out)
        elif t is PushPull:
            self._on_push_pull(msg, now, out)
        return self._leave_call(now, out)

    def tick(self, now: float) -> Output:
        """Run every timer that is due: probe round, probe/indirect timeouts, suspicion
        expiry, gossip round, periodic push-pull. Cheap when nothing is due."""
        out = Output()
        self._enter(now, out)
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, kind, _, obj = heapq.heappop(timers)
            if kind == _T_PROBE:
                if self._probes.get(obj.seq) is obj and obj.due == due:
                    self._on_probe_due(obj, now, out)
            elif kind == _T_RELAY:
                if self._relays.pop(obj.seq, None) is obj and obj.nack:
                    self._send(out, obj.origin_address, Nack(
                        self.name, self.address, obj.origin_seq, self._piggyback(obj.origin)))
            elif kind == _T_SUSPICION:
                if self._suspicion_valid(obj, due):
                    self._suspicion_expired(obj, now, out)
            elif kind == _T_RECLAIM:
                if obj.forget_at == due and self._members.get(obj.name) is obj:
                    self._forget(obj)
            elif kind == _T_ROUND:
                if due == self._next_round:
                    self._probe_round(now, out)
            elif kind == _T_PUSH_PULL:
                if due == self._next_push_pull:
                    self._push_pull_round(now, out)
            elif self._gone_valid(obj, due):
                self._gone.discard(obj.name)
        if (len(self._queue) or len(self._gone)) and self._next_gossip <= now:
            self._gossip_round(now, out)
        return self._leave_call(now, out)

    def next_deadline(self) -> float:
        """Earliest ``now`` at which tick() has work; shells and the simulator sleep until then
        (may be <= the last now when a receive() made something due)."""
        timers = self._timers
        while timers and not self._timer_valid(timers[0]):
            heapq.heappop(timers)
        d = timers[0][0] if timers else math.inf
        if (len(self._queue) or len(self._gone)) and self._next_gossip < d:
            d = self._next_gossip
        return d

    def peer_unreachable(self, address: str, now: float) -> Output:
        """Transport evidence from the shell that nothing listens at ``address`` (connection
        refused). Treated as a failed direct probe of that member (suspect at once); it does
        NOT skip the suspicion timeout."""
        out = Output()
        self._enter(now, out)
        name = self._by_address.get(address)
        m = self._members.get(name) if name is not None else None
        if m is not None and m.state in LIVE_STATES:
            seq = self._probing.pop(m.name, None)
            if seq is not None:
                del self._probes[seq]
            self._counters["probe_failures"] += 1
            self._on_suspect(Suspect(m.name, m.incarnation, self.name), now, out)
        return self._leave_call(now, out)

    def leave(self, now: float) -> Output:
        """Graceful leave: tell ``gossip_nodes`` members at once (and gossip it) that this node
        left, then stop probing. Others list it as "left", not "dead". The shell should send
        the returned messages before it stops."""
        out = Output()
        self._enter(now, out)
        self._left = True
        update = Dead(self.name, self.incarnation, self.name)
        self._queue.queue(update)
        for name in self._sample(self.knobs.gossip_nodes, (), alive_only=False):
            self._send(out, self._members[name].address,
                       Gossip(self.name, self.address, (update,)))
        self._probes.clear()
        self._probing.clear()
        return self._leave_call(now, out)

    def members(self, now: float) -> list[MemberView]:
        """One row per known member including this node, sorted by name."""
        rows = [MemberView(self.name, self.address, LEFT if self._left else ALIVE,
                           self.incarnation, None, 0, None, dict(self.meta))]
        for m in self._members.values():
            s = m.suspicion if m.state == SUSPECT else None
            rows.append(MemberView(
                m.name, m.address, m.state, m.incarnation,
                None if m.last_heard is None else now - m.last_heard,
                s.confirmations if s else 0,
                s.deadline - now if s else None, dict(m.meta)))
        rows.sort(key=lambda r: r.name)
        return rows

    def member_state(self, name: str) -> str | None:
        """"alive", "suspect", "dead" or "left", or None for an unknown (or forgotten) name."""
        if name == self.name:
            return LEFT if self._left else ALIVE
        m = self._members.get(name)
        return m.state if m is not None else None

    @property
    def counters(self) -> dict[str, int]:
        """Monotonic counters for /metrics (a copy)."""
        return dict(self._counters)

    @property
    def health_score(self) -> int:
        """Awareness score, 0 = healthy (probe timeout/interval are scaled by score + 1)."""
        return self._awareness.score

    # --- call bookkeeping ---------------------------------------------------------------------

    def _enter(self, now: float, out: Output) -> None:
        """Notice a stall: called much later than the deadline we asked for."""
        if now - self._expect > self.knobs.pause_threshold:
            self._on_stall(now, out)
        self._expect = now

    def _leave_call(self, now: float, out: Output) -> Output:
        d = self.next_deadline()
        self._expect = d if d > now else now
        return out

    def _on_stall(self, now: float, out: Output) -> None:
        self._counters["pauses_detected"] += 1
        log.warning("membership stalled %.2f s (process paused or starved): refuting at once, "
                    "voiding in-flight probes", now - self._expect)
        self._awareness.apply_delta(1)
        self._probes.clear()
        self._probing.clear()
        self._relays.clear()
        # Our suspicions measured nothing while we slept, and refutations may have passed us
        # by: each gets the minimum timeout again from now, and a push-pull fetches the state
        # we missed.
        not_before = now + self.knobs.suspicion_min_timeout(len(self._live) + 1)
        for name in sorted(self._suspects):
            m = self._members[name]
            if m.suspicion is not None and m.suspicion.deadline < not_before:
                m.suspicion.postpone(not_before)
                self._push(not_before, _T_SUSPICION, m)
        if not self._left:
            self._refute(self.incarnation, None, now, out)
            self._next_push_pull = now
            self._push(now, _T_PUSH_PULL, None)

    # --- timers ---------------------------------------------------------------------------------

    def _push(self, due: float, kind: int, obj: object) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (due, kind, self._timer_seq, obj))

    def _timer_valid(self, entry: tuple[float, int, int, object]) -> bool:
        due, kind, _, obj = entry
        if kind == _T_PROBE:
            return self._probes.get(obj.seq) is obj and obj.due == due
        if kind == _T_RELAY:
            return self._relays.get(obj.seq) is obj
        if kind == _T_SUSPICION:
            return self._suspicion_valid(obj, due)
        if kind == _T_RECLAIM:
            return obj.forget_at == due and self._members.get(obj.name) is obj
        if kind == _T_ROUND:
            return due == self._next_round
        if kind == _T_PUSH_PULL:
            return due == self._next_push_pull
        return self._gone_valid(obj, due)

    def _gone_valid(self, m: Member, due: float) -> bool:
        return (m.state not in LIVE_STATES and self._members.get(m.name) is m
                and m.state_since + self.knobs.gossip_to_the_dead_time == due)

    def _suspicion_valid(self, m: Member, due: float) -> bool:
        return (m.state == SUSPECT and m.suspicion is not None and m.suspicion.deadline == due
                and self._members.get(m.name) is m)

    # --- probing ----------------------------------------------------------------------------

    def _probe_round(self, now: float, out: Output) -> None:
        self._next_round = now + self._awareness.scale(self.knobs.probe_interval)
        self._push(self._next_round, _T_ROUND, None)
        if self._left:
            return
        target = self._next_target()
        if target is not None:
            self._start_probe(target, now, out)

    def _next_target(self) -> Member | None:
        for _ in range(len(self._order) + len(self._live) + 1):
            if self._order_index >= len(self._order):
                self._order = list(self._live.items)
                self._rng.shuffle(self._order)
                self._order_index = 0
                if not self._order:
                    return None
            name = self._order[self._order_index]
            self._order_index += 1
            m = self._members.get(name)
            if m is not None and m.state in LIVE_STATES and name not in self._probing:
                return m
        return None

    def _enter_probe_order(self, name: str) -> None:
        """Give a newcomer (or a member back from dead) a random place in what is left of the
        current cycle, so it is probed within this cycle, not only after the next reshuffle
        (memberlist inserts newcomers at a random place too)."""
        pos = self._rng.randrange(self._order_index, len(self._order) + 1)
        self._order.insert(pos, name)

    def _start_probe(self, m: Member, now: float, out: Output) -> None:
        self._seq += 1
        probe = _Probe(self._seq, m.name, now + self._awareness.scale(self.knobs.probe_timeout))
        self._probes[probe.seq] = probe
        self._probing[m.name] = probe.seq
        self._push(probe.due, _T_PROBE, probe)
        self._counters["probes_sent"] += 1
        self._send(out, m.address, Ping(self.name, self.address, probe.seq, m.name,
                                        self._piggyback(m.name)))

    def _on_probe_due(self, probe: _Probe, now: float, out: Output) -> None:
        m = self._members.get(probe.target)
        if not probe.indirect and m is not None and m.state in LIVE_STATES:
            probe.indirect = True
            k = self.knobs
            # Deadlines count from now, not from when the probe was sent: a probe we could not
            # advance in time (we were slow) must not fail for our slowness.
            probe.due = now + self._awareness.scale(k.indirect_timeout)
            self._push(probe.due, _T_PROBE, probe)
            peers = self._sample(k.indirect_checks, (probe.target,), alive_only=True)
            probe.expected_nacks = len(peers)
            for name in peers:
                self._counters["indirect_probes_sent"] += 1
                self._send(out, self._members[name].address,
                           IndirectPing(self.name, self.address, probe.seq, m.name, m.address,
                                        True, self._piggyback(name)))
            return
        del self._probes[probe.seq]
        self._probing.pop(probe.target, None)
        if m is None or m.state not in LIVE_STATES:
            return
        self._counters["probe_failures"] += 1
        # Lifeguard: peers that should have answered Nack but did not point at ourselves.
        if probe.expected_nacks:
            self._awareness.apply_delta(probe.expected_nacks - probe.nacks)
        else:
            self._awareness.apply_delta(1)
        self._on_suspect(Suspect(m.name, m.incarnation, self.name), now, out)

    def _on_ack(self, msg: Ack, now: float, out: Output) -> None:
        probe = self._probes.pop(msg.seq, None)
        if probe is not None:
            self._probing.pop(probe.target, None)
            self._counters["acks_received"] += 1
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send(out, relay.origin_address, Ack(self.name, self.address, relay.origin_seq,
                                                      self._piggyback(relay.origin)))

    def _on_indirect_ping(self, msg: IndirectPing, now: float, out: Output) -> None:
        self._seq += 1
        relay = _Relay(self._seq, msg.source, msg.source_address, msg.seq, msg.nack)
        self._relays[relay.seq] = relay
        self._push(now + self.knobs.probe_timeout, _T_RELAY, relay)
        self._send(out, msg.target_address, Ping(self.name, self.address, relay.seq, msg.target,
                                                 self._piggyback(msg.target)))

    # --- state changes ------------------------------------------------------------------------

    def _apply(self, u: Update, now: float, out: Output) -> None:
        t = type(u)
        if t is Alive:
            self._on_alive(u, now, out, True)
        elif t is Suspect:
            self._on_suspect(u, now, out)
        else:
            self._on_dead(u, now, out)

    def _on_alive(self, a: Alive, now: float, out: Output, gossip_new: bool) -> None:
        if a.name == self.name:
            if a.incarnation > self.incarnation or (
                    a.incarnation == self.incarnation
                    and (a.address != self.address or a.meta != self.meta)):
                self._refute(a.incarnation, None, now, out)
            return
        m = self._members.get(a.name)
        if m is None:
            m = Member(a.name, a.address, a.incarnation, dict(a.meta), now)
            self._members[a.name] = m
            self._by_address[a.address] = a.name
            self._live.add(a.name)
            self._enter_probe_order(a.name)
            out.events.append(MemberAlive(a.name, a.address, a.incarnation, dict(a.meta)))
            if gossip_new:
                self._queue.queue(a)
            return
        if a.incarnation <= m.incarnation:
            return
        if m.state in LIVE_STATES and a.address != m.address:
            self._counters["address_conflicts"] += 1
            log.warning("member %s claims address %s but is alive at %s: ignored (two hosts "
                        "with one name?)", a.name, a.address, m.address)
            return
        old_state = m.state
        changed = a.address != m.address or a.meta != m.meta
        if a.address != m.address:
            if self._by_address.get(m.address) == m.name:
                del self._by_address[m.address]
            self._by_address[a.address] = a.name
        m.address = a.address
        m.meta = dict(a.meta)
        m.incarnation = a.incarnation
        if old_state != ALIVE:
            if old_state == SUSPECT:
                self._counters["false_suspicions"] += 1
            m.state = ALIVE
            m.state_since = now
            m.suspicion = None
            m.forget_at = None
            self._suspects.discard(a.name)
            self._dead.discard(a.name)
            self._gone.discard(a.name)
            self._live.add(a.name)
            if old_state != SUSPECT:
                # Back from dead: the round robin may have skipped it this cycle.
                self._enter_probe_order(a.name)
            out.events.append(MemberAlive(a.name, a.address, a.incarnation, dict(a.meta)))
        elif changed:
            out.events.append(MemberUpdated(a.name, a.address, dict(a.meta), a.incarnation))
        self._queue.queue(a)

    def _on_suspect(self, s: Suspect, now: float, out: Output) -> None:
        if s.name == self.name:
            if self._left:
                return
            if s.incarnation >= self.incarnation:
                self._refute(s.incarnation, s.source, now, out)
            else:
                self._remind(s.source, out)
            return
        m = self._members.get(s.name)
        if m is None or m.state not in LIVE_STATES or s.incarnation < m.incarnation:
            return
        if m.state == SUSPECT and m.suspicion is not None:
            m.incarnation = s.incarnation
            sus = m.suspicion
            if s.source == self.name:
                sus.witness()
            if sus.confirm(s.source):
                self._queue.queue(s)
                self._push(sus.deadline, _T_SUSPICION, m)
            return
        k = self.knobs
        n = len(self._live) + 1
        wanted = k.suspicion_confirmations if n - 2 >= k.suspicion_confirmations else 0
        low = k.suspicion_min_timeout(n)
        m.incarnation = s.incarnation
        m.state = SUSPECT
        m.state_since = now
        m.suspicion = Suspicion(s.source, s.incarnation, now, wanted, low,
                                low * k.suspicion_max_timeout_mult, s.source == self.name)
        self._suspects.add(m.name)
        self._push(m.suspicion.deadline, _T_SUSPICION, m)
        out.events.append(MemberSuspect(m.name, s.incarnation, s.source))
        self._queue.queue(s)
        if s.source == self.name:
            self._counters["suspicions_raised"] += 1
            return
        self._counters["suspicions_received"] += 1
        # Confirm quickly: about suspicion_probers members probe the suspect right away.
        if (m.name not in self._probing and not self._left
                and self._rng.random() * max(n - 2, 1) < k.suspicion_probers):
            self._start_probe(m, now, out)

    def _suspicion_expired(self, m: Member, now: float, out: Output) -> None:
        s = m.suspicion
        heard = m.last_heard is not None and m.last_heard >= s.heard_since
        if (heard or not s.witnessed) and now < s.start + s.max_timeout:
            # No verdict on hearsay, nor against a member that spoke to us while suspected
            # (it runs, but its refutation has not reached us). Probe it: the ping carries the
            # suspicion, so a live suspect refutes straight to us; a failed probe makes us a
            # witness and the (already expired) timer then declares it dead.
            self._counters["verdicts_deferred"] += 1
            s.heard_since = now
            s.postpone(now + self._awareness.scale(self.knobs.probe_deadline()))
            self._push(s.deadline, _T_SUSPICION, m)
            if m.name not in self._probing:
                self._start_probe(m, now, out)
            return
        self._counters["deaths_declared"] += 1
        log.info("member %s declared dead: suspicion timed out after %.2f s with %d "
                 "confirmations", m.name, now - s.start, s.confirmations)
        self._on_dead(Dead(m.name, m.incarnation, self.name), now, out)

    def _on_dead(self, d: Dead, now: float, out: Output) -> None:
        if d.name == self.name:
            if self._left:
                return
            if d.incarnation >= self.incarnation:
                # Listed dead or left: we were out of the accuser's view, likely out of sync
                # too (restarted, partitioned): refute with a push-pull, not only gossip.
                self._refute(d.incarnation, d.source, now, out, resync=True)
            else:
                self._remind(d.source, out)
            return
        m = self._members.get(d.name)
        if m is None or m.state not in LIVE_STATES:
            return
        if d.incarnation < m.incarnation:
            return   # the declarer missed the member's latest Alive: no verdict on this life
        left = d.source == d.name
        m.state = LEFT if left else DEAD
        m.state_since = now
        m.incarnation = d.incarnation
        m.suspicion = None
        self._suspects.discard(m.name)
        self._live.discard(m.name)
        self._dead.add(m.name)
        if self.knobs.gossip_to_the_dead_time > 0:
            self._gone.add(m.name)
            self._push(now + self.knobs.gossip_to_the_dead_time, _T_GONE, m)
        m.forget_at = now + self.knobs.dead_reclaim_time
        self._push(m.forget_at, _T_RECLAIM, m)
        out.events.append(MemberLeft(m.name, d.incarnation) if left
                          else MemberDead(m.name, d.incarnation, d.source))
        self._queue.queue(d)

    def _forget(self, m: Member) -> None:
        del self._members[m.name]
        if self._by_address.get(m.address) == m.name:
            del self._by_address[m.address]
        self._dead.discard(m.name)
        self._gone.discard(m.name)
        self._queue.invalidate(m.name)

    def _refute(self, accused: int, accuser: str | None, now: float, out: Output,
                resync: bool = False) -> None:
        self.incarnation = max(self.incarnation, accused) + 1
        self._awareness.apply_delta(1)
        self._counters["refutations"] += 1
        out.events.append(MemberRefuted(self.name, self.incarnation))
        alive = self._self_alive()
        self._queue.queue(alive)
        self._next_gossip = min(self._next_gossip, now)   # spread it now, not next round
        m = self._members.get(accuser) if accuser is not None else None
        if m is None or m.state not in LIVE_STATES:
            return
        if resync:
            # A push-pull carries the refutation in our row and brings back the accuser's
            # table: a restarted node that reached no one learns the cluster from it.
            self._counters["push_pulls"] += 1
            self._send(out, m.address,
                       PushPull(self.name, self.address, False, False, self._state_rows()))
        else:
            # The accuser holds the earliest timer: tell it first, not only by epidemic.
            self._send(out, m.address, Gossip(self.name, self.address, self._piggyback(m.name)))

    def _remind(self, accuser: str, out: Output) -> None:
        """An accusation about an older incarnation of us: the accuser missed our refutation
        (it was stalled, or the refutation ran out of retransmissions before reaching it).
        Tell it directly; otherwise its timer would declare us dead."""
        m = self._members.get(accuser)
        if m is not None and m.state in LIVE_STATES:
            self._send(out, m.address, Gossip(self.name, self.address, (self._self_alive(),)))

    def _tell_gone(self, m: Member, now: float, out: Output) -> None:
        """Send a member we list dead or left our verdict, at most once per probe_interval.
        If it runs, it refutes (a higher incarnation, pushed back to us with our table); our
        Alive goes first so that a node that knows no one (a restart whose seeds are down)
        learns where to send it."""
        if self._left or (m.reminded_at is not None
                          and now - m.reminded_at < self.knobs.probe_interval):
            return
        m.reminded_at = now
        self._counters["gone_told"] += 1
        self._send(out, m.address, Gossip(self.name, self.address, (
            self._self_alive(), Dead(m.name, m.incarnation, self.name))))

    def _self_alive(self) -> Alive:
        return Alive(self.name, self.incarnation, self.address, dict(self.meta))

    # --- dissemination ------------------------------------------------------------------------

    def _send(self, out: Output, address: str, msg: Message) -> None:
        self._counters["messages_out"] += 1
        out.messages.append((address, msg))

    def _piggyback(self, dest: str) -> tuple[Update, ...]:
        """Queued updates for one message to member ``dest``. Every message to a member we
        hold suspect (ping, ack, nack, gossip) leads with our suspicion of it, outside the
        retransmit budget: a live suspect that talks to us learns of it from our answer and
        refutes straight to us, even when every Alive it gossiped our way was lost."""
        budget = self.knobs.max_piggyback_bytes
        m = self._members.get(dest)
        if m is None or m.state != SUSPECT:
            return self._queue.take(budget, self.knobs.retransmit_limit(len(self._live) + 1),
                                    dest)
        s = Suspect(m.name, m.incarnation, self.name)
        taken = self._queue.take(budget - estimate_size(s),
                                 self.knobs.retransmit_limit(len(self._live) + 1), dest)
        return (s,) + taken

    def _gossip_round(self, now: float, out: Output) -> None:
        self._next_gossip = now + self.knobs.gossip_interval
        for name in self._sample(self.knobs.gossip_nodes, (), alive_only=False):
            updates = self._piggyback(name)
            if not updates:
                break
            self._send(out, self._members[name].address, Gossip(self.name, self.address, updates))
        gone = self._gone
        if len(gone) and not self._left:
            # memberlist's gossip to the dead: each of the gossip_nodes picks is a recently
            # gone member with the odds it would have in a draw over live and gone together, so
            # a restarted agent hears of its verdict within a round or two, at a cost to the
            # cluster of ~gossip_nodes messages per round whatever its size.
            for _ in range(self.knobs.gossip_nodes):
                if self._rng.random() * (len(self._live) + len(gone)) < len(gone):
                    self._tell_gone(self._members[gone.items[self._rng.randrange(len(gone))]],
                                    now, out)

    def _sample(self, k: int, exclude: tuple[str, ...], alive_only: bool) -> list[str]:
        """Up to k distinct random live members, not in ``exclude`` (alive only if asked)."""
        items = self._live.items
        members = self._members

        def ok(name: str) -> bool:
            return name not in exclude and (not alive_only or members[name].state == ALIVE)

        if len(items) <= 4 * (k + len(exclude)):
            pool = [x for x in items if ok(x)]
            return pool if len(pool) <= k else self._rng.sample(pool, k)
        picked: list[str] = []
        for _ in range(4 * k + 8):
            x = items[self._rng.randrange(len(items))]
            if x not in picked and ok(x):
                picked.append(x)
                if len(picked) == k:
                    break
        return picked

    # --- push-pull ------------------------------------------------------------------------------

    def _push_pull_round(self, now: float, out: Output) -> None:
        self._next_push_pull = now + self.knobs.push_pull_period(len(self._live) + 1)
        self._push(self._next_push_pull, _T_PUSH_PULL, None)
        if self._left:
            return
        if self._reannounce:
            # The first sync after a join: gossip our Alive once more. An epidemic misses a
            # given member with a small probability (~1e-6 at 1,000 members, ~2 pairs in a
            # 1,000-member start), and the periodic push-pull is minutes away.
            self._reannounce = False
            self._queue.queue(self._self_alive())
        targets = self._sample(1, (), alive_only=True)
        if len(self._dead):
            # A dead or left member may be back (a healed partition, a restart that reached no
            # one): offer it our state too.
            targets.append(self._dead.items[self._rng.randrange(len(self._dead))])
        if not targets:
            return
        rows = self._state_rows()
        for name in targets:
            self._counters["push_pulls"] += 1
            self._send(out, self._members[name].address,
                       PushPull(self.name, self.address, False, False, rows))

    def _on_push_pull(self, msg: PushPull, now: float, out: Output) -> None:
        for st in msg.states:
            known = st.name in self._members
            if st.state == ALIVE:
                # First sightings are not re-gossiped (a joiner learning the whole table would
                # flood the cluster), except the sender itself: it is joining.
                self._on_alive(Alive(st.name, st.incarnation, st.address, st.meta), now, out,
                               known or st.name == msg.source)
            elif st.state == LEFT:
                self._on_dead(Dead(st.name, st.incarnation, st.name), now, out)
            elif known or st.name == self.name:
                # memberlist: a remote "dead" only makes us suspect, so the member can refute.
                self._on_suspect(Suspect(st.name, st.incarnation, msg.source), now, out)
        if not msg.reply:
            self._counters["push_pulls"] += 1
            self._send(out, msg.source_address,
                       PushPull(self.name, self.address, False, True, self._state_rows()))

    def _state_rows(self) -> tuple[MemberState, ...]:
        rows = [MemberState(self.name, self.address, self.incarnation,
                            LEFT if self._left else ALIVE, dict(self.meta))]
        rows.extend(m.row() for m in self._members.values())
        return tuple(rows)
