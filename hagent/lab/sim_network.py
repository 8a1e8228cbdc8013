"""The network of the membership simulator: latency, loss and partitions, nothing else.

Pure decisions drawn from the simulator's one ``random.Random``: for a message from ``src`` to
``dst`` say whether it is lost and, if not, how long it is in flight. The simulator owns time,
queues and node states; this module holds only the conditions a test set, so a scenario can
change them at any virtual time (``set_loss``, ``partition``, ``heal``).

Determinism: every draw comes from the rng given to ``Network``, in the order messages are
sent, so the same seed and the same inputs give the same losses and delays.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Protocol


class Latency(Protocol):
    """A one-way delay distribution."""

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True)
class Constant:
    """Every message takes ``delay`` seconds (the default: a quiet LAN, 0.5 ms)."""

    delay: float = 0.0005

    def sample(self, rng: random.Random) -> float:
        return self.delay


@dataclass(frozen=True)
class Uniform:
    """Delay uniform in [low, high]: jitter without a tail."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogNormal:
    """A loaded network: lognormal around ``median`` (``sigma`` of the underlying normal;
    0.8 puts p99 near 6.5 x the median), plus, with probability ``tail_p``, an extra delay
    uniform in ``tail`` (a TCP retransmission or a scheduler stall), capped at ``cap``."""

    median: float = 0.0005
    sigma: float = 0.8
    tail_p: float = 0.0
    tail: tuple[float, float] = (0.2, 1.0)
    cap: float = 5.0

    def sample(self, rng: random.Random) -> float:
        d = self.median * math.exp(rng.gauss(0.0, self.sigma))
        if self.tail_p and rng.random() < self.tail_p:
            d += rng.uniform(*self.tail)
        return min(d, self.cap)


class Network:
    """Loss (global and per directed link), latency and partitions between node names.

    A partition is a list of groups of names; a message crosses only between names of the same
    group, and every name listed in no group belongs to one more group made of all of them.
    """

    def __init__(self, rng: random.Random, latency: Latency | None = None,
                 loss: float = 0.0) -> None:
        self.rng = rng
        self.latency: Latency = latency or Constant()
        self.loss = loss
        self.link_loss: dict[tuple[str, str], float] = {}
        self._group: dict[str, int] = {}  # name -> group index; empty when not partitioned

    def set_loss(self, p: float, src: str | None = None, dst: str | None = None) -> None:
        """Loss probability for every message (no names), or for the directed link src -> dst."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"loss probability {p} is not within [0, 1]")
        if src is None and dst is None:
            self.loss = p
        elif src is None or dst is None:
            raise ValueError("set_loss: give both src and dst for a link, or neither for all")
        elif p:
            self.link_loss[(src, dst)] = p
        else:
            self.link_loss.pop((src, dst), None)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network into ``groups`` (replacing any partition in place)."""
        self._group = {}
        for i, group in enumerate(groups):
            for name in group:
                if name in self._group:
                    raise ValueError(f"partition: {name} is in two groups")
                self._group[name] = i

    def heal(self) -> None:
        """Remove the partition: every name reaches every other again."""
        self._group = {}

    @property
    def partitioned(self) -> bool:
        return bool(self._group)

    def can_reach(self, src: str, dst: str) -> bool:
        g = self._group
        return not g or g.get(src, -1) == g.get(dst, -1)

    def transit(self, src: str, dst: str) -> float | None:
        """Seconds in flight for one message ``src`` -> ``dst``, or None when it is lost.
        Loss and delay only: the caller checks ``can_reach`` (partitions) itself, at send and
        again at delivery, so it can count the two kinds of drop apart."""
        p = self.loss
        if self.link_loss:
            p = max(p, self.link_loss.get((src, dst), 0.0))
        if p and self.rng.random() < p:
            return None
        return self.latency.sample(self.rng)
