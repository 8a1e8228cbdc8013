"""The recovery engine's only door to Nova: openstacksdk, in threads, with timeouts.

Why this module exists apart from the engine: every Nova call of a recovery goes through
the few methods below, so the microversion, the per-call timeout, the error classes and the
INFO log of every call that changes the world are decided once (docs/recovery-nova.md).

What callers may rely on:

- Compute API microversion **2.94** on every call (the connection's default microversion).
  2.94 is the last version at which an evacuated instance comes back in its previous state;
  from 2.95 Nova leaves it SHUTOFF, and openstacksdk's ``evacuate_server`` would otherwise
  negotiate the highest version (2.104 on Nova 34). It also gives service ids (2.53+), so
  ``force_down``/``disable`` are ``PUT /os-services/{id}``. Nova older than 26.0 (Zed) does
  not offer 2.94: the first call fails with a non-retryable NovaError saying so.
- Every call runs in this client's thread pool and is abandoned after ``timeout`` seconds
  (the HTTP requests carry the same timeout, so the thread ends soon after). A call that
  timed out may still have happened in Nova: callers ask Nova for the truth before repeating.
- Every failure is a :class:`NovaError` with the HTTP status (None when there was no
  answer) and ``retryable``: True for no answer, timeouts, 408, 409 (a race with another
  task on the instance), 429 and 5xx; False for the rest (400, 401, 403, 404, ...), which
  repeat the same way until someone changes something.
- ``servers_on_host`` returns only servers whose host is the one asked for, even if the
  ``host`` query filter were ignored: a recovery must never act on another host's servers.

The methods are thin: no retries and no "already done?" checks here; recovery/steps.py reads
the truth, acts and confirms.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from keystoneauth1 import exceptions as ksa_exc
from openstack import connection as os_connection
from openstack import exceptions as os_exc
from openstack.config import loader

if TYPE_CHECKING:
    from hagent.config import RecoveryConfig

log = logging.getLogger(__name__)

COMPUTE_MICROVERSION = "2.94"
COMPUTE_BINARY = "nova-compute"
RESET_STATES = ("active", "error")

_T = TypeVar("_T")


@dataclass(frozen=True)
class ServiceView:
    """A nova-compute service as Nova reported it (``GET/PUT /os-services``)."""

    id: str
    host: str
    state: str                  # "up" / "down": Nova's liveness verdict (heartbeats, or forced)
    status: str                 # "enabled" / "disabled": whether the scheduler may use it
    forced_down: bool
    disabled_reason: str | None


@dataclass(frozen=True)
class ServerView:
    """A server as Nova reported it (admin view: host and states included)."""

    id: str
    name: str
    status: str                 # ACTIVE, SHUTOFF, ERROR, REBUILD, ...
    vm_state: str | None        # active, stopped, error, ...
    task_state: str | None      # None when no task runs (rebuilding, powering-off, ...)
    power_state: int | None     # 1 running, 4 shutdown, ... (Nova's power_state codes)
    host: str | None
    metadata: dict[str, str]
    project_id: str | None


@dataclass(frozen=True)
class MigrationView:
    """An evacuation's migration record as Nova reported it (``GET /os-migrations``).

    Nova creates it (status ``accepted``) before it answers the evacuate call; the
    destination's claim makes it ``pre-migrating``; ``finish_evacuation`` sets ``done`` once
    the server's ``host`` is the destination (``completed`` after the source's nova-compute
    started again and cleaned up); ``error`` when no host was found, ``failed`` when the
    rebuild failed. ``id`` is Nova's database id: it only grows, so a higher id is a later
    migration."""

    id: int
    uuid: str | None
    instance: str
    source: str | None
    dest: str | None
    status: str
    created_at: str | None


class NovaError(Exception):
    """A Nova (or Keystone) call that failed.

    ``status`` is the HTTP status, None when no answer came (connection refused, timeout).
    ``retryable`` says whether the same call may succeed later without anyone changing
    anything: a step retries those with backoff and reports the others at once.
    """

    def __init__(self, message: str, *, status: int | None, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class NovaConfigError(NovaError):
    """clouds.yaml cannot give a connection (missing file, unknown cloud, bad entries)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, retryable=False)


