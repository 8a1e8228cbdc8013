"""Running an operator's command (start, restart, pre/post) as argv, never through a shell.

What callers may rely on:

- the argv is executed as given (``execve``): ``;``, ``$(...)``, ``>`` or ``*`` in an argument
  are passed to the program as characters, never interpreted;
- the command runs in its own session (process group), with stdin from /dev/null, its working
  directory ``/``, and its stdout/stderr going to the agent's own stderr (the journal under
  systemd), next to the agent's log lines about it;
- it is killed (the whole process group, SIGKILL) after ``timeout`` seconds and then counts
  as failed; ``run_command`` never raises for a command that cannot run, it says why.

Why output is not captured: a command such as a daemon's start script may leave a background
child holding its stdout. Waiting for the end of a captured stream would then hang until the
timeout, and closing it would kill the child with SIGPIPE on its next write; an inherited
stderr has neither problem, and a daemon started that way logs where a systemd service would.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    """How one command ended: ``ok`` only for exit status 0 within the timeout."""

    ok: bool
    returncode: int | None
    reason: str  # "exit status 0", "exit status 3", "killed after 90 s", "cannot run: ..."


@dataclass(frozen=True)
class RunAs:
    """The user a command runs as; ``None`` fields mean "the agent's own"."""

    user: int | None = None
    group: int | None = None

    @classmethod
    def unprivileged(cls, name: str) -> "RunAs":
        """``name`` (a user name or uid) when the agent is root, else the agent's own user.

        Raises LookupError when root must switch to a user this host does not have.
        """
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            raise LookupError(f"user {name!r} (monitors.process_command_user) does not exist "
                              f"on this host; create it or name another one") from None
        return cls(entry.pw_uid, entry.pw_gid)


async def run_command(argv: tuple[str, ...], *, timeout: float,
                      run_as: RunAs = RunAs()) -> CommandResult:
    """Run ``argv`` and wait for it (at most ``timeout`` seconds); see the module docstring."""
    extra: dict = {}
    if run_as.user is not None:
        extra = {"user": run_as.user, "group": run_as.group, "extra_groups": []}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, cwd="/", start_new_session=True, **extra)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return CommandResult(False, None, f"cannot run: {exc}")
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return CommandResult(False, proc.returncode, f"killed after {timeout:g} s")
    except asyncio.CancelledError:
        _kill_group(proc.pid)  # the agent is stopping: leave no half-run command behind
        await proc.wait()      # reap it (prompt after SIGKILL), then let the cancel through
        raise
    if code == 0:
        return CommandResult(True, 0, "exit status 0")
    if code < 0:
        return CommandResult(False, code, f"killed by signal {-code}")
    return CommandResult(False, code, f"exit status {code}")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
