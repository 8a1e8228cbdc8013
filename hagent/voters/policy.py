"""The autopilot's rules: which one voter change, if any, the leader should make now
(docs/voters.md).

Pure: `assess(view)` (and `decide(view)`, its decision alone) reads one `VoterView` (the
committed voter set, gossip, the open incidents, the registered eligible nodes) and returns
at most one change with a reason a person can read. No clock, no I/O: the same view always
gives the same answer, whatever order its mappings were built in.

The rules, in the order they are applied:

1. One change at a time: nothing while a change is in flight.
2. Nothing unless a majority of the current voters is alive: a change needs the log to
   commit it, and a cluster without that majority must not reshape itself. A voter counts
   as alive when gossip says so or the leader hears from it over Raft (gossip can lag
   behind a node that just restarted; Raft is what the commit needs).
3. A voter is replaced only when its host is declared dead AND fenced (an open incident
   whose host.fenced is committed), gossip does not see it alive and the leader does not
   hear from it: a partitioned voter whose lease has not yet expired is never touched,
   since it may still be serving.
4. The dead voter is removed first (the smaller set needs fewer acks while the replacement
   catches up), and only when a replacement candidate exists, or the set stays at or above
   the target without one: removing a dead voter with nobody to take its place gains no
   failure tolerance, and keeps the host from coming back as the voter it was.
5. Below the target, the best candidate is added: alive in gossip, registered, no open
   incident, not a voter, not excluded (a change about it just failed); ranked by a failure
   domain no remaining voter has (when hosts carry labels), then the smallest last reported
   catch-up lag, then name.
6. Never a change after which a majority of the new voter set is not alive.
7. At or above the target with every voter healthy, nothing changes: a voter that returns
   after it was replaced stays a non-voter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

#: The gossip state a node must be in to count as alive (a suspect may be dying).
ALIVE = "alive"
#: Gossip states in which a fenced voter is not taken as dead: it is back, or may be.
RETURNING = ("alive", "suspect")


@dataclass(frozen=True)
class Registered:
    """A node that registered as eligible (``voters.register``): what the rules use of it."""

    failure_domain: str = ""
    """Its ``voters.failure_domain`` label; "" when the host carries none."""
    lag: int | None = None
    """Entries behind the leader's commit when it last reported catch-up progress; None if
    it never did (a non-voter keeps no log until it is asked to catch up)."""


@dataclass(frozen=True)
class VoterView:
    """Everything the rules look at, as the leader sees it at one moment."""

    voters: tuple[str, ...]
    """The committed voter set, by node name (a voter that never registered: its Raft
    address, which gossip does not know, so it counts as not alive)."""
    target: int
    """How many voters the set should have (``voters.target``, or the bootstrap count)."""
    gossip: Mapping[str, str]
    """Node name -> membership state ("alive", "suspect", "dead", "left"); absent: unknown."""
    reachable: frozenset[str] = frozenset()
    """Voters the leader hears from over Raft (itself included), by the names in ``voters``."""
    incidents: frozenset[str] = frozenset()
    """Hosts with an open incident (declared dead by the log, not yet up again)."""
    fenced: frozenset[str] = frozenset()
    """Of those, hosts whose fencing is committed (host.fenced: lease expired or powered off)."""
    registered: Mapping[str, Registered] = field(default_factory=dict)
    """Every registered eligible node by name, voters included (their failure domains)."""
    change: str | None = None
    """The change in flight, described for the reason ("add node4, catching up"); None: none."""
    excluded: frozenset[str] = frozenset()
    """Nodes to leave alone for now: a change about them was just refused or failed."""


@dataclass(frozen=True)
class Decision:
    """One change to make: ``op`` "add" (promote a non-voter) or "remove" (drop a voter)."""

    op: Literal["add", "remove"]
    node: str
    reason: str


@dataclass(frozen=True)
class Assessment:
    """The decision (None: no change now) and why, for the log and /status."""

    decision: Decision | None
    reason: str


def decide(view: VoterView) -> Decision | None:
    """The one change the leader should make now, or None."""
    return assess(view).decision


def assess(view: VoterView) -> Assessment:
    """The one change to make now, or None, each with the reason (see the module's rules)."""
    if view.change is not None:
        return Assessment(None, f"a change is in flight ({view.change}); one at a time")
    voters = sorted(set(view.voters))
    alive = [v for v in voters if _alive_voter(view, v)]
    if not _majority(view, voters):
        return Assessment(None, f"only {len(alive)} of {len(voters)} voters alive "
                                f"({_names(alive)}): no change without a majority of them")
    replaceable = [v for v in voters if v in view.fenced and v not in view.excluded
                   and view.gossip.get(v) not in RETURNING and v not in view.reachable]
    if replaceable:
        dead = replaceable[0]
        remaining = len(voters) - 1
        # Ranked against the voters that stay: the dead voter's domain is free again.
        candidates = candidates_for(view, [v for v in voters if v != dead])
        if not candidates and remaining < view.target:
            return Assessment(None, f"voter {dead} is dead and fenced, but no eligible non-voter "
                                    f"can replace it; it stays a voter until one registers")
        then = (f"; then add {candidates[0]}{_domain_note(view, candidates[0])}" if candidates
                else f"; {remaining} voters stay, target {view.target}")
        return _gated(view, voters, Decision("remove", dead,
                                             f"voter {dead} is dead and fenced{then}"))
    if len(voters) < view.target:
        candidates = candidates_for(view, voters)
        if not candidates:
            return Assessment(None, f"{len(voters)} voters, target {view.target}: no eligible "
                                    f"non-voter (alive, registered, no open incident)")
        best = candidates[0]
        return _gated(view, voters, Decision(
            "add", best, f"{len(voters)} voters, target {view.target}: adding "
                         f"{best}{_domain_note(view, best)}, the best of {len(candidates)} "
                         f"eligible"))
    waiting = [v for v in voters if not _alive_voter(view, v)]
    if waiting:
        return Assessment(None, f"voter(s) {_names(waiting)} not alive but not fenced: replaced "
                                f"only once declared dead and fenced")
    return Assessment(None, f"{len(voters)} voters, target {view.target}, all alive")


def _gated(view: VoterView, voters: list[str], decision: Decision) -> Assessment:
    """Rule 6, checked on every decision whatever rule made it: the voter set after the
    change must still have a majority alive."""
    after = ([v for v in voters if v != decision.node] if decision.op == "remove"
             else [*voters, decision.node])
    if not _majority(view, after):
        return Assessment(None, f"not making the change ({decision.op} {decision.node}): a "
                                f"majority of the voters after it would not be alive")
    return Assessment(decision, decision.reason)


def candidates_for(view: VoterView, voters: list[str]) -> list[str]:
    """Eligible non-voters, best first (rule 5): alive, registered, no open incident, not
    excluded; a failure domain none of ``voters`` has before one they have (or none), then
    the smallest known lag (unknown last), then name."""
    taken = {view.registered[v].failure_domain for v in voters if v in view.registered}
    taken.discard("")
    in_set = set(voters) | set(view.voters)

    def rank(name: str) -> tuple[int, float, str]:
        info = view.registered[name]
        new_domain = bool(info.failure_domain) and info.failure_domain not in taken
        return (0 if new_domain else 1, math.inf if info.lag is None else info.lag, name)

    eligible = [n for n in view.registered
                if n not in in_set and _alive(view, n) and n not in view.incidents
                and n not in view.excluded]
    return sorted(eligible, key=rank)


def _alive(view: VoterView, name: str) -> bool:
    return view.gossip.get(name) == ALIVE


def _alive_voter(view: VoterView, name: str) -> bool:
    """Alive in gossip, or heard from by the leader over Raft (rule 2)."""
    return _alive(view, name) or name in view.reachable


def _majority(view: VoterView, voters: list[str]) -> bool:
    """More than half of ``voters`` alive (an empty set has no majority); a candidate being
    added counts by gossip, as it is not heard over Raft before it is a member."""
    return 2 * sum(1 for v in voters if _alive_voter(view, v)) > len(voters)


def _domain_note(view: VoterView, name: str) -> str:
    domain = view.registered[name].failure_domain
    return f" (failure domain {domain})" if domain else ""


def _names(names: list[str]) -> str:
    return ", ".join(names) or "none"