# --- pure parts: error mapping and views -------------------------------------------------

_RETRYABLE_CLIENT_STATUSES = frozenset({408, 409, 429})


def status_is_retryable(status: int) -> bool:
    """408, 409 (task state races), 429 and every 5xx may pass by themselves; the rest not."""
    return status in _RETRYABLE_CLIENT_STATUSES or status >= 500


def _status_hint(status: int) -> str:
    if status == 401:
        return " (check the credentials in clouds.yaml)"
    if status == 403:
        return " (the clouds.yaml user needs the admin role: services, hosts and evacuation are admin-only)"
    return ""


def nova_error(exc: BaseException, what: str) -> NovaError:
    """Map an openstacksdk/keystoneauth exception raised by call ``what`` to a NovaError.

    ``what`` names the call and its subject (``"evacuate server 1f0c..."``) and starts the
    message, so a log line or a notification's failure reason says what failed and why.
    """
    if isinstance(exc, NovaError):
        return exc
    if isinstance(exc, os_exc.HttpException) and exc.status_code is not None:
        status = int(exc.status_code)
        detail = exc.details or str(exc)
        request = f" [request {exc.request_id}]" if exc.request_id else ""
        return NovaError(f"{what}: HTTP {status}: {detail}{_status_hint(status)}{request}",
                         status=status, retryable=status_is_retryable(status))
    if isinstance(exc, ksa_exc.HttpError):
        status = int(exc.http_status)
        return NovaError(f"{what}: HTTP {status}: {exc.message or exc}{_status_hint(status)}",
                         status=status, retryable=status_is_retryable(status))
    if isinstance(exc, ksa_exc.SSLError):
        return NovaError(f"{what}: TLS failure: {exc} (check cacert in clouds.yaml)",
                         status=None, retryable=False)
    if isinstance(exc, (ksa_exc.ConnectionError, ksa_exc.DiscoveryFailure)):
        return NovaError(f"{what}: no answer: {exc}", status=None, retryable=True)
    if isinstance(exc, os_exc.ConfigException) and "microversion" in str(exc):
        return NovaError(
            f"{what}: {exc} (hagent needs compute API microversion {COMPUTE_MICROVERSION}: "
            "Nova 26.0 Zed or newer)", status=None, retryable=False)
    if isinstance(exc, (os_exc.SDKException, ksa_exc.ClientException)):
        return NovaError(f"{what}: {exc}", status=None, retryable=False)
    raise TypeError(f"not an openstacksdk/keystoneauth error: {exc!r}")


def service_view(service: Any) -> ServiceView:
    """An openstacksdk ``Service`` as a ServiceView."""
    return ServiceView(
        id=str(service.id),
        host=service.host,
        state=service.state,
        status=service.status,
        forced_down=bool(service.is_forced_down),
        disabled_reason=service.disabled_reason or None,
    )


def server_view(server: Any) -> ServerView:
    """An openstacksdk ``Server`` (detail, admin) as a ServerView."""
    return ServerView(
        id=server.id,
        name=server.name or "",
        status=server.status,
        vm_state=server.vm_state,
        task_state=server.task_state,
        power_state=server.power_state,
        host=server.compute_host,
        metadata=dict(server.metadata or {}),
        project_id=server.project_id,
    )


def migration_view(migration: Any) -> MigrationView:
    """An openstacksdk ``Migration`` as a MigrationView (its ``id`` is Nova's integer id)."""
    return MigrationView(
        id=int(migration.id),
        uuid=migration.uuid,
        instance=migration.server_id,
        source=migration.source_compute,
        dest=migration.dest_compute,
        status=migration.status,
        created_at=migration.created_at,
    )


