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

Failure detection runs beside them when ``gossip.bind`` is set: a ``MembershipService``
(``hagent.membership.service``, SWIM over CURVE ZeroMQ) on the same loop, as
``agent.membership``; its events reach other parts through ``agent.membership.subscribe``.

``serve`` starts the agent's parts as a list of ``Component`` (start in order, stop in
reverse, and only those that started): a new long-running part is one entry in
``Agent.components``.

The voter set (docs/voters.md): which backend a process runs comes from the voter set this
node saved (``STATE_DIR/voters.json``, ``hagent.voters.localfile``), else the config's
bootstrap ``raft.voters``; ``self.config`` is the config as this process runs it (its
``raft.voters`` the effective set). A ``RoleWatcher`` registers an eligible node, keeps the
saved set current and, when the log says this node's role changed (promoted, removed, a
promotion aborted), asks for a **re-exec**: ``serve`` stops every part cleanly, saves the
voter set the next role starts from and raises ``RoleSwitch``; ``hagent run`` then execs the
same command line (same PID, so systemd's and the lab's records stay valid). Every voter runs
a ``VoterChanger``, which carries out voter changes while this node leads.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry

from consensus.raft import discard_state as discard_raft_state
from hagent import sdnotify
from hagent.admin.server import AdminServer
from hagent.agent_replica import ReplicaBackend
from hagent.agent_voter import RAFT_DIR, VoterBackend
from hagent.config import Config
from hagent.detection.policy import PolicyKnobs
from hagent.detection.service import DetectionService
from hagent.fencing.inventory import load_fence_inventory
from hagent.fencing.service import LeaseService
from hagent.forward.keys import read_key_pair
from hagent.forward.metrics import register_forward_metrics
from hagent.membership.service import MembershipService
from hagent.metrics import register_agent_metrics, register_gossip_metrics
from hagent.monitors.runner import Monitors
from hagent.secretfile import SecretFileError, read_secret
from hagent.spool import Spool
from hagent.status_http import StatusServer
from hagent.submitter import Submitter
from hagent.voters import localfile
from hagent.voters.autopilot import Autopilot
from hagent.voters.changer import VoterChanger, VoterChangeRefused
from hagent.voters.role import Me, Switch
from hagent.voters.view import describe
from hagent.voters.watcher import RoleWatcher, ask_voters
from recovery.engine import RecoveryEngine
from recovery.nova import NovaClient

log = logging.getLogger(__name__)

# How often the daemon re-checks whether it has joined the log while starting.
JOIN_POLL = 0.05
# How often the daemon checks whether its backend halted (a halted voter acks nothing, so
# a couple of seconds to exit costs nothing; polling faster costs idle CPU).
FATAL_POLL = 2.0


@dataclass
class Component:
    """A long-running part of the agent: ``start()`` brings it up (raising if it cannot),
    ``stop()`` takes it down; either may be a plain function or a coroutine function."""

    name: str
    start: Callable[[], Awaitable[None] | None]
    stop: Callable[[], Awaitable[None] | None]


class RoleSwitch(Exception):
    """Raised out of ``serve`` once the agent stopped for a role switch and saved the voter
    set its next role starts from: ``hagent run`` re-execs itself on it."""

    def __init__(self, switch: Switch) -> None:
        super().__init__(f"re-exec as a {switch.to}: {switch.reason}")
        self.switch = switch


class _LeaseVerdicts:
    """The lease judge as detection sees it: the LeaseService builds its judge only when it
    starts (and only on voters), after detection was built; no judge, no lease verdict."""

    def __init__(self, leases: LeaseService) -> None:
        self._leases = leases

    def fenced(self, host: str, now: float) -> bool:
        judge = self._leases.judge
        return judge is not None and judge.fenced(host, now)


async def _call(fn: Callable[[], Awaitable[None] | None]) -> None:
    result = fn()
    if inspect.isawaitable(result):
        await result


