"""Shared pieces of the lease and watchdog integration tests: a log stand-in for
``agent.propose``, a FIFO reader that records every byte a watchdog driver writes, a
hostpower process, and polling with a deadline (nothing sleeps to synchronise)."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from consensus.state import ClusterState
from hagent.config import loads_config
from hagent.lab import hostpower

REPO = Path(__file__).resolve().parents[2]


def wait_for(check: Callable[[], Any], timeout: float, what: str, period: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(period)


async def async_wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def agent_config(tmp: Path, **fencing: Any):
    """A non-voter's Config with ``fencing`` overrides (the lease service reads only
    node.state_dir and fencing)."""
    text = f"""
[node]
name = "cn1"
state_dir = "{tmp / 'state'}"
[raft]
voters = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
[forward]
endpoints = ["127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6"]
[security]
voter_keys = ["{'A' * 40}", "{'B' * 40}", "{'C' * 40}"]
"""
    config = loads_config(text)
    (tmp / "state").mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(config, fencing=dataclasses.replace(config.fencing, **fencing))


class FakeLog:
    """``agent.propose`` on a real ClusterState. ``commit`` False: answers a retryable
    failure (no quorum). Records (monotonic time of the call, command, answer)."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.commit = True
        self.calls: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
        self.backend = None  # a non-voter: no judge

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        at = time.monotonic()
        if self.commit:
            answer = self.state.apply({"at": time.time(), **command})
        else:
            answer = {"ok": False, "retryable": True, "error": "no quorum"}
        self.calls.append((at, command, answer))
        return answer


class FifoReader:
    """Reads a FIFO stand-in in a thread, recording (monotonic time, bytes) until EOF."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        # Opened before the driver so its non-blocking open finds a reader.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.chunks: list[tuple[float, bytes]] = []
        self.eof = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        seen_data = False
        while not self._stop:
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                continue
            if data:
                seen_data = True
                self.chunks.append((time.monotonic(), data))
            elif seen_data:
                self.eof.set()
                return
            else:
                time.sleep(0.01)  # no writer yet (Linux reports EOF until one opens)

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    def timeouts(self) -> list[int]:
        return [int(line.split(b"=")[1]) for line in self.data.replace(b"V", b"").split(b"\n")
                if line.startswith(b"timeout=")]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2.0)
        os.close(self._fd)


class PowerSwitch:
    """A running ``python -m hagent.lab.hostpower`` for one simulated host."""

    def __init__(self, directory: Path, host: str = "cn1") -> None:
        self.socket = directory / "power.sock"
        self.state_file = hostpower.default_state_path(self.socket)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hagent.lab.hostpower", "--socket", str(self.socket),
             "--host", host],
            env=env, stdout=subprocess.DEVNULL, stderr=open(directory / "hostpower.log", "ab"))

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"hostpower exited with {self.proc.returncode}")
            try:
                self.call({"cmd": "status"})
                return True
            except hostpower.HostPowerError:
                return False

        wait_for(up, 10.0, "hostpower to answer")

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return hostpower.call(self.socket, request)

    def status(self) -> dict[str, Any]:
        return self.call({"cmd": "status"})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10.0)


def start_child() -> subprocess.Popen:
    """A process standing in for the agent a power-off must kill."""
    return subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
