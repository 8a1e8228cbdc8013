"""The Raft shell: ``RaftNode`` runs one pysyncobj ``SyncObj`` around a ``ClusterState``.

Voters (3 or 5 nodes, ``self_address`` set) bind exactly their configured address; every
other node is a read-only replica (pysyncobj ``selfNode=None``) that only connects out, holds
the whole state, can read it and can propose (pysyncobj forwards the command to the leader).

What travels in the log is the command dict; what the proposer's callback receives is
``ClusterState.apply``'s result dict. pysyncobj runs Raft, applies entries and calls the
callbacks in its own thread (``autoTick``); ``read()`` and ``apply`` share one lock so any
thread may read a consistent state.

What this module adds to pysyncobj 0.3.17, and where (``docs/raft.md`` has the reasons):

* traffic is Fernet-encrypted and authenticated (``password``), frames are bounded and
  unpickling builds plain data only (``consensus.transport``);
* journal and term/vote are fsynced before any message reflecting them leaves the node, in
  batches (``consensus.journal`` + ``consensus.transport``); the journal is injected through
  ``conf.journalFile`` and the one patch of ``pysyncobj.syncobj.createJournal`` below;
* snapshots are a versioned msgpack file, not a pickle (``consensus.snapshot_file``), and a
  newer format stops the node with a clear error instead of being half-loaded;
* snapshots are written by a forked child, off the Raft thread (``_start_snapshot``: the one
  place that explains how this fits pysyncobj's ``Serializer``), and a compaction a crash
  interrupted is finished on start instead of pysyncobj clearing the journal;
* ``socket.inet_ntop``, which importing pysyncobj breaks process-wide, is restored;
* an isolated leader gives up after ``leader_fallback_timeout`` (pysyncobj's default is 30 s);
* a voter campaigns only after a majority granted it a pre-vote (``consensus.prevote``), and
  vote requests from nodes outside this node's cluster are dropped (``consensus.transport``);
* membership changes (``add_member``/``remove_member``, one at a time) in a plain-data form,
  the configuration at start taken from the log, a node that is not a member (joining or
  removed) following the log without campaigning (``consensus.raft_members``), and the
  committed voter set in snapshots.

``RaftNode`` must be constructed from a thread that outlives it (the daemon's main thread):
pysyncobj's tick thread stops when the thread that created the SyncObj exits.
"""
from __future__ import annotations

import _socket
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import msgpack
import pysyncobj.syncobj as _pysyncobj_syncobj
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj import FAIL_REASON, SERIALIZER_STATE, SyncObj, SyncObjConf, replicated
from pysyncobj.journal import Journal
from pysyncobj.node import TCPNode

from consensus import prevote, voterfile
from consensus.journal import DurableJournal, fsync_dir
from consensus.raft_members import MEMBERSHIP, RaftMembers, encode_change, is_address
from consensus.snapshot_file import SnapshotChild, SnapshotFileError, fork_snapshot, read_snapshot
from consensus.state import ClusterState
from consensus.transport import HagentTransport, install_restricted_unpickler

log = logging.getLogger(__name__)
T = TypeVar("T")

# --- pysyncobj settings hagent fixes (the rest come from RaftConfig) --------------------------

#: Send append-entries as soon as a command is queued instead of on the next heartbeat.
#: With batching (pysyncobj's default) every proposal waits for the 100 ms heartbeat
#: (10 commits/s synchronous, p99 155 ms at 200/s); without it the transport still batches:
#: messages held while the journal syncs are coalesced per peer (23k commits/s pipelined,
#: p99 10 ms at 200/s; docs/raft.md).
APPEND_ENTRIES_USE_BATCH = False
#: Longest the tick thread sleeps in poll() when nothing happens (s). Proposals wake it at
#: once (pysyncobj's pipe notifier) and messages wake poll(), so this only bounds timer
#: latency (heartbeats every 0.2 s, elections from 0.8 s). Idle wake-ups are most of an idle
#: voter's CPU: 0.1 s measured 0.2-0.3 % of a core for a bare pysyncobj voter against
#: 0.3-0.4 % at 0.05 s; shorter periods burn CPU the other processes need (docs/raft.md).
AUTO_TICK_PERIOD = 0.1
#: Seconds between reconnection attempts to a voter that is down. pysyncobj's 5 s default
#: would add up to 5 s to the rejoin of a restarted voter.
CONNECTION_RETRY_TIME = 1.0
#: A voter that cannot bind its Raft address gives up after this many 1 s attempts.
BIND_RETRIES = 5
#: Largest command proposed (msgpack-encoded). Far above any hagent command; keeps the frame
#: cap in consensus.transport meaningful.
MAX_COMMAND_BYTES = 1024 * 1024
#: Proposals queued in pysyncobj before QUEUE_FULL.
COMMANDS_QUEUE_SIZE = 100_000
#: Seconds between a failed snapshot (disk full, fork refused) and the next attempt.
#: pysyncobj would retry on the very next tick: a fork and a full serialisation every 50 ms
#: on a full disk. The journal keeps everything meanwhile, so waiting costs nothing but
#: journal length.
SNAPSHOT_RETRY_DELAY = 10.0

