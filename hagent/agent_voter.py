"""The voter backend of an agent: a RaftNode around the replicated state, and the forward
server that lets non-voters propose and read through this voter.

pysyncobj runs Raft in its own thread; proposal callbacks come back to the asyncio loop with
``call_soon_threadsafe``. The forward server runs on the loop and calls ``propose``,
``query``, ``status`` and ``leader`` below for the non-voters.

Lease renewals, this node's own and those non-voters forward here, are grouped into few
log entries by a ``RenewalBatcher`` (``hagent.fencing.renewals``). Other parts of the agent
watch the log through ``add_apply_observer`` and ``add_role_observer`` (the lease service
feeds its leader-side ``LeaseJudge`` from them).
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

from consensus.raft import RaftNode
from consensus.state import ClusterState
from hagent.config import Config
from hagent.fencing.renewals import RenewalBatcher, batchable
from hagent.forward.keys import read_key_pair
from hagent.forward.server import ForwardServer
from hagent.queries import run_query
from hagent.secretfile import read_secret
from hagent.voters.view import status_summary

log = logging.getLogger(__name__)

# How long a proposal may wait for the log before the caller is told it failed. Longer
# than a leader election (~1-3.5 s measured) so a failover is absorbed, short enough that
# an operator at hagentctl is not left hanging.
PROPOSE_TIMEOUT = 8.0
#: The RaftNode's directory under ``node.state_dir`` (journal, meta, snapshot; nothing else).
RAFT_DIR = "raft"


class VoterBackend:
    """Raft voter: owns the log and the state; serves non-voters when forwarding is on."""

    kind = "voter"

    def __init__(self, config: Config, node_name: str, members: list[str] | None = None, *,
                 voters_index: int = 0, voters_file: Path | None = None) -> None:
        """``members``: the Raft voter set to start from (default ``raft.voters``), valid at
        Raft index ``voters_index``; a promotion candidate passes the set without itself, as
        it is not a member yet. ``voters_file``: voters.json, which the RaftNode keeps equal
        to the committed voter set (consensus.voterfile)."""
        self.address = config.raft.bind
        # Read the key pair first: a bad key file stops start-up before Raft binds.
        key_pair = read_key_pair(config.security.key_file) if config.forwarding else None
        self.state = ClusterState(duplicate_interval=config.notifications.duplicate_interval)
        self._role_observers: tuple[Callable[[str, int], None], ...] = ()
        self.raft = RaftNode(
            self_address=config.raft.bind,
            voters=list(config.raft.voters if members is None else members),
            state_dir=config.node.state_dir / RAFT_DIR,
            password=read_secret(config.raft.secret_file),
            options=config.raft,
            state=self.state,
            node_name=node_name,
            on_role_change=self._role_changed,
            voters_index=voters_index,
            voters_file=voters_file,
        )
        self.renewals = RenewalBatcher(self._propose)
        self.forward: ForwardServer | None = None
        if key_pair is not None:
            self.forward = ForwardServer(self, config.forward_bind, key_pair,
                                         list(config.security.allowed_keys))

    async def start(self) -> None:
        if self.forward is not None:
            await self.forward.start()  # on failure the caller closes the RaftNode

    async def stop(self) -> None:
        if self.forward is not None:
            await self.forward.stop()
        await self.renewals.close()
        self.raft.close()

    # --- watching the log -------------------------------------------------------------------
    def add_apply_observer(self, fn: Callable[[dict, dict], None]) -> None:
        """``fn(command, result)`` after each entry is applied here; see
        ``RaftNode.add_apply_observer`` (Raft thread: hand work to the loop)."""
        self.raft.add_apply_observer(fn)

    def remove_apply_observer(self, fn: Callable[[dict, dict], None]) -> None:
        self.raft.remove_apply_observer(fn)

    def add_role_observer(self, fn: Callable[[str, int], None]) -> None:
        """``fn(role, term)`` on every Raft role change (``leader``, ``follower``,
        ``candidate``), in the Raft thread; and once at once, from the caller's thread, with
        the current role, so no change between two looks is missed. A change racing with
        that first call may be reported twice: observers compare terms."""
        self._role_observers = (*self._role_observers, fn)
        status = self.raft.status()
        fn(status["role"], status["term"])

    def remove_role_observer(self, fn: Callable[[str, int], None]) -> None:
        self._role_observers = tuple(f for f in self._role_observers if f is not fn)

    def _role_changed(self, old: str, new: str, term: int) -> None:
        for fn in self._role_observers:
            try:
                fn(new, term)
            except Exception:
                log.exception("role observer raised")

    # --- reads ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """RaftNode's status, each voter with its node name, plus the voter set as the log
        has it (``voter_set``: non-voters take the voters' forward endpoints and keys from it)
        and the notification counts."""
        status = self.raft.status()
        doc = self.raft.read(lambda s: s.voters())
        names = {r["raft_address"]: name for name, r in (doc.get("registry") or {}).items()}
        status["voters"] = [{**v, "node": names.get(v["address"])} for v in status["voters"]]
        status["voter_set"] = status_summary(doc)
        status["notifications"] = self.raft.read(lambda s: s.counts_by_status())
        return status

    def ready(self) -> bool:
        return bool(self.raft.status()["ready"])

    def fatal_error(self) -> str | None:
        """Why this voter halted Raft (e.g. a leader streamed a snapshot of a newer format),
        or None. A halted voter acknowledges nothing; the daemon exits so it is noticed."""
        return self.raft.status().get("error")

    def leader(self) -> str | None:
        return self.raft.status()["leader"]

    def members(self) -> list[dict[str, Any]]:
        status = self.raft.status()
        return [
            {"raft_address": v["address"], "voter": True, "reachable": v["reachable"],
             "self": v["address"] == status.get("self_address")}
            for v in status["voters"]
        ]

    def is_leader(self) -> bool:
        return self.raft.status()["role"] == "leader"

    def health(self, max_lag: int) -> tuple[bool, str]:
        status = self.raft.status()
        if not status["ready"]:
            return False, "not joined: no leader known or not caught up"
        # The leader's commit index, not this node's idea of it: a follower cut off from the
        # leader must not call itself healthy because it applied all it had heard of.
        leader_commit = status.get("leader_commit_index") or status["commit_index"]
        lag = leader_commit - status["applied_index"]
        if lag > max_lag:
            return False, f"applied index {lag} entries behind commit (max {max_lag})"
        return True, f"leader {status['leader']}, lag {lag}"

    def query(self, name: str, kwargs: dict[str, Any]) -> Any:
        return self.raft.read(lambda s: run_query(s, name, kwargs))

    async def query_async(self, name: str, kwargs: dict[str, Any]) -> Any:
        return self.query(name, kwargs)

    # --- writes -----------------------------------------------------------------------------
    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """``ClusterState.apply``'s answer once committed and applied here, or a retryable
        failure; answers within ``PROPOSE_TIMEOUT`` (plus the renewal batch window for a
        lease renewal) whatever pysyncobj does."""
        if batchable(command):
            return await self.renewals.renew(command)
        return await self._propose(command)

    async def _propose(self, command: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(result: dict | None, error: str | None) -> None:
            loop.call_soon_threadsafe(_resolve, future, result, error)

        self.raft.propose({"at": time.time(), **command}, done)
        # One plain timer that resolves the same future (wait_for would add a waiter future
        # and callbacks per proposal); whichever of commit and timer comes first wins.
        timer = loop.call_later(PROPOSE_TIMEOUT, _resolve, future, None, _TIMED_OUT)
        try:
            result, error = await future
        finally:
            timer.cancel()
        if error is _TIMED_OUT:
            return {"ok": False, "retryable": True,
                    "error": f"the log did not commit within {PROPOSE_TIMEOUT:g} s"}
        if error is not None:
            return {"ok": False, "error": f"the log refused the command: {error}", "retryable": True}
        return result


_TIMED_OUT: Any = object()  # the error _resolve gets when PROPOSE_TIMEOUT ran out


def _resolve(future: asyncio.Future, result: dict | None, error: str | None) -> None:
    if not future.done():
        future.set_result((result, error))
