"""Membership (swim.py) in virtual time: a tiny in-test network routes Output.messages between
a handful of instances, with controllable drops and pauses. No sockets, no sleeps."""

from __future__ import annotations

import heapq
import random
from dataclasses import replace
from typing import Callable

import pytest

from hagent.membership import (Ack, Alive, Gossip, IndirectPing, MemberAlive, MemberDead,
                               MemberRefuted, MemberState, Membership, MembershipKnobs,
                               MemberSuspect, Nack, Ping, PushPull, Suspect, encode)

LATENCY = 0.001
KNOBS = MembershipKnobs()


class Net:
    """Delivers messages after LATENCY, unless ``drop(src, dst, msg)`` says no; a paused node
    buffers what it receives and runs no timers until resumed (like SIGSTOP)."""

    def __init__(self, names: list[str], knobs: MembershipKnobs = KNOBS, seed: int = 1,
                 join: bool = True) -> None:
        self.now = 0.0
        self.knobs = knobs
        self.nodes: dict[str, Membership] = {}
        self.events: list[tuple[float, str, object]] = []
        self.sent: list[tuple[float, str, str, object]] = []
        self.drop: Callable[[str, str, object], bool] = lambda s, d, m: False
        self.dead: set[str] = set()
        self.paused: dict[str, list[object]] = {}
        self._q: list[tuple[float, int, str, str, object]] = []
        self._n = 0
        for i, name in enumerate(names):
            self.nodes[name] = Membership(name, name, knobs, random.Random(seed * 1000 + i),
                                          0.0, {"key": f"k-{name}"})
        if join:
            for name in names[1:]:
                self.apply(name, self.nodes[name].join([names[0]], 0.0))
            self.run(3.0)

    def apply(self, src: str, out) -> None:
        for ev in out.events:
            self.events.append((self.now, src, ev))
        for dst, msg in out.messages:
            self.sent.append((self.now, src, dst, msg))
            if dst in self.dead or self.drop(src, dst, msg):
                continue
            self._n += 1
            heapq.heappush(self._q, (self.now + LATENCY, self._n, src, dst, msg))

    def run(self, until: float) -> None:
        while True:
            t_msg = self._q[0][0] if self._q else float("inf")
            name, t_tick = None, float("inf")
            for n, m in self.nodes.items():
                if n in self.dead or n in self.paused:
                    continue
                d = m.next_deadline()
                if d < t_tick:
                    name, t_tick = n, d
            t = min(t_msg, t_tick)
            if t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            if t_msg <= t_tick:
                _, _, src, dst, msg = heapq.heappop(self._q)
                if dst in self.dead:
                    continue
                if dst in self.paused:
                    self.paused[dst].append(msg)
                    continue
                self.apply(dst, self.nodes[dst].receive(msg, self.now))
            else:
                self.apply(name, self.nodes[name].tick(self.now))

    def pause(self, name: str) -> None:
        self.paused[name] = []

    def resume(self, name: str) -> None:
        for msg in self.paused.pop(name):
            self.apply(name, self.nodes[name].receive(msg, self.now))
        self.apply(name, self.nodes[name].tick(self.now))

    def of(self, kind: type, subject: str | None = None, observer: str | None = None):
        return [(t, o, e) for t, o, e in self.events if isinstance(e, kind)
                and (subject is None or getattr(e, "name", None) == subject)
                and (observer is None or o == observer)]

    def states(self, subject: str) -> dict[str, str | None]:
        return {n: m.member_state(subject) for n, m in self.nodes.items()
                if n != subject and n not in self.dead}


NAMES = [f"n{i}" for i in range(6)]


def test_join_by_push_pull_gives_everyone_everyone() -> None:
    net = Net(NAMES)
    for name, m in net.nodes.items():
        assert [r.name for r in m.members(net.now)] == NAMES
        assert all(r.state == "alive" for r in m.members(net.now)), name
        assert {r.name: r.meta for r in m.members(net.now)}["n3"] == {"key": "k-n3"}
    assert any(isinstance(msg, PushPull) and msg.join for _, _, _, msg in net.sent)


