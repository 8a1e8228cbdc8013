"""Voter changes, one at a time, driven by the leader (docs/voters.md).

A change is a small protocol between the log and the leader:

1. anyone on a voter (hagentctl, the autopilot) proposes ``voters.change`` stamped with the
   current term; the state machine refuses what it can judge deterministically (unknown or
   unregistered node, already a voter, a change already in flight, the leader itself,
   fewer than 3 voters left by hand) and otherwise records the change in flight;
2. the leader's ``ChangeDriver`` carries it out:

   - **add**: the candidate, a non-voter, sees itself as the add target, re-execs as a voter
     that is not yet a member and reports ``voters.progress`` while pysyncobj sends it the
     log. Once a fresh report puts it within ``voters.max_catchup_lag`` entries of the
     leader's commit, the leader adds it to pysyncobj's cluster
     (``RaftNode.add_member``) and proposes ``voters.commit``. No fresh, close report within
     ``voters.catchup_timeout`` of the change's start: ``voters.abort``, and the candidate
     goes back to being a non-voter.
   - **remove**: the leader first checks that a majority of the voters left is reachable
     (else ``voters.abort``: removing would stop the log), then removes the member
     (``RaftNode.remove_member``) and proposes ``voters.commit``.

3. a change begun under an earlier leader (its term is older) is reconciled by the new one
   against pysyncobj's cluster as it stands: already done there -> commit; an add not done
   -> abort (the candidate's catch-up was watched by a leader that is gone); a remove not
   done -> done again, then commit. A commit carries the leader's term, and the state
   refuses one from a term older than the change's, so a deposed leader's late commit
   cannot land on a newer change.

``ChangeDriver`` is the leader's side without I/O: fed a ``LeaderView`` (the ``voters``
query, pysyncobj's members, reachability, the commit index, the clocks) it returns at most
one action, and is told when that action finished. ``VoterChanger`` is the asyncio shell the
daemon runs on every voter: it steps the driver while this node leads, and its
``add_voter``/``remove_voter`` propose a change from any voter and wait for its outcome in
the log, raising ``VoterChangeRefused`` with the reason when it was refused or aborted
(nothing changed then).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Union

log = logging.getLogger(__name__)

#: Seconds between two steps of the leader's driver: one local read each, and a promotion
#: is noticed within half a second of the candidate's report.
TICK = 0.5
#: A catch-up report counts as fresh for this many seconds after the leader first saw it
#: (its own monotonic clock, so no clock skew between hosts matters). Candidates report
#: every 0.5 s; 3 s tolerates a missed report or two, not a candidate that stopped.
PROGRESS_FRESH = 3.0
#: Seconds an action (a proposal, a pysyncobj membership change) may go unanswered before
#: the driver stops waiting and looks again: pysyncobj can drop a callback when the leader
#: changes, and a lost answer must not wedge every later change.
ACTION_TIMEOUT = 10.0
#: How often a caller waiting for a change's outcome reads the log.
OUTCOME_POLL = 0.2

#: The field of the voters.* commands naming the change's kind ("add"/"remove"): ``op``
#: names the command itself. In the records the log keeps (``change``, ``last_change``) the
#: kind is ``op`` (consensus/voterset.py).
KIND = "change"
ADD, REMOVE = "add", "remove"


class VoterChangeRefused(Exception):
    """A voter change that was refused or aborted; nothing changed. ``str()`` is the reason
    as an operator reads it (hagentctl prints it and exits 1)."""


# --- the driver's actions -------------------------------------------------------------------

@dataclass(frozen=True)
class Propose:
    """Commit ``command`` through the log (the leader proposes it locally)."""

    command: dict[str, Any]


@dataclass(frozen=True)
class AddMember:
    """Add ``address`` to pysyncobj's cluster (RaftNode.add_member)."""

    address: str


@dataclass(frozen=True)
class RemoveMember:
    """Remove ``address`` from pysyncobj's cluster (RaftNode.remove_member)."""

    address: str


