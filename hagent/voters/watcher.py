"""This node's part in the voter set, on every node (docs/voters.md): it registers the node
as eligible, reports its catch-up while it is a promotion candidate, keeps its copy of the
voter set (``voters.json``) current, points a non-voter's forward client at the voters the
log names, and asks the daemon to re-exec when the node's role must change
(``hagent.voters.role`` decides when).

Every ``TICK`` it looks once: a voter at its own applied state (and Raft status), a
non-voter at the voter set the voter it talks to served in its last status. All of it runs
on the daemon's loop; nothing here blocks.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping

from hagent.voters import localfile, role
from hagent.voters.localfile import LocalVoters
from hagent.voters.role import Me, Switch

log = logging.getLogger(__name__)

#: Seconds between two looks; also the period of a candidate's catch-up reports (the leader
#: counts a report fresh for 3 s, hagent.voters.changer.PROGRESS_FRESH).
TICK = 0.5
#: Seconds between registration attempts the log refused (a conflict an operator must fix,
#: logged each time it changes); one it could not commit yet (no leader at start-up) is
#: retried on the next look.
REGISTER_RETRY = 5.0


class RoleWatcher:
    """Runs beside the backend; ``switch(Switch)`` is how it asks the daemon to re-exec."""

    def __init__(self, backend: Any, me: Me, local: LocalVoters, *, voter: bool,
                 failure_domain: str, state_dir: Any,
                 switch: Callable[[Switch], None], tick: float = TICK) -> None:
        self._backend = backend
        self.me = me
        self.local = local
        self.voter = voter
        self._failure_domain = failure_domain
        self._state_dir = state_dir
        self._switch = switch
        self._tick = tick
        self._task: asyncio.Task | None = None
        self.registered = not me.raft_address  # nothing to register without a Raft address
        self._register_error: str | None = None
        self._next_register = 0.0
        self.reports = 0  # catch-up reports the log took (a candidate's)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="voter-role")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher outlives any one look
                log.exception("voter role check failed")
            await asyncio.sleep(self._tick)

    async def look(self) -> None:
        """One look: register if due, then act on the voter set as this role sees it."""
        loop = asyncio.get_running_loop()
        if not self.registered and loop.time() >= self._next_register:
            if not await self._register():
                self._next_register = loop.time() + REGISTER_RETRY
        if self.voter:
            await self._look_as_voter()
        else:
            await self._look_as_non_voter()

    # --- registration ---------------------------------------------------------------------
    async def _register(self) -> bool:
        """Propose this node's registration; False when the log refused it (retry later),
        True when it is registered or the log could not commit it yet (retry now)."""
        me = self.me
        answer = await self._backend.propose({
            "op": "voters.register", "node": me.name, "raft_address": me.raft_address,
            "forward_address": me.forward_address, "public_key": me.public_key,
            "failure_domain": self._failure_domain})
        if answer.get("ok"):
            self.registered = True
            log.info("registered as eligible for the voter set: raft %s, forward %s%s",
                     me.raft_address, me.forward_address,
                     f", failure domain {self._failure_domain}" if self._failure_domain else "")
            return True
        if answer.get("retryable"):
            return True
        error = str(answer.get("error"))
        if error != self._register_error:
            log.warning("the log refused this node's registration as eligible (retrying every "
                        "%g s): %s", REGISTER_RETRY, error)
        self._register_error = error
        return False

    # --- a non-voter -----------------------------------------------------------------------
    async def _look_as_non_voter(self) -> None:
        voter_set = self._backend.voter_set()
        if not voter_set or not voter_set.get("bootstrapped"):
            return
        switch = role.as_non_voter(self.me, voter_set)
        if switch is not None:
            self._switch(switch)
            return
        committed = LocalVoters(tuple(voter_set.get("voters") or ()), source="log")
        reachable = localfile.forwardable(committed)
        if reachable and not self.local.same_set(committed.voters):
            log.info("the voter set is now %s", ", ".join(_names(committed.voters)))
            localfile.save(self._state_dir, committed.voters)
            self.local = committed
            await self._backend.use_voters(reachable)

    # --- a voter ---------------------------------------------------------------------------
    async def _look_as_voter(self) -> None:
        backend = self._backend
        doc = backend.query("voters", {})
        status = backend.raft.status()
        if self.local.pending and role.promoting_me(self.me, doc):
            await self._report(status)
        caught_up = _caught_up(status)
        switch = role.as_voter(self.me, doc, caught_up=caught_up, pending=self.local.pending)
        if switch is not None:
            self._switch(switch)
            return
        if not caught_up or not doc.get("bootstrapped"):
            return
        committed = tuple(doc.get("voters") or ())
        if self.local.pending:
            if not any(v["raft_address"] == self.me.raft_address for v in committed):
                return  # still a candidate: the file keeps its pending mark
            log.info("promoted: this node is a voter of %s", ", ".join(_names(committed)))
        elif self.local.same_set(committed):
            return
        # The RaftNode keeps the file's addresses; the records are the agent's.
        localfile.save_records(self._state_dir, committed)
        self.local = LocalVoters(committed, source="log")

    async def _report(self, status: Mapping[str, Any]) -> None:
        applied = status.get("applied_index") or 0
        leader_commit = status.get("leader_commit_index") or status.get("commit_index") or 0
        if not status.get("leader"):
            return  # nobody to send it to yet
        answer = await self._backend.propose({"op": "voters.progress", "node": self.me.name,
                                              "applied": applied,
                                              "leader_commit": leader_commit})
        if answer.get("ok"):
            self.reports += 1
            if self.reports == 1 or self.reports % 20 == 0:
                log.info("catching up: applied %d of the leader's %d", applied, leader_commit)
        else:
            log.debug("catch-up report not committed: %s", answer.get("error"))


def _caught_up(status: Mapping[str, Any]) -> bool:
    """Applied all the leader had committed when this node last heard from it."""
    leader_commit = status.get("leader_commit_index")
    return bool(status.get("ready") and status.get("leader") and leader_commit is not None
                and (status.get("applied_index") or 0) >= leader_commit)


def _names(voters: Any) -> list[str]:
    return [v.get("node") or v["raft_address"] for v in voters]
