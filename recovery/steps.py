"""The code of each recovery step: read Nova's truth, act, confirm by polling with a deadline.

Every step that changes the world goes through `run_step`, which gives it these properties
(what the engine and the tests rely on):

- **Truth first.** Before acting, the step asks Nova whether the wanted state is already
  there (service already forced down, instance already on another host or being rebuilt
  there, already stopped). If so it does not act: the record says ``skipped``.
- **Intent before the call.** The intent (with this leader's term) is committed before
  the call; a deposed leader's intent is refused by the log, so it never acts.
- **Result after the confirmation.** The call is confirmed by polling Nova until it shows
  the wanted state or the deadline passes (no fixed sleeps); only then is the result
  committed (``done``), or ``failed`` with the reason.
- **Resume.** A step whose intent is open (its leader died or was deposed) is resumed by
  asking Nova: if the effect is there the step is confirmed and recorded ``done`` without a
  second call; if not, the old intent is closed ``failed`` ("not carried out") and the step
  starts afresh. A step done in this attempt is not run again.
- **Retryable Nova errors** (timeouts, 5xx, 409) are retried a few times, and each retry
  first asks Nova whether the call happened anyway.

Host failure follows masakari/engine/drivers/taskflow/host_failure.py, instance failure
instance_failure.py and process failure process_failure.py; where hagent differs the
function says so.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from recovery.ledger import AgentLike, Ledger
from recovery.nova import NovaError, ServerView, ServiceView
from recovery.outcomes import EndRecovery, LeadershipLost, StepFailed
from recovery.workflows import (
    ADD_TO_AGGREGATE, CONFIRM_ACTIVE, DISABLE_SERVICE, ENABLE_RESERVED_HOST, ENABLE_SERVICE,
    EVACUATE, EVACUATE_INSTANCES, FORCE_DOWN, PREPARE_INSTANCES, RESET_STATE, RESTORE_ERROR,
    START_INSTANCE, STOP, STOP_INSTANCE, WAIT_FENCED, is_true,
)

log = logging.getLogger(__name__)

# Nova's task states while an evacuation rebuilds the instance (nova/compute/task_states.py).
REBUILDING = frozenset({"rebuilding", "rebuild_block_device_mapping", "rebuild_spawning"})
SHUTDOWN = 4  # nova power_state
# How many looks in a row must show an evacuated instance back on its failed host with no
# task before the evacuation counts as not happening (Nova sets task_state rebuilding before
# it answers the evacuate call, so one look would do against Nova itself).
_STUCK_LOOKS = 3


class NovaLike(Protocol):
    """recovery.nova.NovaClient, or a fake with the same coroutines."""

    async def compute_service(self, host: str) -> ServiceView | None: ...
    async def force_down(self, host: str) -> ServiceView: ...
    async def disable(self, host: str, reason: str) -> ServiceView: ...
    async def enable(self, host: str) -> ServiceView: ...
    async def servers_on_host(self, host: str) -> list[ServerView]: ...
    async def server(self, server_id: str) -> ServerView | None: ...
    async def evacuate(self, server_id: str, target_host: str | None = None) -> None: ...
    async def stop(self, server_id: str) -> None: ...
    async def start(self, server_id: str) -> None: ...
    async def reset_state(self, server_id: str, state: str) -> None: ...
    async def aggregates_with_host(self, host: str) -> list[dict[str, Any]]: ...
    async def add_host_to_aggregate(self, aggregate_id: str, host: str) -> None: ...


@dataclass
class StepContext:
    """What a step needs: the notification, Nova, the ledger, the ``[recovery]`` settings
    (hagent.config.RecoveryConfig or any object with its attributes)."""

    notification: dict[str, Any]
    nova: NovaLike
    ledger: Ledger
    agent: AgentLike
    config: Any
    call_retries: int = 3
    call_pause: float = 1.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    target: str | None = None  # the reserved host evacuations go to (None: the scheduler)
    unsafe: bool = False
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.notification["hostname"]

    @property
    def uuid(self) -> str:
        return self.notification["notification_uuid"]

    def info(self, text: str, *args: Any) -> None:
        log.info("notification %s (host %s): " + text, self.uuid, self.host, *args)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


@dataclass(frozen=True)
class Truth:
    """What Nova shows: ``done`` if the step's effect is there (or under way)."""

    done: bool
    text: str