class Agent:
    """One node's agent; implements hagent.node_api.AgentNode."""

    def __init__(self, config: Config) -> None:
        self.name = config.node.name
        self.registry = CollectorRegistry()
        self.lease_ttl = config.fencing.lease_ttl
        state_dir = config.node.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        #: The voter target: voters.target, or as many as the bootstrap set has.
        self.voter_target = config.voters.target or len(config.raft.voters)
        self.local_voters = localfile.effective(config)
        bootstrap, config = config, localfile.run_config(config, self.local_voters)
        self.config = config
        self.switch_to: Switch | None = None  # set: serve stops and re-execs into it
        self._stop: asyncio.Event | None = None
        if config.is_voter:
            self.backend: VoterBackend | ReplicaBackend = VoterBackend(
                config, self.name, self.local_voters.addresses,
                voters_index=self.local_voters.index,
                voters_file=localfile.path_in(state_dir))
        else:
            _drop_raft_state(state_dir, self.local_voters)
            self.backend = ReplicaBackend(config, self.name,
                                          localfile.forward_targets(bootstrap, self.local_voters))
        self.changer: VoterChanger | None = None
        if isinstance(self.backend, VoterBackend):
            self.changer = VoterChanger(self.backend,
                                        max_catchup_lag=config.voters.max_catchup_lag,
                                        catchup_timeout=config.voters.catchup_timeout)
        key_pair = read_key_pair(config.security.key_file) if config.forwarding else None
        self.role_watcher: RoleWatcher | None = None
        if key_pair is not None:
            raft_address = config.raft.bind if self._may_vote(config) else ""
            me = Me(self.name, raft_address, config.own_forward_endpoint, key_pair.public)
            self.role_watcher = RoleWatcher(
                self.backend, me, self.local_voters, voter=config.is_voter,
                failure_domain=config.voters.failure_domain, state_dir=state_dir,
                switch=self.request_switch, ask=functools.partial(ask_voters, key_pair=key_pair))
        self.membership: MembershipService | None = None
        if config.gossip.bind:
            self.membership = MembershipService(config, read_key_pair(config.security.key_file),
                                                self.name)
        else:
            log.warning("gossip.bind is empty: this node takes no part in failure detection, "
                        "so nobody notices if it dies; set gossip.bind (docs/configuration.md)")
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
        self.monitors = Monitors.from_config(config, self.submit_notification)
        self.leases = LeaseService(config, self, self.name)
        self.detection: DetectionService | None = None
        if self.membership is not None:
            drivers = (load_fence_inventory(Path(config.fencing.bmc_inventory))
                       if config.fencing.bmc_inventory else {})
            self.detection = DetectionService(
                self, self.membership, _LeaseVerdicts(self.leases), self.name,
                PolicyKnobs(up_damping=config.detection.up_damping), drivers,
                # A follower checks four times a second whether it became leader: a new
                # leader must take over detection at once, not up to a second later.
                follower_poll=0.25)
        self.autopilot: Autopilot | None = None
        if (self.changer is not None and self.membership is not None
                and config.voters.auto_replace):
            # It reads gossip and the incidents detection commits; it acts only as leader.
            self.autopilot = Autopilot(self, self.membership, self.changer, self.voter_target,
                                       registry=self.registry, wake_on=self.backend)
        self.recovery: RecoveryEngine | None = None
        if config.recovery.enabled and config.is_voter:
            # Every voter may become the leader that recovers; the engine acts only while
            # this node leads (recovery/engine.py).
            self._nova = NovaClient.from_config(config.recovery)
            fencing = config.fencing
            self.recovery = RecoveryEngine(
                self, self._nova, config.recovery, self.name,
                term_of=lambda: self.backend.raft.status()["term"],
                unsafe=fencing.watchdog_mode == "off" or fencing.watchdog_driver == "none",
                deposed_grace=fencing.lease_ttl)
        self.admin = AdminServer(self, config.admin)
        self.status_server = StatusServer(self, config.status.bind)
        register_agent_metrics(self)
        register_forward_metrics(self)
        register_gossip_metrics(self)

    def components(self) -> list[Component]:
        """The parts ``serve`` starts, in start order (stopped in reverse): the log first
        (everything else needs it), leases before membership (a host renews before others
        may judge it), detection, the voter autopilot and recovery after membership, the
        admin socket and the status endpoint before the submitter (it proposes at once), the
        monitors last (their stop hands what they queued to the submitter's spool)."""
        parts = [Component("backend", self.backend.start, self.backend.stop)]
        if self.role_watcher is not None:
            parts.append(Component("voter role", self.role_watcher.start, self.role_watcher.stop))
        if self.changer is not None:
            parts.append(Component("voter changes", self.changer.start, self.changer.stop))
        parts.append(Component("leases", self.leases.start, self.leases.stop))
        if self.membership is not None:
            parts.append(Component("membership", self.membership.start, self.membership.stop))
        if self.detection is not None:
            parts.append(Component("detection", self.detection.start, self.detection.stop))
        if self.autopilot is not None:
            parts.append(Component("voter autopilot", self.autopilot.start, self.autopilot.stop))
        if self.recovery is not None:
            parts.append(Component("recovery", self._start_recovery, self._stop_recovery))
        parts += [
            Component("admin socket", self.admin.start, self.admin.stop),
            Component("status endpoint", self.status_server.start, self.status_server.stop),
            Component("submitter", self.submitter.start, self.submitter.stop),
            # After the submitter: their stop hands what they queued to the spool.
            Component("monitors", self.monitors.start, self.monitors.stop),
        ]
        return parts

    async def _start_recovery(self) -> None:
        assert self.recovery is not None
        await self.recovery.start()
        self.backend.add_apply_observer(self.recovery.observe)

    async def _stop_recovery(self) -> None:
        assert self.recovery is not None
        self.backend.remove_apply_observer(self.recovery.observe)
        await self.recovery.stop()
        self._nova.close()

    @staticmethod
    def _may_vote(config: Config) -> bool:
        """Whether this node may be promoted: it has a Raft address and, if it is a
        non-voter, a Raft secret it can read now (a candidate that could not read it would
        fail to start as a voter). One that cannot is not registered, so never promoted."""
        if not config.eligible or config.is_voter:
            return config.eligible
        try:
            read_secret(config.raft.secret_file)
        except SecretFileError as exc:
            log.error("not registering as eligible for the voter set: %s", exc)
            return False
        return True

    def request_switch(self, switch: Switch) -> None:
        """Stop the agent for a re-exec into ``switch`` (first request wins)."""
        if self.switch_to is not None:
            return
        log.warning("role switch: %s", switch.reason)
        self.switch_to = switch
        if self._stop is not None:
            self._stop.set()

    # --- AgentNode -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = self.backend.status()
        status["node"] = self.name
        status["spool_depth"] = self.submitter.pending_count()
        status["lease"] = self.leases.lease_status()
        status["monitors"] = self.monitors.status()
        if self.detection is not None:
            status["detection"] = dict(self.detection.counters)
        if self.recovery is not None:
            status["recovery"] = self.recovery.status()
        if self.changer is not None:
            status["voter_changer"] = self.changer.status()
        if self.autopilot is not None:
            status["autopilot"] = self.autopilot.status()
        if self.membership is not None:
            snap = self.membership.snapshot()
            status["members"] = [{"name": m["name"], "state": m["state"],
                                  "incarnation": m["incarnation"]} for m in snap.members]
            status["membership"] = {"address": self.membership.address,
                                    "members_by_state": snap.by_state(),
                                    "health_score": snap.health_score}
        return status

    def members(self) -> list[dict[str, Any]]:
        if self.membership is not None:
            return self.membership.members()
        return self.backend.members()

    def lease_expires_in(self, host: str, lease: dict[str, Any] | None) -> float | None:
        """Seconds until ``host``'s lease runs out. On the leader, its judge's own figure
        (the one that decides fencing, on this node's monotonic clock); elsewhere an
        estimate from the latest committed renewal (``lease``: the replicated record,
        renewed_at = the renewing host's wall clock), shown to operators and used for nothing."""
        judge = self.leases.judge
        if judge is not None:
            expires = judge.expires_in(host, time.monotonic())
            if expires is not None:
                return expires
        if lease is None:
            return None
        return lease["renewed_at"] + self.lease_ttl - time.time()

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

    async def voters_view(self) -> dict[str, Any]:
        common = {"target": self.voter_target, "auto_replace": self.config.voters.auto_replace}
        if isinstance(self.backend, VoterBackend):
            raft = self.backend.raft
            status = raft.status()
            return describe(self.backend.query("voters", {}), raft_status=status,
                            members=raft.cluster_members(),
                            commit_index=status["commit_index"], **common)
        return describe(await self.backend.query_async("voters", {}),
                        raft_status=self.backend.status(), **common)

    async def change_voters(self, kind: str, node: str, *, wait: float) -> dict[str, Any]:
        if self.changer is None:
            leader = self.backend.status().get("leader")
            raise VoterChangeRefused(
                f"this node is a non-voter: change the voter set on a voter (the leader is "
                f"{leader or 'not known'})")
        if kind == "add":
            return await self.changer.add_voter(node, wait=wait)
        return await self.changer.remove_voter(node, wait=wait)


