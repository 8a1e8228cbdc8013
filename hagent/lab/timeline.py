"""A host failure and its recovery in a lab, told as times relative to the kill.

``make demo`` and ``benchmarks/recovery.py`` kill one lab host and then want the same two
things: a short progress line while the recovery runs (``Watch.snapshot``), and afterwards
the whole story with a time for each step (``collect``). Each time is read where it is
recorded first, never guessed from polling:

| event | source |
| --- | --- |
| kill | this process's clocks, just before the signal (``kill``) |
| suspected, dead | the first "member H suspect" / "member H dead" line in any survivor's log |
| STOPPED committed | the notification's ``created_at`` (the proposer's clock, in the log entry) |
| powered off | the host's power switch: ``off_at_monotonic`` and its reason |
| fenced | the incident's ``fenced_at`` and ``fence_method`` |
| forced down, disabled | the ``ended_at`` of the force_down / disable_service recovery steps |
| evacuation accepted | the Nova simulator's record of the accepted evacuate call |
| ACTIVE elsewhere | the simulator's end of the instance's outage (it runs again) |
| finished | the notification's ``updated_at`` once it is ``finished`` |

Wall-clock times (agents' logs, log entries) are turned into seconds after the kill with the
wall time taken at the kill; monotonic times (power switch, Nova simulator) with the
monotonic one: every process of a lab runs on this machine and shares both clocks.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Any

from hagent.lab.cluster import Lab, LabError

# The agents' log format (hagent/logs.py): "2026-11-25 14:29:54,210 INFO node=node3 ...".
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass(frozen=True)
class Kill:
    """Which host was killed, how, and when on both clocks."""

    host: str
    how: str          # "crash": the agent is SIGKILLed, its watchdog powers the host off later
    monotonic: float  # "kill-host": host and agent powered off at once
    wall: float

    def since_wall(self, epoch: float | None) -> float | None:
        return None if epoch is None else round(epoch - self.wall, 3)

    def since_monotonic(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.monotonic, 3)


def kill(lab: Lab, host: str, how: str = "crash") -> Kill:
    """Kill ``host`` (``lab.crash`` or ``lab.kill_host``), dated just before the signal."""
    if how not in ("crash", "kill-host"):
        raise ValueError(f"how must be 'crash' or 'kill-host', got {how!r}")
    mono, wall = time.monotonic(), time.time()
    if how == "crash":
        lab.crash(host)
    else:
        lab.kill_host(host)
    return Kill(host, how, mono, wall)


def iso_epoch(value: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time from the log (None stays None)."""
    return None if not value else dt.datetime.fromisoformat(value).timestamp()


