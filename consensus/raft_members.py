"""Who is in the Raft cluster, as this node's log says: the latest configuration (what Raft
uses, committed or not) and the committed one (what has been applied), and the entries that
change them (docs/raft.md, "Membership changes").

pysyncobj 0.3.17 keeps only the latest configuration (``otherNodes``, self excluded) and
applies a membership entry when it is appended, reverses it when the entry is cut, and
applies it again when it is committed "for the restart case". Three things that does not give
hagent are kept here, without I/O, for ``consensus.raft.RaftNode``:

* **Is this node a member?** pysyncobj ignores entries about its own node, so a voter that is
  joining, or was removed, cannot tell. ``is_member`` can: a non-member neither campaigns
  nor counts itself.
* **The committed set**, changed only when an entry is applied; ``voters.json`` and the
  snapshot's ``cluster`` hold it, ``in_flight`` compares it with the latest one (one change
  at a time).
* **The configuration at start** is the latest one in the log (Raft's rule): the committed set
  as of a base (the snapshot's cluster, or ``voters.json``, or the bootstrap voters, whichever
  is valid at the highest index), then every membership entry after that base in the journal,
  committed or not. pysyncobj would start from its partner list and re-apply committed entries
  as they are replayed, which is not idempotent (``rem X`` then ``add X`` replayed from a
  stale commit index leaves X out); ``RaftNode`` therefore skips pysyncobj's commit-time
  application: every entry in the log at start is in the start configuration, and every
  later one was applied when it was appended.

Membership entries are pysyncobj's own (command type ``MEMBERSHIP``), in the plain form
``[kind, address]`` (kind ``add`` or ``rem``) that its ``__doChangeCluster`` accepts:
pysyncobj's ``addNodeToCluster`` pickles a ``TCPNode`` object, which the restricted unpickler
(``consensus.transport``) refuses by design.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj.syncobj import _COMMAND_TYPE

from consensus.transport import restricted_loads

log = logging.getLogger(__name__)

#: pysyncobj's command type byte of a membership entry (pinned to 0.3.17's value).
MEMBERSHIP = _COMMAND_TYPE.MEMBERSHIP
_MEMBERSHIP_BYTE = bytes([MEMBERSHIP])
KINDS = ("add", "rem")

Entry = tuple[bytes, int, int]  # (command, raft index, raft term) as pysyncobj keeps them


def encode_change(kind: str, address: str) -> bytes:
    """The payload of a membership entry (pysyncobj prefixes the type byte)."""
    if kind not in KINDS:
        raise ValueError(f"membership change kind must be one of {KINDS} (got {kind!r})")
    return pysyncobj_pickle.dumps([kind, address])


def decode_change(command: bytes) -> tuple[str, str] | None:
    """(kind, address) of a membership entry, None for any other entry; raises ValueError for
    a membership entry hagent cannot read (e.g. pysyncobj's own form with a pickled node)."""
    if command[:1] != _MEMBERSHIP_BYTE:
        return None
    try:
        request = restricted_loads(command[1:])
    except Exception as exc:  # UnsafePickleError, or not a pickle at all
        raise ValueError(f"unreadable membership entry: {exc}") from None
    return parse_request(request)


def parse_request(request: Any) -> tuple[str, str]:
    """(kind, address) of pysyncobj's decoded request list; ValueError if it is not one."""
    if (not isinstance(request, (list, tuple)) or len(request) < 2
            or request[0] not in KINDS or not isinstance(request[1], str)):
        raise ValueError(f"not a membership change: {request!r}")
    return request[0], request[1]


def is_address(value: Any) -> bool:
    """A ``host:port`` pysyncobj can make a TCPNode of (an old replica's snapshot lists
    ``"None"`` for its own node: that is not one)."""
    if not isinstance(value, str) or ":" not in value:
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit()


def _changed(members: frozenset[str], kind: str, address: str) -> frozenset[str]:
    return members | {address} if kind == "add" else members - {address}


class RaftMembers:
    """The latest and committed configurations of one node (see module docstring).

    Changed only from pysyncobj's thread; readers in other threads read the attributes, which
    are replaced whole (frozensets), never mutated.
    """

    def __init__(self, self_address: str | None, base: Iterable[str], base_index: int,
                 journal: Iterable[Entry] = ()) -> None:
        self.self_address = self_address
        self.committed = frozenset(base)
        self.committed_index = base_index
        latest = self.committed
        for command, idx, _term in journal:
            if idx <= base_index:
                continue
            try:
                change = decode_change(command)
            except ValueError as exc:
                log.error("journal entry %d is a membership change hagent cannot read (%s); "
                          "ignored", idx, exc)
                continue
            if change is not None:
                latest = _changed(latest, *change)
        #: The latest configuration in the log, this node included if it is a member.
        self.latest = latest

    @property
    def is_member(self) -> bool:
        """This node votes and may campaign (it is in its latest configuration)."""
        return self.self_address is not None and self.self_address in self.latest

    @property
    def in_flight(self) -> bool:
        """A membership change is in the log but not yet applied here."""
        return self.latest != self.committed

    def others(self) -> list[str]:
        """The latest configuration without this node: pysyncobj's partners."""
        return sorted(self.latest - {self.self_address})

    def on_log_change(self, request: Any, reverse: bool, others: Iterable[str]) -> None:
        """pysyncobj appended (or, ``reverse``, cut) a membership entry; ``others`` is its
        partner set afterwards. Only entries about this node need tracking here: pysyncobj
        ignores those."""
        kind, address = parse_request(request)
        me = self.is_member
        if address == self.self_address and self.self_address is not None:
            me = (kind == "add") != reverse
        self.latest = frozenset(others) | ({self.self_address} if me else frozenset())

    def on_commit(self, command: bytes, index: int) -> bool:
        """An entry was applied at ``index``: True if the committed set changed. Entries at or
        below the base (already in it) are ignored."""
        if index <= self.committed_index:
            return False
        change = decode_change(command)
        if change is None:
            return False
        self.committed_index = index
        new = _changed(self.committed, *change)
        if new == self.committed:
            return False
        self.committed = new
        return True

    def on_snapshot(self, cluster: Iterable[str], index: int) -> bool:
        """A snapshot from the leader replaced the log: both sets are its cluster. True if the
        committed set changed."""
        new = frozenset(a for a in cluster if is_address(a))
        changed = new != self.committed
        self.committed, self.committed_index, self.latest = new, index, new
        return changed

    def refusal(self, kind: str, address: str) -> str | None:
        """Why the leader must not start this change now, or None."""
        if not is_address(address):
            return f"{address!r} is not a host:port Raft address"
        if self.in_flight:
            return (f"CHANGE_IN_FLIGHT: a membership change is not applied yet (latest "
                    f"{sorted(self.latest)}, committed {sorted(self.committed)}); one at a time")
        if kind == "add" and address in self.latest:
            return f"ALREADY_MEMBER: {address} is a member"
        if kind == "rem" and address not in self.latest:
            return f"NOT_MEMBER: {address} is not a member"
        if kind == "rem" and address == self.self_address:
            return f"REQUEST_DENIED: {address} is this node (the leader cannot remove itself)"
        return None
