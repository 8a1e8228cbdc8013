"""The two Novas the contract suite runs against, behind one handle: the simulator
(``hagent.lab.nova.NovaSim``) and a real Nova 34 (``hagent.lab.realnova.RealNova``).

Everything a test does to Nova goes through openstacksdk, as the recovery engine's does;
only what a cloud has no API for (killing and starting a host's nova-compute) goes through
the lab handle, whose methods have the same names on both. Waits poll Nova with a deadline
sized for the backend (a real nova-compute takes seconds to start; the simulator runs at a
fifth of real Nova's durations).
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import openstack.exceptions as osexc

log = logging.getLogger(__name__)

#: The microversion recovery/nova.py pins (COMPUTE_MICROVERSION), hence the suite's default.
ENGINE_MICROVERSION = "2.94"
HOSTS = ["cmp1", "cmp2", "cmp3"]
HA_KEY = "HA_Enabled"  # Masakari's (and hagent's) instance metadata key
FLAVOR = "lab.tiny"    # 1 vCPU, 64 MB, 0 GB: offered by both labs (REAL-NOVA.md)
#: A member may not boot a zero-disk flavor from an image (Nova's zero_disk_flavor policy).
MEMBER_FLAVOR = "m1.tiny"  # 1 vCPU, 512 MB, 1 GB

_T = TypeVar("_T")


@dataclass(frozen=True)
class Deadlines:
    """How long a backend may take (seconds) before a wait counts as a failure."""

    boot: float             # POST /servers -> ACTIVE
    transition: float       # stop, start, evacuation -> their end state
    service_down: float     # nova-compute killed -> reported down (service_down_time + slack)
    compute_start: float    # nova-compute started -> reported up, evacuations cleaned up
    rpc_response_timeout: float  # how long nova-api waits on an RPC call to a compute
    period: float           # poll period


def poll(check: Callable[[], _T], timeout: float, what: str, period: float) -> _T:
    """``check()`` until it returns something truthy (returned), or AssertionError naming
    ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                 f"(last: {value!r})")
        time.sleep(period)


