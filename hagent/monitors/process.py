"""The process monitor: keeps compute-node processes running, as masakari-processmonitor does.

Every ``check_interval`` it reads the process table (``process_scan``) and feeds each watched
process's presence to its ``ProcessLifecycle``, then does what that answers:

- **down** (it died, or it is not running when the agent starts): run the restart commands
  (``pre_restart_command``, ``restart_command``, ``post_restart_command``; the start commands
  instead on the first look), then watch for the process for ``restart_interval`` seconds.
  A failing command ends its attempt (the next ones of that attempt do not run), as in
  Masakari. Up to ``1 + restart_retries`` attempts; one per process at a time, each in its
  own task, so a slow restart of one process delays no other.
- **could not be restarted**: a PROCESS notification ``{process_name, event: STOPPED}`` (the
  recovery disables the host's compute service); not restarted again while it stays down.
- **runs again** after that: ``{process_name, event: STARTED}``. Masakari never sends it;
  without it a host stays disabled after its process came back.

``process_name`` in a notification is the last ``/``-separated part of the entry's
``process_name``, as Masakari sends it. Notifications go through an ``Outbox`` to the node's
spool. Which processes were reported STOPPED is kept in ``<state_dir>/process_reported.json``
(written before the STOPPED is queued, cleared only once a STARTED is spooled), so an agent
restart in between still sends the STARTED.

Blocking work (reading the process table, writing that file) runs in worker threads;
commands run as asyncio subprocesses (``commands.run_command``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from hagent.config import MonitorsConfig
from hagent.monitors.base import MonitorContext, Outbox
from hagent.monitors.commands import RunAs, run_command
from hagent.monitors.process_lifecycle import Action, ProcessLifecycle
from hagent.monitors.process_list import ProcessEntry, load_process_list, parse_process_list
from hagent.monitors.process_scan import command_lines, running

log = logging.getLogger(__name__)

REPORTED_FILE = "process_reported.json"
# Notifications this monitor can have queued at once: at most two per watched process are
# ever outstanding, so a small queue never fills.
QUEUE_SIZE = 256
# Longest pause between two looks while waiting for a restarted process to appear.
RESTART_POLL = 0.5


class ProcessMonitor:
    """Watches the processes of one process list; see the module docstring."""

    name = "process"

    def __init__(self, entries: tuple[ProcessEntry, ...], outbox: Outbox, *, state_dir: Path,
                 check_interval: float = 5.0, restart_retries: int = 3,
                 restart_interval: float = 5.0, command_timeout: float = 90.0,
                 command_user: str = "nobody",
                 scan: Callable[[], list[str]] = command_lines) -> None:
        if not entries:
            raise ValueError("the process monitor needs at least one process to watch")
        self.entries = entries
        self.outbox = outbox
        self.state_dir = Path(state_dir)
        self.check_interval = check_interval
        self.restart_retries = restart_retries
        self.restart_interval = restart_interval
        self.command_timeout = command_timeout
        self.command_user = command_user
        self._scan = scan
        self._names = [e.process_name for e in entries]
        self._lifecycles = {e.process_name: ProcessLifecycle() for e in entries}
        self._reported: set[str] = set()   # process names whose STOPPED the log may hold
        self._save_lock = asyncio.Lock()
        self._unprivileged = RunAs()
        self._loop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # restarts and STARTED follow-ups
        # Counters (status()).
        self.checks = 0            # looks at the process table by the check loop
        self.check_errors = 0      # looks that failed (logged)
        self.events_seen = 0       # a watched process found down, or back after STOPPED
        self.restarts = 0          # start/restart attempts
        self.restart_failures = 0  # attempts after which the process was still down
        self.command_failures = 0  # commands that failed (exit status, timeout, cannot run)
        self.stopped_reported = 0
        self.started_reported = 0

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load what an earlier run reported, then look at the processes right away.

        Raises LookupError when entries with ``run_as_root: False`` need a user this host
        does not have.
        """
        if any(not e.run_as_root for e in self.entries):
            self._unprivileged = RunAs.unprivileged(self.command_user)
        if os.geteuid() != 0 and any(e.run_as_root for e in self.entries):
            log.warning("the agent does not run as root: commands of entries with "
                        "run_as_root: True run as uid %d", os.geteuid())
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._reported = await asyncio.to_thread(self._load_reported)
        for name in self._reported:
            self._lifecycles[name].reported_stopped = True
        await self.outbox.start()
        self._loop_task = asyncio.get_running_loop().create_task(self._check_loop(),
                                                                 name="process-monitor")
        log.info("process monitor watching %d process(es): %s", len(self.entries),
                 ", ".join(self._names))

    async def stop(self) -> None:
        """Stop looking and restarting (a command under way is killed), then hand what is
        queued to the spool."""
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        await self.outbox.stop()

    def status(self) -> dict[str, Any]:
        return {
            "running": self._loop_task is not None and not self._loop_task.done(),
            "processes": {name: lc.state.value for name, lc in self._lifecycles.items()},
            "checks": self.checks, "check_errors": self.check_errors,
            "events_seen": self.events_seen, "restarts": self.restarts,
            "restart_failures": self.restart_failures,
            "command_failures": self.command_failures,
            "stopped_reported": self.stopped_reported,
            "started_reported": self.started_reported,
            **self.outbox.stats(),
        }

    # ---- looking -------------------------------------------------------------------------

    async def _running(self) -> set[str]:
        lines = await asyncio.to_thread(self._scan)
        return running(self._names, lines)

    async def _check_loop(self) -> None:
        while True:
            try:
                found = await self._running()
                self.checks += 1
                for entry in self.entries:
                    action = self._lifecycles[entry.process_name].observed(
                        entry.process_name in found)
                    await self._act(entry, action)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad look must not end the monitoring
                self.check_errors += 1
                log.exception("process monitor: checking the processes failed; trying again "
                              "in %g s", self.check_interval)
            await asyncio.sleep(self.check_interval)

    async def _act(self, entry: ProcessEntry, action: Action) -> None:
        name = entry.process_name
        if action in (Action.START, Action.RESTART):
            self.events_seen += 1
            log.warning("process %r is not running; %s it", name,
                        "starting" if action is Action.START else "restarting")
            self._spawn(self._restart(entry, initial=action is Action.START), f"restart {name}")
        elif action is Action.REPORT_STOPPED:
            self._reported.add(name)
            await self._save_reported()
            fields = self._notification(entry, "STOPPED")
            await self.outbox.put(fields)
            self.stopped_reported += 1
            log.error("process %r could not be restarted; reporting it STOPPED (notification "
                      "%s)", name, fields["notification_uuid"])
        elif action is Action.REPORT_STARTED:
            self.events_seen += 1
            fields = self._notification(entry, "STARTED")
            answer = await self.outbox.put(fields)
            self.started_reported += 1
            log.info("process %r runs again; reporting it STARTED (notification %s)", name,
                     fields["notification_uuid"])
            self._spawn(self._forget_when_spooled(name, answer), f"started {name}")

    def _notification(self, entry: ProcessEntry, event: str) -> dict[str, Any]:
        return self.outbox.notification(
            "PROCESS", {"process_name": entry.notified_name, "event": event})

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("process monitor task %s failed", task.get_name(),
                      exc_info=task.exception())

    # ---- restarting ----------------------------------------------------------------------

    async def _restart(self, entry: ProcessEntry, initial: bool) -> None:
        back = False
        for attempt in range(1 + self.restart_retries):
            first = initial and attempt == 0
            self.restarts += 1
            try:
                await self._run_commands(entry, first)
                back = await self._appears(entry.process_name, self.restart_interval)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken attempt is a failed attempt
                log.exception("attempt %d to restart %r failed", attempt + 1, entry.process_name)
            if back:
                log.info("process %r %s (attempt %d)", entry.process_name,
                         "started" if first else "restarted", attempt + 1)
                break
            self.restart_failures += 1
            log.warning("process %r still not running %g s after attempt %d of %d",
                        entry.process_name, self.restart_interval, attempt + 1,
                        1 + self.restart_retries)
        action = self._lifecycles[entry.process_name].restart_finished(back)
        await self._act(entry, action)

    async def _run_commands(self, entry: ProcessEntry, initial: bool) -> None:
        run_as = RunAs() if entry.run_as_root else self._unprivileged
        for field, argv in entry.commands(initial):
            result = await run_command(argv, timeout=self.command_timeout, run_as=run_as)
            if not result.ok:
                self.command_failures += 1
                log.warning("%s of %r failed (%s): %s", field, entry.process_name,
                            result.reason, argv)
                return
            log.debug("%s of %r done: %s", field, entry.process_name, argv)

    async def _appears(self, name: str, within: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        poll = min(RESTART_POLL, within / 5)
        while True:
            if name in await self._running():
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(poll, left))

    # ---- what was reported ---------------------------------------------------------------

    async def _forget_when_spooled(self, name: str, answer: asyncio.Future) -> None:
        result = await answer
        if result.get("ok") and not self._lifecycles[name].reported_stopped:
            self._reported.discard(name)
            await self._save_reported()

    async def _save_reported(self) -> None:
        """Write the reported set; a failure is logged, never raised: the notification
        matters more than the record that helps a later run follow it up."""
        async with self._save_lock:
            try:
                await asyncio.to_thread(self._write_reported, sorted(self._reported))
            except OSError as exc:
                log.error("cannot record which processes were reported STOPPED in %s (%s): "
                          "after an agent restart a STARTED may be missed",
                          self.state_dir / REPORTED_FILE, exc)

    def _load_reported(self) -> set[str]:
        path = self.state_dir / REPORTED_FILE
        try:
            names = json.loads(path.read_text())["stopped"]
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s is unreadable (%s); processes reported STOPPED by an earlier run "
                      "and running now will not be reported STARTED", path, exc)
            return set()
        gone = [n for n in names if n not in self._lifecycles]
        if gone:
            log.warning("processes reported STOPPED earlier are no longer watched, so no "
                        "STARTED will be sent for them: %s", ", ".join(gone))
        return {n for n in names if n in self._lifecycles}

    def _write_reported(self, names: list[str]) -> None:
        path = self.state_dir / REPORTED_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"stopped": names}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build(config: MonitorsConfig, context: MonitorContext) -> ProcessMonitor | None:
    """The process monitor ``config`` asks for, or None when it is disabled.

    Reads the process list now, so a bad one stops start-up before anything runs: raises
    ProcessListError naming every bad entry and field.
    """
    if not config.process_enabled:
        return None
    if config.process_list_inline.strip():
        entries = parse_process_list(config.process_list_inline, "monitors.process_list_inline")
    else:
        entries = load_process_list(config.process_list)
    outbox = Outbox(context.submit, hostname=context.hostname, size=QUEUE_SIZE, name="process")
    return ProcessMonitor(
        entries, outbox, state_dir=context.state_dir,
        check_interval=config.process_check_interval,
        restart_retries=config.process_restart_retries,
        restart_interval=config.process_restart_interval,
        command_timeout=config.process_command_timeout,
        command_user=config.process_command_user)
