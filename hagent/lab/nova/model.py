"""A simulated Nova: compute services, hypervisors, flavors, servers, aggregates, instance
actions and migrations, with Nova's rules and its transitions over simulated time.

No sockets and no clock: every method takes ``now`` (CLOCK_MONOTONIC seconds; the HTTP shell
passes ``time.monotonic()``, unit tests a number they choose), and ``advance(now)`` runs the
transitions that came due (an evacuation's claim, spawn and end, a boot, a stop...). Thread-safe:
one re-entrant lock, ``lock``, which the HTTP shell also holds while it renders a reply so a
reply never mixes two states.

What real Nova does, and this model copies (sources in docs/nova-simulator.md):

- a compute service is **up** while it is not forced down and its last heartbeat is at most
  ``service_down_time`` old; heartbeats come every ``report_interval`` while the host has power
  and its nova-compute runs;
- **evacuate** checks, in Nova's order: force without host (400), target host unknown (404),
  target = current host (400), vm_state not active/stopped/error (409), source service up
  (400 "Compute service of HOST is still in use."). It then sets task_state rebuilding and
  answers 200; the conductor schedules a destination (up, enabled, not the source, in the
  server's availability zone, with capacity) and, if none, the server goes to ERROR with a
  "No valid host was found" fault (Nova answers 200 first and fails asynchronously). A second
  evacuate of a server already rebuilding is *accepted* (Nova checks no task_state for
  evacuate): both rebuilds run, which the invariant checker then sees as a double run;
- from microversion 2.95 an evacuated server ends stopped; at <= 2.94 it ends in the state it
  had (a stopped one is spawned, then stopped again);
- stop/start: 409 on a wrong vm_state or a task_state; the compute completes them only while
  its nova-compute runs (a stop sent to a dead host stays ``powering-off``);
- disabling (or enabling) a service Nova believes up makes nova-api call the compute over
  RPC: if that compute is in fact dead, the reply waits ``rpc_response_timeout`` (the 60 s
  trap REAL-NOVA.md measured). ``update_service`` returns that wait for the shell to serve;
- a host that loses power stops running its instances at once, while Nova's database still
  says ACTIVE until someone acts; nova-compute starting again destroys the local copies of
  evacuated instances and moves their migrations from done to completed (until then,
  unsetting forced_down is refused with 400).

Instances really run only on powered hosts: ``running()`` is each host's list, which the lab
keeps in the host's power switch, so a power-off empties it.
"""
from __future__ import annotations

import heapq
import itertools
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from hagent.lab.nova import states as st
from hagent.lab.nova.invariants import InvariantChecker
from hagent.lab.nova.records import (DEFAULT_FLAVORS, Action, ActionEvent, Aggregate, Context,
                                     Flavor, Host, HostSpec, Migration, NovaError, Server,
                                     Timings)

#: Nova's message when the scheduler finds no host (nova/exception.py NoValidHost).
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
DEFAULT_AZ = "nova"  # [DEFAULT] default_availability_zone


@dataclass
class _Evacuation:
    server: str
    action: Action
    source: str
    requested_host: str | None
    force: bool
    target_stopped: bool          # 2.95+: Nova's target_state = stopped
    migration: Migration
    dest: str | None = None
    event: ActionEvent | None = None  # compute_rebuild_instance on the destination
    claimed: bool = False         # the destination's resource tracker has counted it

    __hash__ = object.__hash__    # claims are told apart by identity
    __eq__ = object.__eq__


