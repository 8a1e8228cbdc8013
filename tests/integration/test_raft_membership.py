"""Dynamic Raft membership with real pysyncobj processes (one process a node, TCP on
127.0.0.1, fsync on): 3 voters -> a 4th joins (follows the log as a read-only peer, reports
its catch-up through the leader, is added and then counts toward quorum) -> a voter is removed
while down -> restarted with its stale voters.json it disrupts nothing (terms unchanged, it
learns its removal from the log) -> every process SIGKILLed and restarted: the same voter set,
no acknowledged entry lost.

An in-process test shows the vote guard alone: a node outside the cluster that campaigns with
plain vote requests (no pre-vote, as stock pysyncobj would) changes no term.

Figures (catch-up, add, remove, restart) are printed; benchmarks/ holds timing goals.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from consensus import voterfile
from consensus.raft import RaftNode
from consensus.state import ClusterState
from raft_helpers.cluster import FAST, PASSWORD, NodeProc, ProcCluster, free_port, wait_for
from raft_helpers.inproc import close_all, lease, make_nodes, options, propose, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

#: Entries in the log before the 4th voter starts: something to catch up on.
BACKLOG = 400


def _voters_file(cluster: ProcCluster, name: str) -> Path:
    return cluster.tmp / name / "voters.json"


def _status(node: NodeProc) -> dict:
    st = node.status()
    assert st is not None, f"{node.name} does not answer"
    return st


def _state(node: NodeProc) -> dict:
    return node.request("state", 10)


def _ok(node: NodeProc, command: dict, timeout: float = 15.0) -> dict:
    answer = node.request("propose", timeout, command=dict(command, at=time.time()))
    assert answer["error"] is None and answer["result"]["ok"], answer
    return answer["result"]["result"]


def _member_change(node: NodeProc, op: str, address: str) -> float:
    start = time.monotonic()
    answer = node.request(op, 15, address=address)
    assert answer["ok"], answer
    return time.monotonic() - start


def _leader(nodes: list[NodeProc], timeout: float = 20.0) -> NodeProc:
    """The one voter that leads and that every other live member names as its leader."""
    def find():
        sts = {n.name: n.status() for n in nodes if n.alive()}
        members = {name: st for name, st in sts.items() if st and st["member"]}
        leaders = [n for n in nodes if (members.get(n.name) or {}).get("role") == "leader"]
        if len(leaders) != 1:
            return None
        addr = leaders[0].cfg["self_address"]
        return leaders[0] if all(st["leader"] == addr for st in members.values()) else None
    return wait_for(find, timeout, "one agreed leader")


def _terms(nodes: list[NodeProc]) -> dict[str, int]:
    return {n.name: _status(n)["term"] for n in nodes}


def test_add_remove_stale_restart_and_full_restart(tmp_path):
    figures: dict[str, float] = {}
    # Compaction every 100 entries: the joiner gets the leader's snapshot, and every restart
    # starts from a snapshot plus a journal.
    cluster = ProcCluster(tmp_path, voters=3, options={"compaction_min_entries": 100}, extra={
        f"v{i}": {"voters_file": str(tmp_path / f"v{i}" / "voters.json")} for i in range(3)})
    new_address = f"127.0.0.1:{free_port()}"
    (tmp_path / "v3").mkdir()
    joiner = NodeProc("v3", dict(cluster.voters[0].cfg, self_address=new_address,
                                 state_dir=str(tmp_path / "v3" / "raft"), node_name="v3",
                                 voters_file=str(tmp_path / "v3" / "voters.json")))
    everyone = [*cluster.voters, joiner]
    acked: dict[str, int] = {}  # lease host -> highest acknowledged renewal

    def renew(node: NodeProc, host: str, seq: int) -> None:
        _ok(node, {"op": "lease.renew", "hosts": {host: seq}})
        acked[host] = max(acked.get(host, -1), seq)

    with cluster:
        leader = _leader(cluster.voters)
        _ok(leader, {"op": "voters.bootstrap", "voters": cluster.addresses})
        _ok(leader, {"op": "voters.register", "node": "v3", "raft_address": new_address,
                     "forward_address": "127.0.0.1:1", "public_key": "key-v3"})
        answer = leader.request("bench", 60, count=BACKLOG, window=50)["bench"]
        assert answer["count"] == BACKLOG and answer["errors"] == 0
        for i in range(20):
            renew(leader, f"h{i % 5}", i)
        change = _ok(leader, {"op": "voters.change", "change": "add", "node": "v3",
                              "term": _status(leader)["term"]})
        assert change["phase"] == "catching_up"
        terms_before = _terms(cluster.voters)

        # --- the 4th voter starts as the agent starts a promoted node: its voters.json says
        # voters = the current set + itself, pending. It is a voter that is not a member.
        voterfile.save(Path(joiner.cfg["voters_file"]), [*cluster.addresses, new_address],
                       pending=True)
        t0 = time.monotonic()
        joiner.start()
        st = _status(joiner)
        assert st["voter"] and not st["member"] and st["self_address"] == new_address
        commit = _status(leader)["commit_index"]
        wait_for(lambda: _status(joiner)["applied_index"] >= commit, 30, "the joiner caught up")
        figures["catch_up_s"] = time.monotonic() - t0
        # it proposes through pysyncobj, which forwards to the leader
        mine = _state(joiner)
        assert mine["leader_commit"] >= commit and not mine["member"]
        progress = _ok(joiner, {"op": "voters.progress", "node": "v3",
                                "applied": mine["applied"],
                                "leader_commit": mine["leader_commit"]})
        assert progress["progress"]["lag"] <= 5
        assert _state(leader)["voters"]["change"]["progress"]["applied"] == mine["applied"]
        assert _terms(cluster.voters) == terms_before  # a joiner never campaigns
        assert all(_status(n)["vote_requests_dropped"] == 0 for n in cluster.voters)

        figures["add_member_s"] = _member_change(leader, "add_member", new_address)
        _ok(leader, {"op": "voters.commit", "change": "add", "node": "v3",
                     "term": _status(leader)["term"]})
        figures["add_total_s"] = time.monotonic() - t0
        four = sorted([*cluster.addresses, new_address])
        wait_for(lambda: all(_state(n)["committed"] == four for n in everyone), 10,
                 "every node applied the add")
        assert _status(joiner)["member"]
        assert voterfile.load(Path(joiner.cfg["voters_file"])).voters == tuple(four)
        assert not voterfile.load(Path(joiner.cfg["voters_file"])).pending
        wait_for(lambda: [v["raft_address"] for v in _state(joiner)["voters"]["voters"]]
                 == [*cluster.addresses, new_address], 10, "the joiner applied voters.commit")

        # --- the new voter counts: with one original follower down, 3 of 4 must include it
        down = next(n for n in cluster.voters if n is not leader)
        down.kill()
        renew(leader, "counted", 1)
        down.start()

        # --- remove a voter while it is down: it keeps a stale voters.json and log
        victim = next(n for n in cluster.voters if n is not leader and n is not down)
        victim.kill()
        stale = voterfile.load(_voters_file(cluster, victim.name))
        assert victim.cfg["self_address"] in stale.voters
        _ok(leader, {"op": "voters.change", "change": "remove", "node":
                     victim.cfg["self_address"], "term": _status(leader)["term"]})
        figures["remove_member_s"] = _member_change(leader, "remove_member",
                                                    victim.cfg["self_address"])
        _ok(leader, {"op": "voters.commit", "change": "remove",
                     "node": victim.cfg["self_address"], "term": _status(leader)["term"]})
        members = [n for n in everyone if n is not victim]
        three = sorted(n.cfg["self_address"] for n in members)
        wait_for(lambda: all(_state(n)["committed"] == three for n in members), 10,
                 "every member applied the removal")
        for i in range(20, 30):
            renew(leader, f"h{i % 5}", i)

        # --- the removed voter restarts with its stale voters.json: it believes it votes
        terms_before = _terms(members)
        t1 = time.monotonic()
        victim.start()
        st = _status(victim)
        assert st["voter"] and st["member"], "the stale node starts believing it is a voter"
        wait_for(lambda: not _status(victim)["member"], 20, "the stale node learns its removal")
        figures["stale_learns_removal_s"] = time.monotonic() - t1
        # give it every chance to disrupt: several election timeouts
        deadline = time.monotonic() + 3 * FAST["election_timeout_max"]
        while time.monotonic() < deadline:
            assert _terms(members) == terms_before, "the stale node changed a term"
            assert _status(leader)["role"] == "leader"
            time.sleep(0.1)  # sampling interval of the invariant, not synchronisation
        assert _status(victim)["term"] <= terms_before[leader.name]
        assert voterfile.load(_voters_file(cluster, victim.name)).voters == tuple(three)
        figures["vote_requests_dropped"] = sum(_status(n)["vote_requests_dropped"]
                                               for n in members)
        renew(leader, "after-stale", 1)

        # --- every process SIGKILLed, then restarted from its files
        applied = _state(leader)
        for node in everyone:
            node.kill()
        t2 = time.monotonic()
        for node in everyone:
            node.start()
        leader = _leader(everyone)
        figures["restart_to_leader_s"] = time.monotonic() - t2
        for node in members:
            st = _state(node)
            assert st["members"] == st["committed"] == three and st["member"], node.name
        assert not _state(victim)["member"]
        wait_for(lambda: all(_state(n)["applied"] >= applied["applied"] for n in everyone), 20,
                 "every node re-applied the log")
        for node in everyone:
            leases = {x["host"]: x["seq"] for x in _state(node)["leases"]}
            lost = {h: s for h, s in acked.items() if leases.get(h, -1) < s}
            assert not lost, f"{node.name} lost acknowledged renewals {lost}"
            view = _state(node)["voters"]
            assert sorted(v["raft_address"] for v in view["voters"]) == three
            assert view["last_change"]["op"] == "remove" and view["change"] is None
        renew(leader, "after-restart", 1)
        assert _terms(members)  # all answer

    print("\nmembership figures: " + json.dumps({k: round(v, 3) for k, v in figures.items()}))


def test_vote_requests_from_outside_the_cluster_change_no_term(tmp_path):
    """A node that believes it is a voter of this cluster but is not one of its members
    campaigns with plain vote requests (pre-vote switched off in it, as in stock pysyncobj):
    the members drop and count them; no term moves, the leader stays."""
    nodes = make_nodes(tmp_path, voters=3)
    intruder = None
    try:
        leader = wait_ready(nodes)
        propose(leader, lease("h", 1))
        terms = {n.node_name: n.status()["term"] for n in nodes}
        addresses = [n.self_address for n in nodes]
        # an address above every member's (pysyncobj compares them as strings): it dials
        # every member at once, so its vote requests reach them at once
        address = wait_for(lambda: (lambda a: a if a > max(addresses) else None)(
            f"127.0.0.1:{free_port()}"), 10, "a free port above the members'")
        # It was partitioned away for a while: its term is above the cluster's, so a vote
        # request it sends would depose the leader wherever it is not dropped.
        (tmp_path / "intruder").mkdir()
        (tmp_path / "intruder" / "journal.meta").write_text(json.dumps(
            {"format": 1, "current_term": 5, "voted_for": None, "commit_index": 1}))
        intruder = RaftNode(self_address=address, voters=[*addresses, address],
                            state_dir=tmp_path / "intruder", password=PASSWORD,
                            options=options(addresses, append_entries_period=0.04,
                                            election_timeout_min=0.15,
                                            election_timeout_max=0.25),
                            state=ClusterState(), node_name="intruder")
        intruder._machine._hagent_before_election = lambda now: None  # no pre-vote
        wait_for(lambda: intruder.status()["term"] >= 8, 15, "the intruder campaigned 3 times")
        assert {n.node_name: n.status()["term"] for n in nodes} == terms
        assert sum(n.status()["vote_requests_dropped"] for n in nodes) >= 3
        assert leader.status()["role"] == "leader"
        assert propose(leader, lease("h", 2))[1] is None
    finally:
        close_all([*nodes, *([intruder] if intruder else [])])