# --- Nova calls with retries and polling ------------------------------------------------------

async def read(ctx: StepContext, call: Callable[[], Awaitable[Any]]) -> Any:
    """A read of Nova, retried on retryable errors; a lasting error fails the step."""
    for attempt in range(ctx.call_retries + 1):
        try:
            return await call()
        except NovaError as exc:
            ctx.count("nova_errors")
            if not exc.retryable or attempt == ctx.call_retries:
                raise StepFailed(str(exc)) from None
            await ctx.sleep(ctx.call_pause * 2 ** attempt)
    raise AssertionError("unreachable")


async def poll(ctx: StepContext, what: str, check: Callable[[], Awaitable[tuple[bool, str]]],
               timeout: float) -> str:
    """Look at Nova every ``poll_interval`` until ``check`` says done (returns its text) or
    ``timeout`` seconds passed (StepFailed with the last thing seen). ``check`` may raise
    StepFailed to give up early; retryable Nova errors just mean "look again"."""
    deadline = ctx.clock() + timeout
    seen = "nothing yet"
    while True:
        try:
            done, seen = await check()
            if done:
                return seen
        except NovaError as exc:
            ctx.count("nova_errors")
            if not exc.retryable:
                raise StepFailed(str(exc)) from None
            seen = str(exc)
        if ctx.clock() >= deadline:
            raise StepFailed(f"{what}: not within {timeout:g} s (last seen: {seen})")
        await ctx.sleep(ctx.config.poll_interval)


async def run_step(ctx: StepContext, name: str, key: str, *, detail: str,
                   truth: Callable[[], Awaitable[Truth]], act: Callable[[], Awaitable[None]],
                   confirm: Callable[[], Awaitable[str]]) -> str:
    """One world-changing step, exactly once (module docstring). Returns the result text.
    Raises StepFailed (recorded ``failed``), LeadershipLost or EndRecovery (not recorded)."""
    ledger = ctx.ledger
    done = ledger.done_in_attempt(name, key)
    if done is not None:
        return done["outcome_detail"] or ""
    latest = ledger.latest(name, key)
    resumed = latest is not None and latest["outcome"] is None
    seen = await read(ctx, truth)
    if resumed and not seen.done:
        ctx.info("%s of %s: intent of term %s not carried out (Nova shows %s); repeating", name,
                 key, latest["term"], seen.text)
        await ledger.result(name, key, "failed", f"not carried out before the leader changed "
                                                 f"(Nova shows {seen.text})")
        resumed = False
    if resumed:
        ctx.info("%s of %s: resuming term %s's intent; Nova shows %s", name, key,
                 latest["term"], seen.text)
        outcome = "done"
    else:
        await ledger.intent(name, key, detail)
        outcome = "skipped" if seen.done else "done"
        if seen.done:
            ctx.info("%s of %s: nothing to do, Nova shows %s", name, key, seen.text)
        else:
            try:
                await _act(ctx, name, key, truth, act)
            except StepFailed as exc:
                await ledger.result(name, key, "failed", str(exc))
                raise
    try:
        text = await confirm()
    except StepFailed as exc:
        await ledger.result(name, key, "failed", str(exc))
        raise
    await ledger.result(name, key, outcome, text if outcome == "done" else f"already: {text}")
    ctx.info("%s of %s %s: %s", name, key, outcome, text)
    return text


