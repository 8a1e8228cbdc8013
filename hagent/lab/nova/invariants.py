"""The invariant checker: a history of where each instance really ran, judged afterwards.

As Jepsen does, it records a history and judges the whole of it instead of spot-checking a
final count. The simulator tells it, with CLOCK_MONOTONIC times:

- ``started(instance, host, at)`` / ``stopped(instance, host, at)``: a hypervisor began or
  ceased running the instance (boot, evacuation spawn, start; stop, delete, destroy);
- ``host_lost(host, at)``: the host lost power at ``at`` (its switch's ``off_at_monotonic``,
  which may lie before the moment the simulator noticed: runs are cut at the real moment, and
  a run the simulator believed started after it never happened);
- ``wanted(instance, running, at, why)``: whether the instance ought to run (True once a boot
  or start completes; False on a stop, a delete, an evacuation that ends stopped at >= 2.95);
- ``evacuate_called(instance, at, request_id, status)``: every evacuate request that reached
  the API, with the HTTP status it got (200 = accepted, so Nova rebuilds it).

``report(now)`` judges the history: every **double run** (one instance on two hosts at once,
with the interval), every **outage** (wanted running but running nowhere: a crashed host's
instances until they are back), the instances **lost** (an outage still open at ``now``), and
evacuate calls per instance (accepted and all). It is thread-safe; it never raises on an odd
history (a stop for a run it never saw is ignored), because it must judge buggy callers too.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Run:
    host: str
    start: float
    end: float | None = None  # None: still running


@dataclass
class _Instance:
    runs: list[_Run] = field(default_factory=list)
    # (time, wanted running?, why), in call order
    wants: list[tuple[float, bool, str]] = field(default_factory=list)
    # (time, request id, HTTP status)
    evacuations: list[tuple[float, str, int]] = field(default_factory=list)


class InvariantChecker:
    """Records where instances run and judges it; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, _Instance] = {}

    def _get(self, instance: str) -> _Instance:
        return self._instances.setdefault(instance, _Instance())

    # --- the history --------------------------------------------------------------------

    def started(self, instance: str, host: str, at: float) -> None:
        """A hypervisor on ``host`` runs ``instance`` from ``at`` (a second start is ignored)."""
        with self._lock:
            record = self._get(instance)
            if not any(r.host == host and r.end is None for r in record.runs):
                record.runs.append(_Run(host, at))

    def stopped(self, instance: str, host: str, at: float) -> None:
        """``host`` stopped running ``instance`` at ``at``."""
        with self._lock:
            record = self._instances.get(instance)
            if record is not None:
                self._close(record, host, at)

    def host_lost(self, host: str, at: float) -> None:
        """``host`` lost power at ``at``: every run on it ends there."""
        with self._lock:
            for record in self._instances.values():
                self._close(record, host, at)

    @staticmethod
    def _close(record: _Instance, host: str, at: float) -> None:
        for run in list(record.runs):
            if run.host == host and run.end is None:
                if at <= run.start:
                    record.runs.remove(run)  # it never ran: the host was already off
                else:
                    run.end = at

    def wanted(self, instance: str, running: bool, at: float, why: str) -> None:
        """From ``at`` the instance ought to run (``running``) or not, and why."""
        with self._lock:
            self._get(instance).wants.append((at, running, why))

    def evacuate_called(self, instance: str, at: float, request_id: str, status: int) -> None:
        """One evacuate request for ``instance`` answered with HTTP ``status``."""
        with self._lock:
            self._get(instance).evacuations.append((at, request_id, status))

    # --- the judgement ------------------------------------------------------------------

    def running_on(self, instance: str) -> list[str]:
        """Hosts running ``instance`` now, as recorded."""
        with self._lock:
            record = self._instances.get(instance)
            return sorted(r.host for r in record.runs if r.end is None) if record else []

    def report(self, now: float) -> dict[str, Any]:
        """The verdict over the history up to ``now``:

        ``double_runs``: [{instance, hosts: [a, b], start, end (None: still), seconds}];
        ``outages``: [{instance, start, end (None: still), seconds}] while wanted running and
        running nowhere; ``lost``: instances whose outage is still open; ``evacuations``:
        {instance: accepted evacuate calls}; ``evacuate_calls``: {instance: [{at,
        request_id, status}]} (all of them); ``ok``: no double run and nothing lost."""
        with self._lock:
            doubles: list[dict[str, Any]] = []
            outages: list[dict[str, Any]] = []
            lost: list[str] = []
            for name in sorted(self._instances):
                record = self._instances[name]
                doubles.extend(_double_runs(name, record.runs, now))
                for start, end in _outages(record, now):
                    outages.append({"instance": name, "start": start, "end": end,
                                    "seconds": (now if end is None else end) - start})
                    if end is None:
                        lost.append(name)
            return {
                "double_runs": doubles,
                "outages": outages,
                "lost": lost,
                "evacuations": {name: sum(1 for _, _, status in r.evacuations if status < 300)
                                for name, r in sorted(self._instances.items()) if r.evacuations},
                "evacuate_calls": {name: [{"at": at, "request_id": rid, "status": status}
                                          for at, rid, status in r.evacuations]
                                   for name, r in sorted(self._instances.items()) if r.evacuations},
                "instances": len(self._instances),
                "ok": not doubles and not lost,
            }


def _double_runs(name: str, runs: list[_Run], now: float) -> list[dict[str, Any]]:
    found = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.host == b.host:
                continue
            start = max(a.start, b.start)
            a_end = now if a.end is None else a.end
            b_end = now if b.end is None else b.end
            end = min(a_end, b_end)
            if end > start:
                still = a.end is None and b.end is None
                found.append({"instance": name, "hosts": sorted([a.host, b.host]),
                              "start": start, "end": None if still else end,
                              "seconds": end - start})
    return found


def _outages(record: _Instance, now: float) -> list[tuple[float, float | None]]:
    """Intervals in which the instance was wanted running and ran nowhere."""
    points: list[tuple[float, int, str, Any]] = []
    for at, running, _why in record.wants:
        points.append((at, 1, "want", running))
    for run in record.runs:
        points.append((run.start, 0, "up", None))
        if run.end is not None:
            points.append((run.end, 0, "down", None))
    # Ends and starts at the same moment: process runs first (order 0), then wants (1), so a
    # start coinciding with the wish to run opens no outage.
    points.sort(key=lambda p: (p[0], p[1], 0 if p[2] == "down" else 1))
    wanted, running = False, 0
    found: list[tuple[float, float | None]] = []
    open_at: float | None = None
    for at, _order, kind, value in points:
        if at > now:
            break
        if kind == "want":
            wanted = bool(value)
        elif kind == "up":
            running += 1
        else:
            running -= 1
        out = wanted and running == 0
        if out and open_at is None:
            open_at = at
        elif not out and open_at is not None:
            if at > open_at:
                found.append((open_at, at))
            open_at = None
    if open_at is not None:
        found.append((open_at, None))
    return found
