"""The Raft journal: log entries and term/vote on disk, synced before anyone relies on them.

pysyncobj 0.3.17's own ``FileJournal`` keeps entries in an mmap it never msyncs and writes
``currentTerm``/``votedFor`` with write + rename and no fsync, so a power loss of a majority
can lose an acknowledged entry or roll a vote back. ``DurableJournal`` implements pysyncobj's
``Journal`` interface with these guarantees instead:

* ``add``/``clear`` write (or truncate) at once but only mark the journal *dirty*; ``sync()``
  makes every change so far durable with one ``fdatasync``. ``deleteEntriesFrom`` leaves the
  dropped records on disk until the next sync or a conflicting ``add``: pysyncobj truncates
  and re-appends identical entries when a stale append-entries arrives in the same term, and
  an identical re-append then reuses the record already on disk instead of dropping an entry
  this node acknowledged and writing it again. The transport
  (``consensus.transport``) calls ``sync()`` before the first message that leaves the node after
  a change, so N entries appended in one tick cost one fsync, and no ack, vote or
  append-entries can reflect an entry that is not on disk.
* ``setCurrentTerm`` (term and vote) is durable before it returns: temp file, fsync, rename,
  fsync of the directory. pysyncobj sends the vote grant / vote request right after.
* ``deleteEntriesTo`` (compaction after a snapshot) first fsyncs the directory so the renamed
  snapshot file is durable, then rewrites the journal atomically.
* ``trim_to_snapshot`` finishes a compaction a crash interrupted (snapshot renamed into place,
  journal not yet cut): pysyncobj would otherwise clear the whole journal on start, entries
  after the snapshot included.

With ``fsync=False`` (throwaway labs on tmpfs) the same files are written without syncing:
kill -9 still loses nothing (page cache), power loss may.

File format (little endian), after an 12-byte header ``b"HAGENTJ\\n"`` + u32 format version:
records of ``u32 payload_len, u32 crc32(payload), payload`` where
``payload = u64 idx, u64 term, command bytes``. A torn tail (a record cut short or failing
its CRC, which only an unsynced write can leave) is cut off on open; it was never acknowledged.
The ``.meta`` file next to the journal is JSON: ``{"format", "current_term", "voted_for",
"commit_index"}``.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from pysyncobj.journal import Journal

log = logging.getLogger(__name__)

MAGIC = b"HAGENTJ\n"
JOURNAL_FORMAT = 1
META_FORMAT = 1
HEADER = MAGIC + struct.pack("<I", JOURNAL_FORMAT)
_REC_HEAD = struct.Struct("<II")
_IDX_TERM = struct.Struct("<QQ")

Entry = tuple[bytes, int, int]  # (command bytes, raft index, raft term), as pysyncobj keeps them


class JournalFormatError(Exception):
    """The journal or its meta file was written by a newer hagent or is not a journal."""


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(command: bytes, idx: int, term: int) -> bytes:
    payload = _IDX_TERM.pack(idx, term) + command
    return _REC_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _scan(data: bytes, path: Path) -> tuple[list[Entry], list[int], int, bool]:
    """Parse journal bytes: (entries, record offsets, end of the last good record, torn?)."""
    if len(data) < len(HEADER) or data[: len(MAGIC)] != MAGIC:
        raise JournalFormatError(f"{path}: not a hagent Raft journal (bad header); move it away")
    (fmt,) = struct.unpack_from("<I", data, len(MAGIC))
    if fmt > JOURNAL_FORMAT:
        raise JournalFormatError(
            f"{path}: journal format {fmt} is newer than this hagent understands "
            f"({JOURNAL_FORMAT}); upgrade hagent on this node")
    entries: list[Entry] = []
    offsets: list[int] = []
    off = len(HEADER)
    while off + _REC_HEAD.size <= len(data):
        length, crc = _REC_HEAD.unpack_from(data, off)
        start = off + _REC_HEAD.size
        payload = data[start:start + length]
        if length < _IDX_TERM.size or len(payload) != length or zlib.crc32(payload) != crc:
            return entries, offsets, off, True
        idx, term = _IDX_TERM.unpack_from(payload)
        entries.append((bytes(payload[_IDX_TERM.size:]), idx, term))
        offsets.append(off)
        off = start + length
    return entries, offsets, off, off != len(data)


def read_journal(path: Path) -> list[Entry]:
    """Entries in the journal file at ``path``, read independently of any open journal.

    For tests and tools: it re-opens the file and parses it from scratch, ignoring a torn tail.
    """
    data = Path(path).read_bytes()
    return _scan(data, Path(path))[0]


def read_meta(path: Path) -> dict[str, Any]:
    """The meta document of journal ``path`` ({} if none was written yet)."""
    meta_path = Path(str(path) + ".meta")
    try:
        meta = json.loads(meta_path.read_bytes())
    except FileNotFoundError:
        return {}
    if meta.get("format", 0) > META_FORMAT:
        raise JournalFormatError(
            f"{meta_path}: meta format {meta['format']} is newer than this hagent understands "
            f"({META_FORMAT}); upgrade hagent on this node")
    return meta


class DurableJournal(Journal):
    """pysyncobj ``Journal`` over an append-only file with batched fdatasync (see module doc).

    Called only from pysyncobj's tick thread, except the read-only counters
    (``durable_index``, ``sync_count``, ``dirty``) which any thread may read.
    """

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._meta_path = Path(str(self.path) + ".meta")
        if not self.path.exists():
            self._write_file_atomically(self.path, HEADER)
        entries, offsets, end, torn = _scan(self.path.read_bytes(), self.path)
        self._fd = os.open(self.path, os.O_RDWR)
        if torn:
            log.warning("%s: cutting a torn tail at byte %d (never acknowledged: it was not "
                        "synced)", self.path, end)
            os.ftruncate(self._fd, end)
            self._sync_fd()
        self._entries = entries
        self._offsets = offsets
        self._end = end
        self._meta: dict[str, Any] = {"format": META_FORMAT, "current_term": 0,
                                      "voted_for": None, "commit_index": 1}
        self._meta.update(read_meta(self.path))
        self._meta["format"] = META_FORMAT
        self._meta_dirty = False
        #: True while a change is written but not yet synced.
        self.dirty = False
        #: Raft index of the last entry known durable (0: none).
        self.durable_index = entries[-1][1] if entries else 0
        #: Number of journal syncs done (each covers every change before it).
        self.sync_count = 0
        #: Entries pysyncobj dropped from the tail that are still on disk, with their offsets.
        #: On a stale append-entries pysyncobj truncates and re-appends *identical* entries;
        #: re-appends that match reuse these, so the disk never loses an entry this node
        #: acknowledged. Cut from the file (``_settle``) at the next sync or mismatch, before
        #: any message can leave the node.
        self._removed: list[tuple[Entry, int]] = []

    # --- pysyncobj Journal interface -------------------------------------------------
    def add(self, command: bytes, idx: int, term: int) -> None:
        if not isinstance(command, bytes):
            command = bytes(command)
        if self._removed:
            old, offset = self._removed[0]
            if old == (command, idx, term) and offset == self._end:
                del self._removed[0]
                self._entries.append(old)
                self._offsets.append(offset)
                self._end = offset + _REC_HEAD.size + _IDX_TERM.size + len(command)
                return  # the same record is on disk already, as durable as it was
            self._settle()
        record = _encode(command, idx, term)
        written = os.pwrite(self._fd, record, self._end)
        if written != len(record):
            raise OSError(f"{self.path}: short write ({written} of {len(record)} bytes); disk full?")
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)
        self.dirty = True

    def clear(self) -> None:
        self._removed = []
        os.ftruncate(self._fd, len(HEADER))
        self._entries = []
        self._offsets = []
        self._end = len(HEADER)
        self.durable_index = 0
        self.dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        # Kept on disk until settled; earlier-removed entries lie after these in the file.
        self._removed[:0] = zip(self._entries[entryFrom:], self._offsets[entryFrom:])
        self._end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self.dirty = True

    def _settle(self) -> None:
        """Cut the removed entries that were not re-appended from the file."""
        if not self._removed:
            return
        os.ftruncate(self._fd, self._end)
        self._removed = []
        last = self._entries[-1][1] if self._entries else 0
        self.durable_index = min(self.durable_index, last)
        self.dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        # pysyncobj calls this right after renaming a new snapshot into place in the same
        # directory: make that rename durable before the entries it replaces go away.
        if self.fsync:
            fsync_dir(self.path.parent)
        self._removed = []  # the file is rewritten from the entries kept in memory
        keep = self._entries[entryTo:]
        body = b"".join(_encode(*entry) for entry in keep)
        self._write_file_atomically(self.path, HEADER + body)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._entries = list(keep)
        self._offsets = []
        off = len(HEADER)
        for entry in keep:
            self._offsets.append(off)
            off += _REC_HEAD.size + _IDX_TERM.size + len(entry[0])
        self._end = off
        self.durable_index = keep[-1][1] if keep else 0
        self.dirty = False

    # --- start-up repair ---------------------------------------------------------------
    def trim_to_snapshot(self, prev_entry: Entry, last_entry: Entry) -> int:
        """Drop the entries before ``prev_entry`` if the journal holds the snapshot's two last
        entries exactly; return how many were dropped (0: nothing to do or no match).

        pysyncobj's start-up keeps the journal only if it *begins* with those two entries and
        otherwise clears it. A crash between a snapshot's rename and the journal truncation
        (or a snapshot child finishing after the agent died) leaves a journal that begins
        earlier, and clearing it would lose entries after the snapshot that this node may
        have acknowledged. Call before pysyncobj opens the journal.
        """
        if not self._entries:
            return 0
        pos = prev_entry[1] - self._entries[0][1]
        if pos <= 0 or pos + 1 >= len(self._entries):
            return 0
        if self._entries[pos] != tuple(prev_entry) or self._entries[pos + 1] != tuple(last_entry):
            return 0
        self.deleteEntriesTo(pos)
        return pos

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd < 0:
            return
        self.sync()
        if self._meta_dirty:
            self._store_meta()
        os.close(self._fd)
        self._fd = -1

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if self._meta["commit_index"] != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._meta.get("commit_index", 1)

    def setCurrentTerm(self, term: int, votedForNodeId) -> None:
        self._meta["current_term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()  # durable before pysyncobj sends the vote or the request

    def getCurrentTerm(self) -> int:
        return self._meta.get("current_term", 0)

    def getVotedForNodeId(self):
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:
        # The commit index is a hint for restart (apply without waiting for the leader);
        # store it lazily, and never ahead of what the journal holds durably.
        if self._meta_dirty:
            self.sync()
            self._store_meta()

    # --- durability ------------------------------------------------------------------
    def sync(self) -> None:
        """Make every change so far durable (one fdatasync); cheap when nothing changed."""
        if not self.dirty:
            return
        self._settle()
        self._sync_fd()
        self.durable_index = self._entries[-1][1] if self._entries else 0
        self.sync_count += 1
        self.dirty = False

    def _sync_fd(self) -> None:
        if self.fsync:
            os.fdatasync(self._fd)

    def _store_meta(self) -> None:
        self._write_file_atomically(self._meta_path, json.dumps(self._meta).encode())
        self._meta_dirty = False

    def _write_file_atomically(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.fsync:
            fsync_dir(path.parent)