def _drop_raft_state(state_dir: Path, local: localfile.LocalVoters) -> None:
    """A non-voter keeps no Raft state (docs/voters.md): a node removed from the voter set
    (re-exec'd, or restarted after it was removed or replaced while down) drops what it kept
    as a voter, so that a later promotion starts empty from the voter set it is given and
    gets the log from the leader, instead of from its old log's voter set. Only when its
    role comes from voters.json, the committed set as this node last applied it: without
    the file the role is the config's bootstrap guess, and a voter promoted at runtime whose
    file was deleted must keep its log (the role watcher re-execs it as the voter it is)."""
    raft_dir = state_dir / RAFT_DIR
    if not raft_dir.exists():
        return
    if local.source == "config":
        log.warning("%s holds Raft state but this node starts as a non-voter from the "
                    "config's raft.voters (no %s): keeping it in case this node is still a "
                    "voter; if it is not, remove the directory before it is promoted",
                    raft_dir, localfile.path_in(state_dir))
        return
    removed = discard_raft_state(raft_dir)
    if removed:
        log.info("not a voter (voter set from %s): removed the Raft state it kept as one "
                 "(%s in %s)", local.source, ", ".join(removed), raft_dir)


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


def _give_up_candidacy(config: Config) -> None:
    """A promotion candidate that cannot start as a voter (its Raft address taken, its
    secret unreadable, ...) starts as a non-voter next time instead of failing the same way
    forever: the leader aborts the add once it does not catch up."""
    try:
        local = localfile.effective(config)
        if local.pending:
            localfile.save(config.node.state_dir, local.voters)
            log.error("could not start as a voter to be promoted: the next start is as a "
                      "non-voter (the leader aborts the add)")
    except Exception:  # the start-up failure being raised is what matters
        log.exception("could not give up the promotion after a failed start")


