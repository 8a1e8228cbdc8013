"""Multi-process Raft safety: acknowledged entries are synced on a majority, no term ever has
two leaders under repeated SIGKILLs, and a paused leader commits nothing in its old term."""
from __future__ import annotations

import random
import signal
import time
from collections import defaultdict

import pytest

from consensus.journal import read_journal
from consensus.transport import restricted_loads
from raft_helpers.cluster import ProcCluster, wait_for

pytestmark = pytest.mark.slow


def _commands(path):
    """(idx, term, command dict or None) for every entry of a journal file."""
    out = []
    for command, idx, term in read_journal(path):
        decoded = None
        if command[:1] == b"\x00":
            _func, args = restricted_loads(command[1:])
            decoded = args[0]
        out.append((idx, term, decoded))
    return out


def _lease(host, seq):
    return {"op": "lease.renew", "at": time.time(), "hosts": {host: seq}}


def _has(entries, host, seq):
    return any(c and c.get("hosts") == {host: seq} for _, _, c in entries)


def test_acknowledged_entries_are_synced_on_a_majority_before_the_ack(tmp_path):
    with ProcCluster(tmp_path, voters=3) as cluster:
        leader = cluster.leader()
        for seq in range(30):
            answer = leader.request("propose", 10, command=_lease("acked", seq))
            assert answer["error"] is None and answer["result"]["ok"], answer
            # Right after the ack: an independent reader finds it in a majority of journals.
            holders = [n.name for n in cluster.voters
                       if _has(_commands(cluster.journal(n)), "acked", seq)]
            assert len(holders) >= 2, (seq, holders)
        pipelined = leader.request("bench", 60, count=2000, window=200)["bench"]
        assert pipelined["count"] == 2000 and pipelined["errors"] == 0
        statuses = [n.status() for n in cluster.voters]
        commit = max(s["commit_index"] for s in statuses)
        # The sync counters: every voter synced, none ever acked past its durable index, and
        # a majority holds the whole committed log durably.
        assert all(s["acks_ahead_of_disk"] == 0 for s in statuses), statuses
        assert all(s["journal_syncs"] > 0 for s in statuses)
        assert sum(s["durable_index"] >= commit for s in statuses) >= 2, statuses
        # Batching: far fewer fsyncs than entries on the leader.
        lead = next(s for s in statuses if s["role"] == "leader")
        assert lead["journal_syncs"] < 2030 / 2, lead


def test_no_term_ever_has_two_leaders_under_repeated_sigkill(tmp_path):
    rng = random.Random(7)
    with ProcCluster(tmp_path, voters=3) as cluster:
        cluster.leader()
        deadline = time.monotonic() + 30
        kills = 0
        while time.monotonic() < deadline:
            live = [n for n in cluster.voters if n.alive()]
            statuses = {n.name: n.status() for n in live}
            leaders = [n for n in live if (statuses[n.name] or {}).get("role") == "leader"]
            victim = leaders[0] if leaders and rng.random() < 0.7 else rng.choice(live)
            victim.kill()
            kills += 1
            if rng.random() < 0.5:
                # Mid-election: kill a second voter as soon as someone is a candidate.
                others = [n for n in cluster.voters if n.alive()]
                try:
                    wait_for(lambda: any((n.status() or {}).get("role") == "candidate"
                                         for n in others), 3, "a candidate", interval=0.01)
                except AssertionError:
                    pass
                second = rng.choice(others)
                second.kill()
                kills += 1
                second.start()
            victim.start()
            try:
                cluster.leader(timeout=10)
            except AssertionError:
                pass  # keep churning; the check is over the whole history
        cluster.leader(timeout=15)
    leaders_by_term = defaultdict(set)
    for event in cluster.role_events():
        if event["new"] == "leader":
            leaders_by_term[event["term"]].add(event["node"])
    assert kills >= 10 and len(leaders_by_term) >= 5, (kills, dict(leaders_by_term))
    doubled = {t: n for t, n in leaders_by_term.items() if len(n) > 1}
    assert not doubled, f"terms with two leaders: {doubled}"


def test_paused_leader_commits_nothing_in_its_old_term_and_steps_down(tmp_path):
    # Each runner's SIGCONT handler proposes 5 "stale-*" commands the moment it resumes.
    extra = {f"v{i}": {"propose_on_sigcont": 5} for i in range(3)}
    with ProcCluster(tmp_path, voters=3, extra=extra) as cluster:
        old = cluster.leader()
        old_term = old.status()["term"]
        assert old.request("propose", 10, command=_lease("before", 1))["error"] is None
        old.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        others = [n for n in cluster.voters if n is not old]
        new = cluster.leader(timeout=15, among=others)
        new_term = new.status()["term"]
        assert new_term > old_term
        assert new.request("propose", 10, command=_lease("during", 1))["error"] is None
        old.signal(signal.SIGCONT)
        paused = time.monotonic() - stopped_at
        cont = old.wait_event("sigcont", 10)[0]
        # Whether the handler's proposals reach the Raft thread before the new leader's
        # messages do is a race (both run on resume); either way nothing may commit in the
        # old term.
        assert cont["term"] in (old_term, new_term)
        wait_for(lambda: (old.status() or {}).get("role") == "follower"
                 and old.status()["term"] >= new_term, 10, "the old leader to step down")
        # Enough new entries to overwrite any stale tail the old leader appended: pysyncobj
        # answers a discarded proposal (DISCARDED) only when its index is applied.
        for i in range(10):
            assert new.request("propose", 10, command=_lease("after", i))["error"] is None
        results = old.wait_event("stale_result", 20, count=5)
        commit = new.status()["commit_index"]
        wait_for(lambda: all(n.status()["applied_index"] >= commit for n in cluster.voters), 10,
                 "every voter to apply the new leader's log")
        commits = {n.name: n.status()["commit_index"] for n in cluster.voters}
        cluster.stop()
    assert paused > 0.4  # past the election timeout minimum
    logs = {n.name: _commands(cluster.journal(n)) for n in cluster.voters}
    for name, entries in logs.items():
        committed = [e for e in entries if e[0] <= commits[name]]
        stale_old_term = [e for e in committed if e[2] and e[1] == old_term
                          and str(next(iter(e[2]["hosts"]))).startswith("stale-")]
        assert not stale_old_term, f"{name} committed in the old term: {stale_old_term}"
        assert not any(e[1] == old_term for e in committed if e[0] > cont["commit_index"] + 1
                       and e[2] is not None and "stale" in str(e[2])), name
    # All voters agree on every committed (idx, term).
    common = min(commits.values())
    views = {name: [(e[0], e[1]) for e in entries if e[0] <= common] for name, entries in logs.items()}
    first = next(iter(views.values()))
    assert all(v == first for v in views.values())
    # A stale proposal is either refused or committed later through the new leader.
    for r in results:
        if r["ok"]:
            assert any(e[2] and e[2]["hosts"] == {r["tag"]: 1} and e[1] > old_term
                       for e in logs[new.name])
