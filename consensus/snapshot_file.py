"""The Raft snapshot file: a versioned msgpack document, never a pickle of our objects.

pysyncobj's default full dump pickles the whole SyncObj; loading a dump (or one a leader
streamed over) would run whatever the pickle says. hagent plugs these functions into
pysyncobj's ``serializer``/``deserializer`` hooks instead, so the file holds

    b"HAGENTS\\n" + u32 crc32(body) + body,   body = msgpack {
        "format": SNAPSHOT_FILE_FORMAT,
        "last_entry": [idx, term, command bytes],   # the last entry the state includes
        "prev_entry": [idx, term, command bytes],   # the one before it (pysyncobj keeps both)
        "cluster": [voter addresses],               # committed as of last_entry
        "state": ClusterState.to_snapshot(),        # plain data with its own "format"
    }

The two raft entries are pysyncobj's own bookkeeping: it re-inserts them at the head of the
journal after loading, and may send them to a follower, so their command bytes are kept as
they are (opaque bytes here; they are decoded only by ``consensus.transport``'s restricted
unpickler, which builds plain values only). A file of a newer format, or one that fails its
CRC, is refused with ``SnapshotFileError`` naming the file and what to do.

``fork_snapshot`` writes the file in a forked child process, so the Raft thread only pays for
the fork (``consensus.raft`` glues it to pysyncobj's hooks; docs/raft.md, "Compaction off the
Raft thread"). The child holds a copy-on-write image of the parent taken between two Raft
ticks, so the state it serialises is consistent without any lock; it takes none (no logging,
no garbage collection, no state lock: another thread may have held any lock at the fork and
would never release it in the child), reports a failure through a pipe and its exit status,
and dies with the thread that forked it.
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import msgpack

from consensus.journal import fsync_dir

MAGIC = b"HAGENTS\n"
SNAPSHOT_FILE_FORMAT = 1
_CRC = struct.Struct("<I")

Entry = tuple[bytes, int, int]


class SnapshotFileError(ValueError):
    """A snapshot file hagent must not load: newer format, damaged, or not a snapshot."""


def write_snapshot(path: str | Path, last_entry: Entry, prev_entry: Entry, cluster: list[str],
                   state: dict[str, Any], fsync: bool = True) -> None:
    """Write the snapshot document to ``path``, a temporary name the caller renames into place."""
    body = msgpack.packb({
        "format": SNAPSHOT_FILE_FORMAT,
        "last_entry": [last_entry[1], last_entry[2], bytes(last_entry[0])],
        "prev_entry": [prev_entry[1], prev_entry[2], bytes(prev_entry[0])],
        "cluster": sorted(cluster),
        "state": state,
    }, use_bin_type=True)
    with open(path, "wb") as f:
        f.write(MAGIC + _CRC.pack(zlib.crc32(body)) + body)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_snapshot(path: str | Path, fsync: bool = False) -> dict[str, Any]:
    """The snapshot document at ``path``, entries as ``(command, idx, term)`` tuples.

    ``fsync=True`` also makes the file (and its directory entry) durable first: a follower
    that received the file from the leader is about to clear its journal on its strength.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
        if fsync:
            os.fsync(f.fileno())
    if fsync:
        fsync_dir(path.parent)
    head = len(MAGIC) + _CRC.size
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise SnapshotFileError(f"{path}: not a hagent Raft snapshot (bad header); move it away "
                                f"and let the node fetch a snapshot from the leader")
    (crc,) = _CRC.unpack_from(data, len(MAGIC))
    body = data[head:]
    if zlib.crc32(body) != crc:
        raise SnapshotFileError(f"{path}: snapshot fails its checksum (damaged); move it away "
                                f"and let the node fetch a snapshot from the leader")
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise SnapshotFileError(f"{path}: snapshot body is not msgpack ({exc})") from exc
    version = doc.get("format") if isinstance(doc, dict) else None
    if not isinstance(version, int):
        raise SnapshotFileError(f"{path}: snapshot has no integer 'format' field")
    if version > SNAPSHOT_FILE_FORMAT:
        raise SnapshotFileError(
            f"{path}: snapshot file format {version} is newer than this hagent understands "
            f"({SNAPSHOT_FILE_FORMAT}); upgrade hagent on this node before starting it")
    try:
        for key in ("last_entry", "prev_entry"):
            idx, term, command = doc[key]
            doc[key] = (bytes(command), int(idx), int(term))
        doc["cluster"] = list(doc["cluster"])
        doc["state"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotFileError(f"{path}: snapshot format {version} is malformed ({exc!r})") from exc
    return doc


# --- writing in a forked child -----------------------------------------------------------------

#: Longest error text a failed child sends back (a pipe write this small is atomic).
_MAX_ERROR_BYTES = 2048
_PR_SET_PDEATHSIG = 1
try:  # resolved here, in the parent: the child should do as little as possible
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the child outlives a killed parent by <1 s
    _prctl = None


class SnapshotChild:
    """A child process writing one snapshot to ``tmp_path``; poll it from the forking thread.

    ``index`` is the raft index of the snapshot's last entry. The parent renames
    ``tmp_path`` into place itself once ``poll()`` says the child succeeded: the child never
    touches the live snapshot file, so a snapshot the parent installed meanwhile (one streamed
    by the leader) is never overwritten by an older one.
    """

    def __init__(self, pid: int, error_fd: int, tmp_path: Path, index: int) -> None:
        self.pid = pid
        self.tmp_path = tmp_path
        self.index = index
        self._error_fd = error_fd
        self._result: str | None = None

    def poll(self) -> str | None:
        """None while the child runs; ``""`` once it wrote and synced ``tmp_path``; else
        why it failed. Never blocks; once the child is reaped, the same answer again."""
        if self._result is not None:
            return self._result
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return self._finish("the snapshot child vanished (reaped elsewhere)")
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return self._finish("")
        try:
            reason = os.read(self._error_fd, _MAX_ERROR_BYTES).decode(errors="replace")
        except OSError:
            reason = ""
        if code < 0:
            reason = reason or f"killed by signal {-code}"
        return self._finish(reason or f"exit status {code}")

    def kill(self) -> None:
        """Stop the child (if running), reap it and remove its temporary file."""
        if self._error_fd >= 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self._finish("killed")
        self.discard()

    def discard(self) -> None:
        """Remove the temporary file (nothing to do if the child never created it)."""
        try:
            os.unlink(self.tmp_path)
        except OSError:
            pass

    def _finish(self, reason: str) -> str:
        if self._error_fd >= 0:
            os.close(self._error_fd)
            self._error_fd = -1
        if reason:
            self.discard()
        self._result = reason
        return reason


def fork_snapshot(tmp_path: str | Path, last_entry: Entry, prev_entry: Entry, cluster: list[str],
                  dump_state: Callable[[], dict[str, Any]], fsync: bool = True) -> SnapshotChild:
    """Fork a child that writes ``write_snapshot(tmp_path, ..., dump_state())`` and exits.

    Returns at once in the parent. The caller must fork from the only thread that changes
    the state (the Raft thread, between two applies): the child then sees a consistent
    image without taking a lock. Raises OSError if the fork itself fails.
    """
    tmp_path = Path(tmp_path)
    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # pragma: no cover (runs in the child; its exit status is what is tested)
        _child(write_fd, parent, tmp_path, last_entry, prev_entry, cluster, dump_state, fsync)
    os.close(write_fd)
    return SnapshotChild(pid, read_fd, tmp_path, last_entry[1])


def _child(error_fd: int, parent: int, tmp_path: Path, last_entry: Entry, prev_entry: Entry,
           cluster: list[str], dump_state: Callable[[], dict[str, Any]], fsync: bool) -> None:
    """The child's whole life: never returns, never logs, never takes a lock."""
    code = 1
    try:
        # A collection could run finalisers of the parent's garbage (sockets, transports
        # that log "unclosed ..."): nothing of that may happen here.
        gc.disable()
        # Background work: the agents' Raft threads must win the CPU over a snapshot (on a
        # busy 2-core host, an equal-priority child delayed commits by 100+ ms).
        os.nice(19)
        # Die with the forking thread; never write into the parent's signal wakeup fd
        # (a SIGTERM sent to this pid would otherwise stop the parent's event loop too).
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            raise RuntimeError("the agent exited before its snapshot child started")
        try:  # the forking thread is the child's main thread on Linux; if not, carry on
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
        except ValueError:
            pass
        write_snapshot(tmp_path, last_entry, prev_entry, cluster, dump_state(), fsync=fsync)
        code = 0
    except BaseException as exc:
        try:
            os.write(error_fd, f"{type(exc).__name__}: {exc}".encode()[:_MAX_ERROR_BYTES])
        except BaseException:
            pass
    finally:
        os._exit(code)
