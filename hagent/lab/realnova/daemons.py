"""Starting, finding and ending the real Nova lab's daemons.

Each daemon runs in a session of its own (``setsid``), so that the caller's process group
ending (``timeout <starter>``, a Ctrl-C) does not take it down, and so that killing the
session ends everything it forked (gunicorn workers, Erlang's helpers). A daemon is recorded
by its pid and start time (``hagent.lab.records.process_entry``): ending one never signals
a recycled pid.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from hagent.lab import records

log = logging.getLogger(__name__)

POLL = 0.05


class DaemonError(Exception):
    """A daemon did not start or a step failed; names it and the log to read."""


def spawn(name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new session, its output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        out.write(f"--- {time.strftime('%H:%M:%S')} starting {name}: {' '.join(argv)}\n"
                  .encode())
        out.flush()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                cwd=cwd, start_new_session=True)
    log.info("started %s (pid %d)", name, proc.pid)
    return proc


def entry(proc: subprocess.Popen, log_file: Path) -> dict[str, Any]:
    """The record of a spawned daemon: pid, start time, log."""
    return {**records.process_entry(proc.pid), "log": str(log_file)}


def run(name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None,
        timeout: float = 300.0) -> None:
    """Run one set-up step to its end (output to ``log_file``); DaemonError if it fails."""
    started = time.monotonic()
    with open(log_file, "ab") as out:
        out.write(f"--- {time.strftime('%H:%M:%S')} {name}: {' '.join(argv)}\n".encode())
        out.flush()
        try:
            rc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise DaemonError(f"{name} did not finish within {timeout:g} s; see "
                              f"{log_file}") from None
    if rc != 0:
        raise DaemonError(f"{name} failed (exit {rc}); see {log_file}")
    log.info("%s done in %.1f s", name, time.monotonic() - started)


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None, log_file: Path | None = None) -> None:
    """Poll ``check`` until true; DaemonError if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise DaemonError(f"{what}: the process exited ({proc.returncode}); see {log_file}")
        if time.monotonic() >= deadline:
            raise DaemonError(f"{what}: not within {timeout:g} s; see {log_file}")
        time.sleep(POLL)


def listening(host: str, port: int) -> bool:
    """True once something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def end_sessions(entries: list[dict[str, Any]], timeout: float = 10.0) -> list[int]:
    """SIGKILL every process of the sessions led by the recorded daemons still alive (the
    leader and all it forked), and wait until they are gone. The pids left, if any."""
    sessions = set()
    for item in entries:
        proc = records.alive(item)
        if proc is not None:
            sessions.add(proc.pid)  # spawned with setsid: its pid is its session id
    if not sessions:
        return []
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sessions:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    for proc in members:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(members, timeout=timeout)
    return [p.pid for p in alive]