Action = Union[Propose, AddMember, RemoveMember]


@dataclass(frozen=True)
class LeaderView:
    """What the leader knows at one step."""

    term: int
    self_address: str                   # the leader's own Raft address
    voters: Mapping[str, Any]           # the ``voters`` query of the leader's state
    members: frozenset[str]             # pysyncobj's cluster as it stands (self included)
    reachable: frozenset[str]           # members this leader hears from (self included)
    commit_index: int
    wall: float                         # time.time(): compared with the change's started_at
    mono: float                         # time.monotonic(): freshness, action timeouts


def _change_key(change: Mapping[str, Any]) -> tuple:
    return (change.get("op"), change.get("node"), change.get("term"), change.get("started_at"))


@dataclass
class ChangeDriver:
    """The leader's side of a voter change, without I/O (see the module docstring)."""

    max_catchup_lag: int
    catchup_timeout: float
    progress_fresh: float = PROGRESS_FRESH
    action_timeout: float = ACTION_TIMEOUT
    _busy: Action | None = field(default=None, init=False)
    _busy_since: float = field(default=0.0, init=False)
    #: (change key, applied, at) of the last catch-up report seen, and when (mono) it was
    #: first seen: a report's freshness is judged on the leader's own clock.
    _progress: tuple | None = field(default=None, init=False)
    _progress_seen: float = field(default=0.0, init=False)
    #: Why the last action failed (shown until the next one succeeds).
    last_error: str | None = field(default=None, init=False)

    def reset(self) -> None:
        """This node no longer leads: forget what was in flight (a new leader reconciles)."""
        self._busy = None
        self._progress = None

    @property
    def busy(self) -> Action | None:
        return self._busy

    def done(self, action: Action, ok: bool, error: str | None = None) -> None:
        """``action`` finished; a failure is kept for the status and retried next step."""
        if action is not self._busy:
            return  # an action given up earlier, or from before a reset (the same change
            # asked again is a new object: identity, not equality)
        self._busy = None
        self.last_error = None if ok else f"{_describe(action)} failed: {error}"
        if not ok:
            log.warning("voter change: %s", self.last_error)

    def step(self, v: LeaderView) -> Action | None:
        """The next action, or None (nothing to do, or waiting for the last one)."""
        if self._busy is not None:
            if v.mono - self._busy_since < self.action_timeout:
                return None
            log.warning("voter change: no answer to %s within %g s; looking again",
                        _describe(self._busy), self.action_timeout)
            self._busy = None
        action = self._next(v)
        if action is not None:
            self._busy, self._busy_since = action, v.mono
        return action

    def _next(self, v: LeaderView) -> Action | None:
        doc = v.voters
        if not doc.get("bootstrapped"):
            # The first leader writes the set it runs with into the log.
            return Propose({"op": "voters.bootstrap", "voters": sorted(v.members)})
        change = doc.get("change")
        if not change:
            self._progress = None
            return None
        kind, node, address = change["op"], change["node"], change["address"]
        if change["term"] < v.term:
            return self._reconcile(v, kind, node, address)
        if kind == ADD:
            return self._add(v, change, node, address)
        return self._remove(v, node, address)

    def _reconcile(self, v: LeaderView, kind: str, node: str, address: str) -> Action:
        done = (address in v.members) == (kind == ADD)
        if done:
            log.info("voter change: %s %s begun by an earlier leader is done in the Raft "
                     "cluster; committing it", kind, node)
            return self._commit(v, kind, node)
        if kind == ADD:
            return self._abort(v, node, f"the leader changed while {node} was catching up; "
                                        f"start the add again")
        log.info("voter change: remove %s begun by an earlier leader; removing it again", node)
        return RemoveMember(address)

    def _add(self, v: LeaderView, change: Mapping[str, Any], node: str,
             address: str) -> Action | None:
        if address in v.members:
            return self._commit(v, ADD, node)
        progress = change.get("progress") or None
        lag = None
        if progress:
            key = (_change_key(change), progress.get("applied"), progress.get("at"))
            if key != self._progress:
                self._progress, self._progress_seen = key, v.mono
            lag = v.commit_index - int(progress.get("applied") or 0)
            fresh = v.mono - self._progress_seen <= self.progress_fresh
            if fresh and lag <= self.max_catchup_lag:
                log.info("voter change: %s caught up (lag %d <= %d); adding it to the "
                         "Raft cluster", node, lag, self.max_catchup_lag)
                return AddMember(address)
        if v.wall - float(change["started_at"]) > self.catchup_timeout:
            how = "no catch-up report" if lag is None else f"last lag {lag} entries"
            return self._abort(v, node, f"{node} did not catch up within "
                                        f"{self.catchup_timeout:g} s ({how}; the most allowed "
                                        f"is {self.max_catchup_lag})")
        return None

    def _remove(self, v: LeaderView, node: str, address: str) -> Action:
        if address not in v.members:
            return self._commit(v, REMOVE, node)
        if address == v.self_address:
            # pysyncobj ignores a leader removing itself: the change would never finish.
            return self._abort(v, node, f"{node} is the leader; remove it from another leader")
        left = sorted(v.members - {address})
        heard = [m for m in left if m in v.reachable]
        if 2 * len(heard) <= len(left):
            return self._abort(v, node, f"removing {node} would leave voters {', '.join(left)} "
                                        f"of which only {len(heard)} answer the leader: no "
                                        f"majority, the log would stop")
        return RemoveMember(address)

    @staticmethod
    def _commit(v: LeaderView, kind: str, node: str) -> Propose:
        return Propose({"op": "voters.commit", KIND: kind, "node": node, "term": v.term})

    @staticmethod
    def _abort(v: LeaderView, node: str, reason: str) -> Propose:
        log.warning("voter change: aborting the change of %s: %s", node, reason)
        return Propose({"op": "voters.abort", "node": node, "reason": reason, "term": v.term})


