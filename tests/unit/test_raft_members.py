"""consensus.raft_members (the configuration as the log says) and consensus.prevote (the
pre-vote rule and tally), without sockets."""
from __future__ import annotations

import pickle

import pytest
from pysyncobj.node import TCPNode

from consensus import prevote
from consensus.raft_members import RaftMembers, decode_change, encode_change

A, B, C, D = (f"10.0.0.{i}:7170" for i in range(1, 5))
MEMBERSHIP = bytes([2])


def entry(kind: str, address: str, idx: int) -> tuple[bytes, int, int]:
    return MEMBERSHIP + encode_change(kind, address), idx, 1


def regular(idx: int) -> tuple[bytes, int, int]:
    return bytes([0]) + b"payload", idx, 1


def test_entries_are_plain_data_and_pysyncobjs_own_form_is_refused():
    assert decode_change(MEMBERSHIP + encode_change("add", D)) == ("add", D)
    assert decode_change(bytes([0]) + b"x") is None
    with pytest.raises(ValueError):
        encode_change("swap", D)

    # what pysyncobj's own addNodeToCluster writes: a pickled TCPNode
    with pytest.raises(ValueError, match="refusing to unpickle global pysyncobj.node.TCPNode"):
        decode_change(MEMBERSHIP + pickle.dumps(["add", D, TCPNode(D)], protocol=2))
    with pytest.raises(ValueError, match="not a membership change"):
        decode_change(MEMBERSHIP + pickle.dumps(["swap", D], protocol=2))


def test_start_configuration_is_the_latest_in_the_log_from_the_base():
    journal = [regular(5), entry("add", D, 6), regular(7), entry("rem", A, 8),
               entry("add", A, 9), entry("rem", B, 10)]
    members = RaftMembers(C, [A, B, C], 5, journal)
    assert members.latest == {A, C, D}          # every entry after the base, committed or not
    assert members.committed == {A, B, C}       # until they are applied
    assert members.in_flight and members.is_member
    assert members.others() == [A, D]
    # entries at or below the base are in it already
    assert RaftMembers(C, [A, C, D], 8, journal).latest == {A, C, D}


def test_commits_move_the_committed_set_once_each():
    members = RaftMembers(A, [A, B, C], 0)
    assert members.on_commit(*entry("add", D, 4)[:2]) is True
    assert members.committed == {A, B, C, D} and members.committed_index == 4
    # the same index again (a replay of an entry already counted) changes nothing
    assert members.on_commit(*entry("rem", D, 4)[:2]) is False
    assert members.on_commit(regular(5)[0], 5) is False
    # a base valid at index 10 (voters.json) already holds the entries up to 10
    base = RaftMembers(A, [A, B, C, D], 10)
    assert base.on_commit(*entry("rem", D, 9)[:2]) is False


def test_this_node_is_tracked_because_pysyncobj_ignores_entries_about_itself():
    joiner = RaftMembers(D, [A, B, C], 0)
    assert not joiner.is_member
    joiner.on_log_change(["add", D], False, [A, B, C])     # appended
    assert joiner.is_member and joiner.latest == {A, B, C, D}
    joiner.on_log_change(["add", D], True, [A, B, C])      # cut by a new leader
    assert not joiner.is_member
    member = RaftMembers(A, [A, B, C], 0)
    member.on_log_change(["rem", A], False, [B, C])
    assert not member.is_member and member.latest == {B, C}
    member.on_log_change(["rem", B], False, [C])           # about another node
    assert member.latest == {C}


def test_snapshot_replaces_both_sets_and_drops_what_is_not_an_address():
    members = RaftMembers(D, [A, B, C], 0)
    assert members.on_snapshot([A, B, C, D, "None"], 40) is True
    assert members.latest == members.committed == {A, B, C, D}
    assert members.committed_index == 40 and members.is_member


def test_refusals_one_change_at_a_time():
    members = RaftMembers(A, [A, B, C], 0)
    assert members.refusal("add", "nonsense").endswith("not a host:port Raft address")
    assert members.refusal("add", B).startswith("ALREADY_MEMBER")
    assert members.refusal("rem", D).startswith("NOT_MEMBER")
    assert "cannot remove itself" in members.refusal("rem", A)
    assert members.refusal("add", D) is None
    members.on_log_change(["add", D], False, [B, C, D])
    assert members.refusal("rem", B).startswith("CHANGE_IN_FLIGHT")
    members.on_commit(*entry("add", D, 3)[:2])
    assert members.refusal("rem", B) is None


@pytest.mark.parametrize("change,granted", [
    ({}, True),
    ({"sender_is_member": False}, False),          # the guard
    ({"heard_leader_recently": True}, False),     # a live leader is not deposed
    ({"leads": True}, False),
    ({"current_term": 5}, False),                 # proposed term 5 is not above ours
    ({"last_log_term": 4}, False),                # our log is newer
    ({"last_log_index": 31}, False),
])
def test_pre_vote_rule(change, granted):
    message = prevote.request(5, 30, 3)
    args = dict(sender_is_member=True, current_term=4, last_log_index=30, last_log_term=3,
                leads=False, heard_leader_recently=False)
    args.update(change)
    assert prevote.grants(message, **args) is granted
    assert prevote.grants({"type": prevote.PRE_VOTE}, **args) is False  # malformed


def test_pre_vote_round_needs_a_majority_of_the_configuration():
    rnd = prevote.PreVoteRound()
    rnd.start(7)
    assert not rnd.on_response("b", prevote.response({"term": 7}, False, 4), members=5)
    assert not rnd.on_response("b", prevote.response({"term": 6}, True, 4), members=5)  # stale
    assert not rnd.on_response("b", prevote.response({"term": 7}, True, 4), members=5)
    assert not rnd.on_response("b", prevote.response({"term": 7}, True, 4), members=5)  # again
    assert rnd.on_response("c", prevote.response({"term": 7}, True, 4), members=5)
    assert rnd.may_campaign(7) and not rnd.may_campaign(8)
    rnd.used()
    assert not rnd.may_campaign(7)
    single = prevote.PreVoteRound()
    single.start(1)
    assert single.check(members=1)


def test_a_candidate_behind_adopts_the_responders_term():
    """A responder with a higher term (and an older log) refuses; the candidate takes that
    term, so its next pre-vote is above it and can be granted."""
    refusal = prevote.response(prevote.request(4, 50, 3), False, 9)
    assert prevote.newer_term(refusal, 3) == 9
    assert prevote.newer_term(refusal, 9) is None
    assert prevote.newer_term({"current_term": True}, 0) is None