class Backend:
    """One running Nova (``handle``: a NovaSim or a RealNova) and the openstacksdk
    connections the tests use: ``conn`` (admin, pinned at 2.94 as the engine's) and
    ``demo`` (a member of another project, 2.94). ``connect()`` gives others, e.g. the
    default-negotiated one.

    Tests boot with ``boot_on`` and may leave their servers and hosts in any state:
    ``restore()`` (run after each test) starts killed computes, unsets forced_down, enables
    every service and deletes the servers the test booted."""

    def __init__(self, name: str, handle: Any, *, image: str, deadlines: Deadlines) -> None:
        self.name = name
        self.handle = handle
        self.hosts: list[str] = list(handle.hosts)
        self.image = image
        self.deadlines = deadlines
        self.conn = self.connect(compute_api_version=ENGINE_MICROVERSION)
        self.demo = self.connect(demo=True, compute_api_version=ENGINE_MICROVERSION)
        self.flavor = self.conn.compute.find_flavor(FLAVOR, ignore_missing=False)
        self.member_flavor = self.conn.compute.find_flavor(MEMBER_FLAVOR, ignore_missing=False)
        self._booted: list[str] = []
        self._killed: set[str] = set()

    def __repr__(self) -> str:
        return f"Backend({self.name})"

    def connect(self, demo: bool = False, **kwargs: Any) -> Any:
        """A new openstacksdk Connection from the backend's clouds.yaml (admin, or the
        demo user); ``kwargs`` go to openstacksdk (``compute_api_version=...``)."""
        return self.handle.connect(demo=demo, **kwargs)

    def poll(self, check: Callable[[], _T], timeout: float, what: str) -> _T:
        return poll(check, timeout, f"{what} on {self.name}", self.deadlines.period)

    # --- servers ---------------------------------------------------------------------------

    def boot(self, *, host: str | None = None, ha: bool = True, conn: Any = None,
             metadata: dict[str, str] | None = None, wait: bool = True) -> Any:
        """Boot one server through openstacksdk (lab.tiny for the admin, m1.tiny for the
        demo member), pinned to ``host`` (availability_zone ``nova:HOST``, admin only) or
        where the scheduler puts it; ``networks='none'``; wait until ACTIVE. The Server as
        Nova shows it then."""
        conn = conn or self.conn
        flavor = self.member_flavor if conn is self.demo else self.flavor
        meta = dict(metadata or {})
        if ha:
            meta[HA_KEY] = "True"
        attrs: dict[str, Any] = {"name": f"contract-{uuid.uuid4().hex[:8]}",
                                 "flavor_id": flavor.id, "image_id": self.image,
                                 "networks": "none", "metadata": meta}
        if host is not None:
            attrs["availability_zone"] = f"nova:{host}"
        server = conn.compute.create_server(**attrs)
        self._booted.append(server.id)
        if not wait:
            return server
        server = self.wait_server(server.id, lambda s: s.status in ("ACTIVE", "ERROR"),
                                  self.deadlines.boot, "boot", conn=conn)
        assert server.status == "ACTIVE", f"boot of {server.id} failed: {server.fault}"
        return server

    def boot_on(self, host: str, ha: bool = True, **kwargs: Any) -> Any:
        """``boot`` pinned to ``host``; checks Nova put it there."""
        server = self.boot(host=host, ha=ha, **kwargs)
        assert server.compute_host == host, (server.id, server.compute_host, host)
        return server

    def wait_server(self, server_id: str, done: Callable[[Any], bool], timeout: float,
                    what: str, conn: Any = None) -> Any:
        """Poll GET /servers/{id} until ``done(server)``; that server."""
        conn = conn or self.conn

        def check() -> Any:
            server = conn.compute.get_server(server_id)
            return server if done(server) else None
        return self.poll(check, timeout, f"{what} of server {server_id}")

    def wait_status(self, server_id: str, status: str, conn: Any = None) -> Any:
        """Poll until the server shows ``status`` with no task running."""
        return self.wait_server(
            server_id, lambda s: s.status == status and s.task_state is None,
            self.deadlines.transition, f"status {status}", conn=conn)

    # --- services --------------------------------------------------------------------------

    def service(self, host: str, conn: Any = None) -> Any:
        """The host's nova-compute service (exactly one)."""
        conn = conn or self.conn
        found = list(conn.compute.services(host=host, binary="nova-compute"))
        assert len(found) == 1, f"{len(found)} nova-compute services on {host}: {found}"
        return found[0]

    def wait_service(self, host: str, state: str, timeout: float | None = None) -> Any:
        """Poll os-services until the host's nova-compute is reported ``state``
        ("up"/"down"); the service."""
        if timeout is None:
            timeout = (self.deadlines.service_down if state == "down"
                       else self.deadlines.compute_start)

        def check() -> Any:
            service = self.service(host)
            return service if service.state == state else None
        return self.poll(check, timeout, f"nova-compute on {host} reported {state}")

    def stop_compute(self, host: str) -> None:
        """Kill the host's nova-compute (Nova learns it only from missing heartbeats)."""
        self._killed.add(host)
        self.handle.stop_compute(host)

    def start_compute(self, host: str) -> Any:
        """Start the host's nova-compute again and wait until it has reported (its
        service's ``updated_at`` moved on): only then has it finished init_host. Before,
        Nova may still call the service up on the dead process's last heartbeats, and a
        server built there meanwhile is put in ERROR by init_host as an interrupted build.
        The service."""
        before = self.service(host).updated_at
        self.handle.start_compute(host)
        self._killed.discard(host)

        def reported() -> Any:
            service = self.service(host)
            return service if service.updated_at != before else None
        return self.poll(reported, self.deadlines.compute_start,
                         f"the restarted nova-compute on {host} to report")

    def unset_forced_down(self, host: str) -> Any:
        """``forced_down: false``; the service. Nova refuses it while evacuations from the
        host are ``done`` and not yet completed by its nova-compute's start (init_host):
        then the compute is restarted and the call repeated, once or twice (an evacuation
        still running when the compute last started sets its migration done afterwards)."""
        for attempt in range(3):
            try:
                return self.conn.compute.update_service_forced_down(self.service(host),
                                                                    forced=False)
            except osexc.BadRequestException as exc:
                if "Unable to force up host" not in str(exc) or attempt == 2:
                    raise
            log.info("%s: restarting nova-compute on %s to complete its evacuations",
                     self.name, host)
            self.stop_compute(host)
            self.start_compute(host)
        raise AssertionError("unreachable")

    # --- between tests ---------------------------------------------------------------------

    def restore(self) -> None:
        """Every nova-compute running, not forced down, enabled and up; the servers booted
        since the last restore deleted (not waited for)."""
        for host in sorted(self._killed):
            self.start_compute(host)
        for host in self.hosts:
            if self.service(host).is_forced_down:
                self.unset_forced_down(host)
        # enabling a service Nova believes up RPC-calls its compute: only once it runs
        for host in self.hosts:
            if self.wait_service(host, "up").status != "enabled":
                self.conn.compute.enable_service(self.service(host))
        booted, self._booted = self._booted, []
        for server_id in booted:
            try:
                self.conn.compute.delete_server(server_id)
            except osexc.NotFoundException:
                pass

    def close(self) -> None:
        self.conn.close()
        self.demo.close()
