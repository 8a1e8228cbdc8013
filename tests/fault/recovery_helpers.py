"""Shared pieces of the lab recovery tests (tests/fault/test_recovery_*.py).

Every test runs real agents (``Lab.up(..., nova=True)``): the voters' recovery engines reach
the lab's Nova simulator through openstacksdk over HTTP, exactly as in production. The
test reads the agents through their admin sockets and the simulator through ``lab.nova``
(its state and its invariant report: evacuate calls per instance, double runs, lost
instances), which is the independent witness of what really happened.

Timings. Nova keeps its realistic durations (~3 s per evacuation) unless a test says
otherwise. Leases are shortened (``FAST_LEASE``: ``lease_ttl`` 8 s, ``safety_margin`` 2 s,
``renew_interval`` 1 s: a host's watchdog fires 6 s after its last committed renewal was
sent, the leader may call it fenced 8 s after it applied it) because waiting out the
default 15 s lease is most of a host-crash test's runtime and tells nothing more. A
non-voter's renewals go through a voter's forward endpoint and wait ``forward.timeout``
(3 s) on a dead leader before trying the next voter; with the leader killed, that plus an
election (~0.5-1.5 s, docs/raft.md) did not fit a 4 s watchdog window (lease_ttl 6 s:
node4 fenced itself in a trial run), so ``forward.timeout`` is 1 s here and the window 6 s.

Every wait polls with a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from hagent.lab.cluster import RUNNING, Lab, LabError
from hagent.lab.nova.sim import NovaSimError

NODES = ["node1", "node2", "node3", "node4", "node5"]  # node1-3 vote
LEASE_TTL, SAFETY_MARGIN, RENEW_INTERVAL = 8.0, 2.0, 1.0
FAST_LEASE: dict[str, dict[str, Any]] = {
    "fencing": {"lease_ttl": LEASE_TTL, "safety_margin": SAFETY_MARGIN,
                "renew_interval": RENEW_INTERVAL},
    "forward": {"timeout": 1.0}}
ENDED = ("finished", "failed", "ignored")
# From a host crash to its STOPPED, its fencing and a few evacuations at real Nova speed:
# ~15 s here; the deadline leaves room for a loaded 2-core machine.
RECOVERY_DEADLINE = 90.0


def merged(*tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``config_extra`` tables merged section by section (later ones win per key)."""
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        for section, values in table.items():
            out.setdefault(section, {}).update(copy.deepcopy(values))
    return out


