"""Snapshots written by a forked child: the Raft thread keeps committing meanwhile, the journal
is cut only after the file is durable, a failed child leaves the journal whole, and a crash
between the snapshot's rename and the journal's truncation loses nothing on restart."""
from __future__ import annotations

import threading
import time

from consensus import raft
from consensus.journal import read_journal
from consensus.snapshot_file import fork_snapshot, read_snapshot
from consensus.state import ClusterState
from raft_helpers.cluster import wait_for
from raft_helpers.inproc import big_state, close_all, lease, make_nodes, propose, restart, wait_ready

#: No compaction unless the test forces one (pysyncobj also snapshots after min_time).
NEVER = {"compaction_min_entries": 10**9, "compaction_min_time": 10**6}


def _journal_indexes(node):
    return [idx for _, idx, _ in read_journal(node.state_dir / raft.JOURNAL_FILE)]


class _Feeder:
    """Proposes lease renewals, ``window`` in flight, until stopped; records commit times."""

    def __init__(self, node, window: int = 8) -> None:
        self.node = node
        self.commit_times: list[float] = []
        self.errors: list[str] = []
        self._slots = threading.Semaphore(window)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.5):
                continue
            seq += 1
            self.node.propose(lease("fed", seq), self._done)

    def _done(self, result, error) -> None:
        if error is None:
            self.commit_times.append(time.monotonic())
        else:
            self.errors.append(error)
        self._slots.release()

    def __enter__(self) -> "_Feeder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_commits_continue_while_a_child_writes_the_snapshot_and_restart_uses_it(
        tmp_path, monkeypatch):
    """A 50k-notification state: while the child serialises and writes it, the Raft thread
    keeps applying commits; then the file is in place, the journal cut, and a restart
    rebuilds the same state from that snapshot plus the journal."""
    forks: list[float] = []
    published: list[float] = []
    real_fork, real_progress = raft.fork_snapshot, raft.RaftNode._snapshot_progress

    def timed_fork(*args, **kw):
        forks.append(time.monotonic())
        return real_fork(*args, **kw)

    def timed_progress(self):
        answer = real_progress(self)
        if answer == raft.SERIALIZER_STATE.SUCCESS:
            published.append(time.monotonic())
        return answer

    monkeypatch.setattr(raft, "fork_snapshot", timed_fork)
    monkeypatch.setattr(raft.RaftNode, "_snapshot_progress", timed_progress)
    (node,) = make_nodes(tmp_path, voters=1, states=[big_state(50_000)], **NEVER)
    try:
        wait_ready([node])
        with _Feeder(node) as feeder:
            wait_for(lambda: len(feeder.commit_times) >= 200, 20, "commits before the snapshot")
            node._machine.forceLogCompaction()
            wait_for(lambda: published, 30, "the snapshot to be published")
            done = len(feeder.commit_times)
            wait_for(lambda: len(feeder.commit_times) >= done + 50, 20, "commits after it")
        assert not feeder.errors, feeder.errors[:5]
        start, end = forks[0], published[0]
        during = [t for t in feeder.commit_times if start <= t <= end]
        gaps = [b - a for a, b in zip([start] + during, during + [end])]
        before = [t for t in feeder.commit_times if 2 * start - end <= t < start]
        calm = max((b - a for a, b in zip(before, before[1:])), default=0.0)
        print(f"\nsnapshot of 50k notifications: child ran {end - start:.3f} s, "
              f"{len(during)} commits meanwhile, longest gap between commits {max(gaps):.3f} s "
              f"(in as long a window before the fork: {calm:.3f} s)")
        assert len(during) >= 2, "the Raft thread committed nothing while the child ran"

        st = node.status()
        doc = read_snapshot(node.state_dir / raft.SNAPSHOT_FILE)
        assert st["snapshot_index"] == doc["last_entry"][1] > 200 and st["snapshot_failures"] == 0
        assert ClusterState.from_snapshot(doc["state"]).counts_by_status()["new"] == 50_000
        indexes = _journal_indexes(node)
        assert indexes[0] == doc["prev_entry"][1], "journal not cut at the snapshot"
        assert indexes[-1] > doc["last_entry"][1], "commits after the fork are in the journal"
        assert not (node.state_dir / "snapshot.tmp").exists()
        expected = node.read(lambda s: s.canonical())
    finally:
        node.close()

    node = restart(node)
    try:
        wait_ready([node])
        wait_for(lambda: node.read(lambda s: s.canonical()) == expected, 20,
                 "the restarted node to rebuild the state from snapshot + journal")
        assert node.status()["snapshot_index"] == doc["last_entry"][1]
        assert propose(node, lease("after-restart", 1))[1] is None
    finally:
        node.close()


