"""The lab's simulated host hardware: one power-switch-and-watchdog process per lab host.

Each lab host gets a ``hagent.lab.hostpower`` process, started before its agent and kept
apart from it, as a kernel watchdog is apart from the agent that feeds it: ``lab crash``
kills only the agent, and the switch then powers the host off when the armed deadline
passes; ``lab kill-host`` powers it off at once (agent included). ``lab start`` powers a host
that is off back on before it starts the agent. The agents reach their switch through
``fencing.lab_power_socket`` (the ``lab`` watchdog driver).

``DIR/power.json`` records the switch processes, so ``lab down`` stops them also from another
process than the one that started them.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Container

import psutil

from hagent.lab import records
from hagent.lab.hostpower import HostPowerError, call, default_state_path

POWER_FILE = "power.json"

log = logging.getLogger(__name__)
LOG_FILE = "power.log"
#: Seconds a switch process may take to create its socket.
START_TIMEOUT = 10.0


class PowerError(Exception):
    """A lab power switch could not be started or asked; names the host."""


def _record(lab_dir: Path) -> dict[str, dict[str, Any]]:
    return records.load(lab_dir / POWER_FILE, PowerError)


def _save(lab_dir: Path, record: dict[str, dict[str, Any]]) -> None:
    records.save(lab_dir / POWER_FILE, record)


class SwitchSockets:
    """host -> switch socket for the lab hosts in ``hosts`` that have one, from
    ``lab_dir/power.json``, re-read only when the file changes: the power links of the Nova
    simulator and of the real Nova lab call it every poll (50-200 ms)."""

    def __init__(self, lab_dir: Path | None, hosts: Container[str]) -> None:
        self.record = lab_dir / POWER_FILE if lab_dir is not None else None
        self.hosts = hosts
        self._sockets: dict[str, Path] = {}
        self._mtime: float | None = None

    def __call__(self) -> dict[str, Path]:
        if self.record is None:
            return {}
        try:
            mtime = self.record.stat().st_mtime
        except FileNotFoundError:
            self._sockets, self._mtime = {}, None
            return {}
        if mtime != self._mtime:
            try:
                entries = json.loads(self.record.read_text())
                self._sockets = {host: Path(entry["socket"]) for host, entry in entries.items()
                                 if host in self.hosts}
                self._mtime = mtime
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("cannot read %s: %s", self.record, exc)
        return dict(self._sockets)


def start_switches(lab_dir: Path, hosts: dict[str, Path], env: dict[str, str]) -> None:
    """Start a switch for each ``host -> socket path`` (a fresh state: powered on) and wait
    until every socket answers."""
    record = _record(lab_dir)
    procs = {}
    for host, socket_path in hosts.items():
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (socket_path, default_state_path(socket_path)):
            stale.unlink(missing_ok=True)
        with open(lab_dir / host / LOG_FILE, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hagent.lab.hostpower", "--socket", str(socket_path),
                 "--host", host],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        procs[host] = proc
        record[host] = {**records.process_entry(proc.pid), "socket": str(socket_path)}
    _save(lab_dir, record)
    deadline = time.monotonic() + START_TIMEOUT
    for host, socket_path in hosts.items():
        while True:
            try:
                call(socket_path, {"cmd": "status"})
                break
            except HostPowerError as exc:
                if procs[host].poll() is not None or time.monotonic() >= deadline:
                    raise PowerError(f"{host}: the power switch did not start ({exc}); see "
                                     f"{lab_dir / host / LOG_FILE}") from None
                time.sleep(0.02)


def stop_switches(lab_dir: Path) -> None:
    """Stop every recorded switch (SIGTERM, then SIGKILL) and forget them."""
    record = _record(lab_dir)
    procs = [p for p in (records.alive(entry) for entry in record.values()) if p is not None]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    _, left = psutil.wait_procs(procs, timeout=5.0)
    for proc in left:
        proc.kill()
    psutil.wait_procs(left, timeout=5.0)
    (lab_dir / POWER_FILE).unlink(missing_ok=True)


def socket_of(lab_dir: Path, host: str) -> Path:
    entry = _record(lab_dir).get(host)
    if entry is None:
        raise PowerError(f"{host} has no power switch in the lab in {lab_dir}")
    return Path(entry["socket"])


def power(lab_dir: Path, host: str, action: str) -> dict[str, Any]:
    """Switch ``host`` ``on`` or ``off``; its state record afterwards."""
    try:
        return call(socket_of(lab_dir, host), {"cmd": "power", "action": action})
    except HostPowerError as exc:
        raise PowerError(f"{host}: {exc}") from None


def power_state(lab_dir: Path, host: str) -> dict[str, Any]:
    """``host``'s switch record: on, boot, off_at_monotonic, reason, armed_deadline, ..."""
    try:
        return call(socket_of(lab_dir, host), {"cmd": "status"})
    except HostPowerError as exc:
        raise PowerError(f"{host}: {exc}") from None
