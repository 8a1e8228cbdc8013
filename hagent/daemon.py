"""The agent daemon: wires config, the Raft node, the submitter, the admin socket and the
status endpoint together, and speaks the systemd notify protocol.

The asyncio loop owns everything but Raft; pysyncobj runs in its own autoTick thread and
its callbacks come back to the loop with ``call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any, Callable, TypeVar

from prometheus_client import CollectorRegistry

from consensus.raft import RaftNode
from consensus.state import ClusterState
from hagent import sdnotify
from hagent.admin.server import AdminServer
from hagent.config import Config
from hagent.metrics import register_agent_metrics
from hagent.secretfile import read_secret
from hagent.spool import Spool
from hagent.status_http import StatusServer
from hagent.submitter import Submitter

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a proposal may wait for the log before the caller is told it failed. Longer
# than a leader election (~1-3.5 s measured) so a failover is absorbed, short enough that
# an operator at hagentctl is not left hanging.
PROPOSE_TIMEOUT = 8.0
# How often the daemon re-checks whether it has joined the log while starting.
JOIN_POLL = 0.05


class Agent:
    """One node's agent; implements hagent.node_api.AgentNode."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.node.name
        self.registry = CollectorRegistry()
        self._loop: asyncio.AbstractEventLoop | None = None
        state_dir = config.node.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state = ClusterState(duplicate_interval=config.notifications.duplicate_interval)
        self.raft = RaftNode(
            self_address=config.raft.bind if config.is_voter else None,
            voters=list(config.raft.voters),
            state_dir=state_dir / "raft",
            password=read_secret(config.raft.secret_file),
            options=config.raft,
            state=self.state,
            node_name=self.name,
        )
        self.spool = Spool(state_dir / "spool")
        self.submitter = Submitter(
            propose=self.propose,
            spool=self.spool,
            node_name=self.name,
            resend_interval=config.notifications.resend_interval,
            submit_timeout=config.notifications.submit_timeout,
        )
        register_agent_metrics(self)

    # --- AgentNode -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = self.raft.status()
        status["node"] = self.name
        status["notifications"] = self.read(lambda s: s.counts_by_status())
        status["spool_depth"] = self.submitter.pending_count()
        status["submissions_total"] = self.submitter.submitted
        return status

    def members(self) -> list[dict[str, Any]]:
        status = self.raft.status()
        return [
            {"raft_address": v["address"], "voter": True, "reachable": v["reachable"],
             "self": v["address"] == status.get("self_address")}
            for v in status["voters"]
        ]

    def is_leader(self) -> bool:
        return self.raft.status()["role"] == "leader"

    def health(self) -> tuple[bool, str]:
        status = self.raft.status()
        if not status["ready"]:
            return False, "not joined: no leader known or not caught up"
        lag = status["commit_index"] - status["applied_index"]
        if lag > self.config.status.max_lag:
            return False, f"applied index {lag} entries behind commit (max {self.config.status.max_lag})"
        return True, f"leader {status['leader']}, lag {lag}"

    def read(self, fn: Callable[[ClusterState], T]) -> T:
        return self.raft.read(fn)

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(result: dict | None, error: str | None) -> None:
            loop.call_soon_threadsafe(_resolve, future, result, error)

        self.raft.propose({"at": time.time(), **command}, done)
        try:
            result, error = await asyncio.wait_for(future, PROPOSE_TIMEOUT)
        except asyncio.TimeoutError:
            return {"ok": False, "retryable": True,
                    "error": f"the log did not commit within {PROPOSE_TIMEOUT:g} s"}
        if error is not None:
            return {"ok": False, "error": f"the log refused the command: {error}", "retryable": True}
        return result

    async def submit_notification(self, fields: dict[str, Any]) -> dict[str, Any]:
        return await self.submitter.submit(fields)


def _resolve(future: asyncio.Future, result: dict | None, error: str | None) -> None:
    if not future.done():
        future.set_result((result, error))


async def _wait_joined(agent: Agent, stop: asyncio.Event) -> bool:
    while not stop.is_set():
        if agent.raft.status()["ready"]:
            return True
        try:
            await asyncio.wait_for(stop.wait(), JOIN_POLL)
        except asyncio.TimeoutError:
            pass
    return False


async def _watchdog_pings(interval: float) -> None:
    while True:
        sdnotify.watchdog()
        await asyncio.sleep(interval)


async def serve(config: Config, stop: asyncio.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop``); returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(config)
    admin = AdminServer(agent, config.admin)
    status_server = StatusServer(agent, config.status.bind)
    tasks: list[asyncio.Task] = []
    try:
        await admin.start()
        status_server.start()
        await agent.submitter.start()
        interval = sdnotify.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(_watchdog_pings(interval / 2)))
        log.info("started: %s, raft %s, admin %s, status http://%s",
                 "voter" if config.is_voter else "replica",
                 config.raft.bind or "(replica)", config.admin.socket, config.status.bind)
        if await _wait_joined(agent, stop):
            sdnotify.ready()
            sdnotify.status(f"joined; leader {agent.raft.status()['leader']}")
            log.info("joined the log; leader %s", agent.raft.status()["leader"])
        await stop.wait()
        log.info("stopping")
        sdnotify.stopping()
    finally:
        for task in tasks:
            task.cancel()
        await agent.submitter.stop()
        await admin.stop()
        status_server.stop()
        agent.raft.close()
    return 0
