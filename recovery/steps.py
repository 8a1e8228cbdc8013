"""The code of each recovery step: read Nova's truth, act, confirm by polling with a deadline.

Every step that changes the world goes through `run_step`, which gives it these properties
(what the engine and the tests rely on):

- **Truth first.** Before acting, the step asks Nova whether the wanted state is already
  there (service already forced down, an evacuation of the instance already recorded in
  Nova's migrations, already stopped). If so it does not act: the record says ``skipped``.
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

This module holds that machinery, the compute-service steps (host and process failure)
and the instance failure steps (masakari/engine/drivers/taskflow/instance_failure.py,
process_failure.py); the evacuation of a failed host's instances is recovery/evacuation.py
(host_failure.py). Where hagent differs from Masakari the function says so.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from recovery.ledger import AgentLike, Ledger
from recovery.nova import MigrationView, NovaError, ServerView, ServiceView
from recovery.outcomes import EndRecovery, StepFailed
from recovery.workflows import (
    CONFIRM_ACTIVE, DISABLE_SERVICE, ENABLE_SERVICE, FORCE_DOWN, RESET_STATE, START_INSTANCE,
    STOP_INSTANCE, WAIT_FENCED, is_true,
)

log = logging.getLogger(__name__)



class NovaLike(Protocol):
    """recovery.nova.NovaClient, or a fake with the same coroutines."""

    async def compute_service(self, host: str) -> ServiceView | None: ...
    async def force_down(self, host: str) -> ServiceView: ...
    async def disable(self, host: str, reason: str) -> ServiceView: ...
    async def enable(self, host: str) -> ServiceView: ...
    async def servers_on_host(self, host: str) -> list[ServerView]: ...
    async def server(self, server_id: str) -> ServerView | None: ...
    async def evacuate(self, server_id: str, target_host: str | None = None) -> None: ...
    async def evacuations(self, server_id: str, source_host: str) -> list[MigrationView]: ...
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
    # Before this (``clock``) time an earlier term's intent that Nova shows no effect of is
    # not repeated: see run_step.
    repeat_after: float = 0.0
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
    try:
        seen = await read(ctx, truth)
    except StepFailed as exc:
        if resumed:  # close the open intent: the step ends here, failed
            await ledger.result(name, key, "failed", str(exc))
        raise
    if resumed and not seen.done and latest["term"] != ledger.term:
        seen = await _grace(ctx, name, key, latest["term"], truth, seen)
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


async def _grace(ctx: StepContext, name: str, key: str, term: int,
                 truth: Callable[[], Awaitable[Truth]], seen: Truth) -> Truth:
    """An earlier leader committed this intent and Nova shows no effect. That leader may
    be paused between its intent and its call (the log cannot stop a call already past its
    leadership check, and Nova accepts a second evacuation during a rebuild). It acts, if
    at all, before its watchdog resets it: within lease_ttl of when this leader took over.
    So the step is repeated only after ``repeat_after``, watching Nova meanwhile."""
    wait = ctx.repeat_after - ctx.clock()
    if wait <= 0:
        return seen
    ctx.info("%s of %s: term %s's intent shows no effect in Nova yet; watching %.1f s before "
             "repeating it (its leader may still act until its watchdog fires)", name, key,
             term, wait)

    async def check() -> tuple[bool, str]:
        now = await truth()
        return now.done, now.text
    try:
        await poll(ctx, f"{name} of {key} by term {term}", check, wait)
    except StepFailed:
        pass
    return await read(ctx, truth)


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

async def compute_service(ctx: StepContext, host: str) -> ServiceView:
    service = await ctx.nova.compute_service(host)
    if service is None:
        raise StepFailed(f"Nova has no nova-compute service on host {host}")
    return service


def show_service(s: ServiceView) -> str:
    reason = f" ({s.disabled_reason})" if s.disabled_reason else ""
    forced = ", forced down" if s.forced_down else ""
    return f"nova-compute {s.state}, {s.status}{reason}{forced}"


async def service_step(ctx: StepContext, name: str, host: str, detail: str,
                       wanted: Callable[[ServiceView], bool],
                       act: Callable[[], Awaitable[Any]]) -> str:
    async def truth() -> Truth:
        service = await compute_service(ctx, host)
        return Truth(wanted(service), show_service(service))

    async def check() -> tuple[bool, str]:
        service = await compute_service(ctx, host)
        return wanted(service), show_service(service)

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
    await service_step(ctx, FORCE_DOWN, ctx.host, "host fenced: mark nova-compute down now",
                       lambda s: s.forced_down, lambda: ctx.nova.force_down(ctx.host))


async def disable_service(ctx: StepContext) -> None:
    """Keep the scheduler off the failed host; after force_down (the other order blocks
    the API call 60 s on real Nova). For a PROCESS notification the reason is
    ``process_disable_reason``, so that its STARTED may re-enable the service."""
    reason = (ctx.config.process_disable_reason if ctx.notification["type"] == "PROCESS"
              else ctx.config.service_disable_reason)
    await service_step(ctx, DISABLE_SERVICE, ctx.host, f"disable with reason {reason!r}",
                       lambda s: s.status == "disabled",
                       lambda: ctx.nova.disable(ctx.host, reason))


async def enable_service(ctx: StepContext) -> None:
    """Process STARTED: re-enable the compute service only if hagent disabled it for a
    process failure (its disabled_reason is ``process_disable_reason``); a service disabled
    by an operator, or by a host recovery, stays as it is. Masakari does nothing here."""
    if ctx.ledger.done_in_attempt(ENABLE_SERVICE, ctx.host):
        return
    service = await read(ctx, lambda: compute_service(ctx, ctx.host))
    ours = ctx.config.process_disable_reason
    if service.status == "disabled" and (service.disabled_reason != ours or service.forced_down):
        raise EndRecovery("finished", f"compute service of {ctx.host} left as it is: "
                                      f"{show_service(service)}, not disabled by hagent for a "
                                      f"process failure")
    await service_step(ctx, ENABLE_SERVICE, ctx.host, f"disabled by hagent ({ours!r}): enable",
                       lambda s: s.status == "enabled", lambda: ctx.nova.enable(ctx.host))


# --- instances -------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceState:
    """The states evacuation decisions depend on (Masakari's _evacuate_and_confirm)."""

    vm_state: str | None
    task_state: str | None
    power_state: int | None


def describe_state(state: InstanceState) -> str:
    """The form intents record an instance's state in (and `parse_state` reads back after
    a leader change)."""
    return (f"vm_state={state.vm_state or '-'} task_state={state.task_state or '-'} "
            f"power_state={state.power_state if state.power_state is not None else '-'}")


def state_text(server: ServerView) -> str:
    return describe_state(InstanceState(server.vm_state, server.task_state, server.power_state))


_STATE_RE = re.compile(r"vm_state=([\w-]+) task_state=([\w-]+) power_state=(\d+|-)")


def parse_state(text: str | None) -> InstanceState | None:
    match = _STATE_RE.search(text or "")
    if match is None:
        return None
    vm, task, power = (None if g == "-" else g for g in match.groups())
    return InstanceState(vm, task, None if power is None else int(power))


async def server_or_fail(ctx: StepContext, instance: str) -> ServerView:
    server = await ctx.nova.server(instance)
    if server is None:
        raise StepFailed(f"instance {instance} no longer exists in Nova")
    return server


async def stop_server(ctx: StepContext, name: str, instance: str, detail: str) -> None:
    """Step ``name``: stop the instance and confirm vm_state stopped (Masakari waits for
    vm_state alone: a stopped instance someone is already starting again counts as stopped)."""
    async def truth() -> Truth:
        s = await server_or_fail(ctx, instance)
        return Truth(s.vm_state == "stopped" or s.task_state == "powering-off", state_text(s))

    async def check() -> tuple[bool, str]:
        s = await server_or_fail(ctx, instance)
        return s.vm_state == "stopped", state_text(s)

    async def confirm() -> str:
        return await poll(ctx, f"stop of {instance}", check, ctx.config.stop_timeout)

    await run_step(ctx, name, instance, detail=detail, truth=truth,
                   act=lambda: ctx.nova.stop(instance), confirm=confirm)


def is_ha(ctx: StepContext, server: ServerView) -> bool:
    """Masakari's test: the metadata key is true ("True", "yes", "1", ...)."""
    return is_true(server.metadata.get(ctx.config.ha_enabled_instance_metadata_key))


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
    if not (ctx.config.process_all_instances or is_ha(ctx, server)):
        key = ctx.config.ha_enabled_instance_metadata_key
        raise EndRecovery("ignored", f"instance {instance} is not HA (metadata {key} is not "
                                     f"True) and process_all_instances is off")
    if ctx.ledger.done_in_attempt(STOP_INSTANCE, instance):
        return
    if server.vm_state in ("paused", "rescued"):
        raise EndRecovery("ignored", f"recovery of instance {instance} is ignored as it is in "
                                     f"{server.vm_state} state")
    detail = f"from {state_text(server)}"
    if server.vm_state == "resized":
        async def truth() -> Truth:
            s = await server_or_fail(ctx, instance)
            return Truth(s.vm_state != "resized", state_text(s))

        async def confirm() -> str:
            async def check() -> tuple[bool, str]:
                seen = await truth()
                return seen.done, seen.text
            return await poll(ctx, f"reset of {instance}", check, ctx.config.nova_timeout)
        await run_step(ctx, RESET_STATE, instance, detail=detail, truth=truth,
                       act=lambda: ctx.nova.reset_state(instance, "active"), confirm=confirm)
    await stop_server(ctx, STOP_INSTANCE, instance, detail)


async def start_instance(ctx: StepContext) -> None:
    """Masakari's StartInstanceTask: start a stopped instance; any other state (but
    already started) fails the step."""
    instance = _instance(ctx)

    async def truth() -> Truth:
        s = await server_or_fail(ctx, instance)
        return Truth(s.vm_state == "active" or s.task_state == "powering-on", state_text(s))

    async def act() -> None:
        s = await server_or_fail(ctx, instance)
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
        s = await server_or_fail(ctx, instance)
        return s.vm_state == "active" and s.task_state is None, f"{s.status} on {s.host}"

    async def body() -> str:
        return await poll(ctx, f"instance {instance} ACTIVE", check, ctx.config.start_timeout)
    await checkpoint(ctx, CONFIRM_ACTIVE, instance, "wait for ACTIVE", body)