class NovaModel:
    """The simulated Nova; see the module docstring. ``hosts`` maps each compute host name
    to its capacity (a list of names gets the default capacity)."""

    def __init__(self, hosts: Iterable[str] | dict[str, HostSpec], now: float, *,
                 timings: Timings | None = None, flavors: Iterable[Flavor] = DEFAULT_FLAVORS,
                 checker: InvariantChecker | None = None, wall_offset: float | None = None,
                 controller: str = "controller") -> None:
        self.lock = threading.RLock()
        self.timings = timings or Timings()
        self.checker = checker or InvariantChecker()
        self._wall_offset = time.time() - time.monotonic() if wall_offset is None else wall_offset
        specs = hosts if isinstance(hosts, dict) else {name: HostSpec() for name in hosts}
        if not specs:
            raise ValueError("a Nova simulator needs at least one compute host")
        self.controller = controller
        # nova-scheduler and nova-conductor on the controller (ids 1, 2), then one
        # nova-compute per host: os-services lists them all, as Nova does.
        self._other_services = [
            {"binary": binary, "host": controller, "id": i, "uuid": str(uuid.uuid4()),
             "zone": "internal"}
            for i, binary in ((1, "nova-scheduler"), (2, "nova-conductor"))]
        self.hosts: dict[str, Host] = {}
        for index, (name, spec) in enumerate(specs.items()):
            self.hosts[name] = Host(name, spec, service_id=index + 3,
                                    service_uuid=str(uuid.uuid4()), hypervisor_id=index + 1,
                                    hypervisor_uuid=str(uuid.uuid4()), seen_on_at=now,
                                    compute_since=now)
        self.flavors: dict[str, Flavor] = {f.id: f for f in flavors}
        self.servers: dict[str, Server] = {}
        self.aggregates: dict[int, Aggregate] = {}
        self.actions: dict[str, list[Action]] = {}
        self.migrations: list[Migration] = []
        self._claims: list[_Evacuation] = []  # evacuations holding their destination
        self._rt_free: dict[str, float] = {}  # when each compute's resource lock is free
        self._running: dict[str, set[str]] = {name: set() for name in self.hosts}
        self.running_version = 0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)

    # --- time -----------------------------------------------------------------------------

    def wall(self, now: float) -> float:
        """The wall-clock time (epoch seconds) of monotonic ``now``, for API timestamps."""
        return now + self._wall_offset

    def iso(self, now: float | None, micro: bool = False) -> str | None:
        """Nova's timestamp format for monotonic ``now`` (None stays None)."""
        if now is None:
            return None
        moment = datetime.fromtimestamp(self.wall(now), timezone.utc).replace(tzinfo=None)
        return moment.isoformat(timespec="microseconds") if micro else \
            moment.isoformat(timespec="seconds") + "Z"

    def _at(self, due: float, step: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (due, next(self._seq), step, args))

    def advance(self, now: float) -> None:
        """Run every transition due at or before ``now``, in time order (each step runs with
        its own due time, so results do not depend on how often this is called)."""
        with self.lock:
            while self._queue and self._queue[0][0] <= now:
                due, _, step, args = heapq.heappop(self._queue)
                step(due, *args)

    def next_due(self) -> float | None:
        """When the next transition is due (None: nothing pending)."""
        with self.lock:
            return self._queue[0][0] if self._queue else None

    # --- services -------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise NovaError(404, f"Compute host {name} could not be found.") from None

    def heartbeat(self, host: Host, now: float) -> float | None:
        """The last time ``host``'s nova-compute reported (None: never)."""
        if host.compute_since is None:
            return host.last_heartbeat
        interval = self.timings.report_interval
        return host.compute_since + math.floor((now - host.compute_since) / interval) * interval

    def service_is_up(self, host: Host, now: float) -> bool:
        """Nova's servicegroup DB driver: not forced down, last report fresh enough."""
        if host.forced_down:
            return False
        beat = self.heartbeat(host, now)
        return beat is not None and now - beat <= self.timings.service_down_time

    def compute_alive(self, host: Host) -> bool:
        """Whether nova-compute really runs there (what Nova can only guess)."""
        return host.compute_since is not None

    def host_status(self, host_name: str | None, now: float) -> str:
        """A server's ``host_status`` (2.16+), as nova/compute/api.py derives it."""
        if not host_name or host_name not in self.hosts:
            return ""
        host = self.hosts[host_name]
        if host.forced_down:
            return "DOWN"
        if host.disabled:
            return "MAINTENANCE"
        return "UP" if self.service_is_up(host, now) else "UNKNOWN"

    def services(self) -> list[dict[str, Any]]:
        """Every service: controller ones first, then one nova-compute per host."""
        with self.lock:
            out = [dict(s, kind="other") for s in self._other_services]
            out += [{"binary": "nova-compute", "host": h.name, "id": h.service_id,
                     "uuid": h.service_uuid, "zone": self.host_az(h.name), "kind": "compute"}
                    for h in self.hosts.values()]
            return out

    def _compute_by_service_id(self, ident: str) -> Host:
        for host in self.hosts.values():
            if ident in (host.service_uuid, str(host.service_id)):
                return host
        for other in self._other_services:
            if ident in (other["uuid"], str(other["id"])):
                raise NovaError(400, f"Updating a {other['binary']} service is not supported. "
                                     f"Only nova-compute services can be updated.")
        raise NovaError(404, f"Service {ident} could not be found.")

    def update_service(self, ident: str, now: float, *, status: str | None = None,
                       disabled_reason: str | None = None,
                       forced_down: bool | None = None) -> tuple[Host, float]:
        """PUT /os-services/{uuid} (2.53+): the host and how long nova-api's reply waits
        (``rpc_response_timeout`` if it changed ``disabled`` of a service it believes up
        whose nova-compute is dead; else 0)."""
        with self.lock:
            host = self._compute_by_service_id(ident)
            if status is None and forced_down is None:
                raise NovaError(400, "No updates were requested. Fields 'status' or "
                                     "'forced_down' should be specified.")
            return host, self._update_service(host, now, status, disabled_reason, forced_down)

    def update_service_by_host(self, host_name: str, binary: str, now: float, *,
                               status: str | None = None, disabled_reason: str | None = None,
                               forced_down: bool | None = None) -> tuple[Host, float]:
        """The 2.1-2.52 form: PUT /os-services/{enable,disable,disable-log-reason,force-down}
        naming host and binary."""
        with self.lock:
            if binary != "nova-compute":
                raise NovaError(400, f"Updating a {binary} service is not supported. Only "
                                     f"nova-compute services can be updated.")
            if host_name not in self.hosts:
                raise NovaError(404, f"Host '{host_name}' is not mapped to any cell")
            host = self.hosts[host_name]
            return host, self._update_service(host, now, status, disabled_reason, forced_down)

    def _update_service(self, host: Host, now: float, status: str | None,
                        disabled_reason: str | None, forced_down: bool | None) -> float:
        if status == "enabled" and disabled_reason:
            raise NovaError(400, "Specifying 'disabled_reason' with status 'enabled' is invalid.")
        if forced_down is False and any(m.source == host.name and m.status == "done"
                                        for m in self.migrations):
            raise NovaError(400, f"Unable to force up host {host.name} as `done` evacuation "
                                 f"migration records remain associated with the host. Ensure "
                                 f"the compute service has been restarted, allowing these "
                                 f"records to move to `completed` before retrying this request.")
        was_disabled = host.disabled
        if status == "enabled":
            host.disabled, host.disabled_reason = False, None
        elif status == "disabled":
            host.disabled, host.disabled_reason = True, disabled_reason
        if forced_down is not None:
            host.forced_down = forced_down
        # nova-api syncs the COMPUTE_STATUS_DISABLED trait by an RPC *call* to the compute
        # when `disabled` changed and the service looks up (after the save above).
        if host.disabled != was_disabled and self.service_is_up(host, now) \
                and not self.compute_alive(host):
            return self.timings.rpc_response_timeout
        return 0.0

    # --- power and nova-compute -----------------------------------------------------------

    def power_off(self, host_name: str, at: float) -> None:
        """The host lost power at ``at``: it runs nothing any more, its nova-compute is gone
        (it stops reporting), Nova's database is untouched."""
        with self.lock:
            host = self.host(host_name)
            if not host.power_on:
                return
            host.power_on, host.off_at = False, at
            self._compute_dies(host, at)
            if self._running[host_name]:
                self._running[host_name].clear()
                self.running_version += 1
            self.checker.host_lost(host_name, at)

    def power_on(self, host_name: str, at: float, boot: int | None = None) -> None:
        """The host has power again (boot ``boot``); its nova-compute starts."""
        with self.lock:
            host = self.host(host_name)
            if host.power_on:
                return
            host.power_on, host.off_at, host.seen_on_at = True, None, at
            host.boot = boot if boot is not None else host.boot + 1
            self._compute_starts(host, at)

    def observe_power(self, host_name: str, on: bool, boot: int, off_at: float | None,
                      at: float) -> None:
        """What the host's power switch said at ``at``. A power-off is dated by the switch
        (``off_at``); one the switch has already forgotten (off and on again between two
        looks) is dated at the last moment it was seen on."""
        with self.lock:
            host = self.host(host_name)
            if boot != host.boot or (host.power_on and not on):
                if host.power_on:
                    cut = off_at if (off_at is not None and not on) else host.seen_on_at
                    self.power_off(host_name, cut if cut is not None else at)
                host.boot = boot
                if on:
                    self.power_on(host_name, at, boot)
            if on:
                host.seen_on_at = at

    def stop_compute(self, host_name: str, at: float) -> None:
        """nova-compute dies on a powered host: its guests keep running."""
        with self.lock:
            self._compute_dies(self.host(host_name), at)

    def start_compute(self, host_name: str, at: float) -> None:
        """nova-compute starts again on a powered host."""
        with self.lock:
            host = self.host(host_name)
            if host.power_on and host.compute_since is None:
                self._compute_starts(host, at)

    def _compute_dies(self, host: Host, at: float) -> None:
        if host.compute_since is not None:
            host.last_heartbeat = self.heartbeat(host, at)
            host.compute_since = None

    def _compute_starts(self, host: Host, at: float) -> None:
        host.compute_since = at
        # init_host: destroy the local copy of every instance with an evacuation from here
        # started, under way or done, and complete those migrations; one still under way
        # sets its migration done again when it finishes (nova/compute/manager.py
        # _destroy_evacuated_instances, ResourceTracker.finish_evacuation).
        for migration in self.migrations:
            if migration.source == host.name and migration.status in (
                    "accepted", "pre-migrating", "done"):
                self._unrun(migration.instance, host.name, at)
                if migration.instance in self.servers:
                    migration.status = "completed"
        # init_host: builds placed here that this (new) process has not claimed were
        # interrupted: ERROR, no fault; the build request still queued for it then
        # builds them after all (_error_out_instances_whose_build_was_interrupted; real
        # Nova 34 showed the ERROR).
        for server in self.servers.values():
            if server.host == host.name and server.vm_state == st.BUILDING:
                server.vm_state, server.task_state, server.updated = st.ERROR, None, at
        # _init_instance: guests that did not survive the outage are recorded shut down.
        for server in self.servers.values():
            if server.host == host.name and server.id not in self._running[host.name] \
                    and server.power_state == st.RUNNING:
                server.power_state = st.SHUTDOWN
                server.updated = at

    def running(self) -> dict[str, list[str]]:
        """Each host's running instances (what its hypervisor runs, not what Nova says)."""
        with self.lock:
            return {name: sorted(ids) for name, ids in self._running.items()}

    def _run(self, server_id: str, host_name: str, at: float) -> bool:
        host = self.hosts[host_name]
        if not host.power_on:
            return False
        if server_id not in self._running[host_name]:
            self._running[host_name].add(server_id)
            self.running_version += 1
            self.checker.started(server_id, host_name, at)
        return True

    def _unrun(self, server_id: str, host_name: str, at: float) -> None:
        if server_id in self._running.get(host_name, ()):
            self._running[host_name].discard(server_id)
            self.running_version += 1
            self.checker.stopped(server_id, host_name, at)

    # --- capacity and scheduling ----------------------------------------------------------

    def host_az(self, host_name: str) -> str:
        for aggregate in sorted(self.aggregates.values(), key=lambda a: a.id):
            if host_name in aggregate.hosts and aggregate.availability_zone:
                return aggregate.availability_zone
        return DEFAULT_AZ

    def usage(self, host_name: str, *, tracked: bool = False) -> dict[str, int]:
        """vcpus, memory_mb, disk_gb and instances held on a host: every server assigned to
        it (stopped ones included, as Placement keeps their allocations) and every
        evacuation scheduled there and not finished yet (Placement's allocation). With
        ``tracked``: what the scheduler's host state shows instead, the compute node record
        its resource tracker updates, so an evacuation counts from its claim on."""
        used = {"vcpus": 0, "memory_mb": 0, "disk_gb": 0, "instances": 0}
        held = [s for s in self.servers.values() if s.host == host_name]
        held += [self.servers[op.server] for op in self._claims
                 if op.dest == host_name and op.server in self.servers
                 and (op.claimed or not tracked)]
        for server in held:
            used["vcpus"] += server.flavor.vcpus
            used["memory_mb"] += server.flavor.ram
            used["disk_gb"] += server.flavor.disk + server.flavor.ephemeral
            used["instances"] += 1
        return used

    def _fits(self, host: Host, flavor: Flavor) -> bool:
        used, spec = self.usage(host.name), host.spec
        return (used["vcpus"] + flavor.vcpus <= spec.vcpus * spec.cpu_allocation_ratio
                and used["memory_mb"] + flavor.ram <= spec.memory_mb * spec.ram_allocation_ratio
                and used["disk_gb"] + flavor.disk + flavor.ephemeral
                <= spec.disk_gb * spec.disk_allocation_ratio)

    def _free_ram(self, host: Host) -> float:
        """Free RAM as the RAM weigher sees it: from the compute node record, which an
        evacuation changes only once the destination claimed it. So requests scheduled
        together all see the same hosts and pick the same one (real Nova 34 put 10 of 10
        evacuations sent at once on one of two equal survivors, docs/nova-real.md)."""
        return host.spec.memory_mb * host.spec.ram_allocation_ratio \
            - self.usage(host.name, tracked=True)["memory_mb"]

    def _schedule(self, flavor: Flavor, az: str | None, now: float, *,
                  exclude: Iterable[str] = (), only: str | None = None) -> Host | None:
        """The filter scheduler's pick: ComputeFilter (up, enabled), AvailabilityZone,
        capacity (Placement's allocations); the RAM weigher (most free RAM in the host
        states; ties by name)."""
        excluded = set(exclude)
        candidates = [
            h for h in self.hosts.values()
            if (only is None or h.name == only) and h.name not in excluded
            and self.service_is_up(h, now) and not h.disabled
            and (az is None or self.host_az(h.name) == az) and self._fits(h, flavor)]
        if not candidates:
            return None
        return max(sorted(candidates, key=lambda h: h.name), key=self._free_ram)

    # --- servers: reads -------------------------------------------------------------------

    def server(self, ctx: Context, server_id: str) -> Server:
        """The server, if ``ctx`` may see it (else 404, as Nova hides other projects')."""
        server = self.servers.get(server_id)
        if server is None or (not ctx.is_admin and server.project_id != ctx.project_id):
            raise NovaError(404, f"Instance {server_id} could not be found.")
        return server

    def list_servers(self, ctx: Context, filters: dict[str, str]) -> list[Server]:
        """GET /servers[/detail] filtering as Nova: own project unless an admin asks
        ``all_tenants``; ``host``/``node`` only for admins (others' are ignored);
        ``project_id``/``tenant_id`` with all_tenants; ``status``, ``vm_state``,
        ``task_state``, ``name`` (a regular expression), ``uuid``. Newest first."""
        with self.lock:
            all_tenants = "all_tenants" in filters and _bool(filters["all_tenants"], True)
            if all_tenants and not ctx.is_admin:
                raise NovaError(403, "Policy doesn't allow os_compute_api:servers:detail:"
                                     "get_all_tenants to be performed.")
            project = filters.get("project_id") or filters.get("tenant_id")
            out = []
            for server in self.servers.values():
                if not all_tenants and server.project_id != ctx.project_id:
                    continue
                if all_tenants and project and server.project_id != project:
                    continue
                if ctx.is_admin:
                    if "host" in filters and server.host != filters["host"]:
                        continue
                    if "node" in filters and server.host != filters["node"]:
                        continue
                if "status" in filters and server.status != filters["status"].upper():
                    continue
                if "vm_state" in filters and server.vm_state != filters["vm_state"]:
                    continue
                if "task_state" in filters and server.task_state != filters["task_state"]:
                    continue
                if "uuid" in filters and server.id != filters["uuid"]:
                    continue
                if "name" in filters and not re.search(filters["name"], server.name):
                    continue
                out.append(server)
            out.sort(key=lambda s: (s.created, s.id), reverse=True)
            return out

    # --- servers: boot and delete ---------------------------------------------------------

    def boot(self, ctx: Context, now: float, *, name: str, flavor_ref: str, image_ref: str,
             request_id: str, availability_zone: str | None = None,
             metadata: dict[str, str] | None = None, key_name: str | None = None,
             description: str | None = None) -> Server:
        """POST /servers. ``availability_zone`` may be ``AZ``, ``AZ:HOST`` or ``:HOST``
        (admin only) to pin the host, as Nova's parse_availability_zone. A flavor with no
        root disk is for admins only (policy ``create:zero_disk_flavor``; 403), servers here
        being image-backed."""
        with self.lock:
            flavor = self.flavors.get(str(flavor_ref).rstrip("/").rsplit("/", 1)[-1])
            if flavor is None:
                raise NovaError(400, f"Flavor {flavor_ref} could not be found.")
            az, forced_host = availability_zone, None
            if az and ":" in az:
                az, forced_host = az.split(":", 1)
                forced_host = forced_host.split(":", 1)[0] or None
                if forced_host and not ctx.is_admin:
                    raise NovaError(403, "Policy doesn't allow os_compute_api:servers:create:"
                                         "forced_host to be performed.")
                if forced_host and forced_host not in self.hosts:
                    raise NovaError(400, f"No valid host was found. Compute host {forced_host} "
                                         f"could not be found.")
            if flavor.disk == 0 and not ctx.is_admin:  # every server boots from its image
                raise NovaError(403, "Only volume-backed servers are allowed for flavors with "
                                     "zero disk.")
            _check_metadata(metadata or {})
            server = Server(id=str(uuid.uuid4()), name=name, project_id=ctx.project_id,
                            user_id=ctx.user_id, flavor=flavor, image_id=str(image_ref),
                            metadata=dict(metadata or {}), availability_zone=az or None,
                            created=now, updated=now, key_name=key_name,
                            description=description)
            self.servers[server.id] = server
            action = self._action(server, "create", ctx, request_id, now)
            self._at(now + self.timings.boot * 0.2, self._boot_schedule, server.id, action,
                     forced_host)
            return server

    def _boot_schedule(self, now: float, server_id: str, action: Action,
                       forced_host: str | None) -> None:
        server = self.servers.get(server_id)
        if server is None:
            return
        if forced_host:  # zone:host skips the filters, not Placement's capacity check
            host = self.hosts[forced_host] if self._fits(self.hosts[forced_host],
                                                         server.flavor) else None
        else:
            host = self._schedule(server.flavor, server.availability_zone, now)
        if host is None:  # buried in cell0, with the only conductor event a build records
            event = self._event(action, "conductor_schedule_and_build_instances", now,
                                self.controller)
            self._fail(server, action, event, now, NO_VALID_HOST)
            return
        server.host, server.task_state, server.updated = host.name, st.SPAWNING, now
        self._at(now + self.timings.boot * 0.8, self._boot_spawned, server_id, action)

    def _boot_spawned(self, now: float, server_id: str, action: Action) -> None:
        server = self.servers.get(server_id)
        if server is None or server.host is None or not (
                server.task_state == st.SPAWNING or _interrupted_build(server)):
            return
        host = self.hosts[server.host]
        if not self.compute_alive(host):
            self._at(now + self.timings.retry, self._boot_spawned, server_id, action)
            return
        event = self._event(action, "compute__do_build_and_run_instance", now, host.name)
        self._run(server.id, host.name, now)
        server.vm_state, server.task_state = st.ACTIVE, None
        server.power_state = st.RUNNING if host.power_on else st.NOSTATE
        server.launched_at = server.updated = now
        self._finish_event(action, event, now, "Success")
        self.checker.wanted(server.id, True, now, "booted")

    def delete(self, ctx: Context, server_id: str, now: float, request_id: str) -> None:
        """DELETE /servers/{id}: gone after ``delete`` seconds, at once if its compute is
        dead (Nova's local delete)."""
        with self.lock:
            server = self.server(ctx, server_id)
            self._action(server, "delete", ctx, request_id, now)
            self.checker.wanted(server.id, False, now, "deleted")
            server.task_state, server.updated = st.DELETING, now
            host = self.hosts.get(server.host or "")
            if host is None or not self.service_is_up(host, now):
                self._deleted(now, server_id)
            else:
                self._at(now + self.timings.delete, self._deleted, server_id)

    def _deleted(self, now: float, server_id: str) -> None:
        server = self.servers.pop(server_id, None)
        if server is not None:
            for host_name in self._running:
                self._unrun(server_id, host_name, now)

    # --- servers: actions -----------------------------------------------------------------

    @staticmethod
    def require_admin(ctx: Context, policy: str) -> None:
        if not ctx.is_admin:
            raise NovaError(403, f"Policy doesn't allow {policy} to be performed.")

    @staticmethod
    def _invalid_state(server: Server, action: str, vm_states: Iterable[str] | None,
                       task_any: bool = False) -> None:
        """Nova's check_instance_state -> 409 with its conflict message."""
        if vm_states is not None and server.vm_state not in vm_states:
            raise NovaError(409, f"Cannot '{action}' instance {server.id} while it is in "
                                 f"vm_state {server.vm_state}")
        if not task_any and server.task_state is not None:
            raise NovaError(409, f"Cannot '{action}' instance {server.id} while it is in "
                                 f"task_state {server.task_state}")
        if server.launched_at is None:
            raise NovaError(409, f"Cannot '{action}' instance {server.id} while it is in "
                                 f"launched_at None")

    def evacuate(self, ctx: Context, server_id: str, now: float, *, request_id: str,
                 microversion: tuple[int, int], host: str | None = None,
                 force: bool = False) -> None:
        """POST /servers/{id}/action {"evacuate": ...}; see the module docstring. Every call
        that reaches here is recorded by the invariant checker with its outcome."""
        with self.lock:
            try:
                self._evacuate(ctx, server_id, now, request_id, microversion, host, force)
            except NovaError as exc:
                if server_id in self.servers:
                    self.checker.evacuate_called(server_id, now, request_id, exc.status)
                raise
            self.checker.evacuate_called(server_id, now, request_id, 200)

    def _evacuate(self, ctx: Context, server_id: str, now: float, request_id: str,
                  microversion: tuple[int, int], host: str | None, force: bool) -> None:
        server = self.server(ctx, server_id)
        self.require_admin(ctx, "os_compute_api:os-evacuate")
        if force and not host:
            raise NovaError(400, "Can't force to a non-provided destination")
        if host is not None and host not in self.hosts:
            raise NovaError(404, f"Compute host {host} not found.")
        if server.host == host:
            raise NovaError(400, "The target host can't be the same one.")
        # evacuate's check_instance_state is vm_state only (task_state=None: no check).
        self._invalid_state(server, "evacuate", (st.ACTIVE, st.STOPPED, st.ERROR),
                            task_any=True)
        source = self.hosts.get(server.host or "")
        if source is not None and self.service_is_up(source, now):
            raise NovaError(400, f"Compute service of {source.name} is still in use.")
        server.task_state, server.updated = st.REBUILDING, now
        action = self._action(server, "evacuate", ctx, request_id, now)
        migration = Migration(id=next(self._ids), uuid=str(uuid.uuid4()), instance=server.id,
                              source=server.host or "", dest=host, status="accepted",
                              created=now)
        self.migrations.append(migration)
        op = _Evacuation(server=server.id, action=action, source=server.host or "",
                         requested_host=host, force=force,
                         target_stopped=microversion >= (2, 95), migration=migration)
        self._at(now + self.timings.evacuate_schedule, self._evac_schedule, op)

    def _evac_schedule(self, now: float, op: _Evacuation) -> None:
        """The conductor (event ``rebuild_server``): a destination, or NoValidHost; then the
        destination's claim and the start of its rebuild."""
        server = self.servers.get(op.server)
        if server is None:
            return
        event = self._event(op.action, "rebuild_server", now, self.controller)
        if op.force and op.requested_host:
            forced = self.hosts[op.requested_host]
            dest = forced if self._fits(forced, server.flavor) else None
        else:
            dest = self._schedule(server.flavor, server.availability_zone, now,
                                  exclude=[op.source], only=op.requested_host)
        if dest is None:
            op.migration.status = "error"
            self._fail(server, op.action, event, now, NO_VALID_HOST)
            return
        self._finish_event(op.action, event, now, "Success")
        # Placement holds the flavor on the destination from now on; the server's `host`
        # stays the source until the rebuild is finished
        op.dest = op.migration.dest = dest.name
        self._claims.append(op)
        op.event = self._event(op.action, "compute_rebuild_instance", now, dest.name)
        self._at(now + self.timings.evacuate_spawn * 0.1, self._evac_claim, op)

    def _resource_lock(self, host_name: str, now: float) -> float:
        """When a finish_evacuation asking for ``host_name``'s resource-tracker lock at
        ``now`` is done with it: the lock is fair (first come, first served) and each
        holds it ``resource_lock`` seconds (nova/compute/resource_tracker.py
        COMPUTE_RESOURCE_SEMAPHORE). Rebuilds sent together end together, so their
        finishes queue there."""
        done = max(now, self._rt_free.get(host_name, now)) + self.timings.resource_lock
        self._rt_free[host_name] = done
        return done

    def _evac_claim(self, now: float, op: _Evacuation) -> None:
        """The destination's rebuild_claim (migration pre-migrating, counted in its compute
        node record), then the start of its rebuild."""
        server = self.servers.get(op.server)
        if server is None:
            self._release(op)
            return
        op.claimed, op.migration.status = True, "pre-migrating"
        # _do_rebuild_instance: the power state from the destination's hypervisor (nothing
        # there yet), saved with expected_task_state=[rebuilding]
        if self._rebuild_cas(now, op, server, st.REBUILDING, st.REBUILDING):
            server.power_state = st.NOSTATE
            self._at(now + self.timings.evacuate_spawn * 0.1, self._evac_bdm, op)

    def _rebuild_cas(self, now: float, op: _Evacuation, server: Server, expected: str,
                     task: str) -> bool:
        """The destination's ``instance.save(expected_task_state=[expected])`` setting
        ``task``: False (and the rebuild lost) if another rebuild of the same server moved
        the task state on first. That is what keeps a second evacuate accepted during the
        first from spawning a second guest: only one rebuild gets past each step."""
        if server.task_state == expected:
            server.task_state, server.updated = task, now
            return True
        # UnexpectedTaskStateError: _error_out_instance_on_exception saves vm_state error
        # with the task_state this rebuild had set locally; its migration fails and the
        # destination's claim is dropped (manager.py rebuild_instance).
        message = (f"Conflict updating instance {server.id}. Expected: {{'task_state': "
                   f"[{expected!r}]}}. Actual: {{'task_state': {server.task_state!r}}}")
        op.migration.status = "failed"
        self._release(op)
        if op.event is not None:
            self._finish_event(op.action, op.event, now, "Error", details=message)
        server.vm_state, server.task_state, server.updated = st.ERROR, task, now
        server.fault = {"code": 500, "message": message, "created": self.iso(now)}
        return False

    def _evac_bdm(self, now: float, op: _Evacuation) -> None:
        server = self.servers.get(op.server)
        if server is not None and self._rebuild_cas(now, op, server, st.REBUILDING,
                                                    st.REBUILD_BLOCK_DEVICE_MAPPING):
            self._at(now + self.timings.evacuate_spawn * 0.2, self._evac_spawning, op)

    def _evac_spawning(self, now: float, op: _Evacuation) -> None:
        server = self.servers.get(op.server)
        if server is not None and self._rebuild_cas(now, op, server,
                                                    st.REBUILD_BLOCK_DEVICE_MAPPING,
                                                    st.REBUILD_SPAWNING):
            self._at(now + self.timings.evacuate_spawn * 0.6, self._evac_spawned, op)

    def _evac_spawned(self, now: float, op: _Evacuation) -> None:
        server = self.servers.get(op.server)
        if server is None or op.dest is None:
            self._release(op)
            return
        dest = self.hosts[op.dest]
        if not self.compute_alive(dest):  # the rebuild cast waits for that nova-compute
            self._at(now + self.timings.retry, self._evac_spawned, op)
            return
        orig_vm_state = server.vm_state
        # The guest is spawned on the destination whatever the database says meanwhile.
        self._run(server.id, dest.name, now)
        if not self._rebuild_cas(now, op, server, st.REBUILD_SPAWNING, None):
            return  # the spawned guest stays where it is, as in Nova
        server.launched_at, server.vm_state = now, st.ACTIVE
        server.power_state = st.RUNNING if dest.power_on else st.NOSTATE
        server.fault = None
        stop_after = orig_vm_state == st.STOPPED or (op.target_stopped
                                                      and orig_vm_state != st.ERROR)
        if stop_after:
            self._at(now + self.timings.evacuate_power_off * 0.2, self._evac_power_off, op,
                     orig_vm_state)
            return
        self.checker.wanted(server.id, True, now, "evacuated")
        self._at(self._resource_lock(op.dest, now), self._evac_finish, op)

    def _evac_power_off(self, now: float, op: _Evacuation, orig_vm_state: str) -> None:
        """Back to the original (or 2.95's target) state: stop_instance on the destination,
        still under the evacuation's request (its event joins the evacuate action)."""
        server = self.servers.get(op.server)
        if server is None or op.dest is None:
            self._release(op)
            return
        server.task_state, server.updated = st.POWERING_OFF, now
        event = self._event(op.action, "compute_stop_instance", now, op.dest)
        self._at(now + self.timings.evacuate_power_off * 0.8, self._evac_stopped, op, event,
                 orig_vm_state)

    def _evac_stopped(self, now: float, op: _Evacuation, event: ActionEvent,
                      orig_vm_state: str) -> None:
        server = self.servers.get(op.server)
        if server is None or op.dest is None:
            self._release(op)
            return
        self._unrun(server.id, op.dest, now)
        if server.task_state == st.POWERING_OFF:
            server.vm_state, server.task_state = st.STOPPED, None
            server.power_state, server.updated = st.SHUTDOWN, now
        self._finish_event(op.action, event, now, "Success")
        why = "evacuated while stopped" if orig_vm_state == st.STOPPED else \
            "evacuated at microversion >= 2.95 (target state stopped)"
        self.checker.wanted(server.id, False, now, why)
        self._at(self._resource_lock(op.dest, now), self._evac_finish, op)

    def _evac_finish(self, now: float, op: _Evacuation) -> None:
        """The resource tracker's finish_evacuation: ``host`` is the destination now, the
        migration done (until the source's nova-compute starts and completes it)."""
        self._release(op)
        server = self.servers.get(op.server)
        if server is None or op.dest is None:
            return
        server.host, server.updated = op.dest, now
        op.migration.status = "done"
        if op.event is not None:
            self._finish_event(op.action, op.event, now, "Success")

    def _release(self, op: _Evacuation) -> None:
        if op in self._claims:
            self._claims.remove(op)

    def stop(self, ctx: Context, server_id: str, now: float, request_id: str) -> None:
        """os-stop: 409 unless active/error with no task; stopped after ``stop`` seconds
        once its nova-compute runs."""
        with self.lock:
            server = self.server(ctx, server_id)
            if not server.host:
                raise NovaError(409, f"Instance {server.id} is not ready")
            self._invalid_state(server, "stop", (st.ACTIVE, st.ERROR))
            server.task_state, server.updated = st.POWERING_OFF, now
            action = self._action(server, "stop", ctx, request_id, now)
            self.checker.wanted(server.id, False, now, "stopped through the API")
            self._at(now + self.timings.stop, self._stop_done, server.id, action)

    def _stop_done(self, now: float, server_id: str, action: Action) -> None:
        server = self.servers.get(server_id)
        if server is None or server.task_state != st.POWERING_OFF or server.host is None:
            return
        if not self.compute_alive(self.hosts[server.host]):
            self._at(now + self.timings.retry, self._stop_done, server_id, action)
            return
        event = self._event(action, "compute_stop_instance", now, server.host)
        self._unrun(server.id, server.host, now)
        server.vm_state, server.task_state = st.STOPPED, None
        server.power_state, server.updated = st.SHUTDOWN, now
        self._finish_event(action, event, now, "Success")

    def start(self, ctx: Context, server_id: str, now: float, request_id: str) -> None:
        """os-start: 409 unless stopped with no task; active after ``start`` seconds once
        its nova-compute runs."""
        with self.lock:
            server = self.server(ctx, server_id)
            if not server.host:
                raise NovaError(409, f"Instance {server.id} is not ready")
            self._invalid_state(server, "start", (st.STOPPED,))
            server.task_state, server.updated = st.POWERING_ON, now
            action = self._action(server, "start", ctx, request_id, now)
            self._at(now + self.timings.start, self._start_done, server.id, action)

    def _start_done(self, now: float, server_id: str, action: Action) -> None:
        server = self.servers.get(server_id)
        if server is None or server.task_state != st.POWERING_ON or server.host is None:
            return
        host = self.hosts[server.host]
        if not self.compute_alive(host):
            self._at(now + self.timings.retry, self._start_done, server_id, action)
            return
        event = self._event(action, "compute_start_instance", now, host.name)
        self._run(server.id, host.name, now)
        server.vm_state, server.task_state = st.ACTIVE, None
        server.power_state, server.updated = st.RUNNING, now
        self._finish_event(action, event, now, "Success")
        self.checker.wanted(server.id, True, now, "started through the API")

    def reset_state(self, ctx: Context, server_id: str, state: str, now: float,
                    request_id: str) -> None:
        """os-resetState: vm_state active or error, task_state cleared; the hypervisor is
        not touched. A transition under way then finds its task_state gone and stops."""
        with self.lock:
            server = self.server(ctx, server_id)
            self.require_admin(ctx, "os_compute_api:os-admin-actions:reset_state")
            if state not in (st.ACTIVE, st.ERROR):
                raise NovaError(400, f"Invalid input for field/attribute state. Value: "
                                     f"{state}. '{state}' is not one of ['active', 'error']")
            action = self._action(server, "resetState", ctx, request_id, now)
            action.updated = now
            server.vm_state, server.task_state, server.updated = state, None, now

    # --- metadata -------------------------------------------------------------------------

    def set_metadata(self, ctx: Context, server_id: str, metadata: dict[str, str], now: float,
                     *, replace_all: bool) -> dict[str, str]:
        """POST (merge) or PUT (replace) /servers/{id}/metadata; 409 in a task_state or a
        vm_state other than active/paused/suspended/stopped (Nova's rule)."""
        with self.lock:
            server = self.server(ctx, server_id)
            _check_metadata(metadata)
            self._invalid_state(server, "update metadata",
                                (st.ACTIVE, st.PAUSED, st.SUSPENDED, st.STOPPED))
            server.metadata = dict(metadata) if replace_all else {**server.metadata,
                                                                  **metadata}
            server.updated = now
            return dict(server.metadata)

    def delete_metadata_item(self, ctx: Context, server_id: str, key: str, now: float) -> None:
        with self.lock:
            server = self.server(ctx, server_id)
            if key not in server.metadata:
                raise NovaError(404, "Metadata item was not found")
            self._invalid_state(server, "delete metadata",
                                (st.ACTIVE, st.PAUSED, st.SUSPENDED, st.STOPPED))
            del server.metadata[key]
            server.updated = now

    # --- aggregates -----------------------------------------------------------------------

    def aggregate(self, ctx: Context, ident: str | int) -> Aggregate:
        self.require_admin(ctx, "os_compute_api:os-aggregates:show")
        for aggregate in self.aggregates.values():
            if str(ident) in (str(aggregate.id), aggregate.uuid):
                return aggregate
        raise NovaError(404, f"Aggregate {ident} could not be found.")

    def create_aggregate(self, ctx: Context, name: str, az: str | None, now: float) -> Aggregate:
        with self.lock:
            self.require_admin(ctx, "os_compute_api:os-aggregates:create")
            if not name or len(name) > 255:
                raise NovaError(400, "Invalid input for field/attribute name.")
            if any(a.name == name for a in self.aggregates.values()):
                raise NovaError(409, f"Aggregate {name} already exists.")
            aggregate = Aggregate(id=next(self._ids), uuid=str(uuid.uuid4()), name=name,
                                  availability_zone=az, hosts=[],
                                  metadata={"availability_zone": az} if az else {},
                                  created=now)
            self.aggregates[aggregate.id] = aggregate
            return aggregate

    def delete_aggregate(self, ctx: Context, ident: str) -> None:
        with self.lock:
            aggregate = self.aggregate(ctx, ident)
            if aggregate.hosts:
                raise NovaError(400, f"Cannot remove aggregate {aggregate.id}. Reason: "
                                     f"Host aggregate is not empty.")
            del self.aggregates[aggregate.id]

    def aggregate_add_host(self, ctx: Context, ident: str, host_name: str,
                           now: float) -> Aggregate:
        with self.lock:
            aggregate = self.aggregate(ctx, ident)
            if host_name not in self.hosts:
                raise NovaError(404, f"Compute host {host_name} could not be found.")
            if host_name in aggregate.hosts:
                raise NovaError(409, f"Aggregate {aggregate.id} already has host {host_name}.")
            if aggregate.availability_zone:
                conflicting = [a.availability_zone for a in self.aggregates.values()
                               if host_name in a.hosts and a.availability_zone
                               and a.availability_zone != aggregate.availability_zone]
                if conflicting:
                    raise NovaError(400, f"Cannot add host to aggregate {aggregate.id}. "
                                         f"Reason: One or more hosts already in availability "
                                         f"zone(s) {conflicting}.")
            aggregate.hosts.append(host_name)
            aggregate.updated = now
            return aggregate

    def aggregate_remove_host(self, ctx: Context, ident: str, host_name: str,
                              now: float) -> Aggregate:
        with self.lock:
            aggregate = self.aggregate(ctx, ident)
            if host_name not in aggregate.hosts:
                raise NovaError(404, f"Cannot remove host {host_name} in aggregate "
                                     f"{aggregate.id}")
            aggregate.hosts.remove(host_name)
            aggregate.updated = now
            return aggregate

    def aggregate_set_metadata(self, ctx: Context, ident: str, metadata: dict[str, Any],
                               now: float) -> Aggregate:
        """set_metadata merges; a key set to null is removed; ``availability_zone`` also
        moves the aggregate's hosts to that zone."""
        with self.lock:
            aggregate = self.aggregate(ctx, ident)
            for key, value in metadata.items():
                if value is None:
                    aggregate.metadata.pop(key, None)
                else:
                    aggregate.metadata[key] = str(value)
            aggregate.availability_zone = aggregate.metadata.get("availability_zone")
            aggregate.updated = now
            return aggregate

    # --- instance actions -----------------------------------------------------------------

    def _action(self, server: Server, name: str, ctx: Context, request_id: str,
                now: float) -> Action:
        action = Action(action=name, request_id=request_id, instance=server.id,
                        user_id=ctx.user_id, project_id=ctx.project_id, start=now, updated=now)
        self.actions.setdefault(server.id, []).append(action)
        return action

    @staticmethod
    def _event(action: Action, name: str, now: float, host: str | None) -> ActionEvent:
        event = ActionEvent(event=name, start=now, host=host)
        action.events.append(event)
        action.updated = now
        return event

    @staticmethod
    def _finish_event(action: Action, event: ActionEvent, now: float, result: str,
                      details: str | None = None) -> None:
        event.finish, event.result, event.details = now, result, details
        action.updated = now
        if result != "Success":
            action.message = "Error"

    def _fail(self, server: Server, action: Action, event: ActionEvent, now: float,
              message: str) -> None:
        """The conductor's failure path: vm_state error, task cleared, a fault recorded."""
        self._finish_event(action, event, now, "Error", details=message)
        server.vm_state, server.task_state, server.updated = st.ERROR, None, now
        server.fault = {"code": 500, "message": message, "created": self.iso(now)}

    def server_actions(self, ctx: Context, server_id: str) -> list[Action]:
        """The server's actions, newest first (as GET os-instance-actions)."""
        with self.lock:
            server = self.server(ctx, server_id)
            actions = self.actions.get(server.id, [])
            # created_at, then id, both descending (InstanceActionList.get_by_instance_uuid)
            order = sorted(range(len(actions)), key=lambda i: (actions[i].start, i),
                           reverse=True)
            return [actions[i] for i in order]

    def evacuation_count(self, server_id: str) -> int:
        """How many evacuate actions Nova recorded for the server (accepted calls)."""
        with self.lock:
            return sum(1 for a in self.actions.get(server_id, []) if a.action == "evacuate")