async def _act(ctx: StepContext, name: str, key: str, truth: Callable[[], Awaitable[Truth]],
               act: Callable[[], Awaitable[None]]) -> None:
    """The call, retried on retryable errors; before each retry Nova is asked whether the
    failed call happened anyway (a timeout may hide a success, a 409 a finished race)."""
    for attempt in range(ctx.call_retries + 1):
        ctx.ledger.ensure_leading()
        ctx.info("%s of %s%s", name, key, " (unsafe: fencing is off)" if ctx.unsafe else "")
        try:
            ctx.count("nova_calls")
            await act()
            return
        except NovaError as exc:
            ctx.count("nova_errors")
            if not exc.retryable or attempt == ctx.call_retries:
                raise StepFailed(str(exc)) from None
            ctx.info("%s of %s: %s; asking Nova before trying again", name, key, exc)
            await ctx.sleep(ctx.call_pause * 2 ** attempt)
            if (await read(ctx, truth)).done:
                return


async def checkpoint(ctx: StepContext, name: str, key: str, detail: str,
                     body: Callable[[], Awaitable[str]]) -> str:
    """A step that changes nothing in Nova (a wait, a listing, a group of steps), recorded
    all the same so the notification shows it: intent, ``body``, result."""
    done = ctx.ledger.done_in_attempt(name, key)
    if done is not None:
        return done["outcome_detail"] or ""
    latest = ctx.ledger.latest(name, key)
    if latest is None or latest["outcome"] is not None:
        await ctx.ledger.intent(name, key, detail)
    try:
        text = await body()
    except StepFailed as exc:
        await ctx.ledger.result(name, key, "failed", str(exc))
        raise
    await ctx.ledger.result(name, key, "done", text)
    return text


# --- compute services -------------------------------------------------------------------------

async def _service(ctx: StepContext, host: str) -> ServiceView:
    service = await ctx.nova.compute_service(host)
    if service is None:
        raise StepFailed(f"Nova has no nova-compute service on host {host}")
    return service


def _show_service(s: ServiceView) -> str:
    reason = f" ({s.disabled_reason})" if s.disabled_reason else ""
    forced = ", forced down" if s.forced_down else ""
    return f"nova-compute {s.state}, {s.status}{reason}{forced}"


async def _service_step(ctx: StepContext, name: str, host: str, detail: str,
                        wanted: Callable[[ServiceView], bool],
                        act: Callable[[], Awaitable[Any]]) -> str:
    async def truth() -> Truth:
        service = await _service(ctx, host)
        return Truth(wanted(service), _show_service(service))

    async def check() -> tuple[bool, str]:
        service = await _service(ctx, host)
        return wanted(service), _show_service(service)

    async def confirm() -> str:
        return await poll(ctx, f"{name} of {host}", check, ctx.config.nova_timeout)

    return await run_step(ctx, name, host, detail=detail, truth=truth, act=act, confirm=confirm)


async def wait_fenced(ctx: StepContext) -> None:
    """Recorded proof that the host is fenced; the engine starts a host recovery only then
    (workflows.plan), so this never waits. Replaces Masakari's 180 s sleep."""
    async def body() -> str:
        incident = await ctx.agent.query("incident", hostname=ctx.host)
        if incident and incident.get("notification_uuid") == ctx.uuid and incident["fenced"]:
            return (f"fenced by {incident['fence_method']} at {incident['fenced_at']}"
                    + (f": {incident['fence_detail']}" if incident.get("fence_detail") else ""))
        return "the notification's host_status is NORMAL (the host was reported powered off)"
    await checkpoint(ctx, WAIT_FENCED, ctx.host, "host must be powered off before anything "
                                                 "else", body)


async def force_down(ctx: StepContext) -> None:
    """Nova then accepts evacuations at once (it refuses them while the source service is
    up). Safe only because the host is fenced. Masakari never forces down: it sleeps."""
    await _service_step(ctx, FORCE_DOWN, ctx.host, "host fenced: mark nova-compute down now",
                        lambda s: s.forced_down, lambda: ctx.nova.force_down(ctx.host))


