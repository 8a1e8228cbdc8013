"""The agent daemon: wires config, the node's backend, the submitter, the admin socket and the
status endpoint together, and speaks the systemd notify protocol.

The backend is what kind of node this is:

- a **voter** (``hagent.agent_voter``) runs a RaftNode (pysyncobj, in its own thread) and the
  forward server through which non-voters propose and read;
- a **non-voter** (``hagent.agent_replica``) keeps no Raft state and holds no Raft secret: it
  forwards proposals and reads to the voters over CURVE-secured ZeroMQ (docs/nonvoters.md).

Everything else (spool, submitter, admin socket, status endpoint, metrics) is the same on
both and talks to the backend only through ``Agent``, which implements
``hagent.node_api.AgentNode``.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from prometheus_client import CollectorRegistry

from hagent import sdnotify
from hagent.admin.server import AdminServer
from hagent.agent_replica import ReplicaBackend
from hagent.agent_voter import VoterBackend
from hagent.config import Config
from hagent.forward.metrics import register_forward_metrics
from hagent.metrics import register_agent_metrics
from hagent.spool import Spool
from hagent.status_http import StatusServer
from hagent.submitter import Submitter

log = logging.getLogger(__name__)

# How often the daemon re-checks whether it has joined the log while starting.
JOIN_POLL = 0.05
# How often the daemon checks whether its backend halted (a halted voter acks nothing, so
# a couple of seconds to exit costs nothing; polling faster costs idle CPU).
FATAL_POLL = 2.0


class Agent:
    """One node's agent; implements hagent.node_api.AgentNode."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.node.name
        self.registry = CollectorRegistry()
        state_dir = config.node.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        backend_class = VoterBackend if config.is_voter else ReplicaBackend
        self.backend: VoterBackend | ReplicaBackend = backend_class(config, self.name)
        self.spool = Spool(state_dir / "spool")
        self.submitter = Submitter(
            propose=self.propose,
            spool=self.spool,
            node_name=self.name,
            resend_interval=config.notifications.resend_interval,
            submit_timeout=config.notifications.submit_timeout,
            max_in_flight=config.notifications.max_in_flight,
            # Agent.propose answers in bounded time by itself (a voter within
            # PROPOSE_TIMEOUT, a non-voter within forward.timeout per voter): no second timer.
            propose_timeout=None,
        )
        register_agent_metrics(self)
        register_forward_metrics(self)

    # --- AgentNode -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = self.backend.status()
        status["node"] = self.name
        status["spool_depth"] = self.submitter.pending_count()
        return status

    def members(self) -> list[dict[str, Any]]:
        return self.backend.members()

    def is_leader(self) -> bool:
        return self.backend.is_leader()

    def health(self) -> tuple[bool, str]:
        return self.backend.health(self.config.status.max_lag)

    async def query(self, name: str, **kwargs: Any) -> Any:
        return await self.backend.query_async(name, kwargs)

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self.backend.propose({"at": time.time(), **command})

    async def submit_notification(self, fields: dict[str, Any]) -> dict[str, Any]:
        return await self.submitter.submit(fields)


async def _wait_ready(agent: Agent, stop: asyncio.Event) -> bool:
    while not stop.is_set():
        if agent.backend.ready():
            return True
        try:
            await asyncio.wait_for(stop.wait(), JOIN_POLL)
        except asyncio.TimeoutError:
            pass
    return False


async def _exit_on_fatal(agent: Agent, stop: asyncio.Event, exit_status: list[int]) -> None:
    """Stop the agent (exit 1, so systemd restarts it and start-up says why) once its
    backend has halted; a halted voter must not look alive to systemd's watchdog."""
    while not stop.is_set():
        error = agent.backend.fatal_error()
        if error:
            log.critical("stopping: %s", error)
            exit_status[0] = 1
            stop.set()
            return
        try:
            await asyncio.wait_for(stop.wait(), FATAL_POLL)
        except asyncio.TimeoutError:
            pass


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
    exit_status = [0]
    started = False
    try:
        await agent.backend.start()
        started = True
        await admin.start()
        status_server.start()
        await agent.submitter.start()
        tasks.append(asyncio.create_task(_exit_on_fatal(agent, stop, exit_status)))
        interval = sdnotify.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(_watchdog_pings(interval / 2)))
        log.info("started: %s, raft %s, forward %s, admin %s, status http://%s",
                 agent.backend.kind, config.raft.bind or "(none: non-voter)",
                 config.forward_bind or ("client" if not config.is_voter else "off"),
                 config.admin.socket, config.status.bind)
        if await _wait_ready(agent, stop):
            leader = agent.status()["leader"]
            sdnotify.ready()
            sdnotify.status(f"joined; leader {leader}")
            log.info("joined the log; leader %s", leader)
        await stop.wait()
        log.info("stopping")
        sdnotify.stopping()
    finally:
        for task in tasks:
            task.cancel()
        await agent.submitter.stop()
        await admin.stop()
        status_server.stop()
        if started:
            await agent.backend.stop()
        elif isinstance(agent.backend, VoterBackend):
            agent.backend.raft.close()
    return exit_status[0]
