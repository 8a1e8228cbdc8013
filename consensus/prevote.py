"""Pre-vote (Raft thesis §9.6): a voter asks whether it could win before it raises its term.

pysyncobj 0.3.17 campaigns by raising its term at once. A voter that cannot win then does
harm either way: if the others accept its vote request, the higher term deposes a working
leader; if they drop it (``consensus.transport``'s guard, for a node not in their cluster),
its own term is now above the leader's and it refuses the leader's append-entries for good,
since pysyncobj's replies carry no term to correct it. That is exactly the voter that was
removed while it was down, or cut off from the leader when its removal was appended.

So before a campaign ``consensus.raft`` sends ``hagent_pre_vote`` (the term it would use and
its last log entry) to its partners and campaigns only once a majority of its configuration
(itself included) granted it. A node grants when the sender is in its own configuration, the
sender's log is at least as up to date as its own, the proposed term is above its own, and it
has not heard from a leader within the minimum election timeout (nor leads itself). Granting
changes nothing on the granting node, so pre-votes cannot disrupt anything.

A response carries the responder's term, and a candidate whose term is lower adopts it (no
vote, so this is what a vote request would have done): otherwise a node with the most up to
date log but a lower term and a node with a higher term but an older log would refuse each
other's pre-votes forever.

This module is the rule and the tally, without I/O; message names are ``PRE_VOTE`` and
``PRE_VOTE_RESPONSE``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

PRE_VOTE = "hagent_pre_vote"
PRE_VOTE_RESPONSE = "hagent_pre_vote_response"


def request(term: int, last_log_index: int, last_log_term: int) -> dict[str, Any]:
    """The pre-vote for the campaign at ``term`` (this node's current term + 1)."""
    return {"type": PRE_VOTE, "term": term, "last_log_index": last_log_index,
            "last_log_term": last_log_term}


def grants(message: dict[str, Any], *, sender_is_member: bool, current_term: int,
           last_log_index: int, last_log_term: int, leads: bool,
           heard_leader_recently: bool) -> bool:
    """Whether to grant ``message`` (a PRE_VOTE); see the module docstring."""
    try:
        term = int(message["term"])
        their_index, their_term = int(message["last_log_index"]), int(message["last_log_term"])
    except (KeyError, TypeError, ValueError):
        return False
    up_to_date = (their_term, their_index) >= (last_log_term, last_log_index)
    return (sender_is_member and up_to_date and term > current_term and not leads
            and not heard_leader_recently)


def response(message: dict[str, Any], granted: bool, current_term: int) -> dict[str, Any]:
    """The answer, with the granting node's own term: a candidate behind it adopts it (as it
    would from a vote request), or two nodes could refuse each other forever, one for its
    older log, the other for its lower term."""
    return {"type": PRE_VOTE_RESPONSE, "term": message.get("term"), "granted": granted,
            "current_term": current_term}


def newer_term(message: dict[str, Any], current_term: int) -> int | None:
    """The responder's term if a PRE_VOTE_RESPONSE shows one above ``current_term``."""
    term = message.get("current_term")
    if isinstance(term, int) and not isinstance(term, bool) and term > current_term:
        return term
    return None


@dataclass
class PreVoteRound:
    """One node's pre-vote rounds: at most one open, for the term it would campaign at."""

    term: int | None = None
    granted_by: set[Hashable] = field(default_factory=set)
    won_term: int | None = None

    def start(self, term: int) -> None:
        self.term, self.granted_by, self.won_term = term, set(), None

    def on_response(self, sender: Hashable, message: dict[str, Any],
                    members: int) -> bool:
        """Count a response from ``sender`` (a member); True once the round is won.
        ``members``: voters in this node's configuration, itself included."""
        if self.term is None or message.get("term") != self.term or not message.get("granted"):
            return False
        self.granted_by.add(sender)
        return self.check(members)

    def check(self, members: int) -> bool:
        """Won with the grants so far (this node's own vote counts)?"""
        if self.term is not None and 2 * (len(self.granted_by) + 1) > members:
            self.won_term = self.term
            return True
        return False

    def may_campaign(self, term: int) -> bool:
        """Whether the campaign at ``term`` was won in a pre-vote (and not yet used)."""
        return self.won_term is not None and self.won_term == term

    def used(self) -> None:
        self.term, self.granted_by, self.won_term = None, set(), None
