"""A leader change while monitors submit: nothing lost, nothing doubled.

A 5-node lab (3 voters, 2 non-voters) where every host has a test-driver libvirtd of its own
(``Lab.up(..., libvirt=True)``) watched by its agent's instance monitor. One generator thread
per host drives lifecycle cycles of a few persistent domains there (create, suspend, resume,
then destroy or shut down: four events, of which masakari-monitors' table reports one) while
the Raft leader is SIGKILLed twice and started again. Each generator also subscribes to its
host's events on a connection of its own and counts, through the same event filter table,
every event it caused that must be reported. At the end every node must hold exactly those
VM notifications: per host the same (domain, event) pairs as many times as they happened,
every notification once, in one commit order everywhere.

Jepsen-style: each libvirt call is recorded in a History (invoked, ended, host, domain#cycle,
outcome); the checks run over the history, the generators' own counts and every node's log.

What the test does not ask of the agent: events on a host whose agent is down are seen by no
libvirt client (libvirtd does not replay them), and an event a SIGKILLed agent had seen but
not yet spooled is gone with it. So before the leader is killed its own host's generator
pauses until everything it caused is committed, and resumes once the restarted agent's
monitor is connected again; the other hosts' generators run throughout the leader change.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import libvirt
import pytest

from hagent.lab.cluster import Lab, LabError
from hagent.lab.workload import History, log_agreement
from hagent.monitors import libvirt_events
from hagent.monitors.eventfilter import classify

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

DOMAINS = 3          # persistent domains per host
CYCLE_PAUSE = 0.05   # seconds between two cycles of one host's generator (pacing, not a wait)
KILL_AT = (300, 800)  # reported events caused (all hosts) before each leader kill
AFTER = 300          # reported events caused after the last restart
DEADLINE = 60.0
LIFECYCLE = libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE


def until(what: str, cond: Any, timeout: float = DEADLINE) -> Any:
    """Poll ``cond`` until it returns something true (a LabError counts as "not yet")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except LabError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


class HostGenerator(threading.Thread):
    """Lifecycle cycles on one host's libvirtd; counts the reported events they cause."""

    def __init__(self, host: str, uri: str, history: History, stop: threading.Event) -> None:
        super().__init__(name=f"generator-{host}", daemon=True)
        self.host, self.history, self.stop = host, history, stop
        self.gate, self.idle = threading.Event(), threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.cycles = 0                        # completed cycles: one reported event each
        self.reported: Counter[tuple[str, str, str]] = Counter()  # from its own subscription
        self.error: BaseException | None = None
        self.conn = libvirt.open(uri)
        self.watch = libvirt.openReadOnly(uri)
        self.watch.domainEventRegisterAny(None, LIFECYCLE, self._event, None)
        self.domains = [self.conn.defineXML(
            f"<domain type='test'><name>{host}-vm{i}</name><memory>1024</memory>"
            "<os><type>hvm</type></os></domain>") for i in range(DOMAINS)]

    def _event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        reported = classify(LIFECYCLE, event, detail)
        if reported is not None:
            with self.lock:
                self.reported[(dom.UUIDString(), reported.vir_domain_event, reported.event)] += 1

    def reported_total(self) -> int:
        with self.lock:
            return sum(self.reported.values())

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.gate.is_set():
                    self.idle.set()
                    self.gate.wait(0.1)
                    continue
                self.idle.clear()
                self._cycle(self.cycles)
                with self.lock:
                    self.cycles += 1
                self.stop.wait(CYCLE_PAUSE)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.idle.set()

    def _cycle(self, n: int) -> None:
        dom = self.domains[n % DOMAINS]
        last = "destroy" if n % 2 == 0 else "shutdown"
        for op in ("create", "suspend", "resume", last):
            invoked = time.monotonic()
            try:
                getattr(dom, op)()
            except libvirt.libvirtError as exc:
                self.history.record(invoked, self.host, f"{dom.UUIDString()}#{n}",
                                    f"error: {op}: {exc}")
                raise
            self.history.record(invoked, self.host, f"{dom.UUIDString()}#{n}", op)

    def pause(self) -> None:
        """Stop after the current cycle; return once idle and its events all seen."""
        self.gate.clear()
        until(f"{self.host}'s generator idle", self.idle.is_set)
        until(f"{self.host}'s events seen", lambda: self.reported_total() == self.cycles)

    def close(self) -> None:
        self.watch.close()
        self.conn.close()


