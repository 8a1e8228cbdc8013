"""In-process clusters: compaction into msgpack snapshots, restart from snapshot + journal,
a lagging voter fed a snapshot, and read-only replicas that propose and read."""
from __future__ import annotations

import threading

from consensus.snapshot_file import read_snapshot
from consensus.state import ClusterState
from raft_helpers.cluster import wait_for
from raft_helpers.inproc import close_all, lease, make_nodes, propose, restart, wait_ready


def _pipeline(node, commands, timeout=30.0):
    done = threading.Event()
    results = []
    lock = threading.Lock()

    def callback(result, error):
        with lock:
            results.append((result, error))
            if len(results) == len(commands):
                done.set()

    for command in commands:
        node.propose(command, callback)
    assert done.wait(timeout), f"{len(results)}/{len(commands)} answered"
    return results


def _canonical(node):
    return node.read(lambda s: s.canonical())


def test_compaction_writes_msgpack_snapshots_and_restart_restores_state(tmp_path):
    nodes = make_nodes(tmp_path, voters=3, compaction_min_entries=50)
    try:
        leader = wait_ready(nodes)
        results = _pipeline(leader, [lease(f"h{i % 7}", i) for i in range(300)])
        assert all(e is None and r["ok"] for r, e in results)
        wait_for(lambda: all(n.status()["applied_index"] >= leader.status()["commit_index"]
                             for n in nodes), 10, "followers to apply")
        wait_for(lambda: all(n.status()["log_size"] < 300 for n in nodes), 10, "compaction")
        for n in nodes:
            assert (n.state_dir / "snapshot").exists(), f"{n.node_name} never compacted"
            doc = read_snapshot(n.state_dir / "snapshot")
            assert ClusterState.from_snapshot(doc["state"]).get_lease("h0") is not None
        expected = _canonical(leader)
        nodes[1] = restart(nodes[1])
        assert _canonical(nodes[1]) == expected or wait_for(
            lambda: _canonical(nodes[1]) == expected, 10, "restarted follower's state")
        leader = wait_ready(nodes)
        assert propose(leader, lease("h0", 10_000))[1] is None
        wait_for(lambda: nodes[1].read(lambda s: s.get_lease("h0")["seq"]) == 10_000, 10,
                 "restarted follower to apply new entries")
    finally:
        close_all(nodes)


def test_lagging_voter_catches_up_from_a_snapshot(tmp_path):
    nodes = make_nodes(tmp_path, voters=3, compaction_min_entries=50)
    try:
        leader = wait_ready(nodes)
        lagging = next(n for n in nodes if n is not leader)
        lagging.close()
        results = _pipeline(leader, [lease(f"h{i % 5}", i) for i in range(400)])
        assert all(e is None for _, e in results)
        live = [n for n in nodes if n is not lagging]
        wait_for(lambda: all(n.status()["log_size"] < 400 for n in live), 10, "compaction")
        first_kept = leader._machine._SyncObj__raftLog[0][1]
        assert first_kept > lagging.status()["applied_index"] + 1, "no snapshot needed; test void"
        nodes[nodes.index(lagging)] = lagging = restart(lagging)
        expected = _canonical(leader)
        wait_for(lambda: _canonical(lagging) == expected, 20, "lagging voter to load a snapshot")
        assert lagging.status()["error"] is None
    finally:
        close_all(nodes)


def test_replicas_propose_through_the_leader_and_read_the_state(tmp_path):
    nodes = make_nodes(tmp_path, voters=3, replicas=2)
    try:
        wait_ready(nodes)
        replica = nodes[3]
        st = replica.status()
        assert st["role"] == "replica" and not st["voter"] and st["ready"]
        assert st["leader"] in replica.voters
        assert all(v["reachable"] for v in st["voters"])
        result, error = propose(replica, lease("from-replica", 5))
        assert error is None and result["ok"], (result, error)
        assert replica.read(lambda s: s.get_lease("from-replica"))["seq"] == 5
        wait_for(lambda: nodes[4].read(lambda s: s.get_lease("from-replica")), 10,
                 "the other replica to apply")
        results = _pipeline(nodes[4], [lease("pipelined", i) for i in range(200)])
        assert all(e is None for _, e in results)
        for n in nodes:
            wait_for(lambda n=n: n.read(lambda s: s.get_lease("pipelined")["seq"]) == 199
                     if n.read(lambda s: s.get_lease("pipelined")) else False, 10, "apply")
    finally:
        close_all(nodes)


def test_invalid_commands_are_refused_before_the_log(tmp_path):
    import pytest
    from consensus.raft import MAX_COMMAND_BYTES, InvalidCommandError
    nodes = make_nodes(tmp_path, voters=1)
    try:
        for bad in ("not a dict", {"op": object()}, {"blob": "x" * (MAX_COMMAND_BYTES + 1)}):
            with pytest.raises(InvalidCommandError):
                nodes[0].propose(bad, lambda r, e: None)
    finally:
        close_all(nodes)
