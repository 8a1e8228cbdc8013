"""A node that is not a voter keeps no Raft state (docs/voters.md, "Role switches"): its
start as a non-voter removes the journal, its meta and the snapshot a RaftNode left in
``STATE_DIR/raft`` (they end in a voter set of the past, which a later promotion would start
from), and nothing else in the state directory; without voters.json (a role guessed from
the config) it keeps them."""
from __future__ import annotations

import logging
from pathlib import Path

from consensus import voterfile
from consensus.journal import DurableJournal
from consensus.raft import SNAPSHOT_FILE, discard_state
from consensus.snapshot_file import write_snapshot
from hagent.daemon import _drop_raft_state
from hagent.voters.localfile import LocalVoters

OLD_SET = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7004"]


def _state_dir(tmp_path: Path) -> Path:
    """A voter's state directory as the agent leaves it: voters.json, lease, spool, process
    monitor records and the RaftNode's files (written by the journal and snapshot code)."""
    state = tmp_path / "state"
    raft = state / "raft"
    raft.mkdir(parents=True)
    journal = DurableJournal(raft / "journal", fsync=False)
    journal.add(b"entry", 1, 1)
    journal.setCurrentTerm(3, "127.0.0.1:7001")  # writes journal.meta
    journal.sync()
    journal._destroy()
    write_snapshot(raft / SNAPSHOT_FILE, (b"a", 1, 1), (b"b", 2, 1), OLD_SET, {}, fsync=False)
    (raft / "snapshot.tmp").write_bytes(b"a dead child's")
    voterfile.save(state / "voters.json", OLD_SET[:2] + ["127.0.0.1:7003"], index=40)
    (state / "lease.json").write_text("{}")
    (state / "spool").mkdir()
    (state / "spool" / "spool.log").write_text("x\n")
    (state / "monitors").mkdir()
    (state / "monitors" / "process_reported.json").write_text("{}")
    return state


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_non_voter_start_removes_the_raft_state_and_nothing_else(tmp_path, caplog):
    state = _state_dir(tmp_path)
    assert {"raft/journal", "raft/journal.meta", "raft/snapshot"} <= _files(state)
    others = _files(state) - {p for p in _files(state) if p.startswith("raft")}
    caplog.set_level(logging.INFO, "hagent.daemon")
    _drop_raft_state(state, LocalVoters((), source=str(state / "voters.json")))
    assert _files(state) == others
    assert "removed the Raft state it kept as one (snapshot, snapshot.tmp, journal, " \
           "journal.meta" in caplog.text
    # Once more (a restart as a non-voter): nothing to do, nothing said.
    caplog.clear()
    _drop_raft_state(state, LocalVoters((), source=str(state / "voters.json")))
    assert _files(state) == others and not caplog.text


def test_without_voters_json_the_raft_state_is_kept(tmp_path, caplog):
    """The role is the config's bootstrap guess: a voter promoted at runtime whose voters.json
    was deleted starts as a non-voter and must still have its log when it re-execs as the
    voter the log says it is."""
    state = _state_dir(tmp_path)
    (state / "voters.json").unlink()
    before = _files(state)
    _drop_raft_state(state, LocalVoters((), source="config"))
    assert _files(state) == before
    assert "keeping it in case this node is still a voter" in caplog.text


def test_discard_state_leaves_files_that_are_not_rafts(tmp_path):
    state = _state_dir(tmp_path)
    (state / "raft" / "notes").write_text("an operator's")
    removed = discard_state(state / "raft")
    assert removed == ["snapshot", "snapshot.tmp", "journal", "journal.meta"]
    assert _files(state / "raft") == {"notes"}
    assert discard_state(tmp_path / "nowhere") == []