JOURNAL_FILE = "journal"
SNAPSHOT_FILE = "snapshot"
#: Every file a RaftNode keeps in its ``state_dir`` (temporary ones included): the snapshot,
#: the journal and its term/vote meta file (``consensus.journal``).
STATE_FILES = (SNAPSHOT_FILE, SNAPSHOT_FILE + ".tmp", JOURNAL_FILE, JOURNAL_FILE + ".tmp",
               JOURNAL_FILE + ".meta", JOURNAL_FILE + ".meta.tmp")

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
_FAIL_NAMES = {value: name for name, value in vars(FAIL_REASON).items() if name.isupper()}


def discard_state(state_dir: Path) -> list[str]:
    """Remove the Raft state in ``state_dir`` (``STATE_FILES``, then the directory if that
    left it empty) and return the names removed; nothing there: [].

    For a node that is no longer a voter (docs/voters.md): its journal and snapshot end in a
    voter set of the past, and a RaftNode started on them later (when the node is promoted
    again) would take that set over the one it is given and reach none of the current
    voters. Started with none, it takes the set given and gets the log from the leader. The
    caller must know from the committed log that the node is out of the voter set: a member
    without its journal and term/vote could vote twice in a term. Running it again after a
    crash midway finishes the job."""
    state_dir = Path(state_dir)
    removed = []
    for name in STATE_FILES:
        try:
            (state_dir / name).unlink()
        except FileNotFoundError:
            continue
        removed.append(name)
    if removed:
        fsync_dir(state_dir)
    try:
        state_dir.rmdir()
    except FileNotFoundError:
        return removed
    except OSError:  # not empty: files that are not Raft's stay
        return removed
    fsync_dir(state_dir.parent)
    return removed


class RaftError(Exception):
    """The Raft node could not start; the message names the thing and the fix."""


class InvalidCommandError(ValueError):
    """A proposed command is not a dict of plain, msgpack-able values or is too large."""


class _SnapshotForked(Exception):
    """Raised by the serializer hook so that pysyncobj does not rename the file (see
    ``RaftNode._start_snapshot``). pysyncobj catches it; it never reaches anyone else."""


_packers = threading.local()


def _packed_size(command: dict) -> int:
    """msgpack size of ``command``; raises TypeError/ValueError/OverflowError if not plain.

    One Packer per thread, reused: ``msgpack.packb`` builds (and allocates a buffer for) a
    new Packer on every call, half of its 0.7 µs for a typical command.
    """
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return len(packer.pack(command))


# --- the one patch of pysyncobj -----------------------------------------------------------------

_original_create_journal = _pysyncobj_syncobj.createJournal


def _create_journal(journalFile=None):  # noqa: N803 (pysyncobj's name)
    """pysyncobj.syncobj.createJournal, which also accepts a ready Journal object.

    SyncObj.__init__ calls ``createJournal(conf.journalFile)`` and uses journalFile nowhere
    else, so passing our DurableJournal as ``journalFile`` injects it; a path or None keeps
    pysyncobj's own behaviour for any other user in the process.
    """
    if isinstance(journalFile, Journal):
        return journalFile
    return _original_create_journal(journalFile)


def _patch_pysyncobj() -> None:
    _pysyncobj_syncobj.createJournal = _create_journal
    install_restricted_unpickler()
    # pysyncobj.win_inet_pton replaces socket.inet_ntop on every OS (not only Windows) with a
    # ctypes version that raises TypeError off Windows, breaking psutil and anything else in
    # the process that formats IPv6 addresses. Put the real one back.
    socket.inet_ntop = _socket.inet_ntop


_patch_pysyncobj()


# --- the SyncObj ----------------------------------------------------------------------------

