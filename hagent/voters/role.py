"""When this node must change its role, decided from what it knows (no I/O).

A node's role is fixed for the life of its process: a voter runs a RaftNode and the forward
server, a non-voter a forward client (hagent/daemon.py). When the committed voter set says
otherwise the daemon re-execs itself (docs/voters.md); these functions say when, and with
which voter set the new process starts:

- a **non-voter** with a Raft address of its own looks at the voter set a voter serves it
  (``/status``'s ``voter_set``): an add of itself in flight -> start as a *pending* voter (a
  voter process that is not a member yet: it follows the log from the current voters and
  catches up before it counts); already in the committed set (its promotion finished while
  it was away) -> start as a voter;
- a **voter** looks at its own applied state, but only once it has applied everything the
  leader had committed when it last heard from it (``caught_up``): earlier, an old entry
  could make it believe it was removed. Outside the committed set and not the add in
  flight -> start as a non-voter, with the committed set as the voters it forwards to. A
  pending voter (a promotion candidate) inside the set is promoted: nothing to re-exec,
  only its voters file loses the pending mark.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

VOTER, NON_VOTER = "voter", "non-voter"


@dataclass(frozen=True)
class Me:
    """This node as the voter set knows it."""

    name: str
    raft_address: str       # "" on a node that is never promoted
    forward_address: str    # the forward endpoint it serves as a voter
    public_key: str


@dataclass(frozen=True)
class Switch:
    """Re-exec as ``to``, starting from ``voters`` (the committed voter set as records, as
    the log's ``voters`` query lists them), ``pending`` when this node is to run as a voter
    that is not in that set yet (a promotion candidate)."""

    to: str
    voters: tuple[Mapping[str, Any], ...]
    pending: bool
    reason: str


def _is_me(me: Me, record: Mapping[str, Any] | None) -> bool:
    if not record:
        return False
    return record.get("address", record.get("raft_address")) == me.raft_address \
        or record.get("node") == me.name


def promoting_me(me: Me, voter_set: Mapping[str, Any] | None) -> bool:
    """Whether the change in flight is the add of this node."""
    change = (voter_set or {}).get("change")
    return bool(change) and change.get("op") == "add" and _is_me(me, change)


def as_non_voter(me: Me, voter_set: Mapping[str, Any] | None) -> Switch | None:
    """A non-voter's decision from the voter set a voter served it (``status_summary``)."""
    if not me.raft_address or not voter_set or not voter_set.get("bootstrapped"):
        return None
    voters = tuple(voter_set.get("voters") or ())
    if any(_is_me(me, v) for v in voters):
        return Switch(VOTER, voters, False, "the committed voter set includes this node")
    if promoting_me(me, voter_set):
        change = voter_set["change"]
        return Switch(VOTER, voters, True,
                      f"promotion to voter started (term {change.get('term')}): catching up")
    return None


def as_voter(me: Me, doc: Mapping[str, Any], *, caught_up: bool,
             pending: bool) -> Switch | None:
    """A voter's decision from its own applied ``voters`` query ``doc``. None: stay (a
    pending voter that became a member stays too: the caller clears the mark)."""
    if not caught_up or not doc.get("bootstrapped"):
        return None
    voters = tuple(doc.get("voters") or ())
    if any(_is_me(me, v) for v in voters) or promoting_me(me, doc):
        return None
    last = doc.get("last_change") or {}
    if pending:
        why = (f"promotion aborted: {last.get('reason')}" if _is_me(me, last)
               and last.get("result") == "aborted" else "promotion not in the log any more")
    else:
        why = ("removed from the voter set" + (f" (term {last.get('term')})"
                                                if _is_me(me, last) else ""))
    return Switch(NON_VOTER, voters, False, why)