def test_probes_are_acked_and_nothing_is_suspected_on_a_healthy_network() -> None:
    net = Net(NAMES)
    net.run(60.0)
    c = net.nodes["n1"].counters
    assert c["probes_sent"] > 60 and c["acks_received"] == c["probes_sent"] - c["probe_failures"]
    assert c["probe_failures"] == 0 and not net.of(MemberSuspect)
    assert all(m.health_score == 0 for m in net.nodes.values())


def test_indirect_probe_succeeds_when_the_direct_path_is_cut() -> None:
    net = Net(NAMES)
    cut = {("n0", "n1"), ("n1", "n0")}
    net.drop = lambda s, d, m: (s, d) in cut
    net.run(60.0)
    assert net.nodes["n0"].counters["indirect_probes_sent"] > 0
    assert not net.of(MemberSuspect)
    assert net.states("n1")["n0"] == "alive"


def test_silent_node_is_suspected_then_declared_dead_everywhere() -> None:
    net = Net(NAMES)
    net.dead.add("n5")
    t0 = net.now
    net.run(t0 + 15.0)
    suspects = net.of(MemberSuspect, "n5")
    deads = net.of(MemberDead, "n5")
    assert suspects and deads
    assert set(net.states("n5").values()) == {"dead"}
    first_dead = min(t for t, _, _ in deads)
    # Never before the minimum suspicion timeout after the first suspicion (safety) ...
    assert first_dead - min(t for t, _, _ in suspects) >= KNOBS.suspicion_min_timeout(6) - 1e-9
    # ... and confirmations brought the timeout down to about the minimum (speed).
    assert first_dead - t0 < 2 * KNOBS.probe_interval + KNOBS.suspicion_min_timeout(6) + 2.0


def test_suspected_live_node_refutes_with_a_higher_incarnation() -> None:
    net = Net(NAMES)
    victim = net.nodes["n2"]
    # Only n0 loses its path to n2, direct and through relays: n0 suspects n2.
    net.drop = lambda s, d, m: {s, d} == {"n0", "n2"} or (
        s == "n0" and isinstance(m, IndirectPing) and m.target == "n2")
    net.run(net.now + 20.0)
    assert net.of(MemberSuspect, "n2")
    assert net.of(MemberRefuted, "n2", observer="n2")
    assert victim.incarnation >= 1 and victim.counters["refutations"] >= 1
    assert not net.of(MemberDead, "n2")
    assert set(net.states("n2").values()) == {"alive"}
    assert sum(m.counters["false_suspicions"] for m in net.nodes.values()) >= 1


def test_peer_unreachable_suspects_at_once_but_keeps_the_timeout() -> None:
    net = Net(NAMES)
    net.dead.add("n4")
    t0 = net.now
    net.apply("n0", net.nodes["n0"].peer_unreachable("n4", t0))
    assert net.nodes["n0"].member_state("n4") == "suspect"
    assert [e.source for _, _, e in net.of(MemberSuspect, "n4")] == ["n0"]
    net.run(t0 + KNOBS.suspicion_min_timeout(6) - 0.01)
    assert not net.of(MemberDead, "n4")
    net.run(t0 + 15.0)
    assert net.of(MemberDead, "n4")


def test_three_second_pause_is_not_declared_dead_with_default_knobs() -> None:
    for seed in range(8):
        net = Net(NAMES, seed=seed)
        for start in (4.0, 11.3, 19.77):
            net.run(start)
            net.pause("n3")
            net.run(start + 3.0)
            net.resume("n3")
        net.run(30.0)
        assert not net.of(MemberDead), seed
        assert set(net.states("n3").values()) == {"alive"}, seed


def test_paused_node_refutes_when_it_resumes() -> None:
    net = Net(NAMES)
    net.pause("n3")
    net.run(net.now + 3.0)
    net.resume("n3")
    assert net.nodes["n3"].counters["pauses_detected"] == 1
    assert net.of(MemberRefuted, "n3")


