"""This node's part in the voter set, on every node (docs/voters.md): it registers the node
as eligible, reports its catch-up while it is a promotion candidate, keeps its copy of the
voter set (``voters.json``) current, points a non-voter's forward client at the voters the
log names, and asks the daemon to re-exec when the node's role must change
(``hagent.voters.role`` decides when).

Every ``TICK`` it looks once: a voter at its own applied state (and Raft status), a
non-voter at the voter set the voter it talks to served in its last status. All of it runs
on the daemon's loop; nothing here blocks.

A voter that hears no leader for ``ORPHAN_AFTER`` also asks the voters it knows over the
forward path (``ask_voters``): a voter removed while it was down, whose saved set no longer
names the leader, is never sent the log (only the leader sends it) and would never learn of
its removal; meanwhile its lease renewals commit nowhere and its watchdog would power the
host off. A voter that knows a leader and says this node is out of the set sends it back to
being a non-voter.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from hagent.forward.client import ForwardClient, ForwardUnavailable
from hagent.forward.keys import KeyPair
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
#: Seconds without a known leader after which a voter asks the voters it knows whether it
#: still is one: longer than an election (~1-2 s), well inside the lease's renewal margin
#: (a node that renews nothing self-fences within lease_ttl - safety_margin).
ORPHAN_AFTER = 2.0
#: Seconds between two such questions, and how long one waits for an answer.
ASK_INTERVAL = 2.0
ASK_TIMEOUT = 1.0

Ask = Callable[[list[Mapping[str, Any]]], Awaitable["dict[str, Any] | None"]]


async def ask_voters(voters: list[Mapping[str, Any]], *, key_pair: KeyPair,
                     timeout: float = ASK_TIMEOUT) -> dict[str, Any] | None:
    """The voter set (``voter_set`` of its status) as the first of ``voters`` that answers
    and knows a leader has it; None when none does. A one-off forward client, closed after."""
    if not voters:
        return None
    client = ForwardClient([v["forward_address"] for v in voters],
                           [v["raft_address"] for v in voters],
                           [v["public_key"] for v in voters], key_pair, timeout)
    await client.start()
    try:
        _, status = await client.status(timeout=timeout)
    except ForwardUnavailable:
        return None
    finally:
        await client.close()
    if not isinstance(status, dict) or not status.get("leader"):
        return None
    return status.get("voter_set")


class RoleWatcher:
    """Runs beside the backend; ``switch(Switch)`` is how it asks the daemon to re-exec."""

    def __init__(self, backend: Any, me: Me, local: LocalVoters, *, voter: bool,
                 failure_domain: str, state_dir: Any,
                 switch: Callable[[Switch], None], ask: Ask | None = None,
                 tick: float = TICK, clock: Callable[[], float] = time.monotonic) -> None:
        """``ask``: how a voter without a leader asks the voters it knows for the voter set
        (``ask_voters`` with this node's key pair); None: it does not ask."""
        self._backend = backend
        self.me = me
        self.local = local
        self.voter = voter
        self._failure_domain = failure_domain
        self._state_dir = state_dir
        self._switch = switch
        self._tick = tick
        self._tasks: list[asyncio.Task] = []
        self.registered = not me.raft_address  # nothing to register without a Raft address
        self._register_error: str | None = None
        self.reports = 0  # catch-up reports the log took (a candidate's)
        self._reporting: asyncio.Task | None = None
        self._ask = ask
        self._clock = clock
        self._leaderless_since: float | None = None
        self._next_ask = 0.0

    async def start(self) -> None:
        """Looks and registration run as separate tasks: a proposal that waits for a leader
        (up to its timeout) must not hold back the look that notices there is none."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._looking(), name="voter-role"),
                       loop.create_task(self._registering(), name="voter-registration")]

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._reporting] if self._reporting else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._reporting = [], None

    async def _looking(self) -> None:
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher outlives any one look
                log.exception("voter role check failed")
            await asyncio.sleep(self._tick)

    async def _registering(self) -> None:
        while not self.registered:
            try:
                retry_soon = await self.register()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registration failed")
                retry_soon = False
            if not self.registered:
                await asyncio.sleep(self._tick if retry_soon else REGISTER_RETRY)

    async def look(self) -> None:
        """One look at the voter set as this role sees it."""
        if self.voter:
            await self._look_as_voter()
        else:
            await self._look_as_non_voter()

    # --- registration ---------------------------------------------------------------------
    async def register(self) -> bool:
        """Propose this node's registration once (``registered`` says if it took); True to
        try again soon (the log could not commit it yet), False after a refusal (an operator
        must fix it: REGISTER_RETRY)."""
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
            return False
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
        if await self._orphaned(status):
            return
        if self.local.pending and role.promoting_me(self.me, doc) \
                and (self._reporting is None or self._reporting.done()):
            self._reporting = asyncio.get_running_loop().create_task(self._report(status))
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

    async def _orphaned(self, status: Mapping[str, Any]) -> bool:
        """No leader for ORPHAN_AFTER: ask the voters it knows; True if it switched."""
        now = self._clock()
        if status.get("leader"):
            self._leaderless_since = None
            return False
        if self._leaderless_since is None:
            self._leaderless_since = now
        if self._ask is None or now - self._leaderless_since < ORPHAN_AFTER \
                or now < self._next_ask:
            return False
        self._next_ask = now + ASK_INTERVAL
        others = [v for v in localfile.forwardable(self.local)
                  if v["raft_address"] != self.me.raft_address]
        voter_set = await self._ask(others)
        if not voter_set:
            return False
        switch = role.as_voter(self.me, voter_set, caught_up=True, pending=self.local.pending)
        if switch is None:
            return False
        self._switch(dataclasses.replace(
            switch, reason=f"{switch.reason}, as a voter that knows the leader says (this "
                           f"node has heard no leader for {now - self._leaderless_since:.0f} s)"))
        return True

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
