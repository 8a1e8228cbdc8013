"""Fakes shared by the recovery tests (this module holds no tests).

- ``FakeCloud``: Nova's state and the rules the engine depends on, in memory: evacuation
  refused (400) while the source compute service is up and not forced down, a target host
  must be up, enabled and have room, a second evacuation during a rebuild accepted (as Nova
  does) and flagged, an evacuation's migration record (accepted > done, or error with no
  host) and the window real Nova shows after a rebuild (ACTIVE, no task, still on the
  source host for ``window`` looks before ``host`` moves and the migration is done), stop/
  start refused (409) while a task runs, disabling a
  dead host that is not forced down hangs (as real Nova's RPC to the dead compute does: the
  client times out), instances move through Nova's task states, one step per look at the
  server. It records every world-changing call, counts evacuations per instance and flags
  every moment an instance would run on two powered hosts (a double run).
- ``FakeNova``: one engine's client of the cloud, with the recovery.nova.NovaClient
  coroutines. ``kill()`` makes every later call hang forever (a SIGKILLed leader sends
  nothing more).
- ``Cluster`` / ``FakeAgent``: a real ClusterState behind the AgentNode calls the engine
  makes (propose, query, is_leader, status), with a leader name and a Raft term the test
  moves, and hooks run after each applied command (kill points).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import time
import uuid as uuidlib
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from consensus.state import ClusterState
from hagent.config import RecoveryConfig
from hagent.queries import run_query
from recovery.engine import RecoveryEngine
from recovery.nova import MigrationView, NovaError, ServerView, ServiceView

FINAL = ("finished", "failed", "ignored")


def uid(label: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, label))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


# --- Nova ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Host:
    name: str
    powered: bool = True
    forced_down: bool = False
    status: str = "enabled"
    disabled_reason: str | None = None
    capacity: int = 1000
    has_service: bool = True


@dataclasses.dataclass
class Server:
    id: str
    name: str
    host: str
    vm_state: str = "active"
    task_state: str | None = None
    power_state: int = 1
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # (looks left, what to do) of the task in progress
    pending: list[Any] = dataclasses.field(default_factory=list)

    def view(self) -> ServerView:
        status = {"active": "ACTIVE", "stopped": "SHUTOFF", "error": "ERROR"}.get(
            self.vm_state, self.vm_state.upper())
        if self.task_state in ("rebuilding", "rebuild_spawning"):
            status = "REBUILD"
        return ServerView(id=self.id, name=self.name, status=status, vm_state=self.vm_state,
                          task_state=self.task_state, power_state=self.power_state,
                          host=self.host, metadata=dict(self.metadata), project_id="p1")


class FakeCloud:
    """Nova's state and rules (module docstring). ``looks`` is how many looks at a server a
    task takes to finish (an evacuation on real Nova: ~3 s); ``window`` how many more an
    evacuated server shows its end state on the source host before ``host`` moves."""

    def __init__(self, hosts: list[str], looks: int = 3, window: int = 4) -> None:
        self.hosts = {h: Host(h) for h in hosts}
        self.servers: dict[str, Server] = {}
        self.aggregates: dict[str, dict[str, Any]] = {}
        self.looks = looks
        self.window = window
        self.migrations: list[MigrationView] = []
        self._migration_ids = itertools.count(1)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.evacuate_calls: collections.Counter[str] = collections.Counter()
        self.evacuations: collections.Counter[str] = collections.Counter()  # accepted
        self.double_runs: list[str] = []
        self.faults: dict[str, list[tuple[NovaError, bool]]] = collections.defaultdict(list)
        self.in_flight = 0
        self.claims: collections.Counter[str] = collections.Counter()
        self.max_in_flight = 0
        self._actions: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self._names = itertools.count(1)

    # --- building ---
    def boot(self, host: str, *, ha: bool | None = True, vm_state: str = "active",
             task_state: str | None = None, label: str | None = None) -> str:
        n = next(self._names)
        server_id = uid(f"vm/{label or n}")
        power = 4 if vm_state == "stopped" else 1
        metadata = {} if ha is None else {"HA_Enabled": "True" if ha else "False"}
        self.servers[server_id] = Server(server_id, f"vm{n}", host, vm_state, task_state, power,
                                         metadata)
        self._actions[server_id].append({"action": "create"})
        return server_id

    def power_off(self, host: str) -> None:
        self.hosts[host].powered = False

    def fail(self, op: str, error: NovaError, times: int = 1, after: bool = False) -> None:
        """The next ``times`` calls of ``op`` raise ``error`` (``after``: once done)."""
        self.faults[op].extend([(error, after)] * times)

    def runs_on(self, server_id: str) -> str | None:
        s = self.servers[server_id]
        return s.host if s.vm_state == "active" and self.hosts[s.host].powered else None

    # --- internals ---
    def _fault(self, op: str, after: bool) -> None:
        queue = self.faults.get(op)
        if queue and queue[0][1] == after:
            error, _ = queue.pop(0)
            raise error

    def service_state(self, host: Host) -> str:
        return "up" if host.powered and not host.forced_down else "down"

    def _service(self, name: str) -> ServiceView | None:
        host = self.hosts.get(name)
        if host is None or not host.has_service:
            return None
        return ServiceView(id=uid(f"svc/{name}"), host=name, state=self.service_state(host),
                           status=host.status, forced_down=host.forced_down,
                           disabled_reason=host.disabled_reason)

    def _need_service(self, name: str) -> Host:
        if self._service(name) is None:
            raise NovaError(f"no nova-compute service on host {name}", status=404,
                            retryable=False)
        return self.hosts[name]

    def _need_server(self, server_id: str) -> Server:
        server = self.servers.get(server_id)
        if server is None:
            raise NovaError(f"server {server_id}: HTTP 404", status=404, retryable=False)
        return server

    def _look(self, server: Server) -> None:
        """Time passes for a server each time someone looks at it."""
        if server.pending:
            left, finish = server.pending[0]
            if left <= 1:
                server.pending.pop(0)
                finish()
            else:
                server.pending[0] = (left - 1, finish)

    def _load(self, host: str) -> int:
        """Instances on ``host`` and evacuations on their way to it (Placement's claims)."""
        return sum(1 for s in self.servers.values() if s.host == host) + self.claims[host]

    # --- the NovaClient calls ---
    async def call(self, op: str, *args: Any) -> Any:
        self._fault(op, after=False)
        result = getattr(self, "_" + op)(*args)
        if op in ("force_down", "unset_force_down", "disable", "enable", "evacuate", "stop",
                  "start", "reset_state", "add_host_to_aggregate"):
            self.calls.append((op, args))
        self._fault(op, after=True)
        return result

    def _compute_service(self, host: str) -> ServiceView | None:
        return self._service(host)

    def _force_down(self, host: str) -> ServiceView:
        self._need_service(host).forced_down = True
        return self._service(host)

    def _unset_force_down(self, host: str) -> ServiceView:
        self._need_service(host).forced_down = False
        return self._service(host)

    def _disable(self, host: str, reason: str) -> ServiceView:
        h = self._need_service(host)
        if not h.powered and not h.forced_down:
            raise NovaError(f"disable nova-compute on host {host}: no answer within 30 s "
                            "(nova-api RPC to the dead compute)", status=None, retryable=True)
        h.status, h.disabled_reason = "disabled", reason
        return self._service(host)

    def _enable(self, host: str) -> ServiceView:
        h = self._need_service(host)
        h.status, h.disabled_reason = "enabled", None
        return self._service(host)

    def _servers_on_host(self, host: str) -> list[ServerView]:
        return [s.view() for s in self.servers.values() if s.host == host]

    def _server(self, server_id: str) -> ServerView | None:
        server = self.servers.get(server_id)
        if server is None:
            return None
        self._look(server)
        return server.view()

    def _evacuate(self, server_id: str, target: str | None) -> None:
        self.evacuate_calls[server_id] += 1
        server = self._need_server(server_id)
        source = self.hosts[server.host]
        if self.service_state(source) == "up":
            raise NovaError(f"evacuate server {server_id}: HTTP 400: Compute service of "
                            f"{source.name} is still in use.", status=400, retryable=False)
        if any(m.instance == server_id and m.status == "accepted" for m in self.migrations):
            # Nova's evacuate checks no task_state (and in the window there is none): two
            # rebuilds race, both guests run
            self.double_runs.append(f"{server.id}: evacuated again while being rebuilt")
        if server.vm_state not in ("active", "stopped", "error"):
            raise NovaError(f"evacuate server {server_id}: HTTP 409: vm_state "
                            f"{server.vm_state}", status=409, retryable=True)
        if target is not None:
            t = self.hosts.get(target)
            if (t is None or target == source.name or self.service_state(t) != "up"
                    or t.status != "enabled" or self._load(target) >= t.capacity):
                raise NovaError(f"evacuate server {server_id}: HTTP 400: host {target} is not "
                                "available", status=400, retryable=False)
            dest = target
        else:
            fits = sorted((self._load(h.name), h.name) for h in self.hosts.values()
                          if h.name != source.name and self.service_state(h) == "up"
                          and h.status == "enabled" and self._load(h.name) < h.capacity)
            dest = fits[0][1] if fits else None
        self.evacuations[server_id] += 1
        self._actions[server_id].append({"action": "evacuate"})
        migration = MigrationView(id=next(self._migration_ids), uuid=uid(f"mig/{server_id}"),
                                  instance=server_id, source=source.name, dest=dest,
                                  status="accepted", created_at=now_iso())
        self.migrations.append(migration)

        def status(value: str) -> None:
            self.migrations[self.migrations.index(migration)] = dataclasses.replace(
                migration, status=value)
        before = server.vm_state
        server.task_state = "rebuilding"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if dest is not None:
            self.claims[dest] += 1

        def rebuilt() -> None:
            server.task_state = None
            if dest is None:  # NoValidHost: Nova puts it in ERROR where it was
                self.in_flight -= 1
                status("error")
                server.vm_state = "error"
                return
            if self.hosts[server.host].powered:  # its old host may still run it
                self.double_runs.append(f"{server.id} on {server.host} and {dest}")
            # saved in its end state, host still the source (the window)
            server.vm_state = "stopped" if before == "stopped" else "active"
            server.power_state = 4 if before == "stopped" else 1
            server.pending.insert(0, (self.window, finish))

        def finish() -> None:  # finish_evacuation
            self.in_flight -= 1
            self.claims[dest] -= 1
            server.host = dest
            status("done")
        server.pending.append((self.looks, rebuilt))

    def _evacuations(self, server_id: str, source: str) -> list[MigrationView]:
        return sorted((m for m in self.migrations
                       if m.instance == server_id and m.source == source), key=lambda m: -m.id)

    def _task(self, server_id: str, task: str, allowed: tuple[str, ...], end: str) -> None:
        server = self._need_server(server_id)
        if server.task_state is not None or server.vm_state not in allowed:
            raise NovaError(f"server {server_id}: HTTP 409: cannot {task} while "
                            f"{server.vm_state}/{server.task_state}", status=409, retryable=True)
        server.task_state = task

        def finish() -> None:
            server.task_state = None
            server.vm_state = end
            server.power_state = 4 if end == "stopped" else 1
        server.pending.append((self.looks, finish))

    def _stop(self, server_id: str) -> None:
        self._task(server_id, "powering-off", ("active", "error"), "stopped")

    def _start(self, server_id: str) -> None:
        self._task(server_id, "powering-on", ("stopped",), "active")

    def _reset_state(self, server_id: str, state: str) -> None:
        server = self._need_server(server_id)
        server.vm_state, server.task_state = state, None

    def _instance_actions(self, server_id: str) -> list[dict[str, Any]]:
        return list(reversed(self._actions[server_id]))

    def _aggregates_with_host(self, host: str) -> list[dict[str, Any]]:
        return [dict(a, hosts=list(a["hosts"])) for a in self.aggregates.values()
                if host in a["hosts"]]

    def _add_host_to_aggregate(self, aggregate_id: str, host: str) -> None:
        aggregate = self.aggregates[aggregate_id]
        if host in aggregate["hosts"]:
            raise NovaError("HTTP 409: already in aggregate", status=409, retryable=True)
        aggregate["hosts"].append(host)


class FakeNova:
    """One engine's client (the recovery.nova.NovaClient coroutines) on a FakeCloud."""

    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.dead = False
        self.after: list[Callable[[FakeNova, str, tuple[Any, ...]], None]] = []
        # Awaited before a call reaches Nova (a process paused just before its call).
        self.gate: Callable[[str, tuple[Any, ...]], Awaitable[None]] | None = None

    def kill(self) -> None:
        self.dead = True

    async def _call(self, op: str, *args: Any) -> Any:
        if self.dead:
            await asyncio.Event().wait()  # a killed process makes no more calls
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate(op, args)
        result = await self.cloud.call(op, *args)
        for hook in self.after:
            hook(self, op, args)
        return result

    async def compute_service(self, host): return await self._call("compute_service", host)
    async def force_down(self, host): return await self._call("force_down", host)
    async def unset_force_down(self, host): return await self._call("unset_force_down", host)
    async def disable(self, host, reason): return await self._call("disable", host, reason)
    async def enable(self, host): return await self._call("enable", host)
    async def servers_on_host(self, host): return await self._call("servers_on_host", host)
    async def server(self, server_id): return await self._call("server", server_id)

    async def evacuate(self, server_id, target_host=None):
        return await self._call("evacuate", server_id, target_host)

    async def evacuations(self, server_id, source_host):
        return await self._call("evacuations", server_id, source_host)

    async def stop(self, server_id): return await self._call("stop", server_id)
    async def start(self, server_id): return await self._call("start", server_id)

    async def reset_state(self, server_id, state):
        return await self._call("reset_state", server_id, state)

    async def instance_actions(self, server_id):
        return await self._call("instance_actions", server_id)

    async def aggregates_with_host(self, host):
        return await self._call("aggregates_with_host", host)

    async def add_host_to_aggregate(self, aggregate_id, host):
        return await self._call("add_host_to_aggregate", aggregate_id, host)


# --- the log --------------------------------------------------------------------------------

class Cluster:
    """A replicated state as every voter sees it, the current leader and Raft term."""

    def __init__(self, hosts: list[str], recovery_method: str = "auto",
                 reserved: tuple[str, ...] = ()) -> None:
        self.state = ClusterState()
        self.leader = "a"
        self.term = 1
        self.applied: list[dict[str, Any]] = []
        self.hooks: list[Callable[[FakeAgent, dict, dict], None]] = []
        self.ok({"op": "segment.create", "uuid": uid("segment/s"), "name": "s",
                 "recovery_method": recovery_method, "service_type": "COMPUTE"})
        for host in hosts:
            self.ok({"op": "host.create", "uuid": uid("host/" + host), "name": host,
                     "type": "COMPUTE", "control_attributes": "", "segment": "s",
                     "reserved": host in reserved})

    def ok(self, command: dict[str, Any]) -> Any:
        answer = self.state.apply({"at": time.time(), **command})
        assert answer["ok"], answer
        return answer["result"]

    def host_down(self, host: str, fenced: bool = True) -> str:
        """host.down (+ host.fenced): the STOPPED notification detection commits."""
        uuid = str(uuidlib.uuid4())
        self.ok({"op": "host.down", "hostname": host, "notification_uuid": uuid,
                 "generated_time": now_iso(), "source_node": "a"})
        if fenced:
            self.fence(host)
        return uuid

    def fence(self, host: str) -> None:
        self.ok({"op": "host.fenced", "hostname": host, "method": "lease",
                 "detail": "lease expired"})

    def submit(self, kind: str, host: str, payload: dict[str, str],
               generated_time: str | None = None) -> str:
        uuid = str(uuidlib.uuid4())
        self.ok({"op": "notification.submit", "notification_uuid": uuid, "type": kind,
                 "hostname": host, "generated_time": generated_time or now_iso(),
                 "payload": payload,
                 "source_node": host})
        return uuid

    def notification(self, uuid: str) -> dict[str, Any]:
        return self.state.get_notification(uuid)

    def steps(self, uuid: str) -> list[tuple[str, str, str | None]]:
        return [(s["step"], s["key"], s["outcome"])
                for s in self.notification(uuid)["recovery_steps"]]


class FakeAgent:
    """What the engine asks of an agent, on a Cluster (module docstring)."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.dead = False
        # A deposed leader that has not heard of the new term yet still sees (True, old term).
        self.stale_term: int | None = None
        # Awaited before a proposal is applied (a slow or paused leader).
        self.gate: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    def kill(self) -> None:
        self.dead = True

    def is_leader(self) -> bool:
        if self.stale_term is not None:
            return not self.dead
        return not self.dead and self.cluster.leader == self.name

    def status(self) -> dict[str, Any]:
        return {"term": self.stale_term if self.stale_term is not None else self.cluster.term}

    async def query(self, name: str, **kwargs: Any) -> Any:
        if self.dead:
            await asyncio.Event().wait()
        return run_query(self.cluster.state, name, kwargs)

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        if self.dead:
            await asyncio.Event().wait()
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate(command)
        command = {"at": time.time(), **command}
        answer = self.cluster.state.apply(command)
        self.cluster.applied.append(command)
        for hook in list(self.cluster.hooks):
            hook(self, command, answer)
        return answer


def config(**changes: Any) -> RecoveryConfig:
    """[recovery] with test timings: polls of 1 ms, deadlines of a second or two."""
    base = dict(poll_interval=0.001, evacuate_timeout=2.0, stop_timeout=2.0,
                start_timeout=2.0, nova_timeout=1.0, retry_interval=0.01,
                retry_interval_max=0.05, max_retries=2)
    base.update(changes)
    return RecoveryConfig(**base)


def engine(cluster: Cluster, cloud: FakeCloud, name: str = "a",
           **changes: Any) -> tuple[RecoveryEngine, FakeAgent, FakeNova]:
    agent, nova = FakeAgent(cluster, name), FakeNova(cloud)
    grace = changes.pop("deposed_grace", 0.05)
    eng = RecoveryEngine(agent, nova, config(**changes), name, scan_interval=0.005,
                         call_pause=0.001, deposed_grace=grace)
    return eng, agent, nova


async def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.002)


async def turns(eng: RecoveryEngine, n: int = 5) -> None:
    """Wait until the engine went round its loop ``n`` more times (to see nothing happen)."""
    start = eng.counters["turns"]
    eng.wake()
    await until(lambda: eng.counters["turns"] >= start + n, what=f"{n} engine turns")


async def settle(cluster: Cluster, uuid: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until notification ``uuid`` is final; return its record."""
    await until(lambda: cluster.notification(uuid)["status"] in FINAL, timeout,
                f"notification {uuid} final (now {cluster.notification(uuid)['status']})")
    return cluster.notification(uuid)