def lone_node_with_peers(n: int = 6) -> Membership:
    """A node that knows n peers (through one push-pull reply) and hears nothing more."""
    me = Membership("a", "a", KNOBS, random.Random(7), 0.0)
    rows = tuple(MemberState(f"p{i}", f"p{i}", 0, "alive") for i in range(n))
    me.receive(PushPull("p0", "p0", False, True, rows), 0.0)
    return me


def test_awareness_stretches_probe_timeout_after_missed_nacks() -> None:
    me = lone_node_with_peers()
    pinged: dict[int, tuple[float, int]] = {}   # seq -> (time, health score when sent)
    gaps: list[tuple[float, int]] = []
    rounds: list[tuple[float, int]] = []
    now = 0.0
    while now < 30.0:
        now = me.next_deadline()
        score = me.health_score
        for _, msg in me.tick(now).messages:
            if isinstance(msg, Ping) and msg.seq not in pinged:
                pinged[msg.seq] = (now, score)
                rounds.append((now, score))
            elif isinstance(msg, IndirectPing) and msg.seq in pinged:
                t, s = pinged.pop(msg.seq)
                gaps.append((now - t, s))
    # Every failed probe missed 3 nacks: the score climbed to its maximum ...
    assert me.health_score == KNOBS.awareness_max_multiplier - 1
    # ... and each probe waited (score + 1) x probe_timeout before going indirect.
    # (the score is read before the tick that may raise it, so compare multiples)
    multiples = [gap / KNOBS.probe_timeout for gap, _ in gaps]
    assert multiples[0] == pytest.approx(1.0)
    assert max(multiples) == pytest.approx(KNOBS.awareness_max_multiplier)
    assert all(abs(x - round(x)) < 1e-6 for x in multiples)
    assert rounds[-1][0] - rounds[-2][0] == pytest.approx(
        KNOBS.probe_interval * KNOBS.awareness_max_multiplier)


def test_nacks_keep_the_health_score_down() -> None:
    me = lone_node_with_peers(8)
    while me.counters["probe_failures"] < 4:
        now = me.next_deadline()
        for _, msg in me.tick(now).messages:
            if isinstance(msg, IndirectPing):   # the relays answer: target unreachable
                me.receive(Nack(msg.target, msg.target, msg.seq), now + LATENCY)
    assert me.counters["nacks_received"] == 3 * 4
    assert me.health_score == 0


def test_awareness_heals_once_acks_come_back() -> None:
    net = Net(NAMES)
    net.drop = lambda s, d, m: d == "n0" and isinstance(m, (Ack, Nack))
    net.run(net.now + 5.0)
    assert net.nodes["n0"].health_score > 0
    net.drop = lambda s, d, m: False
    net.run(net.now + 60.0)
    assert net.nodes["n0"].health_score == 0


def test_dead_member_comes_back_with_higher_incarnation() -> None:
    net = Net(NAMES)
    net.dead.add("n1")
    net.run(net.now + 20.0)
    assert set(net.states("n1").values()) == {"dead"}
    net.dead.discard("n1")
    # It learns it was declared dead (a push-pull from anyone reaches it) and refutes.
    net.apply("n1", net.nodes["n1"].join(["n0"], net.now))
    net.run(net.now + 5.0)
    assert set(net.states("n1").values()) == {"alive"}
    back = [e for _, o, e in net.of(MemberAlive, "n1") if e.incarnation > 0]
    assert back


def test_dead_member_is_forgotten_after_reclaim_time() -> None:
    knobs = replace(KNOBS, dead_reclaim_time=30.0)
    net = Net(NAMES, knobs=knobs)
    net.dead.add("n1")
    net.run(net.now + 20.0)
    assert net.nodes["n0"].member_state("n1") == "dead"
    net.run(net.now + 40.0)
    assert net.nodes["n0"].member_state("n1") is None
    assert "n1" not in [r.name for r in net.nodes["n0"].members(net.now)]


def test_leave_is_reported_as_left_not_dead() -> None:
    net = Net(NAMES)
    net.apply("n5", net.nodes["n5"].leave(net.now))
    net.dead.add("n5")
    net.run(net.now + 20.0)
    assert set(net.states("n5").values()) == {"left"}
    assert not net.of(MemberDead, "n5")


