"""The recovery engine: the Raft leader recovers notifications through Nova, exactly once.

``RecoveryEngine`` runs on every voter and acts only while ``agent.is_leader()``. What it
does, and what callers may rely on:

- **Claim.** On becoming leader it commits ``recovery.claim`` with its Raft term before
  anything else. From then on the log refuses any intent or result of an older term, so a
  deposed leader cannot act even if pysyncobj still forwards its proposals.
- **Scan.** Every ``scan_interval`` (and at once after ``wake()``) it reads the notifications
  in ``new``, ``running`` and ``error``, in commit order, one at a time per host (Masakari's
  per-host lock), host failures first (a VM or process recovery of a host whose host
  failure is ready is paused for it and resumed afterwards):
  - ``new``: decided by ``workflows.plan`` (ignored, finished, wait for fencing, or run);
  - ``running`` without a task here: a previous leader's (or this engine's before it lost
    leadership) recovery, resumed from its recorded steps;
  - ``error``: retried after ``retry_interval`` (doubling up to ``retry_interval_max``), or
    ``failed`` once ``max_retries`` retries were used;
  - older than ``notification_expiry`` (and not being recovered here): ``failed``.
  With ``restore_host_on_return`` it also undoes its marks on a recovered host that is back
  (force down unset, service enabled, maintenance cleared).
- **Run.** ``new``/``error`` -> ``running`` (the log counts the attempt), the workflows run
  (recovery/steps.py: truth, intent, act, confirm, result), then ``finished`` / ``ignored``,
  or ``error`` with the reason (``failed`` after the last retry). A live leader never leaves
  a notification ``running``: every run ends in one of those transitions, an unexpected
  exception included. A run stops without recording only when leadership is lost.
- No fixed sleeps: only polls of Nova with deadlines (Masakari's timings as deadlines).

Every decision is logged at INFO with the notification uuid and host.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any, Awaitable, Callable

from recovery.ledger import AgentLike, Ledger, Refused, commit, transition
from recovery.nova import NovaError
from recovery.outcomes import EndRecovery, LeadershipLost, StepFailed
from recovery import evacuation, steps
from recovery.evacuation import enable_reserved_host, evacuate_instances, reset_failed_vmoves
from recovery.steps import NovaLike, StepContext
from recovery.workflows import (
    CONFIRM_ACTIVE, DISABLE_SERVICE, ENABLE_RESERVED_HOST, ENABLE_SERVICE, EVACUATE_INSTANCES,
    FORCE_DOWN, PREPARE_INSTANCES, START_INSTANCE, STOP_INSTANCE, WAIT_FENCED, Plan, Workflow,
    describe, plan,
)

log = logging.getLogger(__name__)

_OPEN = ["new", "running", "error"]
# The code of each step name of recovery/workflows.py. ENABLE_RESERVED_HOST is not here: the
# engine drives it, one reserved host after the other (_reserved_hosts).
STEPS: dict[str, Callable[[StepContext], Awaitable[None]]] = {
    WAIT_FENCED: steps.wait_fenced,
    FORCE_DOWN: steps.force_down,
    DISABLE_SERVICE: steps.disable_service,
    PREPARE_INSTANCES: evacuation.prepare_instances,
    EVACUATE_INSTANCES: evacuation.evacuate_instances,
    STOP_INSTANCE: steps.stop_instance,
    START_INSTANCE: steps.start_instance,
    CONFIRM_ACTIVE: steps.confirm_active,
    ENABLE_SERVICE: steps.enable_service,
}
# Committed ops after which a scan may find something to do.
WAKE_OPS = frozenset({"notification.submit", "host.down", "host.fenced", "host.up",
                      "host.update", "segment.update", "recovery.claim"})


class RecoveryEngine:
    """The leader's recovery engine (module docstring).

    ``config`` is ``hagent.config.RecoveryConfig`` (or an object with its attributes).
    ``term_of`` returns this node's current Raft term (default: ``agent.status()["term"]``);
    ``unsafe`` marks every action in the log as done without fencing (safety rule 6).
    ``deposed_grace`` (give ``fencing.lease_ttl``): after claiming, a step an earlier leader
    intended and Nova shows no effect of is repeated only this long after the claim, by when
    that leader, if merely paused, has acted or been reset by its watchdog.
    """

    def __init__(self, agent: AgentLike, nova: NovaLike, config: Any, node_name: str, *,
                 scan_interval: float = 0.5, term_of: Callable[[], int] | None = None,
                 unsafe: bool = False, deposed_grace: float = 15.0,
                 call_retries: int = 3, call_pause: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._agent = agent
        self._nova = nova
        self.config = config
        self.node = node_name
        self._scan_interval = scan_interval
        self._term_of = term_of or (lambda: agent.status()["term"])
        self._unsafe = unsafe
        self._deposed_grace = deposed_grace
        self._claimed_at = 0.0
        self._call_retries = call_retries
        self._call_pause = call_pause
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self.term: int | None = None  # the term this engine claimed and leads in
        self._tasks: dict[str, tuple[asyncio.Task, str, str]] = {}  # uuid -> (task, host, type)
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._last_error: str | None = None
        self.counters: dict[str, int] = {
            "turns": 0, "claims": 0, "runs": 0, "finished": 0, "ignored": 0, "errors": 0,
            "failed": 0, "expired": 0, "evacuations_succeeded": 0, "evacuations_failed": 0,
            "nova_calls": 0, "nova_errors": 0}
        # Seconds from a notification's generated_time to its end, per type (for metrics).
        self.durations: dict[str, list[float]] = {}
        self._restore_after: dict[str, float] = {}  # host -> when to try restoring it again
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if not self.config.enabled:
            log.info("recovery disabled (recovery.enabled = false): this node never recovers")
            return
        self._loop = asyncio.get_running_loop()
        self._loop_task = asyncio.create_task(self._run(), name="recovery")
        log.info("recovery engine started on %s (%d evacuations at a time%s)", self.node,
                 self.config.max_concurrent_evacuations,
                 "; UNSAFE: fencing is off" if self._unsafe else "")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *(t for t, _, _ in self._tasks.values()))
                 if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._tasks.clear()
        self.term = None

    def wake(self) -> None:
        """Scan now (e.g. after a notification, host.fenced or host.up was applied)."""
        self._wake.set()

    def observe(self, command: dict[str, Any], result: dict[str, Any]) -> None:
        """An apply observer (``backend.add_apply_observer``; any thread): scan at once
        after a command that may make a notification ready, instead of at the next
        ``scan_interval``."""
        if command.get("op") in WAKE_OPS and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def status(self) -> dict[str, Any]:
        """For /status and metrics: the claimed term, the notifications in progress here."""
        return {"leading_term": self.term, "in_progress": sorted(self._tasks),
                **self.counters}

    # --- leadership ---------------------------------------------------------------------

    def _leading(self) -> bool:
        """Still the leader in the claimed term (cheap; checked before every write and act)."""
        if self.term is None or not self._agent.is_leader():
            return False
        try:
            return self._term_of() == self.term
        except Exception:
            return False

    async def _run(self) -> None:
        while True:
            try:
                await self._turn()
                self._last_error = None
            except asyncio.CancelledError:
                raise
            except LeadershipLost as exc:  # the next turn sees it and stops
                log.info("recovery scan stopped: %s", exc)
            except Exception as exc:  # one bad turn must not end recovery on this node
                error = f"{type(exc).__name__}: {exc}"
                if error != self._last_error:
                    log.exception("recovery scan failed; trying again")
                    self._last_error = error
            self._wake.clear()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancellation
                # that arrives as the event is set, and stop() would wait forever.
                async with asyncio.timeout(self._scan_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _turn(self) -> None:
        self.counters["turns"] += 1
        leader = self._agent.is_leader()
        term = self._term_of() if leader else None
        if self.term is not None and (not leader or term != self.term):
            await self._abdicate("this node no longer leads" if not leader
                                 else f"the term moved on to {term}")
        if not leader:
            return
        if self.term is None and not await self._claim(term):
            return
        await self._scan()
        if self.config.restore_host_on_return:
            await self._restore_returned_hosts()

    async def _claim(self, term: int) -> bool:
        try:
            await commit(self._agent, {"op": "recovery.claim", "term": term, "node": self.node},
                         lambda: self._agent.is_leader() and self._term_of() == term)
        except (LeadershipLost, Refused) as exc:
            log.info("recovery not claimed for term %s: %s", term, exc)
            return False
        self.term = term
        self._claimed_at = self._clock()
        self.counters["claims"] += 1
        log.info("recovery claimed for term %s: this node recovers notifications now", term)
        return True

    async def _abdicate(self, why: str) -> None:
        log.info("recovery stops (term %s): %s; %d recovery(ies) left to the next leader",
                 self.term, why, len(self._tasks))
        tasks = [t for t, _, _ in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.term = None

    # --- scan ---------------------------------------------------------------------------

    async def _scan(self) -> None:
        records = await self._agent.query("list_notifications", filters={"status": _OPEN})
        records.sort(key=lambda r: r["id"])
        taken: set[str] = set()  # hosts given (or held for) a notification in this scan
        # Host failures first: they may pause a VM/process recovery of their host.
        for record in sorted(records, key=lambda r: r["type"] != "COMPUTE_HOST"):
            if not self._leading():
                return
            uuid, host = record["notification_uuid"], record["hostname"]
            if uuid in self._tasks or host in taken:
                continue
            running_here = {kind for _, h, kind in self._tasks.values() if h == host}
            if running_here and (record["type"] != "COMPUTE_HOST"
                                 or "COMPUTE_HOST" in running_here):
                continue
            if await self._expire(record):
                continue
            if record["status"] == "error" and not await self._retry_due(record):
                continue
            decided = await self._plan(record)
            taken.add(host)  # a host failure waiting to be fenced holds its host's later ones
            if decided.wait:
                continue
            if running_here:
                await self._pause_others(host)
            self._spawn(record, decided)

    async def _pause_others(self, host: str) -> None:
        """Cancel this host's VM/process recoveries so its host failure goes first; they
        stay ``running`` and are resumed from their steps once the host recovery is done."""
        for uuid, (task, task_host, kind) in list(self._tasks.items()):
            if task_host == host and kind != "COMPUTE_HOST":
                _log(uuid, host, "paused for the host failure recovery of its host")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self._tasks.pop(uuid, None)

    async def _plan(self, record: dict[str, Any]) -> Plan:
        segment = await self._agent.query("get_segment", ref=record["failover_segment_uuid"])
        incident = None
        if record["type"] == "COMPUTE_HOST":
            incident = await self._agent.query("incident", hostname=record["hostname"])
        return plan(record, segment, incident)

    async def _expire(self, record: dict[str, Any]) -> bool:
        age = self._wall() - datetime.fromisoformat(record["generated_time"]).timestamp()
        if age <= self.config.notification_expiry:
            return False
        message = (f"expired: generated {age:.0f} s ago, more than notification_expiry "
                   f"({self.config.notification_expiry:g} s)")
        _log(record["notification_uuid"], record["hostname"], message)
        await transition(self._agent, record["notification_uuid"], "failed", message,
                         self._leading)
        self.counters["expired"] += 1
        self.counters["failed"] += 1
        return True

    async def _retry_due(self, record: dict[str, Any]) -> bool:
        """An ``error`` notification: retry now, later, or give up (``failed``)."""
        attempts = record.get("recovery_attempts", 0)
        uuid, host = record["notification_uuid"], record["hostname"]
        if attempts > self.config.max_retries:
            message = f"failed after {attempts} attempt(s): {record.get('message')}"
            _log(uuid, host, message)
            await transition(self._agent, uuid, "failed", message, self._leading)
            self.counters["failed"] += 1
            return False
        pause = min(self.config.retry_interval * 2 ** max(attempts - 1, 0),
                    self.config.retry_interval_max)
        since = datetime.fromisoformat(record["updated_at"] or record["created_at"]).timestamp()
        return self._wall() >= since + pause

    # --- hosts back -----------------------------------------------------------------------

    async def _restore_returned_hosts(self) -> None:
        """``restore_host_on_return``: a host whose failure hagent recovered (its incident
        fenced, its STOPPED finished) and that is back (incident closed by host.up: alive
        and renewing its lease for up_damping) gets its compute service's force down unset
        and hagent's disable undone, then leaves maintenance. Only while Nova still shows
        hagent's marks: a service someone else changed since, or a host put on maintenance
        by hand, is left as it is."""
        now = self._clock()
        busy = {host for _, host, _ in self._tasks.values()}
        for incident in await self._agent.query("incidents", status="closed"):
            host = incident["hostname"]
            if (not incident["fenced"] or incident["notification_status"] != "finished"
                    or host in busy or self._restore_after.get(host, 0.0) > now):
                continue
            record = await self._agent.query("get_host", ref=host)
            if record is None or not record["on_maintenance"]:
                continue
            try:
                service = await self._nova.compute_service(host)
                ours = service is not None and (service.forced_down or (
                    service.status == "disabled"
                    and service.disabled_reason == self.config.service_disable_reason))
                if not ours:
                    self._restore_after[host] = now + self.config.retry_interval_max
                    continue
                if not self._leading():
                    return
                if service.forced_down:
                    await self._nova.unset_force_down(host)
                if service.status == "disabled":
                    await self._nova.enable(host)
                await commit(self._agent, {"op": "host.update", "host": host,
                                           "on_maintenance": False}, self._leading)
            except NovaError as exc:
                log.warning("host %s is back but could not be restored (%s); trying again in "
                            "%g s", host, exc, self.config.retry_interval)
                self._restore_after[host] = now + self.config.retry_interval
                continue
            log.info("host %s is back (incident %s closed): force down unset, compute service "
                     "enabled, maintenance cleared (restore_host_on_return)", host,
                     incident["notification_uuid"])

    # --- one notification ---------------------------------------------------------------

    def _spawn(self, record: dict[str, Any], decided: Plan) -> None:
        uuid, host = record["notification_uuid"], record["hostname"]
        task = asyncio.create_task(self._recover(record, decided), name=f"recover-{uuid}")
        self._tasks[uuid] = (task, host, record["type"])
        task.add_done_callback(lambda _t, u=uuid: self._forget(u, _t))

    def _forget(self, uuid: str, task: asyncio.Task) -> None:
        entry = self._tasks.get(uuid)
        if entry is not None and entry[0] is task:
            del self._tasks[uuid]
        self.wake()

    async def _recover(self, record: dict[str, Any], decided: Plan) -> None:
        uuid, host = record["notification_uuid"], record["hostname"]
        try:
            await self._recover_once(record, decided)
        except LeadershipLost as exc:
            _log(uuid, host, f"stopped: {exc}; the next leader resumes it")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected refusal: never stay running
            log.exception("notification %s (host %s): recovery failed unexpectedly", uuid, host)
            try:
                await self._end(record, "error", f"internal error: {type(exc).__name__}: {exc}")
            except (LeadershipLost, Refused) as inner:
                _log(uuid, host, f"could not record the error: {inner}")

    async def _recover_once(self, record: dict[str, Any], decided: Plan) -> None:
        uuid, host = record["notification_uuid"], record["hostname"]
        status = record["status"]
        if decided.status is not None and status == "new" and decided.status == "ignored":
            _log(uuid, host, f"ignored: {decided.message}")
            await transition(self._agent, uuid, "ignored", decided.message, self._leading)
            self.counters["ignored"] += 1
            return
        if status != "running":
            _log(uuid, host, f"{'retrying' if status == 'error' else 'starting'}: "
                             f"{describe(decided.workflows) or decided.status}")
            record = await transition(self._agent, uuid, "running", None, self._leading)
            self.counters["runs"] += 1
        else:
            _log(uuid, host, f"resuming a running recovery (attempt "
                             f"{record.get('recovery_attempts')}): {describe(decided.workflows)}")
        if decided.status is not None:
            await self._end(record, decided.status, decided.message)
            return
        ledger = Ledger(self._agent, record, self.term, self._leading)
        ctx = StepContext(notification=record, nova=self._nova, ledger=ledger,
                          agent=self._agent, config=self.config, call_retries=self._call_retries,
                          call_pause=self._call_pause, clock=self._clock, sleep=self._sleep,
                          unsafe=self._unsafe, counters=self.counters,
                          repeat_after=self._claimed_at + self._deposed_grace)
        try:
            message = await self._workflows(ctx, decided.workflows)
            await self._end(record, "finished", message)
        except EndRecovery as end:
            await self._end(record, end.status, end.message)
        except StepFailed as exc:
            await self._close_vmoves(ledger, str(exc))
            await self._end(record, "error", str(exc))

    async def _close_vmoves(self, ledger: Ledger, reason: str) -> None:
        """Instances not evacuated when a run fails are recorded failed (the next attempt
        makes them pending again), so no vmove looks in progress after the run."""
        for instance, vm in list(ledger.vmoves.items()):
            if vm["status"] in ("pending", "ongoing"):
                await ledger.vmove(instance, "failed", message=f"not evacuated: {reason}")

    async def _workflows(self, ctx: StepContext, workflows: tuple[Workflow, ...]) -> str:
        """Run the workflows in fall-back order (Masakari's auto_priority / rh_priority):
        the next runs only if the previous failed; EndRecovery ends them all."""
        if ctx.notification["type"] == "COMPUTE_HOST":
            await self._maintenance(ctx)
        failures = []
        for index, workflow in enumerate(workflows):
            if index:
                ctx.info("workflow %s failed; falling back to %s", workflows[index - 1].name,
                         workflow.name)
                await reset_failed_vmoves(ctx)
            try:
                await self._workflow(ctx, workflow)
                return _summary(ctx)
            except StepFailed as exc:
                failures.append(f"{workflow.name}: {exc}" if len(workflows) > 1 else str(exc))
        raise StepFailed("; ".join(failures))

    async def _workflow(self, ctx: StepContext, workflow: Workflow) -> None:
        ctx.info("running workflow %s", workflow.name)
        if workflow.target != "reserved_host":
            for name in workflow.steps:
                await STEPS[name](ctx)
            return
        loop_at = workflow.steps.index(ENABLE_RESERVED_HOST)
        for name in workflow.steps[:loop_at]:
            await STEPS[name](ctx)
        await self._reserved_hosts(ctx)

    async def _reserved_hosts(self, ctx: StepContext) -> None:
        """Masakari's reserved-host loop: enable a reserved host and evacuate to it; if any
        instance fails, the failed ones go to the next reserved host. A host this attempt
        already enabled (before a leader change) is used first, so a resumed recovery does
        not take a second one."""
        candidates = await self._reserved_candidates(ctx)
        if not candidates:
            raise StepFailed("No reserved_hosts available for evacuation.")
        reasons: list[str] = []
        for reserved in candidates:
            if reasons:
                await reset_failed_vmoves(ctx)
            ctx.target = reserved
            ctx.info("evacuating to reserved host %s", reserved)
            try:
                await enable_reserved_host(ctx, reserved)
                await evacuate_instances(ctx)
                return
            except StepFailed as exc:
                reasons.append(f"{reserved}: {exc}")
            finally:
                ctx.target = None
        raise StepFailed(f"reserved hosts ran out ({'; '.join(reasons)})")

    async def _reserved_candidates(self, ctx: StepContext) -> list[str]:
        ledger = ctx.ledger
        mine = [s for s in ledger.steps if s["attempt"] == ledger.attempt]
        failed = {s["key"] for s in mine if s["outcome"] == "failed"
                  and s["step"] in (ENABLE_RESERVED_HOST, EVACUATE_INSTANCES)}
        used = [s["key"] for s in mine if s["step"] == ENABLE_RESERVED_HOST
                and s["outcome"] in (None, "done")]
        listed = await self._agent.query(
            "list_hosts", segment=ctx.notification["failover_segment_uuid"],
            filters={"reserved": True, "on_maintenance": False}, sort_key="created_at",
            sort_dir="asc")
        names = [*used, *(h["name"] for h in listed)]
        return [n for i, n in enumerate(names)
                if n != ctx.host and n not in failed and n not in names[:i]]

    async def _maintenance(self, ctx: StepContext) -> None:
        """Masakari's manager puts a failed host on maintenance (and no longer reserved)
        before recovering it, so its later notifications are ignored until an operator
        (or restore_host_on_return) clears it."""
        host = await self._agent.query("get_host", ref=ctx.host)
        if host is None:
            return
        changes = {}
        if not host["on_maintenance"]:
            changes["on_maintenance"] = True
        if host["reserved"]:
            changes["reserved"] = False
        if changes:
            ctx.info("host on maintenance%s", " and no longer reserved"
                     if "reserved" in changes else "")
            await ctx.ledger.host_update(ctx.host, **changes)

    async def _end(self, record: dict[str, Any], status: str, message: str | None) -> None:
        """running -> ``status`` (error becomes failed after the last retry)."""
        uuid, host = record["notification_uuid"], record["hostname"]
        attempts = record.get("recovery_attempts", 0)
        if status == "error" and attempts > self.config.max_retries:
            status = "failed"
            message = f"failed after {attempts} attempt(s): {message}"
        elif status == "error":
            pause = min(self.config.retry_interval * 2 ** max(attempts - 1, 0),
                        self.config.retry_interval_max)
            message = f"{message} (attempt {attempts}; retried in {pause:g} s)"
        _log(uuid, host, f"{status}: {message}")
        await transition(self._agent, uuid, status, message, self._leading)
        self.counters["errors" if status == "error" else status] += 1
        if status in ("finished", "failed"):
            age = self._wall() - datetime.fromisoformat(record["generated_time"]).timestamp()
            self.durations.setdefault(record["type"], []).append(age)
            del self.durations[record["type"]][:-100]


def _summary(ctx: StepContext) -> str:
    kind = ctx.notification["type"]
    if kind == "COMPUTE_HOST":
        statuses = [v["status"] for v in ctx.ledger.vmoves.values()]
        return (f"host {ctx.host} recovered: {statuses.count('succeeded')} instance(s) "
                f"evacuated, {statuses.count('ignored')} left alone")
    if kind == "VM":
        return f"instance {ctx.notification['payload']['instance_uuid']} recovered (ACTIVE)"
    return f"compute service of {ctx.host} " + (
        "disabled" if ctx.notification["payload"].get("event") == "STOPPED" else "enabled")


def _log(uuid: str, host: str, text: str) -> None:
    log.info("notification %s (host %s): %s", uuid, host, text)
