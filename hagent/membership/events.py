"""What the membership core tells the rest of the agent (returned in ``Output.events``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """First sighting of a member, or its return from suspect, dead or left."""
    name: str
    address: str
    incarnation: int
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberSuspect:
    """``source`` suspects ``name``; not a verdict (it may refute)."""
    name: str
    incarnation: int
    source: str


@dataclass(frozen=True, slots=True)
class MemberDead:
    """``name`` was declared dead (by ``source``, maybe this node): the fast hint that starts
    a host-down notification. The Raft log, not this event, decides recovery."""
    name: str
    incarnation: int
    source: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """``name`` left on purpose (graceful shutdown): not a failure."""
    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberRefuted:
    """This node heard itself suspected or declared dead (or noticed it was stalled) and
    answered with a new ``incarnation``."""
    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A live member's address or meta changed (with a higher incarnation)."""
    name: str
    address: str
    meta: dict[str, str]
    incarnation: int = 0


Event = Union[MemberAlive, MemberSuspect, MemberDead, MemberLeft, MemberRefuted, MemberUpdated]
