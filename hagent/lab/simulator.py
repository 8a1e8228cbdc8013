"""Deterministic simulator: N real ``Membership`` instances in virtual time.

The membership core is sans-IO (fed messages and ``now``, returns messages and events), so a
thousand instances run in one process against a simulated network (``sim_network``) and a
virtual clock: a discrete-event loop over a heap of ``(time, seq, kind, ...)``. Nothing here
reads a clock or a socket, and every random choice comes from ``random.Random(seed)`` (the
network) or from one rng per node seeded from ``(seed, name, life)``; the same seed and the
same scenario therefore give the same run, byte for byte, which ``digest()`` proves.

What it models (see docs/simulator.md):
- latency, loss, partitions: ``sim_network.Network``;
- process pauses (SIGSTOP, a long GC, a VM stall): a paused node runs no timers and receives
  nothing; messages sent to it wait in its inbox like a kernel socket buffer and are
  delivered on resume, all of them before its timers run (asyncio runs I/O callbacks before
  the timers that came due meanwhile);
- host crashes (power loss): silent, messages to it vanish;
- process crashes: the host answers with a TCP RST, so a sender gets ``peer_unreachable``
  one network delay after its message would have arrived;
- restarts: a new ``Membership`` with the same name (incarnation 0) joins again.

Records for the checks (``sim_analysis``): every membership event with its virtual time,
observer and subject; every fault with its time; messages and bytes sent per node.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import itertools
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from hagent.lab.sim_network import Constant, Latency, LogNormal, Network, Uniform
from hagent.membership import messages
from hagent.membership.knobs import MembershipKnobs
from hagent.membership.swim import Membership

INF = float("inf")

# Heap entry kinds: (time, seq, kind, a, b, c)
_DELIVER = 0  # a: destination SimNode, b: source name, c: payload (bytes, or the message)
_TICK = 1     # a: SimNode, b: tick generation
_CALL = 2     # a: callable, b: args
_UNREACH = 3  # a: sender name, b: the address that refused

UP = "up"
PAUSED = "paused"
CRASHED = "crashed"                  # host power loss: silent
PROCESS_CRASHED = "process_crashed"  # the process died, the host answers with RST

#: A core that keeps asking to be ticked at the same instant is broken; stop instead of spinning.
MAX_TICKS_AT_ONE_INSTANT = 1000

_EVENT_KINDS = {"MemberAlive": "alive", "MemberSuspect": "suspect", "MemberDead": "dead"}
_LIVE = ("alive", "suspect")
_STATE_KINDS = ("alive", "suspect", "dead", "left")

#: Seconds between join attempts while a node sees no other member alive: the real shell's
#: behaviour (hagent.membership.service.REJOIN_INTERVAL), without importing the ZeroMQ shell.
REJOIN_INTERVAL = 1.0


class SimulatorError(Exception):
    """The simulated cluster or the core under test did something the simulator cannot go on
    from; the message names the node, the virtual time and the seed to replay it."""


class Record(NamedTuple):
    """One membership event: at virtual time ``t`` the node ``observer`` said ``kind``
    ("alive", "suspect", "dead", or the lower-cased event name without "Member") about
    ``subject`` at ``incarnation`` (-1 when the event carries none)."""

    t: float
    observer: str
    kind: str
    subject: str
    incarnation: int


class Fault(NamedTuple):
    """A fault or repair the scenario applied: kind in crash, process_crash, leave, restart,
    pause, resume, partition, heal, loss."""

    t: float
    kind: str
    name: str


@dataclass
class Life:
    """One run of a node's process, from start to crash (``end`` None while it runs).
    ``incarnation_at_end`` is the incarnation it had when it crashed: a Dead verdict at or
    below it that arrives after a restart is about this life, not the new one."""

    start: float
    end: float | None = None
    incarnation_at_end: int | None = None


class SimNode:
    """A node's process in the simulation: its ``Membership`` and what the simulator keeps
    about it. A restart makes a new SimNode, so messages in flight to the old process are
    dropped with it."""

    __slots__ = ("name", "member", "state", "inbox", "tick_gen", "tick_at", "sent", "sent_bytes",
                 "received", "decode_errors", "spin_t", "spin_n", "seeds", "view", "live")

    def __init__(self, name: str, member: Membership) -> None:
        self.name = name
        self.member = member
        self.state = UP
        self.inbox: list[tuple[int, Any]] = []  # (kind, payload) held while paused
        self.tick_gen = 0
        self.tick_at = INF
        self.sent = 0
        self.sent_bytes = 0
        self.received = 0
        self.decode_errors = 0
        self.spin_t = -1.0
        self.spin_n = 0
        self.seeds: list[str] = []
        self.view: dict[str, str] = {}  # subject -> last state its events gave
        self.live = 0                   # subjects alive or suspect in ``view``


#: Builds a node's core: (name, address, knobs, rng, now, meta) -> Membership. The default
#: is Membership itself; tests of the simulator's own plumbing may pass something smaller.
NodeFactory = Callable[[str, str, MembershipKnobs, random.Random, float, "dict[str, str] | None"],
                       Membership]


def fake_key(name: str) -> str:
    """A 40-character stand-in for the CURVE public key (Z85) the real shell puts in
    meta["key"], so simulated messages are as large as real ones."""
    return hashlib.sha256(name.encode()).hexdigest()[:40]


@dataclass
class SimConfig:
    """Everything that shapes a run besides the scenario. ``wire`` sends every message through
    ``messages.encode``/``decode`` (exercises the wire format; costs time at 1,000 nodes).
    ``digest_messages`` folds every message sent into the digest, not only the events."""

    seed: int = 1
    knobs: MembershipKnobs = field(default_factory=MembershipKnobs)
    latency: Latency = field(default_factory=Constant)
    loss: float = 0.0
    wire: bool = True
    digest_messages: bool = True
    join_spread: float | None = None  # seconds over which nodes start; None: 10 ms per node
    seed_nodes: int = 3               # the first names are every node's configured seeds
    inbox_limit: int | None = None    # messages a paused node buffers; None: no limit
    with_meta: bool = True            # meta["key"] as the real shell sets it (realistic sizes)


class Simulator:
    """A cluster of ``n`` nodes (names ``n0``.. zero-padded) in virtual time.

    Drive it with ``start()``, then ``run_for``/``run_until``; apply faults directly between
    runs or schedule them with ``at``/``after``. Figures come from ``records``, ``faults``,
    ``lives`` and the per-node counters (see ``sim_analysis``).
    """

    def __init__(self, n: int | Sequence[str], config: SimConfig | None = None, *,
                 node_factory: NodeFactory | None = None) -> None:
        self.config = cfg = config or SimConfig()
        self.seed = cfg.seed
        self.rng = random.Random(cfg.seed)
        self.net = Network(self.rng, cfg.latency, cfg.loss)
        if isinstance(n, int):
            width = len(str(max(n - 1, 0)))
            self.names = [f"n{i:0{width}d}" for i in range(n)]
        else:
            self.names = list(n)
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.lives: dict[str, list[Life]] = {}
        self.records: list[Record] = []
        self.faults: list[Fault] = []
        self.dropped: Counter[str] = Counter()
        self.msg_types: Counter[str] = Counter()
        self.events_processed = 0
        self._factory: NodeFactory = node_factory or Membership
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._digest = hashlib.blake2b(digest_size=16)
        self._sent_retired = 0  # messages sent by processes that have since crashed
        self._bytes_retired = 0
        self._wire = cfg.wire
        self._digest_msgs = cfg.digest_messages
        self._encode = messages.encode
        self._decode = messages.decode
        self._decode_error = messages.DecodeError

    # --- setup --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the first node at t=0 and every other one spread over ``join_spread``; each
        joins the configured seeds (the first ``seed_nodes`` names) that started before it."""
        cfg = self.config
        spread = cfg.join_spread if cfg.join_spread is not None else 0.01 * len(self.names)
        for i, name in enumerate(self.names):
            t = self.now + (spread * i / len(self.names) if i else 0.0)
            self._push(t, _CALL, self._start_node, (name, i))

    def _start_node(self, name: str, index: int) -> None:
        self._spawn(name, self.names[:min(index, self.config.seed_nodes)])

    def _spawn(self, name: str, seeds: list[str]) -> None:
        lives = self.lives.setdefault(name, [])
        rng = random.Random(f"{self.seed}/{name}/{len(lives)}")
        meta = {"key": fake_key(name)} if self.config.with_meta else None
        member = self._factory(name, name, self.config.knobs, rng, self.now, meta)
        node = SimNode(name, member)
        node.seeds = list(seeds)
        self.nodes[name] = node
        lives.append(Life(self.now))
        if seeds:
            self._apply(node, member.join(node.seeds, self.now))
            self._push(self.now + REJOIN_INTERVAL, _CALL, self._rejoin, (node,))
        else:
            self._reschedule(node)

    def _rejoin(self, node: SimNode) -> None:
        """Join the seeds again while this process sees no other member alive (a lost join, a
        node cut off from everyone), as the real shell does every REJOIN_INTERVAL."""
        if self.nodes.get(node.name) is not node or node.state in (CRASHED, PROCESS_CRASHED):
            return
        if node.state == UP and not node.live:
            self._apply(node, node.member.join(node.seeds, self.now))
        self._push(self.now + REJOIN_INTERVAL, _CALL, self._rejoin, (node,))

    # --- running ------------------------------------------------------------------------

    def run_until(self, t_end: float) -> None:
        """Process every event up to and including virtual time ``t_end``; ``now`` is then
        ``t_end``."""
        heap = self._heap
        pop = heapq.heappop
        processed = 0
        try:
            while heap and heap[0][0] <= t_end:
                t, _, kind, a, b, c = pop(heap)
                self.now = t
                processed += 1
                if kind == _DELIVER:
                    self._deliver(a, b, c)
                elif kind == _TICK:
                    if a.state == UP and b == a.tick_gen:
                        self._tick(a)
                elif kind == _CALL:
                    a(*b)
                else:
                    self._unreachable_arrives(a, b)
        except SimulatorError:
            raise
        except Exception as exc:
            raise SimulatorError(f"at t={self.now:.6f} (seed {self.seed}): "
                                 f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.events_processed += processed
        self.now = max(self.now, t_end)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_converged(self, timeout: float, step: float = 1.0) -> float:
        """Run until every running node sees every other running node alive; returns the
        virtual time it took. Raises SimulatorError (with the seed) on timeout."""
        t0 = self.now
        while True:
            if self.converged():
                return self.now - t0
            if self.now - t0 >= timeout:
                raise SimulatorError(f"not converged after {timeout:g} s of virtual time "
                                     f"(seed {self.seed}): {self.convergence_gap()}")
            self.run_for(step)

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` at virtual time ``t`` (after everything already due then)."""
        self._push(max(t, self.now), _CALL, fn, args)

    def after(self, dt: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + dt, fn, *args)

    def _push(self, t: float, kind: int, a: Any, b: Any = None, c: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, a, b, c))

    # --- node plumbing ------------------------------------------------------------------

    def _apply(self, node: SimNode, out: Any) -> None:
        if out.events:
            for ev in out.events:
                self._record(node, ev)
        for addr, msg in out.messages:
            self._send(node, addr, msg)
        self._reschedule(node)

    def _reschedule(self, node: SimNode) -> None:
        d = node.member.next_deadline()
        if d < node.tick_at:
            node.tick_gen += 1
            node.tick_at = d
            heapq.heappush(self._heap, (d if d > self.now else self.now, next(self._seq), _TICK,
                                        node, node.tick_gen, None))

    def _tick(self, node: SimNode) -> None:
        if node.spin_t == self.now:
            node.spin_n += 1
            if node.spin_n > MAX_TICKS_AT_ONE_INSTANT:
                raise SimulatorError(
                    f"{node.name}: tick() at t={self.now:.6f} leaves next_deadline() <= now "
                    f"{MAX_TICKS_AT_ONE_INSTANT} times (seed {self.seed}); the core must move "
                    f"a timer past now once it has run it")
        else:
            node.spin_t = self.now
            node.spin_n = 0
        node.tick_at = INF
        self._apply(node, node.member.tick(self.now))

    def _send(self, node: SimNode, addr: str, msg: Any) -> None:
        node.sent += 1
        if self._wire:
            payload = self._encode(msg)
            node.sent_bytes += len(payload)
        else:
            payload = msg
        self.msg_types[type(msg).__name__] += 1
        if self._digest_msgs:
            d = self._digest
            d.update(addr.encode())
            d.update(payload if self._wire else type(msg).__name__.encode())
        dst = self.nodes.get(addr)
        if dst is None:
            self.dropped["unknown_address"] += 1
            return
        net = self.net
        if not net.can_reach(node.name, addr):
            self.dropped["partition"] += 1
            return
        delay = net.transit(node.name, addr)
        if delay is None:
            self.dropped["lost"] += 1
            return
        heapq.heappush(self._heap, (self.now + delay, next(self._seq), _DELIVER, dst, node.name,
                                    payload))

    def _deliver(self, dst: SimNode, src: str, payload: Any) -> None:
        state = dst.state
        if state == CRASHED:
            self.dropped["crashed"] += 1
        elif not self.net.can_reach(src, dst.name):
            self.dropped["partition"] += 1
        elif state == UP:
            self._receive(dst, payload)
        elif state == PAUSED:
            limit = self.config.inbox_limit
            if limit is not None and len(dst.inbox) >= limit:
                self.dropped["inbox_full"] += 1
            else:
                dst.inbox.append((_DELIVER, payload))
        else:  # PROCESS_CRASHED: the host's kernel answers with RST
            self.dropped["refused"] += 1
            delay = self.net.latency.sample(self.rng)
            self._push(self.now + delay, _UNREACH, src, dst.name)

    def _receive(self, node: SimNode, payload: Any) -> None:
        node.received += 1
        if self._wire:
            try:
                msg = self._decode(payload, self.config.knobs.max_message_bytes)
            except self._decode_error:
                node.decode_errors += 1
                self.dropped["decode_error"] += 1
                return
        else:
            msg = payload
        self._apply(node, node.member.receive(msg, self.now))

    def _unreachable_arrives(self, sender: str, address: str) -> None:
        node = self.nodes.get(sender)
        if node is None or node.state in (CRASHED, PROCESS_CRASHED):
            return
        if node.state == PAUSED:
            node.inbox.append((_UNREACH, address))
            return
        self._apply(node, node.member.peer_unreachable(address, self.now))

    def _record(self, node: SimNode, ev: Any) -> None:
        cls = type(ev).__name__
        kind = _EVENT_KINDS.get(cls) or cls.removeprefix("Member").lower()
        inc = getattr(ev, "incarnation", -1)
        observer = node.name
        rec = Record(self.now, observer, kind, ev.name, inc if inc is not None else -1)
        if kind in _STATE_KINDS and ev.name != observer:
            was = node.view.get(ev.name)
            node.view[ev.name] = kind
            node.live += (kind in _LIVE) - (was in _LIVE)
        self.records.append(rec)
        self._digest.update(
            f"{rec.t!r}|{observer}|{kind}|{rec.subject}|{rec.incarnation}\n".encode())

    # --- faults -------------------------------------------------------------------------

    def _node(self, name: str, *states: str) -> SimNode:
        node = self.nodes.get(name)
        if node is None:
            raise SimulatorError(f"no node named {name!r} has started (seed {self.seed})")
        if states and node.state not in states:
            raise SimulatorError(f"{name} is {node.state} at t={self.now:.3f}, expected "
                                 f"{' or '.join(states)} (seed {self.seed})")
        return node

    def _fault(self, kind: str, name: str = "") -> None:
        self.faults.append(Fault(self.now, kind, name))
        self._digest.update(f"{self.now!r}|fault|{kind}|{name}\n".encode())

    def crash(self, name: str, process: bool = False) -> None:
        """Crash ``name``: the host loses power (silent), or with ``process`` only the process
        dies and its host refuses connections (senders get ``peer_unreachable``)."""
        self._end_life(self._node(name, UP, PAUSED), process,
                       "process_crash" if process else "crash")

    def _end_life(self, node: SimNode, process: bool, kind: str) -> None:
        life = self.lives[node.name][-1]
        life.end = self.now
        life.incarnation_at_end = self_incarnation(node.member, node.name, self.now)
        node.state = PROCESS_CRASHED if process else CRASHED
        node.inbox.clear()
        self._sent_retired += node.sent
        self._bytes_retired += node.sent_bytes
        self._fault(kind, node.name)

    def leave(self, name: str) -> None:
        """Stop ``name`` gracefully (``systemctl stop``, the first half of a restart or a
        role re-exec): its core sends the leave, then the process exits and its host refuses
        connections, as after a process crash."""
        node = self._node(name, UP)
        self._apply(node, node.member.leave(self.now))
        self._end_life(node, True, "leave")

    def restart(self, name: str, seeds: Iterable[str] | None = None) -> None:
        """Start ``name`` again as a fresh process (incarnation 0) joining ``seeds`` (default:
        the configured seeds other than itself, running or not, as a real agent would)."""
        self._node(name, CRASHED, PROCESS_CRASHED)
        if seeds is None:
            seeds = [s for s in self.names[:self.config.seed_nodes] if s != name]
        self._fault("restart", name)
        self._spawn(name, list(seeds))

    def pause(self, name: str) -> None:
        """Stop ``name``'s process (SIGSTOP): no timers, messages wait in its inbox."""
        self._node(name, UP).state = PAUSED
        self._fault("pause", name)

    def resume(self, name: str) -> None:
        """Continue a paused process: deliver its inbox in arrival order, then run its timers."""
        node = self._node(name, PAUSED)
        node.state = UP
        self._fault("resume", name)
        inbox, node.inbox = node.inbox, []
        for kind, x in inbox:
            if kind == _DELIVER:
                self._receive(node, x)
            else:
                self._apply(node, node.member.peer_unreachable(x, self.now))
        self._tick(node)

    def pause_for(self, name: str, seconds: float) -> None:
        """Pause ``name`` now and resume it ``seconds`` later."""
        self.pause(name)
        self.after(seconds, self.resume, name)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network into groups (names in no group form one more group together)."""
        groups = [list(g) for g in groups]
        self.net.partition(groups)
        self._fault("partition", ";".join(",".join(g) for g in groups))

    def heal(self) -> None:
        self.net.heal()
        self._fault("heal")

    def set_loss(self, p: float, src: str | None = None, dst: str | None = None) -> None:
        """Loss probability for all messages, or for the directed link ``src`` -> ``dst``."""
        self.net.set_loss(p, src, dst)
        self._fault("loss", f"{p}" if src is None else f"{p}:{src}>{dst}")

    # --- reading ------------------------------------------------------------------------

    def running(self, exclude: str | None = None) -> list[str]:
        """Names of nodes whose process runs (up or paused), in name order."""
        return [n for n in self.names if n != exclude and n in self.nodes
                and self.nodes[n].state in (UP, PAUSED)]

    def member(self, name: str) -> Membership:
        return self._node(name).member

    def state_of(self, observer: str, subject: str) -> str | None:
        """What ``observer``'s core says about ``subject`` now (None: not known)."""
        return self.member(observer).member_state(subject)

    def converged(self) -> bool:
        """Every node has started, and every running one sees every other running one alive."""
        if len(self.nodes) < len(self.names):
            return False
        names = self.running()
        for o in names:
            state = self.nodes[o].member.member_state
            for s in names:
                if s != o and state(s) != "alive":
                    return False
        return True

    def convergence_gap(self, limit: int = 5) -> str:
        """Up to ``limit`` (observer, subject, state) pairs that keep ``converged`` false."""
        gaps = []
        names = self.running()
        for o in names:
            state = self.nodes[o].member.member_state
            for s in names:
                if s != o and state(s) != "alive":
                    gaps.append(f"{o} sees {s} {state(s)}")
                    if len(gaps) >= limit:
                        return "; ".join(gaps) + " ..."
        return "; ".join(gaps)

    def sent_total(self) -> int:
        """Messages sent by every process so far, crashed ones included."""
        return self._sent_retired + sum(n.sent for n in self.nodes.values()
                                        if n.state in (UP, PAUSED))

    def bytes_total(self) -> int:
        return self._bytes_retired + sum(n.sent_bytes for n in self.nodes.values()
                                         if n.state in (UP, PAUSED))

    def digest(self) -> str:
        """Hash of everything observable so far (events, faults and, with ``digest_messages``,
        every message sent with its destination): same seed and scenario, same digest."""
        return self._digest.copy().hexdigest()


@contextlib.contextmanager
def quiet_core_logs(level: int = logging.ERROR) -> Iterator[None]:
    """Raise the membership core's log threshold for a simulation: a thousand cores in one
    process would print every stall and verdict they log, with no node name on it."""
    logger = logging.getLogger("hagent.membership")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def self_incarnation(member: Membership, name: str, now: float) -> int | None:
    """The incarnation ``member`` holds for itself (from its members() row)."""
    inc = getattr(member, "incarnation", None)
    if isinstance(inc, int):
        return inc
    for row in member.members(now):
        if row.name == name:
            return row.incarnation
    return None


# --- command line: run a cluster for a while and print what happened -------------------

def _latency(spec: str) -> Latency:
    kind, _, args = spec.partition(":")
    vals = [float(x) for x in args.split(",") if x]
    if kind == "constant":
        return Constant(*vals)
    if kind == "uniform":
        return Uniform(*vals)
    if kind == "lognormal":
        return LogNormal(*vals)
    raise argparse.ArgumentTypeError(f"latency {spec!r}: expected constant:S, uniform:LO,HI or "
                                     f"lognormal:MEDIAN,SIGMA[,TAIL_P]")


def main(argv: list[str] | None = None) -> int:
    """``python -m hagent.lab.simulator``: start a cluster, optionally crash nodes one at a
    time, print detection times, false verdicts, message rates and the run's digest."""
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0, help="virtual time after convergence")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--latency", type=_latency, default=Constant(), help="constant:0.0005 | "
                    "uniform:LO,HI | lognormal:MEDIAN,SIGMA[,TAIL_P]")
    ap.add_argument("--crash-every", type=float, default=0.0, metavar="S",
                    help="crash a random node every S s, restarting it S/2 s later")
    ap.add_argument("--no-wire", action="store_true", help="skip encode/decode (faster)")
    ap.add_argument("--profile", metavar="FILE",
                    help="write cProfile stats of the run after convergence to FILE")
    args = ap.parse_args(argv)
    with quiet_core_logs():
        return _run_cli(args)


def _run_cli(args: argparse.Namespace) -> int:
    from hagent.lab import sim_analysis

    sim = Simulator(args.nodes, SimConfig(seed=args.seed, loss=args.loss, latency=args.latency,
                                          wire=not args.no_wire))
    t_wall = time.perf_counter()
    sim.start()
    took = sim.run_until_converged(timeout=600.0)
    print(f"seed {args.seed}: {args.nodes} nodes converged after {took:.1f} s virtual, "
          f"{time.perf_counter() - t_wall:.1f} s wall")
    if args.crash_every:
        sim_analysis.crash_series(sim, every=args.crash_every, until=sim.now + args.seconds)
    meter = sim_analysis.MessageMeter(sim)
    events, sent = sim.events_processed, sim.sent_total()
    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    t_wall = time.perf_counter()
    sim.run_for(args.seconds)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    wall = time.perf_counter() - t_wall
    print(f"{args.seconds:g} s virtual in {wall:.1f} s wall ({sim.events_processed - events:,} "
          f"events, {sim.sent_total() - sent:,} messages)")
    print(f"messages per node per second: {meter.rate():.2f}  by type: {dict(sim.msg_types)}")
    print(f"dropped: {dict(sim.dropped)}")
    det = sim_analysis.detections(sim)
    if det:
        first = [d.first_s for d in det if d.first_s is not None]
        every = [d.all_s for d in det if d.all_s is not None]
        q = sim_analysis.quantile
        print(f"crashes {len(det)}: first dead p50 {q(first, 0.5)} max {q(first, 1.0)}; all dead "
              f"p50 {q(every, 0.5)} max {q(every, 1.0)}; not (yet) dead everywhere "
              f"{len(det) - len(every)}")
    false = sim_analysis.false_dead(sim)
    print(f"false dead verdicts: {len(false)}" + (f" first {false[0]}" if false else ""))
    print(f"digest {sim.digest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