def _aggregate_dict(aggregate: Any) -> dict[str, Any]:
    return {
        "id": str(aggregate.id),
        "uuid": aggregate.uuid,
        "name": aggregate.name,
        "availability_zone": aggregate.availability_zone,
        "hosts": list(aggregate.hosts or []),
        "metadata": dict(aggregate.metadata or {}),
    }


def _action_dict(action: Any) -> dict[str, Any]:
    return {
        "action": action.action,
        "request_id": action.request_id,
        "start_time": action.start_time,
        "message": action.message,
        "user_id": action.user_id,
        "project_id": action.project_id,
    }


# --- connection ----------------------------------------------------------------------------

def connect(clouds_yaml: str | os.PathLike[str], cloud: str, *,
            timeout: float) -> os_connection.Connection:
    """An openstacksdk Connection for ``cloud`` in ``clouds_yaml`` and nothing else.

    Only that file is read: no ``OS_*`` environment variables, no ~/.config/openstack, so
    what the agent does depends on its config alone. Compute calls are pinned to
    COMPUTE_MICROVERSION, and ``timeout`` bounds every HTTP request. Nothing is sent yet:
    authentication happens on the first call. Raises NovaConfigError naming the fix.
    """
    path = Path(clouds_yaml)
    if not path.is_file():
        raise NovaConfigError(f"clouds.yaml {path} does not exist: write it (docs/recovery-nova.md) "
                              "or set recovery.clouds_yaml")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("clouds.yaml %s is readable by other users (mode %o) and holds Nova admin "
                    "credentials; chmod 600 it", path, stat.S_IMODE(mode))
    try:
        config = loader.OpenStackConfig(
            config_files=[str(path)], vendor_files=[], secure_files=[],
            load_envvars=False, app_name="hagent")
        region = config.get_one(cloud=cloud, compute_api_version=COMPUTE_MICROVERSION,
                                api_timeout=timeout)
    except (os_exc.SDKException, ksa_exc.ClientException, ValueError, OSError) as exc:
        raise NovaConfigError(f"cloud {cloud!r} in {path}: {exc} (fix the file or "
                              "recovery.cloud)") from None
    return os_connection.Connection(config=region)


# --- the client ----------------------------------------------------------------------------

