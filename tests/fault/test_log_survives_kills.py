"""Nothing accepted is lost, nothing is doubled: 500 notifications from every node of a
5-node lab (3 voters, 2 replicas) while the leader is SIGKILLed twice, then the whole lab
SIGKILLed at once and restarted.

Jepsen-style: every submission is recorded in a History (invoked, ended, node, outcome); the
checks run over the history and over every node's final state, not over a single count.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hagent.lab.cluster import STOPPED, Lab
from hagent.lab.workload import History, log_agreement, new_keys, start_clients, wait_all_hold

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

TOTAL = 500
KILL_AT = (150, 300)
DEADLINE = 90.0


def kill_leader_when(lab: Lab, history: History, acked: int) -> str:
    deadline = time.monotonic() + DEADLINE
    while history.acked_count() < acked:
        assert time.monotonic() < deadline, f"only {history.acked_count()} acknowledged"
        time.sleep(0.02)
    leader = lab.leader()
    lab.crash(leader)
    return leader


def test_500_notifications_survive_two_leader_kills_and_a_full_restart(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", nodes=5, voters=3)
    try:
        keys = new_keys(TOTAL)
        history, stop = History(), threading.Event()
        clients = start_clients(lab, keys, history, stop)
        try:
            killed = []
            for acked in KILL_AT:
                victim = kill_leader_when(lab, history, acked)
                killed.append(victim)
                assert lab.leader(timeout=15.0) != victim
                lab.start(victim)
                lab.wait_ready([victim])
            for client in clients:
                client.join(DEADLINE)
                assert not client.is_alive(), "submissions did not finish"
        finally:
            stop.set()
        assert len(killed) == 2
        assert set(history.acked) == set(keys)
        assert history.errors(), "the leader kills should have cost some submissions a retry"
        assert log_agreement(wait_all_hold(lab, TOTAL, DEADLINE), set(keys)) == []

        for name in lab.names:
            os.kill(lab.node(name).pid, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE
        while any(lab.state(n) != STOPPED for n in lab.names):
            assert time.monotonic() < deadline, "SIGKILLed agents did not exit"
            time.sleep(0.02)
        for name in lab.names:
            lab.start(name)
        lab.wait_ready()
        assert log_agreement(wait_all_hold(lab, TOTAL, DEADLINE), set(keys)) == []
    finally:
        lab.down()