def until(what: str, cond: Callable[[], Any], timeout: float, period: float = 0.1) -> Any:
    """Poll ``cond`` until it returns something truthy (returned); AssertionError naming
    ``what`` after ``timeout`` s. A LabError or NovaSimError (an agent restarting, an admin
    call refused during an election) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except (LabError, NovaSimError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(period)


@contextlib.contextmanager
def nova_lab(dir: Path, *, config_extra: dict[str, dict[str, Any]] | None = None,
             **kwargs: Any) -> Iterator[Lab]:
    """A 5-agent lab with the Nova simulator, every agent seeing the four others alive;
    always taken down (its directory keeps the agents' logs and ``nova.log``)."""
    lab = Lab.up(dir, nodes=len(NODES), nova=True,
                 config_extra=merged(FAST_LEASE, config_extra or {}), **kwargs)
    try:
        until("every agent sees all five alive",
              lambda: all(_all_alive(lab, n) for n in NODES), 30)
        yield lab
    finally:
        lab.down()


def _all_alive(lab: Lab, node: str) -> bool:
    states = {m["name"]: m["state"] for m in lab.status(node)["members"]}
    return all(states.get(n) == "alive" for n in NODES)


def voter(lab: Lab) -> str:
    """A running voter to read the log from (every voter answers from its own state)."""
    for node in lab.nodes:
        if node.voter and lab.state(node.name) == RUNNING:
            return node.name
    raise LabError("no running voter")


def host_stopped(lab: Lab, host: str) -> dict[str, Any] | None:
    """``host``'s COMPUTE_HOST STOPPED notification as listed, or None yet."""
    for record in lab.admin(voter(lab), "notification.list", {}, timeout=5):
        if (record["type"], record["hostname"]) == ("COMPUTE_HOST", host) \
                and record["payload"]["event"] == "STOPPED":
            return record
    return None


def show(lab: Lab, uuid: str) -> dict[str, Any]:
    """The notification with its recovery_steps and vmoves (``notification show``)."""
    return lab.admin(voter(lab), "notification.show", {"notification_uuid": uuid}, timeout=5)


class Timeline:
    """Moments (seconds since ``start``) a test saw things happen; printed for the report."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, what: str) -> None:
        self.marks.setdefault(what, time.monotonic() - self.start)

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.marks.items())


def follow(lab: Lab, uuid: str, timeout: float = RECOVERY_DEADLINE,
           timeline: Timeline | None = None) -> tuple[dict[str, Any], list[str]]:
    """Poll the notification until it ends (finished, failed, ignored); returns its last
    record and every status seen on the way, in order (so a test can show it passed
    through ``error`` and was retried, and never stayed ``running``)."""
    seen: list[str] = []

    def ended() -> dict[str, Any] | None:
        record = show(lab, uuid)
        if not seen or seen[-1] != record["status"]:
            seen.append(record["status"])
            if timeline is not None:
                timeline.mark(record["status"])
        if timeline is not None and record["payload"].get("host_status") == "NORMAL":
            timeline.mark("fenced")
        return record if record["status"] in ENDED else None

    try:
        record = until(f"notification {uuid} ended", ended, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (statuses seen: {seen})") from None
    return record, seen


def crash_and_follow(lab: Lab, victim: str, *, kill_host: bool = False,
                     timeout: float = RECOVERY_DEADLINE) -> tuple[dict[str, Any], Timeline]:
    """Crash ``victim`` (the agent only: its switch powers the host off at its lease
    deadline; or with ``kill_host``, agent and host at once) and follow its STOPPED to
    the end. Returns the final record and the timeline."""
    timeline = Timeline()
    if kill_host:
        lab.kill_host(victim)
    else:
        lab.crash(victim)
    stopped = until(f"{victim}'s STOPPED notification", lambda: host_stopped(lab, victim), 30)
    timeline.mark("STOPPED")
    record, _ = follow(lab, stopped["notification_uuid"], timeout, timeline)
    return record, timeline


def steps_of(record: dict[str, Any], step: str, key: str | None = None) -> list[dict[str, Any]]:
    """The notification's recorded steps named ``step`` (for ``key``), in commit order."""
    return [s for s in record["recovery_steps"]
            if s["step"] == step and (key is None or s["key"] == key)]


def first_accepted_evacuation(report: dict[str, Any], servers: list[str]) -> float:
    """The earliest moment (this machine's monotonic clock, as the simulator records it)
    Nova accepted an evacuate call for any of ``servers``."""
    times = [call["at"] for server in servers
             for call in report["evacuate_calls"].get(server, []) if call["status"] < 300]
    assert times, f"no evacuation accepted for {servers}"
    return min(times)


def keep_off(lab: Lab, hosts: list[str]) -> None:
    """Disable ``hosts``' compute services through openstacksdk, as an operator would, so
    Nova's scheduler places no evacuated instance there. A test that kills the leader
    mid-recovery keeps its host off: an instance evacuated onto the host it then kills
    would need a second recovery, and "evacuated once" would no longer hold."""
    conn = lab.nova.connect()
    for service in conn.compute.services():
        if service.binary == "nova-compute" and service.host in hosts:
            conn.compute.disable_service(service, disabled_reason="test: no evacuation here")
    state = lab.nova.state()["hosts"]
    assert all(state[h]["disabled"] for h in hosts), state

