"""The agent speaks systemd's notify protocol for real: READY=1 only once it has joined
the log, WATCHDOG=1 keep-alives at half of WATCHDOG_USEC, STOPPING=1 and a clean exit on
SIGTERM. PID 1 here is not systemd, so the test owns the datagram socket systemd would."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hagent.lab.cluster import Lab

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

DEADLINE = 30.0


def lines(datagrams: list[bytes]) -> list[bytes]:
    return [line for d in datagrams for line in d.split(b"\n")]


def receive_until(sock: socket.socket, seen: list[bytes], done) -> None:
    """Append datagrams to ``seen`` until ``done(lines(seen))`` holds."""
    deadline = time.monotonic() + DEADLINE
    while not done(lines(seen)):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            seen.append(sock.recv(4096))
        except socket.timeout:
            raise AssertionError(f"notify socket: condition not met within {DEADLINE:g} s; "
                                 f"got {seen}") from None


def test_ready_after_join_watchdog_pings_and_stopping_on_sigterm(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", nodes=3, register=False)
    agent = None
    try:
        node = lab.node("node3")
        for name in lab.names:
            lab.stop(name)
        notify_path = tmp_path / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="400000")
        env.pop("WATCHDOG_PID", None)
        with open(node.log, "ab") as out:
            agent = subprocess.Popen([sys.executable, "-m", "hagent", "run", "--config", node.config],
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
        seen: list[bytes] = []
        # Alone, node3 has no quorum: it is alive (watchdog pings) but must not say READY.
        receive_until(sock, seen, lambda got: got.count(b"WATCHDOG=1") >= 3)
        assert b"READY=1" not in lines(seen) and not lab.status("node3")["ready"]
        lab.start("node1")
        receive_until(sock, seen, lambda got: b"READY=1" in got)
        assert lab.status("node3")["ready"]
        assert b"STOPPING=1" not in lines(seen)
        agent.send_signal(signal.SIGTERM)
        receive_until(sock, seen, lambda got: b"STOPPING=1" in got)
        assert agent.wait(DEADLINE) == 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        lab.down()
