"""Host failure: the failed host's instances and the reserved hosts they may go to.

``prepare_instances`` decides which instances to evacuate (Masakari's
PrepareHAEnabledInstancesTask), ``evacuate_instances`` evacuates them with bounded concurrency
and confirms each back in its previous state on another host (EvacuateInstancesTask and
_evacuate_and_confirm), ``enable_reserved_host`` readies a reserved host (its _do_evacuate
with a reserved host). Every Nova action goes through recovery.steps.run_step, so each is
taken exactly once across leader changes (see that module). Per instance, progress is the
vmove: pending > ongoing > succeeded | failed (or ignored).
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from recovery.nova import MigrationView, ServerView
from recovery.outcomes import EndRecovery, LeadershipLost, StepFailed
from recovery.steps import (
    InstanceState, StepContext, Truth, checkpoint, compute_service, describe_state, is_ha,
    parse_state, poll, read, run_step, server_or_fail, service_step, show_service, state_text,
    stop_server,
)
from recovery.workflows import (
    ADD_TO_AGGREGATE, ENABLE_RESERVED_HOST, ENABLE_SERVICE, EVACUATE, EVACUATE_INSTANCES,
    PREPARE_INSTANCES, RESET_STATE, RESTORE_ERROR, STOP,
)

SHUTDOWN = 4  # nova power_state
# An evacuation migration's statuses (nova/compute/api.py evacuate, conductor, manager.py
# rebuild_instance, resource_tracker.py finish_evacuation): accepted > pre-migrating > done
# (> completed once the source's nova-compute cleaned up), or error (no host) / failed.
MIGRATION_DONE = frozenset({"done", "completed"})
MIGRATION_FAILED = frozenset({"error", "failed"})
MIGRATION_ENDED = MIGRATION_DONE | MIGRATION_FAILED
# How an intent's detail records the migration id this recovery's evacuations are newer than.
_KNOWN_RE = re.compile(r"evacuations newer than migration (\d+)")


@dataclass(frozen=True)
class EvacuationPlan:
    """Masakari's decisions for one instance (host_failure.py, _evacuate_and_confirm):
    reset it to error first (Nova evacuates only active, stopped or error instances with no
    task), the state to expect on the new host, and whether to stop it and put it back in
    error afterwards, so it ends in the state it had before the failure."""

    reset_first: bool
    expect: str
    stop_after: bool
    restore_error: bool


def evacuation_plan(before: InstanceState) -> EvacuationPlan:
    vm, task = before.vm_state, before.task_state
    stop_instance, reset = True, False
    if vm not in ("active", "error", "stopped"):
        reset = True
        if vm == "resized" and before.power_state != SHUTDOWN:
            stop_instance = False
    elif vm == "stopped" and task is None:
        stop_instance = False
    elif task is not None:
        reset = True
        if vm == "active":
            stop_instance = False
    # Up to microversion 2.94 Nova brings a stopped instance back stopped, anything else
    # ACTIVE (an error instance is rebuilt ACTIVE; Masakari accepts that too).
    expect = "stopped" if (vm == "stopped" and task is None) else "active"
    stop_after = vm != "active" and stop_instance and expect == "active"
    return EvacuationPlan(reset_first=reset, expect=expect, stop_after=stop_after,
                          restore_error=vm == "error" and stop_instance)


async def prepare_instances(ctx: StepContext) -> None:
    """List the failed host's instances and record a vmove for each: ``pending`` for those
    to evacuate (HA ones first; all with ``evacuate_all_instances``; not those in error
    with ``ignore_instances_in_error_state``), ``ignored`` with the reason for the others
    (Masakari records no row for them; hagent shows why they stayed). Instances already
    recorded keep their vmove; failed ones of an earlier attempt are pending again. No
    instance to evacuate ends the recovery ``finished``, as Masakari's
    SkipHostRecoveryException does."""
    async def body() -> str:
        servers = await read(ctx, lambda: ctx.nova.servers_on_host(ctx.host))
        key = ctx.config.ha_enabled_instance_metadata_key
        ha = [s for s in servers if is_ha(ctx, s)]
        others = [s for s in servers if not is_ha(ctx, s)]
        chosen, ignored = [], []
        for server in ha + others:
            if server.id in ctx.ledger.vmoves:
                continue
            if ctx.config.ignore_instances_in_error_state and server.vm_state == "error":
                ignored.append((server, "in error state (ignore_instances_in_error_state)"))
            elif server in ha or ctx.config.evacuate_all_instances:
                chosen.append(server)
            else:
                ignored.append((server, f"not HA (metadata {key} is not True) and "
                                        f"evacuate_all_instances is off"))
        for server in chosen:
            await ctx.ledger.vmove(server.id, "pending", instance_name=server.name,
                                   source_host=ctx.host)
        for server, why in ignored:
            await ctx.ledger.vmove(server.id, "ignored", instance_name=server.name,
                                   source_host=ctx.host, message=why)
            ctx.info("instance %s (%s) left alone: %s", server.id, server.name, why)
        await reset_failed_vmoves(ctx)
        return (f"{len(servers)} instance(s) on the host ({len(ha)} HA); "
                f"{len(chosen)} newly to evacuate, {len(ignored)} left alone")
    await checkpoint(ctx, PREPARE_INSTANCES, ctx.host, "list the host's instances", body)
    if not to_evacuate(ctx):
        raise EndRecovery("finished", f"no instances to evacuate from host {ctx.host}")


def to_evacuate(ctx: StepContext) -> list[str]:
    """Instances still to evacuate, in the order they were recorded (HA first)."""
    return [i for i, vm in ctx.ledger.vmoves.items() if vm["status"] in ("pending", "ongoing")]


async def reset_failed_vmoves(ctx: StepContext) -> None:
    """Failed instances are tried again (a retry, the next reserved host, the fall-back
    workflow of a priority method)."""
    for instance, vm in list(ctx.ledger.vmoves.items()):
        if vm["status"] == "failed":
            await ctx.ledger.vmove(instance, "pending")


async def evacuate_instances(ctx: StepContext) -> None:
    """Evacuate every pending instance, ``max_concurrent_evacuations`` at a time
    (Masakari: 3 threads), each confirmed back in its previous state on another host. Any
    failure fails the step with the failed instances named."""
    todo = to_evacuate(ctx)
    key = ctx.target or ctx.host

    async def body() -> str:
        limit = asyncio.Semaphore(ctx.config.max_concurrent_evacuations)

        async def one(instance: str) -> bool:
            async with limit:
                return await evacuate_instance(ctx, instance)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {i: group.create_task(one(i)) for i in todo}
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        failed = [i for i, task in tasks.items() if not task.result()]
        if failed:
            raise StepFailed(f"Failed to evacuate instances {', '.join(sorted(failed))} from "
                             f"host {ctx.host}")
        return f"{len(todo)} instance(s) evacuated"
    target = f"reserved host {ctx.target}" if ctx.target else "hosts the scheduler picks"
    await checkpoint(ctx, EVACUATE_INSTANCES, key,
                     f"{len(todo)} instance(s) to {target}, "
                     f"{ctx.config.max_concurrent_evacuations} at a time", body)


def _first(group_error: BaseExceptionGroup) -> BaseException:
    """The exception that matters most in a failed TaskGroup: leadership lost, then any."""
    flat: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            flat.append(error)
    walk(group_error)
    for kind in (LeadershipLost, asyncio.CancelledError):
        for error in flat:
            if isinstance(error, kind):
                return error
    return flat[0]


def _original_state(ctx: StepContext, instance: str, server: ServerView) -> InstanceState:
    """The instance's state before recovery touched it: as the first intent about it
    recorded it (any attempt, so a resumed or retried evacuation remembers it), else now."""
    for item in ctx.ledger.steps:
        if item["key"] == instance:
            parsed = parse_state(item["detail"])
            if parsed is not None:
                return parsed
    return InstanceState(server.vm_state, server.task_state, server.power_state)


async def evacuate_instance(ctx: StepContext, instance: str) -> bool:
    """One instance: [reset to error] > evacuate > confirm its previous state on another
    host > [stop] > [back to error]; its vmove goes ongoing, then succeeded or failed.
    Returns whether it succeeded (or was ignored: deleted meanwhile)."""
    vmove = ctx.ledger.vmoves[instance]
    try:
        server = await read(ctx, lambda: ctx.nova.server(instance))
    except StepFailed as exc:
        await ctx.ledger.vmove(instance, "failed", message=str(exc))
        return False
    if server is None:
        status = "ignored" if vmove["status"] == "pending" else "failed"
        await ctx.ledger.vmove(instance, status, message="instance no longer exists in Nova")
        ctx.info("instance %s no longer exists in Nova: %s", instance, status)
        return status == "ignored"
    before = _original_state(ctx, instance, server)
    plan = evacuation_plan(before)
    source = ctx.host
    try:
        known = await _known_evacuations(ctx, instance, source)
    except StepFailed as exc:
        await ctx.ledger.vmove(instance, "failed", message=str(exc))
        return False
    detail = (f"from {describe_state(before)}; to "
              f"{ctx.target or 'a host the scheduler picks'}; "
              f"evacuations newer than migration {known}")
    try:
        await ctx.ledger.vmove(instance, "ongoing")
        if plan.reset_first:
            await _reset_state(ctx, RESET_STATE, instance, detail)
        await _evacuate(ctx, instance, source, plan, detail, known)
        if plan.stop_after:
            await stop_server(ctx, STOP, instance, detail)
        if plan.restore_error:
            await _reset_state(ctx, RESTORE_ERROR, instance, detail)
        final = await read(ctx, lambda: ctx.nova.server(instance))
        dest = final.host if final is not None else None
        await ctx.ledger.vmove(instance, "succeeded", dest_host=dest,
                               message=f"{final.status if final else 'gone'} on {dest}")
        ctx.count("evacuations_succeeded")
        return True
    except StepFailed as exc:
        ctx.count("evacuations_failed")
        ctx.info("instance %s not recovered: %s", instance, exc)
        await ctx.ledger.vmove(instance, "failed", message=str(exc))
        return False


async def _reset_state(ctx: StepContext, name: str, instance: str, detail: str) -> None:
    async def truth() -> Truth:
        s = await server_or_fail(ctx, instance)
        return Truth(s.vm_state == "error" and s.task_state is None, state_text(s))

    async def check() -> tuple[bool, str]:
        seen = await truth()
        return seen.done, seen.text

    async def confirm() -> str:
        return await poll(ctx, f"{name} of {instance}", check, ctx.config.nova_timeout)

    await run_step(ctx, name, instance, detail=detail, truth=truth,
                   act=lambda: ctx.nova.reset_state(instance, "error"), confirm=confirm)


async def _evacuate(ctx: StepContext, instance: str, source: str, plan: EvacuationPlan,
                    detail: str, known: int) -> None:
    """Evacuate ``instance`` from ``source``, judged by Nova's migration records, not the
    server's ``host``: Nova saves the rebuilt instance ACTIVE with no task while ``host``
    still names the source, and moves ``host`` only when ``finish_evacuation`` gets the
    destination's resource lock (seconds to tens of seconds under load on real Nova). The
    evacuate call creates its migration before it answers, so a migration of this
    recovery's (see `_ours`) that has not failed means the call happened: truth, the retry
    of a failed call, and a resumed intent all stop at it instead of evacuating twice."""
    async def evacuations() -> list[MigrationView]:
        return await ctx.nova.evacuations(instance, source)

    async def truth() -> Truth:
        s = await server_or_fail(ctx, instance)
        ours = _ours(await evacuations(), known)
        under_way = [m for m in ours if m.status not in MIGRATION_FAILED]
        text = f"{state_text(s)} on {s.host}; {_migrations_text(ours)}"
        # An instance no longer on its failed host left it before this recovery looked
        # (another evacuation, an operator): there is nothing left to evacuate.
        return Truth(bool(under_way) or s.host != source, text)

    async def check() -> tuple[bool, str]:
        ours = _ours(await evacuations(), known)
        s = await server_or_fail(ctx, instance)
        seen = f"{s.status} ({state_text(s)}) on {s.host}; {_migrations_text(ours)}"
        if any(m.status not in MIGRATION_ENDED for m in ours):
            return False, seen
        if ours and not any(m.status in MIGRATION_DONE for m in ours):
            raise StepFailed(f"evacuation of instance {instance} from {source} "
                             f"{ours[0].status} in Nova (migration {ours[0].id}): {seen}")
        if not ours and s.host == source:
            raise StepFailed(f"Nova has no evacuation of instance {instance} from {source} "
                             f"since migration {known}: {seen}")
        if s.host == source or s.task_state is not None:
            return False, seen
        if s.vm_state == "error":
            raise StepFailed(f"evacuation of instance {instance} ended in ERROR on {s.host}")
        if s.vm_state == plan.expect:
            return True, f"{s.status} on {s.host}"
        return False, seen

    async def confirm() -> str:
        return await poll(ctx, f"evacuation of {instance} to {plan.expect}", check,
                          ctx.config.evacuate_timeout)

    await run_step(ctx, EVACUATE, instance, detail=detail, truth=truth,
                   act=lambda: ctx.nova.evacuate(instance, ctx.target), confirm=confirm)


def _ours(migrations: list[MigrationView], known: int) -> list[MigrationView]:
    """The evacuations that belong to this recovery, newest first: those newer than the
    newest one recorded before its first step on the instance (``known``), and any still
    under way (an evacuation already running when the recovery began, by whoever, must
    not be joined by a second one). An older evacuation of the same instance from the same
    host (it came back there since) ended before, and is never mistaken for this one."""
    return [m for m in migrations if m.id > known or m.status not in MIGRATION_ENDED]


def _migrations_text(ours: list[MigrationView]) -> str:
    if not ours:
        return "no evacuation migration"
    return "migration " + ", ".join(f"{m.id} {m.status}" for m in ours)


async def _known_evacuations(ctx: StepContext, instance: str, source: str) -> int:
    """The id this recovery's evacuations of ``instance`` are newer than: as its first
    intent about the instance recorded it (any attempt, so a retry or a new leader judges
    by the same line), else the newest evacuation migration from ``source`` now (0: none)."""
    for item in ctx.ledger.steps:
        if item["key"] == instance:
            match = _KNOWN_RE.search(item["detail"] or "")
            if match is not None:
                return int(match.group(1))
    migrations = await read(ctx, lambda: ctx.nova.evacuations(instance, source))
    return max((m.id for m in migrations), default=0)


# --- host failure: reserved hosts ------------------------------------------------------------

async def enable_reserved_host(ctx: StepContext, reserved: str) -> None:
    """Make ``reserved`` ready to receive the failed host's instances (Masakari's
    _do_evacuate with a reserved host): optionally add it to the failed host's aggregates,
    enable its compute service, and mark it no longer reserved in the log. A reserved host
    whose nova-compute is down fails at once (hagent's addition: Masakari would let every
    evacuation to it fail first), so the next one is tried."""
    async def body() -> str:
        service = await read(ctx, lambda: compute_service(ctx, reserved))
        if service.state != "up" or service.forced_down:
            raise StepFailed(f"reserved host {reserved}: {show_service(service)}")
        added = []
        if ctx.config.add_reserved_host_to_aggregate:
            for aggregate in await read(ctx, lambda: ctx.nova.aggregates_with_host(ctx.host)):
                await _add_to_aggregate(ctx, reserved, aggregate)
                added.append(str(aggregate.get("name") or aggregate["id"]))
        await service_step(ctx, ENABLE_SERVICE, reserved, "reserved host: enable",
                           lambda s: s.status == "enabled", lambda: ctx.nova.enable(reserved))
        await ctx.ledger.host_update(reserved, reserved=False)
        return (f"{reserved} enabled and no longer reserved"
                + (f"; added to aggregate(s) {', '.join(added)}" if added else ""))
    await checkpoint(ctx, ENABLE_RESERVED_HOST, reserved, "use reserved host", body)


async def _add_to_aggregate(ctx: StepContext, reserved: str, aggregate: dict[str, Any]) -> None:
    aggregate_id = str(aggregate["id"])

    async def member() -> bool:
        current = await ctx.nova.aggregates_with_host(reserved)
        return any(str(a["id"]) == aggregate_id for a in current)

    async def truth() -> Truth:
        inside = await member()
        return Truth(inside, f"{reserved} {'in' if inside else 'not in'} aggregate "
                             f"{aggregate.get('name') or aggregate_id}")

    async def check() -> tuple[bool, str]:
        seen = await truth()
        return seen.done, seen.text

    async def confirm() -> str:
        return await poll(ctx, f"add {reserved} to aggregate {aggregate_id}", check,
                          ctx.config.nova_timeout)

    await run_step(ctx, ADD_TO_AGGREGATE, f"{reserved} aggregate {aggregate_id}",
                   detail=f"aggregate {aggregate.get('name') or aggregate_id} of {ctx.host}",
                   truth=truth, act=lambda: ctx.nova.add_host_to_aggregate(aggregate_id, reserved),
                   confirm=confirm)