class NovaClient:
    """The Nova calls the recovery engine makes, as coroutines (see the module docstring).

    One instance per engine; safe to call from many tasks at once (up to ``max_workers``
    calls run in parallel, more wait for a thread, and that wait counts towards their
    timeout). ``close()`` when done.
    """

    def __init__(self, connection: os_connection.Connection, *, timeout: float = 30.0,
                 max_workers: int = 8) -> None:
        self.timeout = timeout
        self._conn = connection
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                           thread_name_prefix="nova")

    @classmethod
    def from_clouds_yaml(cls, clouds_yaml: str | os.PathLike[str], cloud: str, *,
                         timeout: float = 30.0, max_workers: int = 8) -> NovaClient:
        """A client for ``cloud`` in ``clouds_yaml`` (raises NovaConfigError)."""
        return cls(connect(clouds_yaml, cloud, timeout=timeout), timeout=timeout,
                   max_workers=max_workers)

    @classmethod
    def from_config(cls, recovery: RecoveryConfig) -> NovaClient:
        """The client the ``[recovery]`` section describes: a thread per concurrent
        evacuation and a few more for the service and listing calls beside them."""
        return cls.from_clouds_yaml(recovery.clouds_yaml, recovery.cloud,
                                    timeout=recovery.nova_timeout,
                                    max_workers=recovery.max_concurrent_evacuations + 4)

    def close(self) -> None:
        """Stop taking calls and close the HTTP session; running calls are not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._conn.close()

    async def _call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` in the pool, bounded by ``timeout``, errors mapped to NovaError."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for may lose a cancellation that
            # lands as the call returns, and the engine's stop() must end the caller.
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise NovaError(f"{what}: no answer within {self.timeout:g} s (recovery.nova_timeout)",
                            status=None, retryable=True) from None
        except (os_exc.SDKException, ksa_exc.ClientException) as exc:
            raise nova_error(exc, what) from exc

    @property
    def _compute(self) -> Any:
        return self._conn.compute

    # --- compute services ---

    def _find_service(self, host: str) -> Any | None:
        found = [s for s in self._compute.services(host=host, binary=COMPUTE_BINARY)
                 if s.host == host and s.binary == COMPUTE_BINARY]
        if len(found) > 1:
            ids = ", ".join(str(s.id) for s in found)
            raise NovaError(f"{len(found)} {COMPUTE_BINARY} services on host {host} ({ids}): "
                            "delete the stale ones (openstack compute service delete)",
                            status=None, retryable=False)
        return found[0] if found else None

    def _require_service(self, host: str) -> Any:
        service = self._find_service(host)
        if service is None:
            raise NovaError(f"no {COMPUTE_BINARY} service on host {host}: is the host name "
                            "the one Nova knows (openstack compute service list)?",
                            status=404, retryable=False)
        return service

    async def compute_service(self, host: str) -> ServiceView | None:
        """The nova-compute service of ``host``, None if Nova has none."""
        def run() -> ServiceView | None:
            service = self._find_service(host)
            return None if service is None else service_view(service)
        return await self._call(f"look up {COMPUTE_BINARY} on host {host}", run)

    async def _update_service(self, host: str, verb: str, **attrs: Any) -> ServiceView:
        def run() -> ServiceView:
            service = self._require_service(host)
            log.info("nova: %s %s on host %s (service %s)", verb, COMPUTE_BINARY, host, service.id)
            return service_view(self._compute.update_service(service, **attrs))
        view = await self._call(f"{verb} {COMPUTE_BINARY} on host {host}", run)
        log.info("nova: %s done on host %s: state %s, status %s, forced_down %s", verb, host,
                 view.state, view.status, view.forced_down)
        return view

    async def force_down(self, host: str) -> ServiceView:
        """Mark the host's nova-compute down now (``forced_down: true``), so Nova accepts
        evacuations at once instead of after its service_down_time. Only for a fenced host."""
        return await self._update_service(host, "force down", forced_down=True)

    async def unset_force_down(self, host: str) -> ServiceView:
        """Let the host's nova-compute report itself up again (``forced_down: false``)."""
        return await self._update_service(host, "unset force down", forced_down=False)

    async def disable(self, host: str, reason: str) -> ServiceView:
        """Keep the scheduler off the host (``status: disabled`` with ``reason``). Call after
        force_down on a dead host: the other order makes Nova RPC the dead compute (60 s)."""
        return await self._update_service(host, "disable", status="disabled",
                                          disabled_reason=reason)

    async def enable(self, host: str) -> ServiceView:
        """Let the scheduler use the host again (Nova clears the disabled reason)."""
        return await self._update_service(host, "enable", status="enabled")

    # --- servers ---

    async def servers_on_host(self, host: str) -> list[ServerView]:
        """Every server on ``host``, of every project (admin detail view, all pages)."""
        def run() -> list[ServerView]:
            servers = self._compute.servers(details=True, all_projects=True, compute_host=host)
            views = [server_view(s) for s in servers]
            others = [v.id for v in views if v.host != host]
            if others:
                log.warning("nova: servers list for host %s returned %d servers of other hosts "
                            "(filter ignored?); dropped: %s", host, len(others), ", ".join(others))
            return [v for v in views if v.host == host]
        return await self._call(f"list servers on host {host}", run)

    async def server(self, server_id: str) -> ServerView | None:
        """The server now, None if Nova does not know it (deleted)."""
        def run() -> ServerView | None:
            try:
                return server_view(self._compute.get_server(server_id))
            except os_exc.NotFoundException:
                return None
        return await self._call(f"show server {server_id}", run)

    async def evacuations(self, server_id: str, source_host: str) -> list[MigrationView]:
        """The server's evacuation migrations from ``source_host``, newest (highest id)
        first. Kept only if they match, even if Nova ignored a query filter: a recovery
        must judge its own evacuation by them alone."""
        def run() -> list[MigrationView]:
            found = self._compute.migrations(server_id=server_id, source_compute=source_host,
                                             migration_type="evacuation")
            views = [migration_view(m) for m in found if m.migration_type == "evacuation"]
            return sorted((v for v in views if v.instance == server_id
                           and v.source == source_host), key=lambda v: -v.id)
        return await self._call(f"list evacuations of server {server_id} from host "
                                f"{source_host}", run)

    async def _server_action(self, verb: str, server_id: str,
                             fn: Callable[[], None], detail: str = "") -> None:
        def run() -> None:
            log.info("nova: %s server %s%s", verb, server_id, detail)
            fn()
        await self._call(f"{verb} server {server_id}", run)
        log.info("nova: %s server %s accepted", verb, server_id)

    async def evacuate(self, server_id: str, target_host: str | None = None) -> None:
        """Rebuild the server on another host (Nova's scheduler picks it unless
        ``target_host``). Returns once Nova accepted; poll ``server()`` for the outcome.
        Nova refuses (400) while the source nova-compute is up and not forced down."""
        await self._server_action(
            "evacuate", server_id,
            lambda: self._compute.evacuate_server(server_id, host=target_host),
            f" to {target_host}" if target_host else " (scheduler picks the host)")

    async def stop(self, server_id: str) -> None:
        """Power the server off (``os-stop``); accepted, not yet done."""
        await self._server_action("stop", server_id,
                                  lambda: self._compute.stop_server(server_id))

    async def start(self, server_id: str) -> None:
        """Power the server on (``os-start``); accepted, not yet done."""
        await self._server_action("start", server_id,
                                  lambda: self._compute.start_server(server_id))

    async def reset_state(self, server_id: str, state: str) -> None:
        """Force the server's vm_state (``os-resetState``): ``active`` or ``error``."""
        if state not in RESET_STATES:
            raise ValueError(f"reset_state: {state!r} is not one of {', '.join(RESET_STATES)}")
        await self._server_action(f"reset state to {state} of", server_id,
                                  lambda: self._compute.reset_server_state(server_id, state))

    async def instance_actions(self, server_id: str) -> list[dict[str, Any]]:
        """The server's instance actions, newest first as Nova lists them: dicts with
        ``action`` (create, evacuate, stop, ...), ``request_id``, ``start_time``,
        ``message``, ``user_id``, ``project_id``."""
        def run() -> list[dict[str, Any]]:
            return [_action_dict(a) for a in self._compute.server_actions(server_id)]
        return await self._call(f"list instance actions of server {server_id}", run)

    # --- aggregates ---

    async def aggregates_with_host(self, host: str) -> list[dict[str, Any]]:
        """Host aggregates ``host`` belongs to: dicts with ``id``, ``uuid``, ``name``,
        ``availability_zone``, ``hosts``, ``metadata``."""
        def run() -> list[dict[str, Any]]:
            return [_aggregate_dict(a) for a in self._compute.aggregates()
                    if host in (a.hosts or [])]
        return await self._call(f"list aggregates of host {host}", run)

    async def add_host_to_aggregate(self, aggregate_id: str, host: str) -> None:
        """Add ``host`` to the aggregate (Nova answers 409 if it is already there)."""
        def run() -> None:
            log.info("nova: add host %s to aggregate %s", host, aggregate_id)
            self._compute.add_host_to_aggregate(aggregate_id, host)
        await self._call(f"add host {host} to aggregate {aggregate_id}", run)
        log.info("nova: host %s added to aggregate %s", host, aggregate_id)
