"""Why a real Nova lab did not start, told so it can be read after the fact.

A start runs some twenty steps in three parallel branches, each with a daemon whose log
holds the reason when it fails. ``step`` names the step that raised (and the daemon and log
that tell why); ``report`` turns that, plus every daemon that died on the way, into a few
lines with the tail of each log; ``keep_logs`` moves the lab's logs out of its data directory
(which stopping removes) to ``DIR/realnova-failed-<UTC time>-<supervisor pid>/``, so a
failure on a CI run or under ``Lab.up`` (which removes the Nova's data) can still be read.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, Mapping

from hagent.lab.realnova.layout import DATA_DIR

#: The report, written next to the logs by the supervisor; the handle puts it in its error.
FAILURE_FILE = "failure.txt"
FAILED_PREFIX = f"{DATA_DIR}-failed-"
TAIL_LINES = 12


class Stopped(Exception):
    """SIGTERM or SIGINT arrived while the lab was starting."""


class StepFailed(Exception):
    """A start-up step raised: which step, the daemon and log that tell why, the cause."""

    def __init__(self, step: str, daemon: str | None, log_file: Path | None,
                 cause: BaseException) -> None:
        self.step = step
        self.daemon = daemon
        self.log_file = log_file
        self.cause = cause
        super().__init__(f"step {step!r} failed: {type(cause).__name__}: {cause}")


@contextlib.contextmanager
def step(name: str, daemon: str | None = None, log_file: Path | None = None) -> Iterator[None]:
    """Run a start-up step; whatever it raises leaves as StepFailed naming it (the innermost
    step wins: it is the most precise)."""
    try:
        yield
    except StepFailed:
        raise
    except Exception as exc:
        raise StepFailed(name, daemon, log_file, exc) from exc


def tail(path: Path | None, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of ``path``, or from its last traceback/error if that is
    within 4 x ``lines``: a stack trace is what says why, and it is often longer."""
    if path is None:
        return []
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    window = text[-4 * lines:]
    for i, line in enumerate(window):
        if line.startswith("Traceback"):
            return window[i:]
    return text[-lines:]


def report(exc: BaseException, procs: Mapping[str, subprocess.Popen],
           logs: Mapping[str, Path]) -> str:
    """The failing step, its error, the daemon and the tail of its log, then every daemon
    that exited during start-up with the tail of its own log."""
    lines: list[str] = []
    if isinstance(exc, StepFailed):
        stopped = isinstance(exc.cause, Stopped)
        lines.append(f"{'stopped during' if stopped else 'failed'} step: {exc.step}")
        lines.append(f"error: {type(exc.cause).__name__}: {exc.cause}")
        if exc.log_file is not None:
            state = _state(procs.get(exc.daemon or ""))
            lines.append(f"daemon: {exc.daemon or '-'}{state}; log {exc.log_file}, "
                         f"last lines:")
            lines += ["  | " + line for line in tail(exc.log_file)]
    else:
        lines.append(f"error: {type(exc).__name__}: {exc}")
    for name, proc in procs.items():
        if proc.poll() is not None and not (isinstance(exc, StepFailed) and name == exc.daemon):
            lines.append(f"died during start-up: {name} (exit {proc.returncode}); log "
                         f"{logs.get(name)}, last lines:")
            lines += ["  | " + line for line in tail(logs.get(name))]
    return "\n".join(lines)


def _state(proc: subprocess.Popen | None) -> str:
    if proc is None:
        return ""
    rc = proc.poll()
    return f" (pid {proc.pid}, {'running' if rc is None else f'exited {rc}'})"


def keep_logs(directory: Path, supervisor_pid: int) -> Path | None:
    """Move ``DIR/realnova/logs`` to ``DIR/realnova-failed-<UTC time>-<pid>/`` (None if
    there were none), its report's paths rewritten to the new place. Idempotent per pid: a
    second call returns the directory the first made."""
    existing = kept(directory, supervisor_pid)
    logs = directory / DATA_DIR / "logs"
    if existing is not None or not logs.is_dir():
        return existing
    target = directory / f"{FAILED_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-" \
                         f"{supervisor_pid}"
    shutil.move(str(logs), str(target))
    report_file = target / FAILURE_FILE
    if report_file.exists():
        report_file.write_text(report_file.read_text().replace(str(logs), str(target)))
    return target


def kept(directory: Path, supervisor_pid: int) -> Path | None:
    """The kept logs of the start the supervisor ``supervisor_pid`` ran, if any."""
    found = sorted(directory.glob(f"{FAILED_PREFIX}*-{supervisor_pid}"))
    return found[-1] if found else None