def _log_epoch(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if match is None:
        return None
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_log_line(lab: Lab, kill: Kill, needle: str) -> tuple[float, str] | None:
    """(seconds after the kill, node) of the earliest survivor log line containing
    ``needle`` logged at or after the kill (the agents stamp milliseconds)."""
    best: tuple[float, str] | None = None
    for node in lab.nodes:
        if node.name == kill.host:
            continue
        try:
            with open(node.log, errors="replace") as f:
                for line in f:
                    if needle not in line:
                        continue
                    epoch = _log_epoch(line)
                    if epoch is None or epoch < kill.wall - 0.001:
                        continue
                    t = epoch - kill.wall
                    if best is None or t < best[0]:
                        best = (round(t, 3), node.name)
                    break
        except FileNotFoundError:
            continue
    return best


class Reader:
    """Reads the log's view of the killed host from whichever surviving voter answers."""

    def __init__(self, lab: Lab, kill: Kill) -> None:
        self.lab = lab
        self.kill = kill
        self.voters = [n.name for n in lab.nodes if n.voter and n.name != kill.host]

    def _admin(self, verb: str, args: dict[str, Any]) -> Any:
        error: Exception | None = None
        for name in self.voters:
            try:
                return self.lab.admin(name, verb, args, timeout=2.0)
            except LabError as exc:
                if "not found" in str(exc):  # the verb's answer: nothing recorded yet
                    return None
                error = exc
        raise LabError(f"no surviving voter answered {verb}: {error}")

    def incident(self) -> dict[str, Any] | None:
        return self._admin("incident.show", {"hostname": self.kill.host})

    def notification(self, uuid: str) -> dict[str, Any] | None:
        return self._admin("notification.show", {"notification_uuid": uuid})

    def gossip_state(self) -> str:
        """The killed host's state in the first answering survivor's membership view."""
        for name in self.voters:
            try:
                members = self.lab.status(name, timeout=1.0).get("members") or []
            except LabError:
                continue
            for member in members:
                if member.get("name") == self.kill.host:
                    return str(member.get("state"))
            return "gone"
        return "?"


@dataclass
class Snapshot:
    """One look at the recovery in progress (the live view's line)."""

    at: float
    power: str
    gossip: str
    notification: str
    fenced: str
    accepted: int
    active: int
    total: int

    def line(self) -> str:
        return (f"+{self.at:5.1f} s  power {self.power:<14} gossip {self.gossip:<8} "
                f"STOPPED {self.notification:<9} fenced {self.fenced:<6} "
                f"evacuations accepted {self.accepted:>3}/{self.total}, "
                f"ACTIVE elsewhere {self.active:>3}/{self.total}")


class Watch:
    """The recovery of ``kill.host``'s ``instances`` as it happens."""

    def __init__(self, lab: Lab, kill: Kill, instances: list[str]) -> None:
        self.lab = lab
        self.kill = kill
        self.instances = list(instances)
        self.reader = Reader(lab, kill)
        self.incident: dict[str, Any] | None = None

    def snapshot(self) -> Snapshot:
        state = self.lab.nova.state()
        report = self.lab.nova.report()
        try:
            switch = self.lab.power_state(self.kill.host)
            power = "on" if switch["on"] else f"off ({switch.get('reason')})"
        except LabError:
            power = "?"
        try:
            self.incident = self.reader.incident() or self.incident
        except LabError:
            pass
        inc = self.incident
        accepted = sum(1 for i in self.instances
                       if any(c["status"] < 300 for c in report["evacuate_calls"].get(i, [])))
        active = sum(1 for i in self.instances
                     if (s := state["servers"].get(i)) and s["host"] != self.kill.host
                     and s["status"] == "ACTIVE")
        return Snapshot(
            at=time.monotonic() - self.kill.monotonic, power=power,
            gossip=self.reader.gossip_state(),
            notification=inc["notification_status"] if inc else "-",
            fenced=(inc["fence_method"] if inc and inc["fenced"] else "no") if inc else "-",
            accepted=accepted, active=active, total=len(self.instances))

    def done(self) -> bool:
        """The host's STOPPED notification ended (finished, failed or ignored)."""
        return bool(self.incident and self.incident["notification_status"]
                    in ("finished", "failed", "ignored"))


@dataclass
class Timeline:
    """What ``collect`` found; every time in seconds after the kill (None: did not happen)."""

    kill: Kill
    events: list[tuple[float | None, str, str]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float | None] = field(default_factory=dict)
    notification: dict[str, Any] | None = None
    incident: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def violations(self) -> list[str]:
        """The safety and completeness checks: no double run, nothing lost, one accepted
        evacuation per instance, none before the host was powered off, every instance
        ACTIVE on another host."""
        problems = []
        for run in self.report.get("double_runs", []):
            problems.append(f"double run: {run['instance']} on {', '.join(run['hosts'])} "
                            f"for {run['seconds']:.2f} s")
        for lost in self.report.get("lost", []):
            problems.append(f"lost: {lost} runs nowhere")
        off = self.marks.get("powered_off")
        for item in self.instances:
            if item["evacuations"] != 1:
                problems.append(f"{item['name']}: {item['evacuations']} accepted evacuations")
            if item["accepted"] is not None and (off is None or item["accepted"] < off):
                problems.append(f"{item['name']}: evacuation accepted at +{item['accepted']} s, "
                                f"before its host was powered off")
            if item["status"] != "ACTIVE" or item["host"] == self.kill.host:
                problems.append(f"{item['name']}: {item['status']} on {item['host']}")
        return problems


def collect(lab: Lab, kill: Kill, instances: list[str]) -> Timeline:
    """The timeline of ``kill.host``'s failure and the recovery of ``instances``."""
    reader = Reader(lab, kill)
    tl = Timeline(kill)
    state, report = lab.nova.state(), lab.nova.report()
    tl.report = report
    incident = reader.incident()
    notification = reader.notification(incident["notification_uuid"]) if incident else None
    tl.notification, tl.incident = notification, incident
    try:
        switch = lab.power_state(kill.host)
    except LabError:
        switch = {}
    suspect = first_log_line(lab, kill, f"member {kill.host} suspect")
    dead = first_log_line(lab, kill, f"member {kill.host} dead")
    steps = {s["step"]: s for s in (notification or {}).get("recovery_steps", [])
             if s["outcome"] in ("done", "skipped")}
    finished = (notification or {}).get("status") in ("finished", "failed")
    m = tl.marks
    m["suspected"] = suspect[0] if suspect else None
    m["dead"] = dead[0] if dead else None
    m["stopped"] = kill.since_wall(iso_epoch((notification or {}).get("created_at")))
    m["powered_off"] = kill.since_monotonic(switch.get("off_at_monotonic"))
    m["fenced"] = kill.since_wall(iso_epoch((incident or {}).get("fenced_at")))
    m["forced_down"] = kill.since_wall(iso_epoch(steps.get("force_down", {}).get("ended_at")))
    m["disabled"] = kill.since_wall(iso_epoch(steps.get("disable_service", {}).get("ended_at")))
    m["finished"] = (kill.since_wall(iso_epoch(notification.get("updated_at")))
                     if finished and notification else None)
    outages = {}
    for outage in report.get("outages", []):
        if outage["instance"] in instances and outage["end"] is not None:
            outages[outage["instance"]] = outage["end"]
    for server_id in instances:
        server = state["servers"].get(server_id, {})
        calls = [c for c in report.get("evacuate_calls", {}).get(server_id, [])
                 if c["status"] < 300]
        tl.instances.append({
            "id": server_id, "name": server.get("name", server_id[:8]),
            "ha": (server.get("metadata") or {}).get("HA_Enabled") == "True",
            "accepted": kill.since_monotonic(calls[0]["at"]) if calls else None,
            "active": kill.since_monotonic(outages.get(server_id)),
            "evacuations": len(calls), "status": server.get("status"),
            "host": server.get("host")})
    accepted = [i["accepted"] for i in tl.instances if i["accepted"] is not None]
    active = [i["active"] for i in tl.instances if i["active"] is not None]
    m["first_accepted"] = min(accepted) if accepted else None
    m["all_active"] = (max(active) if active and len(active) == len(tl.instances) else None)
    how = ("agent SIGKILLed (lab crash)" if kill.how == "crash"
           else "host and agent powered off (lab kill-host)")
    tl.events = [(0.0, "killed", f"{kill.host}: {how}")]
    if suspect:
        tl.events.append((suspect[0], "suspected",
                          f"first gossip suspicion (in {suspect[1]}'s log)"))
    if dead:
        tl.events.append((dead[0], "dead", f"declared dead in gossip (in {dead[1]}'s log)"))
    if m["stopped"] is not None:
        tl.events.append((m["stopped"], "STOPPED committed",
                          f"notification {notification['notification_uuid'][:8]} "
                          f"(proposed by {notification['source_node']})"))
    if m["powered_off"] is not None:
        tl.events.append((m["powered_off"], "powered off",
                          f"by the {switch.get('reason')} (power switch)"))
    if m["fenced"] is not None:
        tl.events.append((m["fenced"], "fenced", f"by {incident['fence_method']}: "
                          f"{incident.get('fence_detail')}"))
    if m["forced_down"] is not None:
        tl.events.append((m["forced_down"], "forced down", "nova-compute forced down in Nova"))
    if m["disabled"] is not None:
        tl.events.append((m["disabled"], "disabled", "nova-compute disabled in Nova"))
    if m["first_accepted"] is not None:
        tl.events.append((m["first_accepted"], "first evacuation accepted",
                          f"{len(accepted)} accepted in all"))
    if m["all_active"] is not None:
        tl.events.append((m["all_active"], "all ACTIVE elsewhere",
                          f"{len(active)} instance(s) running on other hosts"))
    if m["finished"] is not None:
        tl.events.append((m["finished"], f"notification {notification['status']}",
                          notification.get("message") or ""))
    tl.events.sort(key=lambda e: (e[0] is None, e[0] or 0.0))
    return tl
