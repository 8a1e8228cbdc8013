"""A simulated host's power switch and watchdog, one small process per lab host.

The machine running the lab has no ``/dev/watchdog`` and its hosts are processes, so this
process stands in for the host's hardware (docs/fencing.md, "The lab driver"):

- the agent's ``lab`` watchdog driver registers its pid and **arms** a deadline (a
  CLOCK_MONOTONIC time: the clock every process on this machine shares). If the deadline
  passes without a new arm, the host **powers off**: the registered agent is SIGKILLed (a
  powered-off host runs nothing) and its running instances are gone;
- **disarm** is the magic close: a cleanly stopping agent leaves the host running;
- the lab powers the host off and on (``lab kill-host``), and the Nova simulator keeps the
  host's running instances here, so a power-off empties them where it can read that.

Everything is recorded in a JSON state file next to the socket (``<socket>.json`` unless
``--state`` says otherwise), replaced atomically on every change::

    {"host": "node1", "on": false, "boot": 1, "boot_id": "...", "armed_deadline": null,
     "agent_pid": null, "off_at_monotonic": 812.31, "reason": "watchdog", "instances": []}

Protocol: one JSON object per line on a Unix stream socket, one answer line per request,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Requests (``cmd``):
``register`` (``pid``), ``arm`` (``deadline``), ``disarm``, ``power`` (``action``: ``on`` or
``off``), ``instances`` (``running``: a list of instance ids), ``status``.

Run: ``python -m hagent.lab.hostpower --socket DIR/power.sock --host node1``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

#: Longest request line accepted; every request is a few dozen bytes (instance lists more).
MAX_LINE = 1 << 20


class HostPowerError(Exception):
    """The power switch could not be reached or refused a request; says which and why."""


# --- the client ------------------------------------------------------------------------------

def exchange(socket_path: str | Path, request: dict[str, Any], timeout: float) -> bytes:
    """One JSON line to a lab control socket and the line it answers (OSError on failure):
    the protocol of the power switches and of the real Nova lab's supervisor."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(socket_path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def call(socket_path: str | Path, request: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
    """Send one request to the power switch at ``socket_path``; its answer, or HostPowerError
    (also for an answer with ``ok: false``). Blocking; a local round trip takes well under
    a millisecond."""
    try:
        data = exchange(socket_path, request, timeout)
    except OSError as exc:
        raise HostPowerError(f"power switch at {socket_path}: {exc.strerror or exc} "
                             f"(is its hostpower process running?)") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise HostPowerError(f"power switch at {socket_path} sent no valid answer: "
                             f"{data[:200]!r}") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise HostPowerError(f"power switch at {socket_path} refused {request.get('cmd')!r}: {error}")
    return answer


def default_state_path(socket_path: str | Path) -> Path:
    """``DIR/power.sock`` -> ``DIR/power.json``: the state file next to the socket."""
    return Path(socket_path).with_suffix(".json")


# --- the switch (no I/O but the state file and the kill) -------------------------------------