async def disable_service(ctx: StepContext) -> None:
    """Keep the scheduler off the failed host; after force_down (the other order blocks
    the API call 60 s on real Nova). For a PROCESS notification the reason is
    ``process_disable_reason``, so that its STARTED may re-enable the service."""
    reason = (ctx.config.process_disable_reason if ctx.notification["type"] == "PROCESS"
              else ctx.config.service_disable_reason)
    await _service_step(ctx, DISABLE_SERVICE, ctx.host, f"disable with reason {reason!r}",
                        lambda s: s.status == "disabled",
                        lambda: ctx.nova.disable(ctx.host, reason))


async def enable_service(ctx: StepContext) -> None:
    """Process STARTED: re-enable the compute service only if hagent disabled it for a
    process failure (its disabled_reason is ``process_disable_reason``); a service disabled
    by an operator, or by a host recovery, stays as it is. Masakari does nothing here."""
    if ctx.ledger.done_in_attempt(ENABLE_SERVICE, ctx.host):
        return
    service = await read(ctx, lambda: _service(ctx, ctx.host))
    ours = ctx.config.process_disable_reason
    if service.status == "disabled" and (service.disabled_reason != ours or service.forced_down):
        raise EndRecovery("finished", f"compute service of {ctx.host} left as it is: "
                                      f"{_show_service(service)}, not disabled by hagent for a "
                                      f"process failure")
    await _service_step(ctx, ENABLE_SERVICE, ctx.host, f"disabled by hagent ({ours!r}): enable",
                        lambda s: s.status == "enabled", lambda: ctx.nova.enable(ctx.host))


# --- host failure: instances -----------------------------------------------------------------

def _state(server: ServerView) -> str:
    return _state_of(InstanceState(server.vm_state, server.task_state, server.power_state))


_STATE_RE = re.compile(r"vm_state=([\w-]+) task_state=([\w-]+) power_state=(\d+|-)")


@dataclass(frozen=True)
class InstanceState:
    vm_state: str | None
    task_state: str | None
    power_state: int | None


def _state_of(state: InstanceState) -> str:
    """The states evacuation decisions depend on, in the form intents record them (and
    `_parse_state` reads back after a leader change)."""
    return (f"vm_state={state.vm_state or '-'} task_state={state.task_state or '-'} "
            f"power_state={state.power_state if state.power_state is not None else '-'}")


def _parse_state(text: str | None) -> InstanceState | None:
    match = _STATE_RE.search(text or "")
    if match is None:
        return None
    vm, task, power = (None if g == "-" else g for g in match.groups())
    return InstanceState(vm, task, None if power is None else int(power))


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


def _ha(ctx: StepContext, server: ServerView) -> bool:
    return is_true(server.metadata.get(ctx.config.ha_enabled_instance_metadata_key))


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
        ha = [s for s in servers if _ha(ctx, s)]
        others = [s for s in servers if not _ha(ctx, s)]
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
            parsed = _parse_state(item["detail"])
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
    detail = (f"from {_state_of(before)}; to "
              f"{ctx.target or 'a host the scheduler picks'}")
    try:
        await ctx.ledger.vmove(instance, "ongoing")
        if plan.reset_first:
            await _reset_state(ctx, RESET_STATE, instance, detail)
        await _evacuate(ctx, instance, source, plan, detail)
        if plan.stop_after:
            await _stop(ctx, STOP, instance, detail)
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


async def _server(ctx: StepContext, instance: str) -> ServerView:
    server = await ctx.nova.server(instance)
    if server is None:
        raise StepFailed(f"instance {instance} no longer exists in Nova")
    return server


