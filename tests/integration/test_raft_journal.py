"""The durable journal (no sockets) and snapshot files: format, torn tails, batching, refusal
of newer formats."""
from __future__ import annotations

import json
import pickle
import struct
import zlib

import msgpack
import pytest

from consensus import journal as jmod
from consensus.journal import DurableJournal, JournalFormatError, read_journal, read_meta
from consensus.raft import RaftNode
from consensus.snapshot import SnapshotFormatError
from consensus.snapshot_file import SnapshotFileError, read_snapshot, write_snapshot
from consensus.state import ClusterState
from raft_helpers.inproc import options


def test_entries_survive_reopen_and_one_sync_covers_a_batch(tmp_path, monkeypatch):
    calls = []
    real = jmod.os.fdatasync
    monkeypatch.setattr(jmod.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    j = DurableJournal(tmp_path / "journal")
    for i in range(1, 101):
        j.add(b"cmd%d" % i, i, 1)
    assert j.dirty and j.durable_index == 0 and not calls
    j.sync()
    assert len(calls) == 1 and j.durable_index == 100 and not j.dirty
    j.sync()
    assert len(calls) == 1  # nothing changed, no second fsync
    assert read_journal(tmp_path / "journal") == [(b"cmd%d" % i, i, 1) for i in range(1, 101)]
    j._destroy()
    j2 = DurableJournal(tmp_path / "journal")
    assert len(j2) == 100 and j2[-1] == (b"cmd100", 100, 1) and j2[10:12][0][1] == 11


def test_truncate_compact_and_clear(tmp_path):
    j = DurableJournal(tmp_path / "journal")
    for i in range(1, 11):
        j.add(b"x" * i, i, 1)
    j.sync()
    j.deleteEntriesFrom(7)  # keep idx 1..7
    assert j.dirty and len(j) == 7
    assert len(read_journal(j.path)) == 10  # on disk until settled
    j.add(b"new", 8, 2)  # conflicts with the dropped idx 8: they go now
    assert j.durable_index == 7
    j.sync()
    assert [e[1:] for e in read_journal(j.path)] == [(i, 1) for i in range(1, 8)] + [(8, 2)]
    j.deleteEntriesTo(5)  # drop the first five (compaction)
    assert [e[1] for e in read_journal(j.path)] == [6, 7, 8]
    j.add(b"more", 9, 2)
    j.sync()
    assert [e[1] for e in DurableJournal(j.path)] == [6, 7, 8, 9]
    j.clear()
    j.sync()
    assert read_journal(j.path) == [] and len(j) == 0


def test_identical_reappend_after_truncation_keeps_the_acknowledged_entries_on_disk(tmp_path):
    """pysyncobj's answer to a stale append-entries in the same term: truncate, then append
    the same entries again. The acknowledged entries never leave the disk meanwhile."""
    j = DurableJournal(tmp_path / "journal")
    for i in range(1, 11):
        j.add(b"e%d" % i, i, 3)
    j.sync()
    size = j.path.stat().st_size
    j.deleteEntriesFrom(5)
    assert len(read_journal(j.path)) == 10 and j.durable_index == 10
    for i in range(6, 11):
        j.add(b"e%d" % i, i, 3)
        assert j.durable_index == 10 and j.path.stat().st_size == size
    j.sync()
    assert read_journal(j.path) == [(b"e%d" % i, i, 3) for i in range(1, 11)]
    assert j.durable_index == 10 and len(j) == 10


def test_entries_not_reappended_are_cut_at_the_next_sync(tmp_path):
    j = DurableJournal(tmp_path / "journal")
    for i in range(1, 11):
        j.add(b"e%d" % i, i, 3)
    j.sync()
    j.deleteEntriesFrom(5)
    j.add(b"e6", 6, 3)  # a shorter stale append-entries: only idx 6 comes back
    j.sync()
    assert [e[1] for e in read_journal(j.path)] == [1, 2, 3, 4, 5, 6]
    assert j.durable_index == 6
    j.add(b"e7", 7, 3)
    j.sync()
    assert [e[1] for e in DurableJournal(j.path)] == [1, 2, 3, 4, 5, 6, 7]


def test_trim_to_snapshot_drops_only_what_a_matching_snapshot_covers(tmp_path):
    j = DurableJournal(tmp_path / "journal")
    for i in range(1, 11):
        j.add(b"c%d" % i, i, 1)
    j.sync()
    assert j.trim_to_snapshot((b"c5", 5, 2), (b"c6", 6, 1)) == 0  # other term: not ours
    assert j.trim_to_snapshot((b"c9", 9, 1), (b"c10", 10, 1)) == 8
    assert [e[1] for e in read_journal(j.path)] == [9, 10] and [e[1] for e in j] == [9, 10]
    assert j.trim_to_snapshot((b"c9", 9, 1), (b"c10", 10, 1)) == 0  # already begins there
    assert j.trim_to_snapshot((b"c12", 12, 1), (b"c13", 13, 1)) == 0  # beyond the journal


def test_torn_tail_is_cut_on_open(tmp_path):
    j = DurableJournal(tmp_path / "journal")
    j.add(b"a", 1, 1)
    j.add(b"b", 2, 1)
    j._destroy()
    with open(tmp_path / "journal", "ab") as f:
        f.write(struct.pack("<II", 100, 0) + b"partial")  # a record cut short by a crash
    j2 = DurableJournal(tmp_path / "journal")
    assert [e[0] for e in j2] == [b"a", b"b"]
    j2.add(b"c", 3, 1)
    j2.sync()
    assert [e[0] for e in read_journal(tmp_path / "journal")] == [b"a", b"b", b"c"]


def test_term_and_vote_are_stored_before_set_returns(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(jmod, "fsync_dir", lambda p: synced.append(p))
    j = DurableJournal(tmp_path / "journal")
    j.setCurrentTerm(7, "127.0.0.1:1")
    assert read_meta(tmp_path / "journal")["current_term"] == 7
    assert read_meta(tmp_path / "journal")["voted_for"] == "127.0.0.1:1"
    assert synced, "the directory was not fsynced after renaming the meta file"
    j2 = DurableJournal(tmp_path / "journal")
    assert (j2.getCurrentTerm(), j2.getVotedForNodeId()) == (7, "127.0.0.1:1")


def test_newer_journal_or_meta_format_is_refused(tmp_path):
    (tmp_path / "journal").write_bytes(jmod.MAGIC + struct.pack("<I", 99))
    with pytest.raises(JournalFormatError, match="newer"):
        DurableJournal(tmp_path / "journal")
    (tmp_path / "j2").write_bytes(jmod.HEADER)
    (tmp_path / "j2.meta").write_text(json.dumps({"format": 5}))
    with pytest.raises(JournalFormatError, match="upgrade"):
        DurableJournal(tmp_path / "j2")


def _snapshot(path, state_doc, file_format=None):
    write_snapshot(path, (b"\x00c", 10, 2), (b"\x01", 9, 2), ["127.0.0.1:1"], state_doc)
    if file_format is not None:
        data = path.read_bytes()
        doc = msgpack.unpackb(data[12:], raw=False)
        doc["format"] = file_format
        body = msgpack.packb(doc, use_bin_type=True)
        path.write_bytes(data[:8] + struct.pack("<I", zlib.crc32(body)) + body)


def test_snapshot_file_is_versioned_msgpack_not_pickle(tmp_path):
    state = ClusterState()
    state.apply({"op": "lease.renew", "at": 1.0, "hosts": {"h": 3}})
    _snapshot(tmp_path / "snap", state.to_snapshot())
    raw = (tmp_path / "snap").read_bytes()
    assert raw.startswith(b"HAGENTS\n") and b"\x80\x02" not in raw[:16]
    with pytest.raises(Exception):
        pickle.loads(raw)
    doc = read_snapshot(tmp_path / "snap")
    assert doc["format"] == 1 and doc["last_entry"] == (b"\x00c", 10, 2)
    assert ClusterState.from_snapshot(doc["state"]) == state
    (tmp_path / "snap").write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(SnapshotFileError, match="checksum"):
        read_snapshot(tmp_path / "snap")


def test_node_refuses_to_start_on_a_newer_snapshot(tmp_path):
    opts = options(["127.0.0.1:1"])
    state_doc = ClusterState().to_snapshot()
    (tmp_path / "a").mkdir()
    _snapshot(tmp_path / "a" / "snapshot", state_doc, file_format=2)
    with pytest.raises(SnapshotFileError, match="newer than this hagent"):
        RaftNode(self_address=None, voters=opts.voters, state_dir=tmp_path / "a", password="pw",
                 options=opts, state=ClusterState(), node_name="a")
    newer_state = dict(state_doc, format=state_doc["format"] + 1)
    (tmp_path / "b").mkdir()
    _snapshot(tmp_path / "b" / "snapshot", newer_state)
    with pytest.raises(SnapshotFormatError, match="newer"):
        RaftNode(self_address=None, voters=opts.voters, state_dir=tmp_path / "b", password="pw",
                 options=opts, state=ClusterState(), node_name="b")