class _LogMachine(SyncObj):
    """pysyncobj SyncObj with one replicated method; everything else lives in RaftNode."""

    def __init__(self, node: "RaftNode", self_address: str | None, partners: list[str],
                 conf: SyncObjConf, journal: DurableJournal | None) -> None:
        self._hagent_node = node
        self._hagent_transport: HagentTransport | None = None
        self._hagent_prevote = prevote.PreVoteRound()

        def make_transport(sync_obj, self_node, other_nodes):
            transport = HagentTransport(sync_obj, self_node, other_nodes, journal=journal)
            transport.on_pre_vote_message = self._hagent_pre_vote_message
            transport.member = node._members.is_member
            self._hagent_transport = transport
            return transport

        super().__init__(self_address, partners, conf, transportClass=make_transport)

    @replicated
    def apply_command(self, command: dict) -> dict:
        return self._hagent_node._apply(command)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803
        # Sync and send what the last poll() queued (followers' acks) before this tick's
        # work, and before the leader counts its own log toward the commit index.
        if self._hagent_transport is not None:
            self._hagent_transport.flush()
        if self._hagent_node.self_address is not None:
            self._hagent_before_election(time.monotonic())
        super()._onTick(timeToWait)

    # --- elections: pre-vote first (consensus.prevote has the reasons) ----------------------
    def _hagent_before_election(self, now: float) -> None:
        """Runs before pysyncobj's tick, which campaigns once the election deadline passed:
        push the deadline back unless this node is a member that won a pre-vote."""
        if not self._hagent_node._members.is_member:
            # Not in its latest configuration (joining, or removed): it never campaigns.
            self._SyncObj__raftElectionDeadline = now + self.conf.raftMinTimeout
            return
        if (self._SyncObj__raftState == _RAFT_STATE.LEADER
                or self._SyncObj__raftElectionDeadline >= now
                or not self._SyncObj__connectedToAnyone()
                or self._SyncObj__transferInProgress):
            return
        term = self.raftCurrentTerm + 1
        round_ = self._hagent_prevote
        if round_.may_campaign(term):
            round_.used()
            return  # pysyncobj campaigns in this tick
        round_.start(term)
        others = self._SyncObj__otherNodes
        if round_.check(len(others) + 1):  # a cluster of one
            round_.used()
            return
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        message = prevote.request(term, self._SyncObj__getCurrentLogIndex(),
                                  self._SyncObj__getCurrentLogTerm())
        for other in others:
            self._hagent_transport.send(other, message)

    def _hagent_pre_vote_message(self, sender, message: dict) -> None:
        """A pre-vote or a pre-vote response (from consensus.transport, Raft thread)."""
        others = self._SyncObj__otherNodes
        transport = self._hagent_transport
        if message.get("type") == prevote.PRE_VOTE_RESPONSE:
            if sender not in others:
                return
            newer = prevote.newer_term(message, self.raftCurrentTerm)
            if newer is not None:
                # A member is ahead: take its term, as its vote request would have made us.
                self._hagent_prevote.used()
                self._SyncObj__setCurrentTerm(newer, None)
                self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
                self._SyncObj__raftLeader = None
                return
            if self._hagent_prevote.on_response(sender, message, len(others) + 1):
                self._SyncObj__raftElectionDeadline = 0.0  # campaign on the next tick
            return
        if self.selfNode is None:
            return
        if sender not in others:
            transport.drop_vote_request(sender, message)
            return
        granted = prevote.grants(
            message, sender_is_member=True, current_term=self.raftCurrentTerm,
            last_log_index=self._SyncObj__getCurrentLogIndex(),
            last_log_term=self._SyncObj__getCurrentLogTerm(), leads=self._isLeader(),
            heard_leader_recently=time.monotonic() - transport.last_leader_contact
            < self.conf.raftMinTimeout)
        transport.send(sender, prevote.response(message, granted, self.raftCurrentTerm))

    # --- membership (consensus.raft_members has the reasons) --------------------------------
    def addNodeToCluster(self, node, callback=None) -> None:  # noqa: N802 (pysyncobj's API)
        """pysyncobj's API (also behind its ``add`` utility message), in the plain form."""
        self._applyCommand(encode_change("add", getattr(node, "id", node)), callback, MEMBERSHIP)

    def removeNodeFromCluster(self, node, callback=None) -> None:  # noqa: N802
        self._applyCommand(encode_change("rem", getattr(node, "id", node)), callback, MEMBERSHIP)

    def _SyncObj__changeCluster(self, request) -> bool:  # noqa: N802
        # The leader, about to append a membership entry. pysyncobj 0.3.17 never sets its
        # own one-change-at-a-time marker (__changeClusterIDx), so refuse here while a change
        # is in the log but not applied; queued or forwarded changes all pass this point.
        if self._hagent_node._members.in_flight:
            return False
        return SyncObj._SyncObj__changeCluster(self, request)

    def _SyncObj__doChangeCluster(self, request, reverse: bool = False) -> bool:  # noqa: N802
        # Appended (or, reverse, cut): pysyncobj changes its partners; we track this node.
        changed = SyncObj._SyncObj__doChangeCluster(self, request, reverse)
        self._hagent_node._on_log_change(request, reverse)
        return changed

    def _SyncObj__doApplyCommand(self, command: bytes):  # noqa: N802
        # A membership entry at commit: pysyncobj would apply it to its partners again "for
        # the restart case"; the start configuration already has every entry of the journal
        # (consensus.raft_members), so only the committed set moves.
        if command[:1] == bytes([MEMBERSHIP]):
            self._hagent_node._on_membership_applied(command, self._SyncObj__raftLastApplied + 1)
            return None
        return SyncObj._SyncObj__doApplyCommand(self, command)


# --- RaftNode ---------------------------------------------------------------------------------

