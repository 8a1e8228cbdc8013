"""Checks and figures over a simulator run, and the fault scenarios the benchmarks repeat.

Everything here reads what ``Simulator`` recorded (``records``, ``faults``, ``lives``, the
message counters) after or during a run, in the style of a Jepsen checker: the run keeps a
history, these functions judge it.

- ``detections``: per crash, crash -> first MemberDead about it by a node that was running,
  and crash -> the moment every node running at the crash (and not crashed since) holds it dead.
- ``false_dead``: MemberDead verdicts about a node whose process was running at that moment
  (paused counts as running: a pause is exactly what must not be declared dead).
- ``MessageMeter``: messages sent per running node per second over a window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hagent.lab.simulator import CRASHED, PROCESS_CRASHED, UP, Record, Simulator, self_incarnation


@dataclass(frozen=True)
class Detection:
    """How the cluster learned of one crash. Times are virtual seconds; ``first_s``/``all_s``
    are None when it never happened (``missing`` names who never declared it dead)."""

    subject: str
    kind: str  # "crash" | "process_crash"
    crashed_at: float
    first_dead: float | None
    first_observer: str | None
    all_dead: float | None
    missing: tuple[str, ...]

    @property
    def first_s(self) -> float | None:
        return None if self.first_dead is None else self.first_dead - self.crashed_at

    @property
    def all_s(self) -> float | None:
        return None if self.all_dead is None else self.all_dead - self.crashed_at


def _running_at(sim: Simulator, name: str, t: float) -> int | None:
    """Index of ``name``'s life running at ``t`` (start <= t < end), or None."""
    for i, life in enumerate(sim.lives.get(name, ())):
        if life.start <= t and (life.end is None or t < life.end):
            return i
    return None


def detections(sim: Simulator) -> list[Detection]:
    """One Detection per crash in ``sim.faults`` (in crash order). A crash whose window (until
    the node restarts, or now) ended before anyone could notice still appears, with Nones."""
    dead_by_subject: dict[str, list[Record]] = {}
    for r in sim.records:
        if r.kind == "dead":
            dead_by_subject.setdefault(r.subject, []).append(r)
    out = []
    for f in sim.faults:
        if f.kind not in ("crash", "process_crash"):
            continue
        subject, t0 = f.name, f.t
        restart = next((life.start for life in sim.lives[subject] if life.start > t0), None)
        window_end = restart if restart is not None else sim.now
        # observers: running at the crash, judged while that same life runs
        observers = {}
        for name in sim.lives:
            if name == subject:
                continue
            i = _running_at(sim, name, t0)
            if i is not None:
                end = sim.lives[name][i].end
                observers[name] = end if end is not None else float("inf")
        first: dict[str, float] = {}
        for r in dead_by_subject.get(subject, ()):
            if t0 <= r.t < window_end and r.observer in observers and r.t < observers[r.observer]:
                first.setdefault(r.observer, r.t)
        first_dead = min(first.values(), default=None)
        first_observer = min(first, key=first.__getitem__) if first else None
        # an observer that crashed before it declared is not waited for
        missing = tuple(sorted(o for o, end in observers.items()
                               if o not in first and end >= window_end))
        all_dead = None
        if not missing and first:
            all_dead = max(first.values())
        out.append(Detection(subject, f.kind, t0, first_dead, first_observer, all_dead, missing))
    return out


def false_dead(sim: Simulator, *, include_stale: bool = False) -> list[Record]:
    """MemberDead verdicts about a node whose process was running at that moment.

    A verdict that arrives after a restart but carries an incarnation at or below the one the
    previous life had when it crashed is about that previous life (gossip still travelling):
    it is true, and left out unless ``include_stale``.
    """
    out = []
    for r in sim.records:
        if r.kind != "dead":
            continue
        i = _running_at(sim, r.subject, r.t)
        if i is None:
            continue  # crashed (or not started) then: a true verdict
        if i > 0 and not include_stale:
            prev = sim.lives[r.subject][i - 1].incarnation_at_end
            if prev is not None and r.incarnation <= prev:
                continue
        out.append(r)
    return out


def node_seconds(sim: Simulator, t0: float, t1: float) -> float:
    """Sum over nodes of the time their process ran within [t0, t1]."""
    total = 0.0
    for lives in sim.lives.values():
        for life in lives:
            end = life.end if life.end is not None else t1
            total += max(0.0, min(end, t1) - max(life.start, t0))
    return total


class MessageMeter:
    """Messages sent per running node per second from its creation to ``rate()``."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.t0 = sim.now
        self.sent0 = sim.sent_total()
        self.bytes0 = sim.bytes_total()

    def rate(self) -> float:
        ns = node_seconds(self.sim, self.t0, self.sim.now)
        return (self.sim.sent_total() - self.sent0) / ns if ns else 0.0

    def bytes_rate(self) -> float:
        ns = node_seconds(self.sim, self.t0, self.sim.now)
        return (self.sim.bytes_total() - self.bytes0) / ns if ns else 0.0


def quantile(xs: list[float], q: float) -> float | None:
    """Nearest-rank quantile (None for no data), rounded to the millisecond."""
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 3)


# --- scenarios ------------------------------------------------------------------------------

def crash_series(sim: Simulator, *, every: float, until: float, down_for: float | None = None,
                 process: bool = False) -> None:
    """Schedule a crash of a random running node every ``every`` s until ``until``, each
    restarted ``down_for`` s later (default every/2), so crashes never overlap and the cluster
    keeps its size. Victims are drawn when the crash happens, from the simulator's rng."""
    down = every / 2 if down_for is None else down_for
    if down >= every:
        raise ValueError(f"crash_series: down_for {down} must be shorter than every {every}")

    def one() -> None:
        candidates = [n for n in sim.running() if sim.nodes[n].state == UP]
        if candidates:
            victim = sim.rng.choice(candidates)
            sim.crash(victim, process=process)
            sim.after(down, _restart_if_down, sim, victim)
        if sim.now + every <= until:
            sim.after(every, one)

    sim.after(every, one)


def _restart_if_down(sim: Simulator, name: str) -> None:
    if sim.nodes[name].state in (CRASHED, PROCESS_CRASHED):
        sim.restart(name)


def random_pauses(sim: Simulator, *, every: float, length: float, until: float) -> None:
    """Schedule a ``length`` s pause of a random running node every ``every`` s (exponential
    gaps: pauses sometimes overlap, on different nodes) until ``until``."""

    def one() -> None:
        candidates = [n for n in sim.running() if sim.nodes[n].state == UP]
        if candidates:
            sim.pause_for(sim.rng.choice(candidates), length)
        gap = sim.rng.expovariate(1.0 / every)
        if sim.now + gap <= until:
            sim.after(gap, one)

    sim.after(sim.rng.expovariate(1.0 / every), one)


def states_now(sim: Simulator, subject: str) -> dict[str, int]:
    """How many running nodes hold ``subject`` in each state now (for assertion messages)."""
    out: dict[str, int] = {}
    for o in sim.running(exclude=subject):
        s = str(sim.state_of(o, subject))
        out[s] = out.get(s, 0) + 1
    return out



def own_incarnation(sim: Simulator, name: str) -> int | None:
    """The incarnation ``name``'s running process holds for itself (it bumps it to refute)."""
    return self_incarnation(sim.member(name), name, sim.now)