class HostPower:
    """The power state of one simulated host; ``handle`` answers requests, ``expire`` fires
    the watchdog. Times are CLOCK_MONOTONIC seconds passed in by the caller."""

    def __init__(self, host: str, state_path: Path) -> None:
        self.host = host
        self.state_path = Path(state_path)
        self.on = True
        self.boot = 1
        self.boot_id = str(uuid.uuid4())
        self.armed: float | None = None
        self.agent: tuple[int, float] | None = None  # (pid, its create time: never a recycled pid)
        self.off_at: float | None = None
        self.reason: str | None = None
        self.instances: list[str] = []
        self._load()

    def _load(self) -> None:
        """Power state, boot count and instances survive a restart of this process; an armed
        deadline and a registered agent do not (the lab restarts them together)."""
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            self._write()
            return
        except (OSError, ValueError) as exc:
            raise HostPowerError(f"cannot read {self.state_path}: {exc}; remove it to start "
                                 f"with the host powered on") from None
        self.on = bool(raw.get("on", True))
        self.boot = int(raw.get("boot", 1))
        self.boot_id = str(raw.get("boot_id") or self.boot_id)
        self.off_at = raw.get("off_at_monotonic")
        self.reason = raw.get("reason")
        self.instances = [str(i) for i in raw.get("instances", [])]
        self._write()

    def record(self) -> dict[str, Any]:
        return {"host": self.host, "on": self.on, "boot": self.boot, "boot_id": self.boot_id,
                "armed_deadline": self.armed, "agent_pid": self.agent[0] if self.agent else None,
                "off_at_monotonic": self.off_at, "reason": self.reason,
                "instances": list(self.instances)}

    def _write(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.record()) + "\n")
        os.replace(tmp, self.state_path)

    def handle(self, request: Any, now: float) -> dict[str, Any]:
        """The answer to one request; changes are written to the state file before it."""
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "a request is a JSON object with a string 'cmd'"}
        cmd = request["cmd"]
        handler = getattr(self, "_cmd_" + cmd, None)
        if handler is None:
            return {"ok": False, "error": f"unknown cmd {cmd!r} (known: arm, disarm, instances, "
                                          f"power, register, status)"}
        try:
            return {"ok": True, **handler(request, now)}
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}

    def _require_on(self, what: str) -> None:
        if not self.on:
            raise ValueError(f"host {self.host} is powered off: cannot {what} (power it on first)")

    def _cmd_register(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        self._require_on("register an agent")
        pid = request.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"'pid' must be a positive integer, got {pid!r}")
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            raise ValueError(f"no process {pid}") from None
        self.agent = (pid, created)
        self._write()
        log.info("%s: agent pid %d registered (boot %d)", self.host, pid, self.boot)
        return {"boot_id": self.boot_id, "armed_deadline": self.armed}

    def _cmd_arm(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        self._require_on("arm the watchdog")
        deadline = request.get("deadline")
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise ValueError(f"'deadline' must be a CLOCK_MONOTONIC time in seconds, got {deadline!r}")
        self.armed = float(deadline)
        self._write()
        return {"armed_deadline": self.armed, "now": now}

    def _cmd_disarm(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        self.armed = None
        self._write()
        log.info("%s: watchdog disarmed", self.host)
        return {}

    def _cmd_power(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        action = request.get("action")
        if action == "off":
            self.power_off(now, "lab")
        elif action == "on":
            if not self.on:
                self.on, self.boot, self.boot_id = True, self.boot + 1, str(uuid.uuid4())
                self.off_at = self.reason = None
                self._write()
                log.info("%s: powered on (boot %d)", self.host, self.boot)
        else:
            raise ValueError(f"'action' must be 'on' or 'off', got {action!r}")
        return self.record()

    def _cmd_instances(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        running = request.get("running")
        if running is not None:
            if not isinstance(running, list) or not all(isinstance(i, str) for i in running):
                raise ValueError("'running' must be a list of instance ids (strings)")
            self._require_on("run instances")
            self.instances = list(running)
            self._write()
        return {"instances": list(self.instances)}

    def _cmd_status(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        return {**self.record(), "now": now}

    def expire(self, now: float) -> bool:
        """Fire the watchdog if its deadline has passed; True if the host went off."""
        if self.on and self.armed is not None and now >= self.armed:
            log.warning("%s: watchdog deadline %.3f passed (now %.3f): powering off",
                        self.host, self.armed, now)
            self.power_off(now, "watchdog")
            return True
        return False

    def power_off(self, now: float, reason: str) -> None:
        """Cut the power: kill the registered agent first, then record the moment."""
        if not self.on:
            return
        if self.agent is not None:
            pid, created = self.agent
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created:
                    proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass  # already gone
        self.on, self.off_at, self.reason = False, now, reason
        self.armed, self.agent, self.instances = None, None, []
        self._write()
        log.warning("%s: powered off at %.3f (%s)", self.host, now, reason)


# --- the process ---------------------------------------------------------------------------

class PowerServer:
    """Serves a HostPower on a Unix socket and fires its watchdog on time (asyncio)."""

    def __init__(self, power: HostPower, socket_path: Path) -> None:
        self.power = power
        self.socket_path = Path(socket_path)
        self._timer: asyncio.TimerHandle | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._client, path=os.fspath(self.socket_path),
                                                       limit=MAX_LINE)
        os.chmod(self.socket_path, 0o600)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                except ValueError:
                    answer: dict[str, Any] = {"ok": False, "error": "not a JSON line"}
                else:
                    answer = self.power.handle(request, time.monotonic())
                    self._reschedule()
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that hung up or sent an oversized line; others are unaffected
        finally:
            writer.close()

    def _reschedule(self) -> None:
        """One timer at the armed deadline (asyncio's clock is CLOCK_MONOTONIC)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.power.on and self.power.armed is not None:
            self._timer = asyncio.get_running_loop().call_at(self.power.armed, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self.power.expire(time.monotonic()):
            self._reschedule()  # woken a hair early, or re-armed meanwhile


async def _serve(args: argparse.Namespace) -> None:
    power = HostPower(args.host, Path(args.state) if args.state else default_state_path(args.socket))
    server = PowerServer(power, Path(args.socket))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("%s: power switch on %s (host %s)", args.host, args.socket,
             "on" if power.on else "off")
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hagent.lab.hostpower",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True,
                        help="Unix socket to serve (the agent's fencing.lab_power_socket)")
    parser.add_argument("--host", required=True,
                        help="the simulated host's name (for logs and the state file)")
    parser.add_argument("--state", help="state file (default: the socket path with .json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s hostpower: %(message)s")
    try:
        asyncio.run(_serve(args))
    except HostPowerError as exc:
        print(f"hostpower: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