async def serve(config: Config, stop: asyncio.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop``); returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        agent = Agent(config)
    except Exception:
        _give_up_candidacy(config)
        raise
    agent._stop = stop
    configured, config = config, agent.config  # as this process runs it: the effective set
    tasks: list[asyncio.Task] = []
    exit_status = [0]
    started: list[Component] = []
    try:
        for part in agent.components():
            try:
                await _call(part.start)
            except Exception:
                _give_up_candidacy(configured)
                raise
            started.append(part)
        tasks.append(asyncio.create_task(_exit_on_fatal(agent, stop, exit_status)))
        interval = sdnotify.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(_watchdog_pings(interval / 2)))
        log.info("started: %s%s (voter set from %s: %s), raft %s, forward %s, gossip %s, "
                 "admin %s, status http://%s", agent.backend.kind,
                 " (pending: catching up)" if agent.local_voters.pending else "",
                 agent.local_voters.source, ", ".join(config.raft.voters),
                 config.raft.bind if config.is_voter else "(none: non-voter)",
                 config.forward_bind or ("client" if not config.is_voter else "off"),
                 config.gossip.bind or "off", config.admin.socket, config.status.bind)
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
        for part in reversed(started):
            log.debug("stopping the %s", part.name)
            try:
                await _call(part.stop)
            except Exception:  # stop the rest regardless
                log.exception("stopping the %s failed", part.name)
        if not started and isinstance(agent.backend, VoterBackend):
            agent.backend.raft.close()  # built in Agent(), never started
    if agent.switch_to is not None:
        switch = agent.switch_to
        localfile.save(config.node.state_dir, switch.voters, pending=switch.pending,
                       self_address=config.raft.bind)
        raise RoleSwitch(switch)
    return exit_status[0]