def _name_of(doc: Mapping[str, Any], address: str | None) -> str | None:
    """The registered node name of Raft address ``address`` (None if unknown)."""
    for name, record in (doc.get("registry") or {}).items():
        if record.get("raft_address") == address:
            return name
    return None


def _describe(action: Action) -> str:
    if isinstance(action, Propose):
        return action.command["op"]
    return f"{type(action).__name__}({action.address})"


# --- the asyncio shell ----------------------------------------------------------------------

class VoterBackendLike(Protocol):
    """What the changer needs of the daemon's voter backend (hagent.agent_voter)."""

    raft: Any  # consensus.raft.RaftNode

    def is_leader(self) -> bool: ...
    def query(self, name: str, kwargs: dict[str, Any]) -> Any: ...
    async def propose(self, command: dict[str, Any]) -> dict[str, Any]: ...


class VoterChanger:
    """Runs on every voter: steps the ``ChangeDriver`` while this node leads; proposes and
    waits for changes asked for here. ``await start()`` / ``await stop()``."""

    def __init__(self, backend: VoterBackendLike, *, max_catchup_lag: int,
                 catchup_timeout: float, tick: float = TICK,
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self.driver = ChangeDriver(max_catchup_lag, catchup_timeout)
        self._tick = tick
        self._wall, self._mono = wall, mono
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._actions: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="voter-changer")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._actions) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def status(self) -> dict[str, Any]:
        """For /status: the action this leader waits on (None: none, or not leading) and why
        the last one failed."""
        busy = self.driver.busy
        return {"action": _describe(busy) if busy is not None else None,
                "last_error": self.driver.last_error}

    # --- asked for by hagentctl and the autopilot -------------------------------------------
    async def add_voter(self, node: str, *, auto: bool = False,
                        wait: float | None = None) -> dict[str, Any]:
        """Promote eligible non-voter ``node``; returns the committed change (``last_change``)
        once the log has it, or the change in flight if ``wait`` seconds passed first.
        Raises VoterChangeRefused when the log refused it or it was aborted."""
        return await self._change(ADD, node, auto, wait)

    async def remove_voter(self, node: str, *, auto: bool = False,
                           wait: float | None = None) -> dict[str, Any]:
        """Demote voter ``node``; as ``add_voter``. ``auto``: the autopilot's own change,
        which the log lets take the set below 3 voters for a moment (a dead voter removed
        before its replacement is added)."""
        return await self._change(REMOVE, node, auto, wait)

    async def _change(self, kind: str, node: str, auto: bool,
                      wait: float | None) -> dict[str, Any]:
        status = self._backend.raft.status()
        command = {"op": "voters.change", KIND: kind, "node": node, "term": int(status["term"])}
        if auto:
            command["auto"] = True
        leader = _name_of(self._backend.query("voters", {}), status.get("leader"))
        if leader is not None:
            command["leader"] = leader  # the log refuses to remove the leader itself
        answer = await self._backend.propose(command)
        if not answer.get("ok"):
            raise VoterChangeRefused(answer.get("error") or f"{kind} {node} refused")
        change = answer.get("result") or {}
        log.info("voter change: %s %s accepted (term %s)%s", kind, node, command["term"],
                 " by the autopilot" if auto else "")
        return await self.outcome(change, wait)

    async def outcome(self, change: Mapping[str, Any], wait: float | None) -> dict[str, Any]:
        """Wait until the log no longer has ``change`` in flight; the committed change, or
        VoterChangeRefused if it was aborted. After ``wait`` seconds: the change as it is
        now, with ``"result": "in_progress"``."""
        key = _change_key(change)
        deadline = None if wait is None else self._mono() + wait
        while True:
            doc = self._backend.query("voters", {})
            current = doc.get("change")
            if not current or _change_key(current) != key:
                last = doc.get("last_change") or {}
                if last.get("result") == "aborted":
                    raise VoterChangeRefused(
                        f"{change.get('op')} {change.get('node')} aborted: {last.get('reason')}")
                return dict(last)
            if deadline is not None and self._mono() >= deadline:
                return {**current, "result": "in_progress"}
            await asyncio.sleep(OUTCOME_POLL)

    # --- the leader's loop ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                if self._backend.is_leader():
                    self._step()
                else:
                    self.driver.reset()
            except Exception:  # the loop outlives any one step
                log.exception("voter change step failed")
            await asyncio.sleep(self._tick)

    def leader_view(self) -> LeaderView:
        raft = self._backend.raft
        status = raft.status()
        members = frozenset(raft.cluster_members())
        reachable = frozenset(v["address"] for v in status.get("voters") or []
                              if v.get("reachable")) | {status.get("self_address")}
        return LeaderView(term=int(status["term"]), self_address=status["self_address"],
                          voters=self._backend.query("voters", {}),
                          members=members, reachable=reachable & members,
                          commit_index=int(status["commit_index"]), wall=self._wall(),
                          mono=self._mono())

    def _step(self) -> None:
        action = self.driver.step(self.leader_view())
        if action is None:
            return
        log.info("voter change: %s", _describe(action))
        if isinstance(action, Propose):
            task = asyncio.get_running_loop().create_task(self._propose(action))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)
            return
        loop = asyncio.get_running_loop()

        def finished(ok: bool, error: str | None) -> None:  # Raft thread
            loop.call_soon_threadsafe(self._done, action, ok, error)

        raft = self._backend.raft
        if isinstance(action, AddMember):
            raft.add_member(action.address, finished)
        else:
            raft.remove_member(action.address, finished)

    async def _propose(self, action: Propose) -> None:
        answer = await self._backend.propose(action.command)
        self._done(action, bool(answer.get("ok")), answer.get("error"))

    def _done(self, action: Action, ok: bool, error: str | None) -> None:
        """An action finished: take the next step at once rather than a tick later (a
        membership change done in Raft is committed to the voter set without delay)."""
        self.driver.done(action, ok, error)
        if ok and self._backend.is_leader():
            try:
                self._step()
            except Exception:
                log.exception("voter change step failed")