def _interrupted_build(server: Server) -> bool:
    """Put in ERROR by a restarting nova-compute before it built the server."""
    return server.vm_state == st.ERROR and server.task_state is None \
        and server.launched_at is None


def _bool(value: str, default: bool) -> bool:
    """oslo's bool_from_string as Nova uses it for all_tenants ('' counts as true)."""
    text = str(value).strip().lower()
    if text == "":
        return default
    return text in ("1", "t", "true", "on", "y", "yes")


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise NovaError(400, "Invalid input for field/attribute metadata.")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 255:
            raise NovaError(400, f"Invalid input for field/attribute metadata. Value: "
                                 f"{metadata}. Metadata keys are 1 to 255 characters")
        if not isinstance(value, str) or len(value) > 255:
            raise NovaError(400, f"Invalid input for field/attribute {key}. Value: {value!r}. "
                                 f"Metadata values are strings of at most 255 characters")


def new_request_id() -> str:
    """Nova's request id form: ``req-<uuid>``."""
    return f"req-{uuid.uuid4()}"


def admin_password() -> str:
    return secrets.token_urlsafe(9)


__all__ = ["Action", "ActionEvent", "Aggregate", "Context", "Flavor", "Host", "HostSpec",
           "Migration", "NovaError", "NovaModel", "Server", "Timings", "admin_password",
           "new_request_id"]