async def _reset_state(ctx: StepContext, name: str, instance: str, detail: str) -> None:
    async def truth() -> Truth:
        s = await _server(ctx, instance)
        return Truth(s.vm_state == "error" and s.task_state is None, _state(s))

    async def check() -> tuple[bool, str]:
        seen = await truth()
        return seen.done, seen.text

    async def confirm() -> str:
        return await poll(ctx, f"{name} of {instance}", check, ctx.config.nova_timeout)

    await run_step(ctx, name, instance, detail=detail, truth=truth,
                   act=lambda: ctx.nova.reset_state(instance, "error"), confirm=confirm)


async def _evacuate(ctx: StepContext, instance: str, source: str, plan: EvacuationPlan,
                    detail: str) -> None:
    async def truth() -> Truth:
        s = await _server(ctx, instance)
        return Truth(s.host != source or s.task_state in REBUILDING,
                     f"{_state(s)} on {s.host}")

    stuck = [0]

    async def check() -> tuple[bool, str]:
        s = await _server(ctx, instance)
        seen = f"{s.status} ({_state(s)}) on {s.host}"
        if s.task_state is not None:
            stuck[0] = 0
            return False, seen
        if s.host == source:
            stuck[0] += 1
            if stuck[0] >= _STUCK_LOOKS:
                raise StepFailed(f"Nova did not evacuate instance {instance}: {seen}")
            return False, seen
        if s.vm_state == plan.expect:
            return True, f"{s.status} on {s.host}"
        if s.vm_state == "error":
            raise StepFailed(f"evacuation of instance {instance} ended in ERROR on {s.host}")
        return False, seen

    async def confirm() -> str:
        return await poll(ctx, f"evacuation of {instance} to {plan.expect}", check,
                          ctx.config.evacuate_timeout)

    await run_step(ctx, EVACUATE, instance, detail=detail, truth=truth,
                   act=lambda: ctx.nova.evacuate(instance, ctx.target), confirm=confirm)


async def _stop(ctx: StepContext, name: str, instance: str, detail: str) -> None:
    """Stop and confirm vm_state stopped (Masakari waits for vm_state alone: a stopped
    instance someone is already starting again counts as stopped)."""
    async def truth() -> Truth:
        s = await _server(ctx, instance)
        return Truth(s.vm_state == "stopped" or s.task_state == "powering-off", _state(s))

    async def check() -> tuple[bool, str]:
        s = await _server(ctx, instance)
        return s.vm_state == "stopped", _state(s)

    async def confirm() -> str:
        return await poll(ctx, f"stop of {instance}", check, ctx.config.stop_timeout)

    await run_step(ctx, name, instance, detail=detail, truth=truth,
                   act=lambda: ctx.nova.stop(instance), confirm=confirm)


# --- host failure: reserved hosts ------------------------------------------------------------