def test_same_seed_gives_identical_outputs() -> None:
    def trace(seed: int) -> list[bytes]:
        net = Net(NAMES, seed=seed)
        net.drop = lambda s, d, m: hash((s, d, round(net.now, 3))) % 7 == 0
        net.dead.add("n4")
        net.run(40.0)
        return [f"{t!r}{s}{d}".encode() + encode(m) for t, s, d, m in net.sent]

    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_tick_is_idempotent_and_moves_the_deadline_past_now() -> None:
    net = Net(NAMES)
    m = net.nodes["n0"]
    d = m.next_deadline()
    assert d > net.now
    out = m.tick(net.now)   # nothing due: nothing happens
    assert not out.messages and not out.events
    net.apply("n0", m.tick(d))
    assert m.next_deadline() > d


def answer(me: Membership, out, now: float, yes: Callable[[Ping], bool]) -> list:
    """The events of ``out``, after acking the pings in it that ``yes`` accepts."""
    events = list(out.events)
    for _, msg in out.messages:
        if isinstance(msg, Ping) and yes(msg):
            events += answer(me, me.receive(Ack(msg.target, msg.target, msg.seq), now + LATENCY),
                             now + LATENCY, yes)
    return events


def run_lone(me: Membership, until: float, yes: Callable[[Ping], bool] = lambda m: False):
    """Tick a lone node until ``until``, acking the pings ``yes`` accepts; returns events."""
    events = []
    while me.next_deadline() <= until:
        now = me.next_deadline()
        events += answer(me, me.tick(now), now, yes)
    return events


def test_no_verdict_on_hearsay_the_listener_probes_first() -> None:
    me = lone_node_with_peers(8)
    t0 = 1.0
    accusations = tuple(Suspect("p1", 0, src) for src in ("p2", "p3", "p4", "p5"))
    answer(me, me.receive(Gossip("p2", "p2", accusations), t0), t0, lambda m: True)
    row = {r.name: r for r in me.members(t0)}["p1"]
    assert row.state == "suspect" and row.confirmations == 3
    expiry = t0 + row.suspect_deadline_in
    # p1 (like everyone) answers every ping: the listener never declares it dead.
    events = run_lone(me, expiry + 3.0, lambda m: True)
    assert not [e for e in events if isinstance(e, MemberDead) and e.name == "p1"]
    assert me.counters["verdicts_deferred"] >= 2
    # p1 goes silent: the next check fails, the listener is now a witness and declares it.
    events = run_lone(me, expiry + 3.0 + 2 * KNOBS.probe_deadline() + 0.01,
                      lambda m: m.target != "p1")
    dead = [e for e in events if isinstance(e, MemberDead) and e.name == "p1"]
    assert dead and dead[0].source == "a"


def test_witness_timer_shrinks_with_confirmations() -> None:
    me = lone_node_with_peers(8)
    me.peer_unreachable("p1", 1.0)                      # our own evidence: a witness
    first = {r.name: r for r in me.members(1.0)}["p1"].suspect_deadline_in
    me.receive(Gossip("p2", "p2", (Suspect("p1", 0, "p2"), Suspect("p1", 0, "p3"))), 1.0)
    second = {r.name: r for r in me.members(1.0)}["p1"].suspect_deadline_in
    assert second < first
    events = run_lone(me, 1.0 + second + 0.01)
    assert [e for e in events if isinstance(e, MemberDead) and e.name == "p1"]


def test_stale_accusation_gets_the_current_incarnation_back() -> None:
    net = Net(NAMES)
    n3 = net.nodes["n3"]
    n3.receive(Gossip("n1", "n1", (Suspect("n3", 0, "n1"),)), net.now)   # refutes: inc 1
    assert n3.incarnation == 1
    out = n3.receive(Gossip("n2", "n2", (Suspect("n3", 0, "n4"),)), net.now)
    reminders = [(dst, m) for dst, m in out.messages if dst == "n4"]
    assert reminders and reminders[0][1].updates == (Alive("n3", 1, "n3", {"key": "k-n3"}),)
    assert n3.incarnation == 1                                           # no second bump


