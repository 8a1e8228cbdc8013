"""``STATE_DIR/voters.json``: this node's copy of the voter set, and the voter set it starts
with (file over config).

``raft.voters`` in the config is only the bootstrap set; the committed set lives in the log.
Each node keeps the set it last applied here so that it starts in the right role without
asking anyone (a promoted node starts as a voter, a removed one as a non-voter), and so a
non-voter still finds the voters after every bootstrap voter is gone::

    load(path) -> VoterFile | None               # None: no file; VoterFileError: unusable
    save(path, voters, *, index=0, pending=False, **extra)   # atomic, fsynced
    update(path, **fields) -> VoterFile          # read-modify-write; other fields kept
    choose(config_voters, path, self_address) -> StartVoters   # file over config

The file is JSON ``{"format": 1, "voters": [raft addresses], "index": N, "pending": bool,
...}``: ``index`` is the Raft index the set is valid at (0: not from the log, e.g. written by
the agent); ``pending`` marks a candidate that wrote ``voters`` = the current set plus itself
before re-starting as a voter, its add not committed yet. Other keys are the agent's
(``extra``) and survive every ``update``. ``consensus.raft.RaftNode`` (``voters_file=``)
rewrites ``voters``/``index``/``pending`` on every change of the committed set it applies.

Writes are atomic (temporary file, fsync, rename, directory fsync) and serialised within the
process (the Raft thread and the agent both write).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.journal import fsync_dir
from consensus.raft_members import is_address

log = logging.getLogger(__name__)

VOTERS_FILE = "voters.json"
FORMAT = 1
_KNOWN = ("format", "voters", "index", "pending")
_lock = threading.Lock()


class VoterFileError(Exception):
    """voters.json cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class VoterFile:
    voters: tuple[str, ...]
    index: int = 0
    pending: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StartVoters:
    """The voter set a node starts with (``choose``)."""

    voters: list[str]   # the committed set as last known: give it to RaftNode(voters=...)
    index: int          # ... valid at this Raft index (RaftNode(voters_index=...))
    source: str         # "config" or the file's path
    joining: bool       # this node wrote itself in as a pending add: start it as a voter that
    #                     is not a member yet (RaftNode follows the log until the add commits)

    def is_voter(self, self_address: str | None) -> bool:
        """Run as a voter (RaftNode with self_address): a member, or a pending add."""
        return self_address is not None and (self.joining or self_address in self.voters)


def load(path: Path) -> VoterFile | None:
    """The file at ``path``, None if there is none."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise VoterFileError(f"{path}: not JSON ({exc}); remove it to start from raft.voters "
                             f"and the log") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("format"), int):
        raise VoterFileError(f"{path}: no integer 'format'; remove it to start from raft.voters "
                             f"and the log")
    if doc["format"] > FORMAT:
        raise VoterFileError(f"{path}: format {doc['format']} is newer than this hagent "
                             f"understands ({FORMAT}); upgrade hagent on this node")
    voters, index, pending = doc.get("voters"), doc.get("index", 0), doc.get("pending", False)
    if (not isinstance(voters, list) or not voters or not all(is_address(a) for a in voters)
            or isinstance(index, bool) or not isinstance(index, int) or index < 0
            or not isinstance(pending, bool)):
        raise VoterFileError(f"{path}: malformed (voters must be a non-empty list of host:port, "
                             f"index an integer >= 0, pending a boolean); remove it to start "
                             f"from raft.voters and the log")
    return VoterFile(tuple(voters), index, pending,
                     {k: v for k, v in doc.items() if k not in _KNOWN})


def save(path: Path, voters: list[str] | tuple[str, ...], *, index: int = 0,
         pending: bool = False, **extra: Any) -> None:
    """Write the whole file (fields not given are gone; see ``update``)."""
    with _lock:
        _write(Path(path), VoterFile(tuple(voters), index, pending, extra))


def update(path: Path, **fields: Any) -> VoterFile:
    """Change ``fields`` (``voters``, ``index``, ``pending`` or extra keys) and keep the rest.
    Without a file, ``voters`` must be given."""
    path = Path(path)
    with _lock:
        current = load(path)
        if current is None:
            if "voters" not in fields:
                raise VoterFileError(f"{path}: no file to update and no voters given")
            current = VoterFile(tuple(fields["voters"]))
        extra = dict(current.extra)
        extra.update({k: v for k, v in fields.items() if k not in _KNOWN})
        new = VoterFile(tuple(fields.get("voters", current.voters)),
                        int(fields.get("index", current.index)),
                        bool(fields.get("pending", current.pending)), extra)
        _write(path, new)
        return new


def choose(config_voters: list[str], path: Path, self_address: str | None) -> StartVoters:
    """The voter set to start with: the file's when there is one (the log put it there; a
    WARNING names both sets when the config's bootstrap set differs), else the config's.
    A pending file's own address is taken out of the set and marks the node as joining.
    The log may still override this (RaftNode follows it and says so)."""
    path = Path(path)
    found = load(path)
    if found is None:
        return StartVoters(list(config_voters), 0, "config", False)
    voters = list(found.voters)
    joining = bool(found.pending and self_address is not None and self_address in voters)
    if joining:
        voters.remove(self_address)
    if set(found.voters) != set(config_voters):
        log.warning("voter set from %s (%s%s) differs from raft.voters in the config (%s): "
                    "using the file; the config's list is only the bootstrap set",
                    path, ", ".join(found.voters), ", pending add of this node" if joining else "",
                    ", ".join(config_voters))
    return StartVoters(voters, found.index, str(path), joining)


def _write(path: Path, data: VoterFile) -> None:
    doc = {"format": FORMAT, "voters": list(data.voters), "index": data.index,
           "pending": data.pending, **data.extra}
    body = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