async def enable_reserved_host(ctx: StepContext, reserved: str) -> None:
    """Make ``reserved`` ready to receive the failed host's instances (Masakari's
    _do_evacuate with a reserved host): optionally add it to the failed host's aggregates,
    enable its compute service, and mark it no longer reserved in the log. A reserved host
    whose nova-compute is down fails at once (hagent's addition: Masakari would let every
    evacuation to it fail first), so the next one is tried."""
    async def body() -> str:
        service = await read(ctx, lambda: _service(ctx, reserved))
        if service.state != "up" or service.forced_down:
            raise StepFailed(f"reserved host {reserved}: {_show_service(service)}")
        added = []
        if ctx.config.add_reserved_host_to_aggregate:
            for aggregate in await read(ctx, lambda: ctx.nova.aggregates_with_host(ctx.host)):
                await _add_to_aggregate(ctx, reserved, aggregate)
                added.append(str(aggregate.get("name") or aggregate["id"]))
        await _service_step(ctx, ENABLE_SERVICE, reserved, "reserved host: enable",
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


# --- instance failure ------------------------------------------------------------------------

def _instance(ctx: StepContext) -> str:
    return ctx.notification["payload"]["instance_uuid"]


async def stop_instance(ctx: StepContext) -> None:
    """Masakari's StopInstanceTask: only HA instances (or all with process_all_instances;
    the others end ``ignored``, where Masakari says finished), not paused or rescued ones
    (ignored), a resized one reset to active first; then stop and confirm SHUTOFF. An
    instance Nova no longer knows ends ``ignored`` (Masakari: error)."""
    instance = _instance(ctx)
    server = await read(ctx, lambda: ctx.nova.server(instance))
    if server is None:
        raise EndRecovery("ignored", f"instance {instance} no longer exists in Nova")
    if not (ctx.config.process_all_instances or _ha(ctx, server)):
        key = ctx.config.ha_enabled_instance_metadata_key
        raise EndRecovery("ignored", f"instance {instance} is not HA (metadata {key} is not "
                                     f"True) and process_all_instances is off")
    if ctx.ledger.done_in_attempt(STOP_INSTANCE, instance):
        return
    if server.vm_state in ("paused", "rescued"):
        raise EndRecovery("ignored", f"recovery of instance {instance} is ignored as it is in "
                                     f"{server.vm_state} state")
    detail = f"from {_state(server)}"
    if server.vm_state == "resized":
        async def truth() -> Truth:
            s = await _server(ctx, instance)
            return Truth(s.vm_state != "resized", _state(s))

        async def confirm() -> str:
            async def check() -> tuple[bool, str]:
                seen = await truth()
                return seen.done, seen.text
            return await poll(ctx, f"reset of {instance}", check, ctx.config.nova_timeout)
        await run_step(ctx, RESET_STATE, instance, detail=detail, truth=truth,
                       act=lambda: ctx.nova.reset_state(instance, "active"), confirm=confirm)
    await _stop(ctx, STOP_INSTANCE, instance, detail)


async def start_instance(ctx: StepContext) -> None:
    """Masakari's StartInstanceTask: start a stopped instance; any other state (but
    already started) fails the step."""
    instance = _instance(ctx)

    async def truth() -> Truth:
        s = await _server(ctx, instance)
        return Truth(s.vm_state == "active" or s.task_state == "powering-on", _state(s))

    async def act() -> None:
        s = await _server(ctx, instance)
        if s.vm_state != "stopped":
            raise StepFailed(f"invalid state for instance {instance}: expected stopped, "
                             f"got {s.vm_state}")
        await ctx.nova.start(instance)

    async def confirm() -> str:
        return "start accepted"

    await run_step(ctx, START_INSTANCE, instance, detail="start", truth=truth, act=act,
                   confirm=confirm)


async def confirm_active(ctx: StepContext) -> None:
    """Masakari's ConfirmInstanceActiveTask: poll until ACTIVE (``start_timeout``)."""
    instance = _instance(ctx)

    async def check() -> tuple[bool, str]:
        s = await _server(ctx, instance)
        return s.vm_state == "active" and s.task_state is None, f"{s.status} on {s.host}"

    async def body() -> str:
        return await poll(ctx, f"instance {instance} ACTIVE", check, ctx.config.start_timeout)
    await checkpoint(ctx, CONFIRM_ACTIVE, instance, "wait for ACTIVE", body)


# The step functions by name; ENABLE_RESERVED_HOST is driven by the engine, which picks the
# reserved host (recovery/engine.py).
STEPS: dict[str, Callable[[StepContext], Awaitable[None]]] = {
    WAIT_FENCED: wait_fenced,
    FORCE_DOWN: force_down,
    DISABLE_SERVICE: disable_service,
    PREPARE_INSTANCES: prepare_instances,
    EVACUATE_INSTANCES: evacuate_instances,
    STOP_INSTANCE: stop_instance,
    START_INSTANCE: start_instance,
    CONFIRM_ACTIVE: confirm_active,
    ENABLE_SERVICE: enable_service,
}
