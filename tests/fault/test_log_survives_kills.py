"""Nothing accepted is lost, nothing is doubled: 500 notifications from every node of a
5-node lab (3 voters, 2 replicas) while the leader is SIGKILLed twice, then the whole lab
SIGKILLed at once and restarted.

Jepsen-style: every submission is recorded in a history (invoke time, end time, node,
outcome); the checks run over the history and the final state of every node, not over a
single count.
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hagent.lab.cluster import STOPPED, Lab, LabError

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

TOTAL = 500
KILL_AT = (150, 300)
DEADLINE = 90.0


@dataclass
class History:
    """Every submission attempt, in the order it ended."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: list[tuple[float, float, str, str, str]] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # uuid -> node that acknowledged

    def record(self, start: float, node: str, key: str, outcome: str) -> None:
        with self.lock:
            self.ops.append((start, time.monotonic(), node, key, outcome))
            if outcome in ("committed", "spooled"):
                self.acked.setdefault(key, node)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def submit_all(lab: Lab, keys: list[str], first_node: int, history: History,
               stop: threading.Event) -> None:
    """Submit each key until some node acknowledges it; on a dead or refusing node, move on
    to the next node with the same uuid (the log makes the resend a no-op)."""
    names = itertools.cycle(lab.names[first_node:] + lab.names[:first_node])
    node = next(names)
    for i, key in enumerate(keys):
        while not stop.is_set():
            start = time.monotonic()
            try:
                answer = lab.admin(node, "notification.create", {
                    "notification_uuid": key, "type": "VM", "hostname": lab.names[i % 5],
                    "generated_time": "2026-11-25T10:00:00Z",
                    "payload": {"instance_uuid": key, "vir_domain_event": "STOPPED_FAILED",
                                "event": "LIFECYCLE"}}, timeout=15.0)
            except LabError as exc:
                history.record(start, node, key, f"error: {exc}")
                node = next(names)
                continue
            history.record(start, node, key, "committed" if answer["committed"] else "spooled")
            break


def notifications_by_node(lab: Lab) -> dict[str, list[tuple[int, str]]]:
    seen = {}
    for name in lab.names:
        records = lab.admin(name, "notification.list", {})
        seen[name] = sorted((r["id"], r["notification_uuid"]) for r in records)
    return seen


def wait_all_hold(lab: Lab, count: int) -> dict[str, list[tuple[int, str]]]:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            counts = {n: lab.status(n)["notifications"] for n in lab.names}
            if all(sum(c.values()) >= count for c in counts.values()):
                return notifications_by_node(lab)
        except LabError:
            pass
        assert time.monotonic() < deadline, f"not every node holds {count} notifications: {counts}"
        time.sleep(0.1)


def check_exactly(seen: dict[str, list[tuple[int, str]]], expected: set[str]) -> None:
    reference = next(iter(seen.values()))
    for name, entries in seen.items():
        uuids = [u for _, u in entries]
        assert len(uuids) == len(set(uuids)), f"{name} holds a notification twice"
        assert set(uuids) == expected, (
            f"{name}: lost {len(expected - set(uuids))}, unexpected {len(set(uuids) - expected)}")
        assert entries == reference, f"{name} holds them in another order than the others"
    assert [i for i, _ in reference] == list(range(1, len(expected) + 1))


def kill_leader_when(lab: Lab, history: History, at: int) -> str:
    deadline = time.monotonic() + DEADLINE
    while history.acked_count() < at:
        assert time.monotonic() < deadline, f"only {history.acked_count()} acknowledged"
        time.sleep(0.02)
    leader = lab.leader()
    lab.crash(leader)
    return leader


def test_500_notifications_survive_two_leader_kills_and_a_full_restart(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", nodes=5, voters=3)
    try:
        keys = [str(uuid.uuid4()) for _ in range(TOTAL)]
        history = History()
        stop = threading.Event()
        clients = [threading.Thread(target=submit_all, args=(lab, keys[i::5], i, history, stop))
                   for i in range(5)]
        for client in clients:
            client.start()
        try:
            killed = []
            for at in KILL_AT:
                victim = kill_leader_when(lab, history, at)
                killed.append(victim)
                new_leader = lab.leader(timeout=15.0)
                assert new_leader != victim
                lab.start(victim)
                lab.wait_ready([victim])
            for client in clients:
                client.join(DEADLINE)
                assert not client.is_alive(), "submissions did not finish"
        finally:
            stop.set()
        assert len(killed) == 2
        assert set(history.acked) == set(keys)
        errors = [op for op in history.ops if op[4].startswith("error")]
        assert errors, "the leader kills should have cost some submissions a retry"

        check_exactly(wait_all_hold(lab, TOTAL), set(keys))

        pids = [lab.node(n).pid for n in lab.names]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE
        while any(lab.state(n) != STOPPED for n in lab.names):
            assert time.monotonic() < deadline, "SIGKILLed agents did not exit"
            time.sleep(0.02)
        for name in lab.names:
            lab.start(name)
        lab.wait_ready()
        check_exactly(wait_all_hold(lab, TOTAL), set(keys))
    finally:
        lab.down()
