"""Benchmark: a storm of libvirt lifecycle events into the instance monitor, through to commit.

Source of the events: libvirt's **test driver in a real libvirtd** (private socket), so
every event crosses a process boundary and libvirt's event loop exactly as on a compute
node. A generator process opens its own connection and starts and destroys domains (500
of them, round robin), open loop at ``--rate`` operations per second for ``--duration``
seconds; each operation makes exactly one lifecycle event: STARTED_BOOTED (filtered by
Masakari's table) or STOPPED_DESTROYED (reported), half each.

The monitor runs in this process as in an agent: ``InstanceMonitor`` -> ``Outbox``
(instance_queue_size, 10,000) -> then, in two runs:

1. the real ``Submitter`` and ``Spool`` (fsync, group commit) with a propose that applies
   the command to an in-process ``ClusterState`` (commits at once: the figures are the
   monitor's and the spool's);
2. (``doc["lab"]``, not with ``--quick``) a real 3-voter lab: each notification goes to a
   follower agent's admin socket (``notification.create``: its spool, then Raft), the
   agent whose host the notifications name.

Logging is at INFO into a file, as an agent logs every VM notification.

Reported:

- accounting: events the generator caused = seen by the monitor = filtered + reported;
  reported = committed by the state machine (``new``, or ``ignored`` as a duplicate of an
  earlier destroy of the same domain within 180 s: still committed); spool empty at the end;
- latency from the event (the generator's destroy call returned) to its notification
  committed, and from the callback to commit, p50/p95/p99/max (a destroy is matched to
  its notification by domain and order);
- CPU (% of one core) and RSS of this process (monitor + submitter + spool + state
  machine) during the storm, and of libvirtd and the generator for context;
- outbox depth and full waits, spool fsyncs.

Goals: nothing unaccounted; p99 event -> committed <= 1 s.

Run: python -m benchmarks.monitor_storm [--quick] [--rate N] [--duration S] [--[no-]lab]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import multiprocessing
import shutil
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import psutil

from benchmarks import common
from consensus.state import ClusterState
from hagent.monitors.base import Outbox
from hagent.monitors.instance import InstanceMonitor
from hagent.spool import Spool
from hagent.submitter import Submitter
from tests.integration.libvirt_daemons import TestDriverLibvirtd

NAME = "monitor_storm"
HOST = "compute-01"
DOMAINS = 500
QUEUE_SIZE = 10_000  # [monitors] instance_queue_size default
GOAL_P99_MS = 1000.0
AT = 1e9


# ---- the generator (its own process) ---------------------------------------------------------

def _generate(uri: str, rate: float, duration: float, out: str, ready, go) -> None:
    """Start/destroy domains open loop at ``rate`` ops/s; write what was done to ``out``."""
    import libvirt

    conn = libvirt.open(uri)
    doms = []
    for i in range(DOMAINS):
        dom_uuid = str(uuid.UUID(int=i + 1))
        doms.append(conn.defineXML(
            f"<domain type='test'><name>storm-{i}</name><uuid>{dom_uuid}</uuid>"
            f"<memory>8192</memory><os><type>hvm</type></os></domain>"))
    ready.set()
    go.wait()
    total = int(rate * duration)
    ops: list[tuple[str, str, float]] = []
    start = time.perf_counter()
    wall0 = time.time()
    cpu0 = time.process_time()
    behind_max = 0.0
    for k in range(total):
        due = start + k / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        else:
            behind_max = max(behind_max, now - due)
        dom = doms[(k // 2) % DOMAINS]
        if k % 2 == 0:
            dom.create()
            kind = "start"
        else:
            dom.destroy()
            kind = "destroy"
        ops.append((dom.UUIDString(), kind, wall0 + (time.perf_counter() - start)))
    took = time.perf_counter() - start
    Path(out).write_text(json.dumps({"ops": ops, "took_s": took, "behind_max_s": behind_max,
                                     "cpu_s": time.process_time() - cpu0}))
    conn.close()


# ---- the monitor side --------------------------------------------------------------------------

def _cluster() -> ClusterState:
    state = ClusterState()
    for cmd in ({"op": "segment.create", "at": AT, "uuid": str(uuid.UUID(int=10**12)),
                 "name": "s1", "recovery_method": "auto", "service_type": "COMPUTE"},
                {"op": "host.create", "at": AT, "uuid": str(uuid.UUID(int=10**12 + 1)),
                 "name": HOST, "type": "COMPUTE", "control_attributes": "SSH", "segment": "s1"}):
        answer = state.apply(cmd)
        if not answer.get("ok"):
            raise RuntimeError(f"{cmd['op']} refused: {answer.get('error')}")
    return state


class Sampler:
    """CPU and RSS of some processes, sampled every ``every`` s in a thread."""

    def __init__(self, procs: dict[str, psutil.Process], every: float = 0.25) -> None:
        self.procs = procs
        self.every = every
        self.rss_max: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for name, p in self.procs.items():
                try:
                    self.rss_max[name] = max(self.rss_max[name], p.memory_info().rss / 2**20)
                except psutil.Error:
                    pass

    def __enter__(self) -> "Sampler":
        self._cpu0 = {n: common.cpu_seconds(p) for n, p in self.procs.items()}
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.perf_counter() - self._t0
        self.cpu_percent = {}
        for name, p in self.procs.items():
            try:
                self.cpu_percent[name] = round(
                    (common.cpu_seconds(p) - self._cpu0[name]) / wall * 100, 1)
            except psutil.Error:
                self.cpu_percent[name] = None
        self.wall = wall


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


class InProcessLog:
    """The real Submitter and Spool, proposing into an in-process ClusterState (commits at
    once): the figures are the monitor's and the spool's."""

    label = "in-process: real Submitter + Spool, propose applies to a ClusterState at once"

    def __init__(self, work: Path) -> None:
        self.hostname = HOST
        self.spool = Spool(work / "spool")
        self.state = _cluster()
        self.submitter = Submitter(self._propose, self.spool, HOST, propose_timeout=None)

    async def _propose(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.state.apply({"at": time.time(), **command})

    async def start(self) -> None:
        await self.submitter.start()
        self._fsyncs0 = self.spool.fsyncs

    async def submit(self, fields: dict[str, Any]) -> dict[str, Any]:
        return await self.submitter.submit(fields)

    def processes(self) -> dict[str, psutil.Process]:
        return {}

    def stats(self) -> dict[str, Any]:
        return {"spool_depth_at_end": self.spool.depth,
                "spool_fsyncs": self.spool.fsyncs - self._fsyncs0}

    async def stop(self) -> None:
        await self.submitter.stop()


class LabLog:
    """A real 3-voter lab: notifications go through one follower's admin socket
    (``notification.create``: its spool, then Raft on three agents), as the monitor inside
    that agent would submit them; the follower is the compute host they name."""

    label = "3-voter lab: a follower's spool and Raft (admin notification.create)"
    CONNECTIONS = 64

    def __init__(self, work: Path) -> None:
        self._lab_cm = common.lab(3, 3)

    async def start(self) -> None:
        self.lab = await asyncio.to_thread(self._lab_cm.__enter__)
        leader = await asyncio.to_thread(self.lab.leader)
        node = next(n for n in self.lab.nodes if n.name != leader)
        self.hostname = node.name
        self._free: asyncio.Queue[common.AdminConn] = asyncio.Queue()
        for conn in await common.open_many(node.admin_socket, self.CONNECTIONS):
            self._free.put_nowait(conn)

    async def submit(self, fields: dict[str, Any]) -> dict[str, Any]:
        conn = await self._free.get()
        try:
            reply = await conn.call("notification.create", fields)
        finally:
            self._free.put_nowait(conn)
        if not reply.get("ok"):
            return {"ok": False, "error": reply.get("error")}
        result = reply["result"]
        return {"ok": True, "committed": result["committed"], "result": result["notification"]}

    def processes(self) -> dict[str, psutil.Process]:
        return {f"agent {name}": p for name, p in common.agent_processes(self.lab).items()}

    def stats(self) -> dict[str, Any]:
        return {"submitted_via": self.hostname}

    async def stop(self) -> None:
        while not self._free.empty():
            await self._free.get_nowait().close()
        await asyncio.to_thread(self._lab_cm.__exit__, None, None, None)


async def _storm(rate: float, duration: float, work: Path, use_lab: bool) -> dict[str, Any]:
    libvirtd = TestDriverLibvirtd()
    log = LabLog(work) if use_lab else InProcessLog(work)
    committed_at: dict[str, float] = {}
    statuses: dict[str, int] = defaultdict(int)
    sent: list[dict[str, Any]] = []

    async def submit(fields: dict[str, Any]) -> dict[str, Any]:
        sent.append(fields)
        answer = await log.submit(fields)
        if answer.get("committed"):
            committed_at[fields["notification_uuid"]] = time.time()
            statuses[answer["result"]["status"]] += 1
        return answer

    log_handler = logging.FileHandler(work / "agent.log")
    log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    hagent_log = logging.getLogger("hagent")
    hagent_log.addHandler(log_handler)
    old_level = hagent_log.level
    hagent_log.setLevel(logging.INFO)
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    ops_file = work / "ops.json"
    generator = monitor = None
    try:
        await log.start()
        libvirtd.start()
        outbox = Outbox(submit, hostname=log.hostname, size=QUEUE_SIZE, name="instance")
        monitor = InstanceMonitor(libvirtd.uri, outbox)
        generator = ctx.Process(target=_generate, name="storm-generator",
                                args=(libvirtd.uri, rate, duration, str(ops_file), ready, go))
        generator.start()
        await monitor.start()
        if not await asyncio.to_thread(ready.wait, 120):
            raise RuntimeError("the generator did not define its domains")
        # The DEFINED events of the set-up are not part of the storm.
        await _until(lambda: monitor.events_seen >= DOMAINS, 30)
        base = {k: getattr(monitor, k) for k in ("events_seen", "events_filtered",
                                                 "events_reported")}
        procs = {"monitor_process": psutil.Process(),
                 "libvirtd": psutil.Process(libvirtd.proc.pid), **log.processes()}
        with Sampler(procs) as sampler:
            go.set()
            await asyncio.to_thread(generator.join, duration * 5 + 60)
            ops_doc = json.loads(ops_file.read_text())
            expected = len(ops_doc["ops"])
            drained_by = time.monotonic() + 60
            while (monitor.events_seen - base["events_seen"] < expected
                   or outbox.depth or outbox.in_flight) and time.monotonic() < drained_by:
                await asyncio.sleep(0.05)
        status = monitor.status()
        log_stats = log.stats()
    finally:
        if generator is not None and generator.is_alive():
            generator.kill()
        if monitor is not None:
            await monitor.stop()
        await log.stop()
        libvirtd.cleanup()
        hagent_log.removeHandler(log_handler)
        hagent_log.setLevel(old_level)
        log_handler.close()

    ops = ops_doc["ops"]
    seen = status["events_seen"] - base["events_seen"]
    filtered = status["events_filtered"] - base["events_filtered"]
    reported = status["events_reported"] - base["events_reported"]
    destroys = [(u, t) for u, kind, t in ops if kind == "destroy"]
    starts = len(ops) - len(destroys)
    # Match the k-th destroy of a domain with its k-th notification.
    notes = defaultdict(deque)
    for fields in sent:
        if fields["payload"]["vir_domain_event"] == "STOPPED_DESTROYED":
            notes[fields["payload"]["instance_uuid"]].append(fields)
    event_to_commit, seen_to_commit = [], []
    for dom_uuid, t_event in destroys:
        if not notes[dom_uuid]:
            continue
        fields = notes[dom_uuid].popleft()
        done = committed_at.get(fields["notification_uuid"])
        if done is not None:
            event_to_commit.append(done - t_event)
            seen_to_commit.append(done - _epoch(fields["generated_time"]))
    committed = len(committed_at)
    unaccounted = (len(ops) - seen) + (seen - filtered - reported) + (reported - committed)
    p_event = common.percentiles(event_to_commit, 1000)
    return {
        "source": "libvirt test driver in a real libvirtd (private socket); generator process",
        "log": log.label,
        "rate_target": rate, "duration_target_s": duration,
        "generator": {"ops": len(ops), "starts": starts, "destroys": len(destroys),
                      "took_s": round(ops_doc["took_s"], 2),
                      "rate_achieved": round(len(ops) / ops_doc["took_s"], 1),
                      "behind_max_ms": round(ops_doc["behind_max_s"] * 1000, 1)},
        "monitor": {"events_seen": seen, "filtered": filtered, "reported": reported,
                    "committed": committed, "committed_by_status": dict(statuses),
                    "unaccounted": unaccounted, "lost": status["events_lost"],
                    "queue_max_depth": status["queue_max_depth"],
                    "queue_full_waits": status["queue_full_waits"],
                    "disconnects": status["disconnects"], **log_stats},
        "latency_event_to_committed_ms": p_event,
        "latency_callback_to_committed_ms": common.percentiles(seen_to_commit, 1000),
        "cpu_percent_of_one_core": {
            **sampler.cpu_percent,
            "generator": round(ops_doc["cpu_s"] / ops_doc["took_s"] * 100, 1)},
        "rss_max_mb": {k: round(v, 1) for k, v in sampler.rss_max.items()},
        "storm_wall_s": round(sampler.wall, 2),
        "goals": {
            "unaccounted_events": common.goal(unaccounted, "<=", 0, "events"),
            "p99_event_to_committed": common.goal(p_event["p99"], "<=", GOAL_P99_MS, "ms"),
        },
    }


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the monitor")
        await asyncio.sleep(0.05)


def run(quick: bool = False, *, rate: float = 1000.0, duration: float | None = None,
        lab: bool | None = None) -> dict[str, Any]:
    """The in-process storm, then (unless ``quick``, or ``lab`` says otherwise) the same
    storm into a 3-voter lab (``doc["lab"]``)."""
    duration = duration if duration is not None else (3.0 if quick else 10.0)
    lab = (not quick) if lab is None else lab
    doc = _run_one(rate, duration, use_lab=False)
    if lab:
        doc["lab"] = _run_one(rate, duration, use_lab=True)
    doc["quick"] = quick
    doc["background"] = common.background()
    return doc


def _run_one(rate: float, duration: float, use_lab: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="hb-storm-"))
    try:
        return asyncio.run(_storm(rate, duration, work, use_lab))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    rows = []
    for tag, d in (("", doc), ("lab: ", doc.get("lab"))):
        if d is None:
            continue
        g, m = d["goals"], d["monitor"]
        rows += [
            (f"{tag}events at {d['generator']['rate_achieved']:.0f}/s: seen / filtered / "
             "committed", f"{m['events_seen']} / {m['filtered']} / {m['committed']}", None),
            (f"{tag}unaccounted events", g["unaccounted_events"]["value"],
             g["unaccounted_events"]),
            (f"{tag}p99 event -> committed (ms)", g["p99_event_to_committed"]["value"],
             g["p99_event_to_committed"]),
            (f"{tag}monitor process CPU % / RSS MB",
             f"{d['cpu_percent_of_one_core']['monitor_process']} / "
             f"{d['rss_max_mb']['monitor_process']}", None),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--rate", type=float, default=1000.0, help="lifecycle events per second")
    ap.add_argument("--duration", type=float, help="seconds of storm (10; 3 with --quick)")
    ap.add_argument("--lab", action=argparse.BooleanOptionalAction, default=None,
                    help="also storm a 3-voter lab (default: yes, except with --quick)")
    args = ap.parse_args(argv)
    doc = run(args.quick, rate=args.rate, duration=args.duration, lab=args.lab)
    print(json.dumps(doc, indent=1))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
