"""The member table's row types: the core's mutable record and the read-only view."""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import MemberState
from .suspicion import Suspicion

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
LIVE_STATES = (ALIVE, SUSPECT)


class Member:
    """What this node believes about one other member (mutated only by the core)."""

    __slots__ = ("name", "address", "incarnation", "meta", "state", "state_since",
                 "last_heard", "suspicion", "forget_at", "reminded_at", "_row")

    def __init__(self, name: str, address: str, incarnation: int, meta: dict[str, str],
                 now: float) -> None:
        self.name = name
        self.address = address
        self.incarnation = incarnation
        self.meta = meta
        self.state = ALIVE
        self.state_since = now
        self.last_heard: float | None = None
        self.suspicion: Suspicion | None = None
        self.forget_at: float | None = None
        self.reminded_at: float | None = None   # last time we told it our dead/left verdict
        self._row: MemberState | None = None

    def row(self) -> MemberState:
        """This member as a push-pull row, rebuilt only when it changed (a push-pull of a
        thousand members must not build a thousand objects)."""
        r = self._row
        if (r is None or r.incarnation != self.incarnation or r.state != self.state
                or r.address is not self.address or r.meta is not self.meta):
            r = self._row = MemberState(self.name, self.address, self.incarnation, self.state,
                                        self.meta)
        return r


@dataclass(frozen=True, slots=True)
class MemberView:
    """One row of ``Membership.members()`` (for status pages, hagentctl and tests)."""
    name: str
    address: str
    state: str
    incarnation: int
    last_heard_ago: float | None
    confirmations: int
    suspect_deadline_in: float | None
    meta: dict[str, str] = field(default_factory=dict)