def test_a_failed_child_leaves_the_journal_whole_and_the_next_attempt_succeeds(
        tmp_path, monkeypatch):
    """The child cannot create its file (a directory is in the way, as a full disk would
    stop it): no snapshot, no entry dropped, an error counted; once the way is clear the
    retry (after SNAPSHOT_RETRY_DELAY) writes the snapshot and cuts the journal."""
    monkeypatch.setattr(raft, "SNAPSHOT_RETRY_DELAY", 0.2)
    (node,) = make_nodes(tmp_path, voters=1, compaction_min_entries=50)
    blocker = node.state_dir / (raft.SNAPSHOT_FILE + ".tmp")
    blocker.mkdir()
    try:
        wait_ready([node])
        for i in range(120):
            assert propose(node, lease(f"h{i % 5}", i))[1] is None
        wait_for(lambda: node.status()["snapshot_failures"] >= 2, 20, "failed attempts")
        assert not (node.state_dir / raft.SNAPSHOT_FILE).exists()
        indexes = _journal_indexes(node)
        assert indexes[0] == 1 and indexes[-1] >= 121, "a failed snapshot cut the journal"
        assert node.status()["snapshot_index"] == 0

        blocker.rmdir()
        wait_for(lambda: node.status()["snapshot_index"] > 0, 20, "a snapshot after the failure")
        doc = read_snapshot(node.state_dir / raft.SNAPSHOT_FILE)
        # The Raft thread cuts the journal right after it learns the snapshot is in place;
        # this thread may look in between.
        wait_for(lambda: _journal_indexes(node)[0] == doc["prev_entry"][1] > 1, 20,
                 "the journal cut at the snapshot")
        assert ClusterState.from_snapshot(doc["state"]).get_lease("h4")["seq"] >= 100
        assert node.status()["error"] is None
    finally:
        node.close()


def test_restart_finishes_a_compaction_the_crash_interrupted(tmp_path):
    """Snapshot renamed into place, then a crash before the journal was cut: pysyncobj would
    clear the journal on start and lose the entries after the snapshot; the node keeps them."""
    (node,) = make_nodes(tmp_path, voters=1, **NEVER)
    cuts = []
    node._journal.deleteEntriesTo = cuts.append  # the crash: the cut never happens
    try:
        wait_ready([node])
        for i in range(100):
            assert propose(node, lease("before", i))[1] is None
        node._machine.forceLogCompaction()
        wait_for(lambda: cuts, 20, "the snapshot to be published")
        for i in range(10):
            assert propose(node, lease("after", i))[1] is None
        expected = node.read(lambda s: s.canonical())
    finally:
        node.close()
    snap = read_snapshot(node.state_dir / raft.SNAPSHOT_FILE)["last_entry"][1]
    assert _journal_indexes(node)[0] == 1 and _journal_indexes(node)[-1] >= snap + 10

    node = restart(node)
    try:
        assert _journal_indexes(node)[0] == snap - 1
        wait_ready([node])
        wait_for(lambda: node.read(lambda s: s.canonical()) == expected, 20,
                 "entries after the snapshot to be replayed")
        assert node.read(lambda s: s.get_lease("after"))["seq"] == 9
    finally:
        node.close()


def test_a_follower_behind_the_compacted_log_loads_the_leaders_forked_snapshot(tmp_path):
    nodes = make_nodes(tmp_path, voters=3, compaction_min_entries=50)
    try:
        leader = wait_ready(nodes)
        lagging = next(n for n in nodes if n is not leader)
        lagging.close()
        for i in range(150):
            assert propose(leader, lease(f"h{i % 3}", i))[1] is None
        wait_for(lambda: leader.status()["snapshot_index"] > 100, 20, "the leader's snapshot")
        nodes[nodes.index(lagging)] = lagging = restart(lagging)
        expected = leader.read(lambda s: s.canonical())
        wait_for(lambda: lagging.read(lambda s: s.canonical()) == expected, 20,
                 "the lagging voter to load the leader's snapshot")
        assert lagging.status()["snapshot_index"] > 0
        assert read_snapshot(lagging.state_dir / raft.SNAPSHOT_FILE)["last_entry"][1] > 1
        assert lagging.status()["error"] is None
    finally:
        close_all(nodes)


def test_child_reports_its_error_and_writes_a_loadable_file(tmp_path):
    entries = ((b"\x00b", 10, 2), (b"\x00a", 9, 2))

    def broken():
        raise OSError(28, "No space left on device")

    child = fork_snapshot(tmp_path / "a.tmp", *entries, ["127.0.0.1:1"], broken)
    reason = wait_for(child.poll, 20, "the failing child to exit")
    assert "No space left on device" in reason and not (tmp_path / "a.tmp").exists()

    state = ClusterState()
    state.apply(lease("h", 3))
    child = fork_snapshot(tmp_path / "b.tmp", *entries, ["127.0.0.1:1"], state.to_snapshot)
    assert wait_for(lambda: child.poll() is not None, 20, "the child to exit") is True
    assert child.poll() == ""
    doc = read_snapshot(tmp_path / "b.tmp")
    assert doc["last_entry"] == entries[0] and doc["prev_entry"] == entries[1]
    assert ClusterState.from_snapshot(doc["state"]) == state