class RaftNode:
    """One node's membership in the replicated log (see module docstring).

    ``options`` is ``hagent.config.RaftConfig`` (or anything with its attributes). The
    ``state`` object is owned by the node from now on: installing a snapshot replaces it, so
    always go through ``read()``.

    Membership (docs/raft.md, "Membership changes")::

        RaftNode(*, self_address, voters, state_dir, password, options, state, node_name,
                 on_role_change=None, voters_index=0, voters_file=None)
            # voters: the voter set as last known (config, or voters.json valid at raft
            # index voters_index: consensus.voterfile.choose); the log overrides it.
            # voters_file: kept equal to the committed set (consensus.voterfile).
            # self_address not in the log's set:
            # a voter that is not a member (joining or removed): binds, follows the log as
            # a read-only peer of the voters, proposes through them, never campaigns.
        .add_member(address, callback)     # callback(ok: bool, error: str | None)
        .remove_member(address, callback)  # leader only, one change at a time
        .cluster_members() -> list[str]    # latest configuration in the log (self if member)
        .committed_members() -> list[str]  # as of the last applied entry
        .is_member() -> bool
        .leader_commit_index() -> int      # the leader's commit index as last heard
        .applied_index() -> int
        .add_membership_observer(fn)       # fn(members: list[str], index: int), Raft thread
    """

    def __init__(self, *, self_address: str | None, voters: list[str], state_dir: Path,
                 password: str, options: Any, state: ClusterState, node_name: str,
                 on_role_change: Callable[[str, str, int], None] | None = None,
                 voters_index: int = 0, voters_file: Path | None = None) -> None:
        if not password:
            raise RaftError("the cluster secret is empty: Raft traffic must be encrypted; "
                            "put a secret in raft.secret_file")
        self.node_name = node_name
        self.self_address = self_address
        #: The voters given at construction (the log's set is ``cluster_members()``).
        self.voters = list(voters)
        self.options = options
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._state = state
        self._duplicate_interval = getattr(state, "duplicate_interval", 180.0)
        self._role = "follower" if self_address is not None else "replica"
        self._on_role_change = on_role_change
        #: Called as fn(command, result) after each committed command is applied here (Raft
        #: thread). A tuple replaced whole, so apply reads it without a lock.
        self._apply_observers: tuple[Callable[[dict, dict], None], ...] = ()
        #: Called as fn(members, index) when the committed voter set changes (Raft thread).
        self._membership_observers: tuple[Callable[[list[str], int], None], ...] = ()
        #: Set (with a reason) when the node stopped itself because it cannot continue
        #: safely; status() reports it and the daemon should exit.
        self.fatal_error: str | None = None

        self._snapshot_path = self.state_dir / SNAPSHOT_FILE
        #: The snapshot being written by a child process, if any (Raft thread only).
        self._snapshot_child: SnapshotChild | None = None
        self._snapshot_fork_error: str | None = None
        self._snapshot_retry_at = 0.0
        #: Snapshots loaded (at start or streamed by the leader); a child forked before the
        #: latest load holds an older state and is discarded.
        self._snapshot_loads = 0
        self._snapshot_loads_at_fork = 0
        #: Raft index of the last snapshot on disk (0: none) and failed attempts so far.
        self.snapshot_index = 0
        self.snapshot_failures = 0
        Path(str(self._snapshot_path) + ".tmp").unlink(missing_ok=True)  # a dead child's
        doc = None
        if self._snapshot_path.exists():
            # Refuse a snapshot we cannot read *before* pysyncobj starts: it would log the
            # error, carry on with an empty state and a compacted journal.
            doc = read_snapshot(self._snapshot_path)
            ClusterState.from_snapshot(doc["state"], self._duplicate_interval)
            self.snapshot_index = doc["last_entry"][1]

        self._journal = DurableJournal(self.state_dir / JOURNAL_FILE, fsync=bool(options.fsync))
        if doc is not None:
            dropped = self._journal.trim_to_snapshot(doc["prev_entry"], doc["last_entry"])
            if dropped:
                log.warning("finished an interrupted compaction: dropped %d journal entries "
                            "covered by the snapshot at index %d", dropped, self.snapshot_index)
        self._voters_file = Path(voters_file) if voters_file is not None else None
        try:
            file = voterfile.load(self._voters_file) if self._voters_file is not None else None
        except voterfile.VoterFileError as exc:
            raise RaftError(str(exc)) from None
        self._members = self._start_members(voters, voters_index, doc, file)
        if self._voters_file is not None and (file is None or not file.pending) and (
                file is None or set(file.voters) != self._members.committed
                or file.index != self._members.committed_index):
            # Bring the file to the committed set the log gave (a pending add of this node
            # is the agent's, and the log has not decided it yet).
            self._write_voters_file()
        #: pysyncobj's first load of the snapshot found at start keeps the start
        #: configuration; later loads (streamed by the leader) replace it.
        self._start_load_pending = doc is not None
        conf = SyncObjConf(
            password=password,
            autoTick=True,
            autoTickPeriod=AUTO_TICK_PERIOD,
            appendEntriesUseBatch=APPEND_ENTRIES_USE_BATCH,
            raftMinTimeout=options.election_timeout_min,
            raftMaxTimeout=options.election_timeout_max,
            appendEntriesPeriod=options.append_entries_period,
            connectionTimeout=options.connection_timeout,
            connectionRetryTime=CONNECTION_RETRY_TIME,
            leaderFallbackTimeout=options.leader_fallback_timeout,
            bindAddress=self_address,
            maxBindRetries=BIND_RETRIES,
            journalFile=self._journal,
            fullDumpFile=str(self._snapshot_path),
            serializer=self._start_snapshot,
            serializeChecker=self._snapshot_progress,
            deserializer=self._load_snapshot,
            logCompactionMinEntries=options.compaction_min_entries,
            logCompactionMinTime=options.compaction_min_time,
            commandsQueueSize=COMMANDS_QUEUE_SIZE,
            commandsWaitLeader=True,
            dynamicMembershipChange=True,
            onStateChanged=self._on_state_changed,
        )
        partners = self._members.others()
        # The journal goes to the transport even with fsync off: holding messages until the
        # tick's end is also what lets it coalesce them (docs/raft.md, throughput).
        self._machine = _LogMachine(self, self_address, partners, conf, self._journal)
        if self_address is not None:
            try:
                self._machine.waitBinded()
            except Exception as exc:
                self._machine.destroy()
                raise RaftError(f"cannot bind the Raft address {self_address}: is another "
                                f"agent running, or is the address not on this host?") from exc
        log.info("raft %s started: voters %s, state in %s, fsync %s",
                 "voter " + self_address if self_address else "replica",
                 ", ".join(sorted(self._members.latest)), self.state_dir,
                 "on" if options.fsync else "OFF")
        if self_address is not None and not self._members.is_member:
            log.warning("raft: %s is not a member of the voter set %s (joining, or removed): "
                        "it follows the log as a read-only peer of the voters and does not "
                        "campaign until a membership change adds it", self_address,
                        ", ".join(sorted(self._members.latest)))

    def _start_members(self, voters: list[str], voters_index: int, doc: dict | None,
                       file: voterfile.VoterFile | None) -> RaftMembers:
        """The configuration at start: the latest in the log (consensus.raft_members).

        The base is whichever set is valid at the highest Raft index: ``voters`` (at
        ``voters_index``: 0 for the config's bootstrap voters), voters.json (unless it holds
        a pending add) or the snapshot's cluster; then every membership entry after it in
        the journal."""
        bases = [(voters_index, 0, list(voters), "the voters given")]
        if file is not None and not file.pending:
            bases.append((file.index, 1, list(file.voters), str(self._voters_file)))
        if doc is not None:
            cluster = [a for a in doc["cluster"] if is_address(a)]
            if cluster:
                bases.append((doc["last_entry"][1], 2, cluster, "the snapshot"))
        index, _, base, source = max(bases, key=lambda b: (b[0], b[1]))
        journal = (self._journal[i] for i in range(len(self._journal)))
        members = RaftMembers(self.self_address, base, index, journal)
        if members.latest != frozenset(voters):
            log.warning("raft: the log's voter set %s (%s at index %d, then the journal) "
                        "differs from the voters given %s; following the log",
                        ", ".join(sorted(members.latest)), source, index,
                        ", ".join(sorted(voters)))
        return members

    def _write_voters_file(self) -> None:
        try:
            voterfile.update(self._voters_file, voters=sorted(self._members.committed),
                             index=self._members.committed_index, pending=False)
        except Exception as exc:  # a full disk must not stop the Raft thread
            log.error("cannot write %s: %s; a restart would start from an older voter set "
                      "until the log corrects it", self._voters_file, exc)

    # --- the API ---------------------------------------------------------------------------
    def propose(self, command: dict, callback: Callable[[dict | None, str | None], None]) -> None:
        """Commit ``command`` through the log; ``callback(result, None)`` once applied here.

        On failure ``callback(None, error_name)`` with a pysyncobj reason: NOT_LEADER,
        LEADER_CHANGED, MISSING_LEADER, DISCARDED, QUEUE_FULL, REQUEST_DENIED, UNKNOWN_OUTCOME
        (the outcome is unknown: resubmit idempotently). The callback runs in the Raft thread,
        or at once in the caller's thread for QUEUE_FULL. Raises InvalidCommandError at once
        for a command that is not plain data or exceeds MAX_COMMAND_BYTES.
        """
        if not isinstance(command, dict):
            raise InvalidCommandError(f"a command must be a dict, got {type(command).__name__}")
        try:
            size = _packed_size(command)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCommandError(f"command is not plain data: {exc}") from exc
        if size > MAX_COMMAND_BYTES:
            raise InvalidCommandError(f"command of {size} bytes exceeds {MAX_COMMAND_BYTES}")

        def done(result: Any, reason: int) -> None:
            try:
                if reason == FAIL_REASON.SUCCESS:
                    callback(result, None)
                else:
                    callback(None, _FAIL_NAMES.get(reason, str(reason)))
            except Exception:
                log.exception("propose callback raised")

        self._machine.apply_command(command, callback=done)

    def add_apply_observer(self, fn: Callable[[dict, dict], None]) -> None:
        """Call ``fn(command, result)`` after every committed command this node applies,
        in the Raft thread, outside the state lock (also for entries replayed at start;
        not for those a snapshot installs). ``fn`` must be quick and must not block: hand
        work to another thread. An exception in it is logged and ignored."""
        self._apply_observers = (*self._apply_observers, fn)

    def remove_apply_observer(self, fn: Callable[[dict, dict], None]) -> None:
        self._apply_observers = tuple(f for f in self._apply_observers if f is not fn)

    # --- membership ----------------------------------------------------------------------------
    def add_member(self, address: str, callback: Callable[[bool, str | None], None]) -> None:
        """Make voter ``address`` a member of the Raft cluster (a pysyncobj membership entry).

        It counts toward quorum from the moment the leader appends the entry, so add only a
        node that runs as a voter (``self_address`` = ``address``) and has caught up: until
        then it follows the log as a read-only peer of the voters. Leader only; one change
        at a time (in flight until its entry is applied here).

        ``callback(True, None)`` once the entry is committed and applied here, in the Raft
        thread. ``callback(False, reason)`` otherwise: at once, in the caller's thread, for
        NOT_LEADER, CHANGE_IN_FLIGHT, ALREADY_MEMBER or a bad address; later for a pysyncobj
        reason (REQUEST_DENIED: another change got in first or this leader has not committed
        an entry of its term yet, retry; LEADER_CHANGED, DISCARDED, ...: look at
        ``cluster_members()`` before retrying).
        """
        self._change_member("add", address, callback)

    def remove_member(self, address: str, callback: Callable[[bool, str | None], None]) -> None:
        """Remove voter ``address`` from the Raft cluster; as ``add_member`` (NOT_MEMBER
        instead of ALREADY_MEMBER; the leader cannot remove itself). It stops counting toward
        quorum when the leader appends the entry. A removed node that still runs follows the
        log as a read-only peer, applies its removal and stops campaigning."""
        self._change_member("rem", address, callback)

    def cluster_members(self) -> list[str]:
        """The latest configuration in this node's log, as Raft uses it (a change counts from
        when it is appended): this node (if a member) and pysyncobj's other nodes."""
        return sorted(self._members.latest)

    def committed_members(self) -> list[str]:
        """The voter set as of the last entry applied here (what voters.json holds)."""
        return sorted(self._members.committed)

    def is_member(self) -> bool:
        """This node votes: it is in its latest configuration (False on replicas)."""
        return self._members.is_member

    def leader_commit_index(self) -> int:
        """The leader's commit index as this node last heard it (its own, on the leader);
        0 before it heard any leader."""
        return getattr(self._machine, "_SyncObj__leaderCommitIndex", None) or 0

    def applied_index(self) -> int:
        """The Raft index of the last entry applied to the state here."""
        return self._machine.raftLastApplied

    def add_membership_observer(self, fn: Callable[[list[str], int], None]) -> None:
        """Call ``fn(members, index)`` when the committed voter set changes here (an applied
        membership entry at ``index``, or a snapshot from the leader), in the Raft thread:
        e.g. a node that finds itself added or removed switches role. Keep it quick."""
        self._membership_observers = (*self._membership_observers, fn)

    def remove_membership_observer(self, fn: Callable[[list[str], int], None]) -> None:
        self._membership_observers = tuple(f for f in self._membership_observers
                                           if f is not fn)

    def _change_member(self, kind: str, address: str,
                       callback: Callable[[bool, str | None], None]) -> None:
        refusal = None if self._machine._isLeader() else "NOT_LEADER"
        refusal = refusal or self._members.refusal(kind, address)
        if refusal is not None:
            callback(False, refusal)
            return

        def done(result: Any, reason: int) -> None:
            ok = reason == FAIL_REASON.SUCCESS
            name = None if ok else _FAIL_NAMES.get(reason, str(reason))
            if name == "REQUEST_DENIED":
                name = ("REQUEST_DENIED: another membership change is in flight, or the leader "
                        "has not committed an entry of its term yet")
            log.info("raft membership change %s %s: %s", kind, address, name or "committed")
            try:
                callback(ok, name)
            except Exception:
                log.exception("membership change callback raised")

        log.info("raft membership change %s %s proposed", kind, address)
        self._machine._applyCommand(encode_change(kind, address), done, MEMBERSHIP)

    def read(self, fn: Callable[[ClusterState], T]) -> T:
        """``fn(state)`` under the lock apply holds; safe from any thread. Keep fn short."""
        with self._lock:
            return fn(self._state)

    def status(self) -> dict[str, Any]:
        """The Raft part of ``/status``; safe from any thread (reads are GIL-atomic ints)."""
        m = self._machine
        leader = m._getLeader()
        leader_commit = getattr(m, "_SyncObj__leaderCommitIndex", None)
        members = self._members
        voters = [{"address": address, "reachable": address == self.self_address
                   or m.isNodeConnected(TCPNode(address))} for address in sorted(members.latest)]
        transport = m._hagent_transport
        return {
            "role": self._role,
            "voter": self.self_address is not None,
            "self_address": self.self_address,
            "leader": leader.id if leader is not None else None,
            "term": m.raftCurrentTerm,
            "commit_index": m.raftCommitIndex,
            "applied_index": m.raftLastApplied,
            "leader_commit_index": leader_commit,
            "log_size": m._getRaftLogSize(),
            "voters": voters,
            "member": members.is_member,
            "committed_voters": sorted(members.committed),
            "membership_in_flight": members.in_flight,
            "ready": leader is not None and m.isReady() and self.fatal_error is None,
            "fsync": bool(self.options.fsync),
            "durable_index": self._journal.durable_index,
            "journal_syncs": self._journal.sync_count,
            "acks_ahead_of_disk": transport.acks_ahead_of_disk if transport else 0,
            "snapshot_index": self.snapshot_index,
            "snapshot_failures": self.snapshot_failures,
            "rejected_connections": (transport.rejected_frames + transport.unauthenticated_drops)
            if transport else 0,
            "vote_requests_dropped": transport.vote_requests_dropped if transport else 0,
            "error": self.fatal_error,
        }

    def close(self) -> None:
        """Stop the Raft thread, sync and close the journal. Idempotent."""
        machine = self._machine
        if machine is None:
            return
        machine.destroy()
        thread = getattr(machine, "_SyncObj__thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)
        child, self._snapshot_child = self._snapshot_child, None
        if child is not None:  # its snapshot is not needed: the journal still has it all
            child.kill()

    # --- called in the Raft thread -----------------------------------------------------------
    def _apply(self, command: dict) -> dict:
        with self._lock:
            try:
                result = self._state.apply(command)
            except Exception as exc:  # apply promises not to raise; never stop the log
                log.exception("ClusterState.apply raised on a committed command")
                result = {"ok": False, "error": f"internal error {type(exc).__name__}: {exc}"}
        if self._apply_observers:
            for fn in self._apply_observers:
                try:
                    fn(command, result)
                except Exception:
                    log.exception("apply observer raised")
        return result

    def _on_log_change(self, request: Any, reverse: bool) -> None:
        was = self._members.is_member
        self._members.on_log_change(request, reverse,
                                    (n.id for n in self._machine._SyncObj__otherNodes))
        self._sync_transport_member()
        if was != self._members.is_member:
            log.warning("raft: %s is %s the latest voter set %s", self.self_address,
                        "now in" if self._members.is_member else "no longer in",
                        ", ".join(sorted(self._members.latest)))

    def _sync_transport_member(self) -> None:
        transport = self._machine._hagent_transport
        if transport is not None:
            transport.member = self._members.is_member

    def _on_membership_applied(self, command: bytes, index: int) -> None:
        try:
            changed = self._members.on_commit(command, index)
        except ValueError as exc:
            log.error("membership entry %d cannot be read (%s); ignored", index, exc)
            return
        if changed:
            self._committed_members_changed(index)

    def _committed_members_changed(self, index: int) -> None:
        members = sorted(self._members.committed)
        log.info("raft voter set committed at index %d: %s", index, ", ".join(members))
        if self._voters_file is not None:
            self._write_voters_file()
        for fn in self._membership_observers:
            try:
                fn(members, index)
            except Exception:
                log.exception("membership observer raised")

    def _on_state_changed(self, old: int, new: int) -> None:
        old_name, new_name = _ROLES.get(old, str(old)), _ROLES.get(new, str(new))
        if self.self_address is not None:
            self._role = new_name
        term = self._machine.raftCurrentTerm if hasattr(self, "_machine") else 0
        log.info("raft role %s -> %s (term %d)", old_name, new_name, term)
        if self._on_role_change is not None:
            try:
                self._on_role_change(old_name, new_name, term)
            except Exception:
                log.exception("on_role_change callback raised")

    # --- snapshots: written by a forked child (docs/raft.md, "Compaction off the Raft thread")
    def _start_snapshot(self, path: str, raft_data: tuple) -> None:
        """pysyncobj's ``serializer`` hook: fork a child that writes ``path``; never returns.

        How this fits pysyncobj 0.3.17's ``Serializer`` (which cannot fork for a custom
        serializer itself): ``serialize()`` calls this hook and, if it *returns*, renames
        ``path`` over the snapshot at once, before the child has written it. So the hook
        always raises (``_SnapshotForked``, or the fork's OSError): ``serialize()`` catches
        any exception from a custom serializer, skips the rename and leaves the outcome to
        ``serializeChecker``, i.e. ``_snapshot_progress``. That one renames the child's
        finished, fsynced file into place itself and only then answers SUCCESS, upon which
        pysyncobj truncates the journal (``DurableJournal.deleteEntriesTo``). A failed child
        answers FAILED and the journal stays whole.

        Runs in the Raft thread, the only thread that changes the state, between two
        applies: the child's copy-on-write image is consistent without the state lock.
        """
        last_entry, prev_entry, _latest = raft_data
        try:
            # The committed voter set as of the snapshot's last entry (the last one applied),
            # not pysyncobj's latest configuration: an appended, uncommitted change may yet be
            # cut, and the journal after the snapshot still holds it.
            self._snapshot_child = fork_snapshot(
                path, last_entry, prev_entry, sorted(self._members.committed),
                self._state.to_snapshot, fsync=bool(self.options.fsync))
        except OSError as exc:
            self._snapshot_fork_error = f"cannot fork the snapshot writer: {exc}"
            raise
        self._snapshot_loads_at_fork = self._snapshot_loads
        raise _SnapshotForked()

    def _snapshot_progress(self) -> int:
        """pysyncobj's ``serializeChecker`` hook, called every tick from the Raft thread."""
        child = self._snapshot_child
        if child is None:
            if self._snapshot_fork_error is not None:
                reason, self._snapshot_fork_error = self._snapshot_fork_error, None
                return self._snapshot_failed(reason)
            if time.monotonic() < self._snapshot_retry_at:
                return SERIALIZER_STATE.SERIALIZING  # holds pysyncobj's next attempt back
            return SERIALIZER_STATE.NOT_SERIALIZING
        reason = child.poll()
        if reason is None:
            return SERIALIZER_STATE.SERIALIZING
        self._snapshot_child = None
        if reason:
            return self._snapshot_failed(f"snapshot at index {child.index} failed: {reason}")
        if self._snapshot_loads_at_fork != self._snapshot_loads:
            # The leader streamed a newer snapshot meanwhile; ours must not replace it, and
            # the journal must not be cut to our index. Not a failure: no retry delay.
            child.discard()
            log.info("snapshot at index %d dropped: a snapshot from the leader replaced the "
                     "state meanwhile", child.index)
            return SERIALIZER_STATE.FAILED
        try:
            os.replace(child.tmp_path, self._snapshot_path)
            if self.options.fsync:
                fsync_dir(self.state_dir)  # durable before pysyncobj cuts the journal
        except OSError as exc:
            child.discard()
            return self._snapshot_failed(f"snapshot at index {child.index}: cannot rename "
                                         f"{child.tmp_path} into place: {exc}")
        # Transmissions to lagging followers still read the replaced file: restart them
        # with this one, as pysyncobj does after its own forked dumps (it skips this for a
        # custom checker), or they would be told the newer index after the older state.
        self._machine._SyncObj__serializer._Serializer__transmissions.clear()
        self.snapshot_index = child.index
        log.info("snapshot written at index %d", child.index)
        return SERIALIZER_STATE.SUCCESS

    def _snapshot_failed(self, reason: str) -> int:
        self.snapshot_failures += 1
        self._snapshot_retry_at = time.monotonic() + SNAPSHOT_RETRY_DELAY
        log.error("%s; the journal keeps every entry, next attempt in %g s", reason,
                  SNAPSHOT_RETRY_DELAY)
        return SERIALIZER_STATE.FAILED

    def _load_snapshot(self, path: str) -> tuple:
        try:
            doc = read_snapshot(path, fsync=bool(self.options.fsync))
            new_state = ClusterState.from_snapshot(doc["state"], self._duplicate_interval)
        except Exception as exc:
            self._halt(f"cannot load snapshot {path}: {exc}")
            raise
        with self._lock:
            self._state = new_state
        self._snapshot_loads += 1
        self.snapshot_index = doc["last_entry"][1]
        log.info("snapshot loaded at index %d", doc["last_entry"][1])
        if self._start_load_pending:
            # The file found at start: keep the start configuration (snapshot + journal).
            self._start_load_pending = False
        else:
            if self._members.on_snapshot(doc["cluster"], doc["last_entry"][1]):
                self._committed_members_changed(doc["last_entry"][1])
            self._sync_transport_member()
        # pysyncobj makes its partners this list (less this node).
        return (doc["last_entry"], doc["prev_entry"],
                [TCPNode(a) for a in sorted(self._members.latest)])

    def _halt(self, reason: str) -> None:
        """Stop participating: send nothing more, stop the tick thread, report why."""
        self.fatal_error = reason
        log.critical("raft node stops: %s", reason)
        transport = self._machine._hagent_transport
        if transport is not None:
            transport.halt()
        self._machine.destroy()


__all__ = ["RaftNode", "RaftError", "InvalidCommandError", "SnapshotFileError",
           "APPEND_ENTRIES_USE_BATCH", "AUTO_TICK_PERIOD", "MAX_COMMAND_BYTES"]
