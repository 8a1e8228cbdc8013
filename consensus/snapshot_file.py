"""The Raft snapshot file: a versioned msgpack document, never a pickle of our objects.

pysyncobj's default full dump pickles the whole SyncObj; loading a dump (or one a leader
streamed over) would run whatever the pickle says. hagent plugs these functions into
pysyncobj's ``serializer``/``deserializer`` hooks instead, so the file holds

    b"HAGENTS\\n" + u32 crc32(body) + body,   body = msgpack {
        "format": SNAPSHOT_FILE_FORMAT,
        "last_entry": [idx, term, command bytes],   # the last entry the state includes
        "prev_entry": [idx, term, command bytes],   # the one before it (pysyncobj keeps both)
        "cluster": [voter addresses],
        "state": ClusterState.to_snapshot(),        # plain data with its own "format"
    }

The two raft entries are pysyncobj's own bookkeeping: it re-inserts them at the head of the
journal after loading, and may send them to a follower, so their command bytes are kept as
they are (opaque bytes here; they are decoded only by ``consensus.transport``'s restricted
unpickler, which builds plain values only). A file of a newer format, or one that fails its
CRC, is refused with ``SnapshotFileError`` naming the file and what to do.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

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
    """Write the snapshot document to ``path`` (pysyncobj renames it into place afterwards)."""
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