def test_stalled_node_restarts_its_suspicions_and_resyncs() -> None:
    net = Net(NAMES)
    me = net.nodes["n0"]
    me.receive(Gossip("n2", "n2", (Suspect("n1", 0, "n2"),)), net.now)
    me.peer_unreachable("n1", net.now)            # witness: short timer
    later = net.now + 2.5
    out = me.tick(later)                          # nothing ran for 2.5 s: a stall
    assert me.counters["pauses_detected"] == 1
    assert any(isinstance(m, PushPull) for _, m in out.messages)
    assert any(isinstance(e, MemberRefuted) for e in out.events)
    row = {r.name: r for r in me.members(later)}["n1"]
    assert row.suspect_deadline_in >= KNOBS.suspicion_min_timeout(6) - 1e-9


def test_member_we_keep_hearing_from_is_not_declared_dead_before_max_timeout() -> None:
    net = Net(NAMES)
    me = net.nodes["n0"]
    t0 = net.now
    me.receive(Gossip("n2", "n2", (Suspect("n1", 0, "n2"),)), t0)
    me.peer_unreachable("n1", t0)
    deadline = t0 + {r.name: r for r in me.members(t0)}["n1"].suspect_deadline_in
    # n1 keeps talking to n0 (its probes arrive) but its refutations never do.
    t = t0
    while t < deadline + 1.0:
        t += 0.1
        me.receive(Ping("n1", "n1", 1, "n0"), t)
        me.tick(t)
    assert me.member_state("n1") == "suspect"
    assert me.counters["verdicts_deferred"] >= 1


def test_healed_partition_rejoins_through_push_pull_with_dead_members() -> None:
    knobs = replace(KNOBS, push_pull_interval=5.0)
    net = Net(NAMES, knobs=knobs)
    left, right = set(NAMES[:3]), set(NAMES[3:])
    net.drop = lambda s, d, m: (s in left) != (d in left)
    net.run(net.now + 30.0)
    assert net.nodes["n0"].member_state("n4") == "dead"
    assert net.nodes["n4"].member_state("n0") == "dead"
    net.drop = lambda s, d, m: False
    net.run(net.now + 30.0)
    for name, m in net.nodes.items():
        assert {r.state for r in m.members(net.now)} == {"alive"}, name


def test_suspect_that_talks_to_its_accuser_learns_of_it_and_refutes() -> None:
    # The traced false verdict under 10 % loss: n0 suspects n1 (its probes fail), every Alive
    # of n1's refutation sent to n0 is lost, but n1's pings reach n0 afterwards. n0's Acks
    # must carry the suspicion so n1 refutes straight to n0 before n0's maximum timeout.
    knobs = replace(KNOBS, push_pull_interval=1000.0)     # no anti-entropy to the rescue
    net = Net(NAMES, knobs=knobs)
    net.run(2 * knobs.join_resync + 1.0)                   # past the joiners' resync
    t0 = net.now
    window = t0 + 4.0    # the refutation's epidemic is over by then

    def carries_alive_n1(msg: object) -> bool:
        return any(isinstance(u, Alive) and u.name == "n1" for u in msg.updates)

    def drop(src: str, dst: str, msg: object) -> bool:
        if dst == "n0" and net.now < window and carries_alive_n1(msg):
            return True
        if src == "n0" and dst == "n1":
            return net.now < window or not isinstance(msg, (Ack, Nack))
        return src == "n0" and isinstance(msg, IndirectPing) and msg.target == "n1"

    net.drop = drop
    net.apply("n0", net.nodes["n0"].peer_unreachable("n1", t0))
    net.run(window)
    assert net.nodes["n0"].member_state("n1") == "suspect"
    assert net.nodes["n1"].incarnation >= 1                  # n1 refuted, n0 did not hear it
    net.run(t0 + 4 * KNOBS.suspicion_min_timeout(6) + 5.0)   # past n0's maximum timeout
    assert not net.of(MemberDead, "n1")
    assert net.nodes["n0"].member_state("n1") == "alive"
    assert any(src == "n0" and dst == "n1" and isinstance(m, Ack)
               and Suspect("n1", 0, "n0") in m.updates for _, src, dst, m in net.sent)