def vm_records(lab: Lab, name: str, **filters: str) -> list[dict[str, Any]]:
    return lab.admin(name, "notification.list", {"filters": {"type": "VM", **filters}},
                     timeout=10)


def caused(generators: dict[str, HostGenerator]) -> int:
    return sum(g.reported_total() for g in generators.values())


def kill_and_restart_leader(lab: Lab, generators: dict[str, HostGenerator],
                            history: History) -> dict[str, Any]:
    """SIGKILL the leader once its own host is quiet and all it caused is committed; start
    it again and let its host's generator go on once its monitor is connected."""
    leader = lab.leader()
    gen = generators[leader]
    gen.pause()
    until(f"{leader}'s events committed",
          lambda: len(vm_records(lab, leader, hostname=leader)) == gen.reported_total())
    killed_at = time.monotonic()
    lab.crash(leader)
    successor = lab.leader(timeout=15.0)
    elected_at = time.monotonic()
    assert successor != leader
    lab.start(leader)
    lab.wait_ready([leader])
    until(f"{leader}'s instance monitor connected again",
          lambda: lab.status(leader)["monitors"]["instance"]["connected"])
    gen.gate.set()
    during = sum(1 for invoked, ended, host, _, outcome in list(history.ops)
                 if host != leader and outcome in ("destroy", "shutdown")
                 and killed_at <= ended <= elected_at)
    return {"killed": leader, "successor": successor, "election_s": elected_at - killed_at,
            "reported_during_election": during}


def test_leader_killed_twice_while_monitors_submit_loses_and_doubles_nothing(
        tmp_path: Path) -> None:
    started = time.monotonic()
    lab = Lab.up(tmp_path / "lab", nodes=5, voters=3, libvirt=True)
    libvirt_events.ensure_running()
    history, stop = History(), threading.Event()
    generators: dict[str, HostGenerator] = {}
    try:
        until("every instance monitor connected",
              lambda: all(lab.status(n)["monitors"]["instance"]["connected"] for n in lab.names))
        generators = {n.name: HostGenerator(n.name, n.libvirt_uri, history, stop)
                      for n in lab.nodes}
        for gen in generators.values():
            gen.start()
        kills = []
        for threshold in (*KILL_AT, None):
            target = threshold if threshold is not None else caused(generators) + AFTER
            until(f"{target} reported events caused", lambda: caused(generators) >= target)
            if threshold is not None:
                kills.append(kill_and_restart_leader(lab, generators, history))
        stop.set()
        for gen in generators.values():
            gen.join(DEADLINE)
            assert not gen.is_alive() and gen.error is None, (gen.host, gen.error)
            until(f"{gen.host}'s events seen", lambda g=gen: g.reported_total() == g.cycles)

        assert [op for op in history.ops if op[4].startswith("error")] == []
        assert all(k["reported_during_election"] > 0 for k in kills), kills
        expected = {host: gen.reported for host, gen in generators.items()}
        total = sum(sum(c.values()) for c in expected.values())
        lab.wait_applied()

        def all_hold() -> dict[str, list[dict[str, Any]]] | None:
            held = {n: vm_records(lab, n) for n in lab.names}
            return held if all(len(r) >= total for r in held.values()) else None

        held = until(f"{total} VM notifications on every node", all_hold)

        ordered = {n: sorted((r["id"], r["notification_uuid"]) for r in records)
                   for n, records in held.items()}
        reference = {u for _, u in ordered["node1"]}
        assert log_agreement(ordered, reference) == []
        for name, records in held.items():
            logged = {host: Counter() for host in generators}
            for r in records:
                p = r["payload"]
                logged[r["hostname"]][(p["instance_uuid"], p["vir_domain_event"], p["event"])] += 1
            lost = {h: sum((expected[h] - logged[h]).values()) for h in generators}
            doubled = {h: sum((logged[h] - expected[h]).values()) for h in generators}
            assert (sum(lost.values()), sum(doubled.values())) == (0, 0), (name, lost, doubled)
        restarted = {k["killed"] for k in kills}
        for name in set(lab.names) - restarted:  # counters of an agent never restarted
            st = lab.status(name)["monitors"]["instance"]
            assert (st["events_reported"], st["events_lost"]) == (
                generators[name].reported_total(), 0)
        print(f"\n{total} reported events ({len(history.ops)} libvirt calls) from "
              f"{len(generators)} hosts; kills {kills}; 0 lost, 0 doubled; "
              f"{time.monotonic() - started:.1f} s")
    finally:
        stop.set()
        for gen in generators.values():
            gen.join(DEADLINE)
            gen.close()
        lab.down()
