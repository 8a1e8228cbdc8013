"""A notification workload for a lab, and the check that every node agrees on it.

Shared by the demo and the fault tests: clients submit notifications with uuids they chose,
move to the next node when theirs dies or refuses (the log makes a resend of the same uuid a
no-op), and record every attempt in a History; ``log_agreement`` then checks each node holds
exactly the acknowledged notifications, each once, in one commit order.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hagent.lab.cluster import Lab, LabError

ACKED = ("committed", "spooled")


@dataclass
class History:
    """Every submission attempt as (invoked, ended, node, notification uuid, outcome)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: list[tuple[float, float, str, str, str]] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # uuid -> node that acknowledged it

    def record(self, invoked: float, node: str, key: str, outcome: str) -> None:
        with self.lock:
            self.ops.append((invoked, time.monotonic(), node, key, outcome))
            if outcome in ACKED:
                self.acked.setdefault(key, node)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def errors(self) -> list[tuple[float, float, str, str, str]]:
        with self.lock:
            return [op for op in self.ops if op[4] not in ACKED]


def vm_failure(key: str, host: str) -> dict[str, Any]:
    """A VM notification whose payload is unique to ``key``, so none is a duplicate."""
    return {"notification_uuid": key, "type": "VM", "hostname": host,
            "generated_time": "2026-11-25T10:00:00Z",
            "payload": {"instance_uuid": key, "vir_domain_event": "STOPPED_FAILED",
                        "event": "LIFECYCLE"}}


def submit_all(lab: Lab, keys: list[str], first_node: int, history: History,
               stop: threading.Event, interval: float = 0.0) -> None:
    """Submit each key until some node acknowledges it, starting at node ``first_node``."""
    names = lab.names
    ring = itertools.cycle(names[first_node:] + names[:first_node])
    node = next(ring)
    for i, key in enumerate(keys):
        while not stop.is_set():
            invoked = time.monotonic()
            try:
                answer = lab.admin(node, "notification.create",
                                   vm_failure(key, names[i % len(names)]), timeout=15.0)
            except LabError as exc:
                history.record(invoked, node, key, f"error: {exc}")
                node = next(ring)
                stop.wait(0.05)  # a dead node answers at once: do not spin on it
                continue
            history.record(invoked, node, key, "committed" if answer["committed"] else "spooled")
            break
        if interval:
            stop.wait(interval)


def start_clients(lab: Lab, keys: list[str], history: History, stop: threading.Event,
                  interval: float = 0.0) -> list[threading.Thread]:
    """One client thread per node, each with its share of ``keys``."""
    n = len(lab.names)
    clients = [threading.Thread(target=submit_all, name=f"client-{i}",
                                args=(lab, keys[i::n], i, history, stop, interval), daemon=True)
               for i in range(n)]
    for client in clients:
        client.start()
    return clients


def new_keys(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def notifications_by_node(lab: Lab, ntype: str = "VM") -> dict[str, list[tuple[int, str]]]:
    """Each node's notifications of type ``ntype`` (the workload's) as (id, uuid) in commit
    order. Other types are the cluster's own: a killed agent's host gets a COMPUTE_HOST one."""
    return {name: sorted((r["id"], r["notification_uuid"])
                         for r in lab.admin(name, "notification.list", {"filters": {"type": ntype}}))
            for name in lab.names}


def wait_all_hold(lab: Lab, count: int, timeout: float) -> dict[str, list[tuple[int, str]]]:
    """Poll until every node holds at least ``count`` workload notifications; return them."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while True:
        try:
            seen = notifications_by_node(lab)
            counts = {n: len(entries) for n, entries in seen.items()}
            if all(c >= count for c in counts.values()):
                return seen
        except LabError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not every node holds {count} notifications: {counts}")
        time.sleep(0.1)


def log_agreement(seen: dict[str, list[tuple[int, str]]], expected: set[str]) -> list[str]:
    """Problems found (empty when every node holds exactly ``expected``, each once, with
    the same ids in the same order)."""
    problems = []
    reference = next(iter(seen.values()))
    for name, entries in seen.items():
        uuids = [u for _, u in entries]
        if len(uuids) != len(set(uuids)):
            problems.append(f"{name} holds {len(uuids) - len(set(uuids))} notification(s) twice")
        lost, extra = expected - set(uuids), set(uuids) - expected
        if lost or extra:
            problems.append(f"{name}: {len(lost)} lost, {len(extra)} unexpected")
        if entries != reference:
            problems.append(f"{name} holds them in another order than {next(iter(seen))}")
    ids = [i for i, _ in reference]
    if len(set(ids)) != len(ids) or ids != sorted(ids):
        problems.append("ids are not unique and increasing in commit order")
    return problems
