"""Benchmark: a host with 10 HA instances is killed; how long until they all run again, on a
real Nova 34 and on the Nova simulator, side by side in one run?

Every run is a fresh 3-host lab (three voting agents) with the product's default config
(``lease_ttl`` 15 s, ``max_concurrent_evacuations`` 16) but ``evacuate_all_instances =
false``, either with a real Nova (``Lab.up(nova="real")``: Keystone, Placement, Nova 34 and
one fake-driver nova-compute per host, docs/nova-real.md) or with the simulator at its
default timings, which follow real Nova's (``Lab.up(nova=True)``, docs/nova-simulator.md).
Real and simulated runs alternate, so both see the same neighbours on this shared machine.

One run: 10 HA instances booted on a host that is not the leader; after a random pause of up
to one lease renewal interval (so the kill falls anywhere in the renewal cycle) the host is
powered off through its lab switch (``lab kill-host``: its agent and its nova-compute die at
once). The figure is the time from the kill until Nova's own API (openstacksdk, the same
poll every 0.25 s on both backends) shows the last of them ACTIVE on another host. The
log's records give the steps on the way (dead in gossip, STOPPED, fenced, forced down,
disabled, evacuations asked and confirmed, finished), and every run is checked: one
``evacuate`` instance action per instance, each ACTIVE off the dead host, the notification
``finished``. Also recorded: whether the notification needed a retry (an evacuation the
engine counted failed), how long an instance showed ACTIVE on the dead host after its
rebuild (real Nova moves ``host`` last), and where the scheduler put the instances.

- (main) kill -> all 10 ACTIVE, real vs simulator, with the ratio real / simulator, both
  for the whole recovery and for its Nova part (fenced -> all ACTIVE).
- (c) concurrency: more instances than the default 16 on the dead host
  (``CONCURRENCY_INSTANCES``), evacuated 16 at a time and all at once: do the real
  nova-conductor and nova-scheduler (one worker each) cope with that many rebuilds at once?
  (not in --quick)

Goal: on real Nova, kill -> all ACTIVE <= lease_ttl + 10 s on the slowest run, the same goal
benchmarks/recovery.py (a) sets on the simulator.

Run: python -m benchmarks.recovery_real_nova [--quick] [--runs N] [--no-concurrency]
(about 10 minutes on 2 cores, each real Nova lab ~1.8 GiB; --quick about 3)
"""
from __future__ import annotations

import contextlib
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from benchmarks import common
from hagent.config import FencingConfig, RecoveryConfig
from hagent.lab import timeline
from hagent.lab.cluster import Lab, LabError
from hagent.lab.nova import Timings

NAME = "recovery_real_nova"
NODES = 3
INSTANCES = 10
#: Beyond the default max_concurrent_evacuations (16), still bootable on one fake compute
#: in ~20 s (Nova builds at most 10 at a time per compute).
CONCURRENCY_INSTANCES = 40
LEASE_TTL = FencingConfig().lease_ttl
RENEW_INTERVAL = FencingConfig().renew_interval
DEFAULT_CONCURRENCY = RecoveryConfig().max_concurrent_evacuations
GOAL_REAL_S = LEASE_TTL + 10.0
BACKENDS = ("real", "sim")
POLL = 0.25
#: A real Nova lab is READY in ~35-45 s here; more beside another one.
UP_TIMEOUT = 300.0
SEED = 20261126


@contextlib.contextmanager
def fresh_lab(backend: str, concurrency: int | None) -> Iterator[Lab]:
    """A 3-host lab with ``backend``'s Nova; always brought down, its directory removed
    unless the run failed."""
    d = Path(tempfile.mkdtemp(prefix=f"hb-rrn-{backend}-"))
    recovery: dict[str, Any] = {"evacuate_all_instances": False}
    if concurrency is not None:
        recovery["max_concurrent_evacuations"] = concurrency
    if backend == "real":
        lab = Lab.up(d, nodes=NODES, nova="real", config_extra={"recovery": recovery},
                     timeout=UP_TIMEOUT)
    else:
        lab = Lab.up(d, nodes=NODES, nova=True, nova_timings=Timings(),
                     config_extra={"recovery": recovery}, timeout=UP_TIMEOUT)
    ok = False
    try:
        yield lab
        ok = True
    finally:
        lab.down()
        if ok:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"  (lab kept for a look: {d})", flush=True)


def _all_alive(lab: Lab) -> bool:
    for name in lab.names:
        try:
            states = {m["name"]: m["state"] for m in lab.status(name)["members"]}
        except LabError:
            return False
        if any(states.get(n) != "alive" for n in lab.names):
            return False
    return True


def _wait(what: str, check: Any, timeout: float, period: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except LabError:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(period)


def _watch_active(conn: Any, kill: timeline.Kill, ids: list[str],
                  deadline: float) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds after the kill at which Nova's API first showed each instance ACTIVE on
    another host (those seen by ``deadline``); and, per instance seen so, how long before
    that it already showed ACTIVE with no task on the dead host after its rebuild had
    started: the end of a successful evacuation, before Nova's finish_evacuation moves the
    instance's host (docs/nova-real.md, "What differs from the simulator")."""
    back: dict[str, float] = {}
    rebuilding: set[str] = set()
    limbo: dict[str, float] = {}
    wanted = set(ids)
    while len(back) < len(wanted) and time.monotonic() < deadline:
        now = time.monotonic() - kill.monotonic
        for server in conn.compute.servers(all_projects=True, details=True):
            if server.id not in wanted or server.id in back:
                continue
            if server.status == "ACTIVE" and server.compute_host not in (kill.host, None):
                back[server.id] = round(now, 3)
            elif server.task_state is not None:
                rebuilding.add(server.id)
            elif server.id in rebuilding and server.status == "ACTIVE":
                limbo.setdefault(server.id, now)
        time.sleep(POLL)
    return back, {i: round(back[i] - t, 3) for i, t in limbo.items() if i in back}


def one_run(backend: str, rng: random.Random, instances: int = INSTANCES,
            concurrency: int | None = None) -> dict[str, Any]:
    """Kill a host running ``instances`` HA instances; marks (seconds after the kill) and
    checks."""
    c = concurrency or DEFAULT_CONCURRENCY
    began = time.monotonic()
    with fresh_lab(backend, concurrency) as lab:
        up_s = round(time.monotonic() - began, 1)
        _wait("every agent sees all three alive", lambda: _all_alive(lab), 60)
        leader = lab.leader()
        victim = next(n for n in reversed(lab.names) if n != leader)
        nova = lab.nova
        ids = nova.boot(n_ha=instances, hosts=[victim], wait=180.0)["ha"]
        conn = nova.connect(compute_api_version="2.94")
        try:
            pause = round(rng.uniform(0.0, RENEW_INTERVAL), 2)
            time.sleep(pause)  # the kill lands anywhere in the renewal cycle, not a sync
            kill = timeline.kill(lab, victim, "kill-host")
            deadline = kill.monotonic + LEASE_TTL + 60.0 + (instances / c) * 15.0
            back, limbo = _watch_active(conn, kill, ids, deadline)
            reader = timeline.Reader(lab, kill)
            incident = _wait("the notification ended",
                             lambda: (i := reader.incident()) and i["notification_status"]
                             in ("finished", "failed", "ignored") and i, 60)
            record = reader.notification(incident["notification_uuid"])
            evacuations = {i: sum(1 for a in conn.compute.server_actions(i)
                                  if a.action == "evacuate") for i in ids}
            servers = {s.id: s for s in conn.compute.servers(all_projects=True, details=True)}
        finally:
            conn.close()
        marks = _marks(lab, kill, incident, record, back, len(ids))
    problems = []
    if record["status"] != "finished":
        problems.append(f"notification {record['status']}: {record.get('message')}")
    for i in ids:
        if evacuations[i] != 1:
            problems.append(f"{i}: {evacuations[i]} evacuate actions")
        s = servers.get(i)
        if s is None or s.status != "ACTIVE" or s.compute_host == victim:
            problems.append(f"{i}: {getattr(s, 'status', None)} on "
                            f"{getattr(s, 'compute_host', None)}")
    if len(back) < len(ids):
        problems.append(f"only {len(back)}/{len(ids)} seen ACTIVE elsewhere in time")
    steps = record.get("recovery_steps", [])
    m = marks
    return {
        "backend": backend, "ok": not problems, "problems": problems[:10],
        "instances": len(ids), "concurrency": c, "pause_s": pause, "lab_up_s": up_s,
        "fence_method": incident.get("fence_method"), "marks_s": m,
        "kill_to_all_active_s": m["all_active"],
        "fenced_to_all_active_s": _minus(m["all_active"], m["fenced"]),
        "fenced_to_first_evacuate_s": _minus(m["first_evacuate"], m["fenced"]),
        "per_instance_active_s_p50": (round(statistics.median(back.values()), 3)
                                      if back else None),
        "evacuate_actions": sum(evacuations.values()),
        # Where the scheduler put them (real Nova's concurrent requests weigh the same view).
        "destinations": dict(Counter(getattr(servers.get(i), "compute_host", None)
                                     for i in ids)),
        "active_on_dead_host_after_rebuild": {"instances": len(limbo),
                                               "max_s": max(limbo.values(), default=None)},
        # Attempts of the notification (1: no retry) and evacuations the engine counted as
        # failed although Nova went on with them (docs/nova-real.md, "What differs").
        "attempts": max((s.get("attempt") or 1 for s in steps), default=1),
        "evacuate_steps_failed": sum(1 for s in steps
                                     if s["step"] == "evacuate" and s["outcome"] == "failed"),
    }


def safe_run(backend: str, rng: random.Random, instances: int = INSTANCES,
             concurrency: int | None = None) -> dict[str, Any]:
    """``one_run``, or a failed run's record if it broke (a lab that did not start, a
    recovery that did not end): the other runs still count."""
    try:
        return one_run(backend, rng, instances, concurrency)
    except Exception as exc:  # noqa: BLE001 - reported in the results
        marks = dict.fromkeys(("dead", "stopped", "fenced", "forced_down", "disabled",
                               "first_evacuate", "first_active", "all_active"))
        return {"backend": backend, "ok": False, "problems": [f"{type(exc).__name__}: {exc}"],
                "instances": instances, "concurrency": concurrency or DEFAULT_CONCURRENCY,
                "lab_up_s": None, "marks_s": marks, "kill_to_all_active_s": None,
                "fenced_to_all_active_s": None, "fenced_to_first_evacuate_s": None}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _marks(lab: Lab, kill: timeline.Kill, incident: dict[str, Any], record: dict[str, Any],
           back: dict[str, float], total: int) -> dict[str, float | None]:
    """Each moment where it was recorded first: the agents' logs (dead), the log's records
    (STOPPED, fenced, each step's intent and result), Nova's API as polled (ACTIVE)."""
    dead = timeline.first_log_line(lab, kill, f"member {kill.host} dead")
    steps = [s for s in record.get("recovery_steps", []) if s["outcome"] in ("done", "skipped")]

    def ended(name: str) -> float | None:
        times = [timeline.iso_epoch(s["ended_at"]) for s in steps if s["step"] == name]
        return kill.since_wall(min(times)) if times else None
    evacuate = [s for s in record.get("recovery_steps", []) if s["step"] == "evacuate"]
    intents = [timeline.iso_epoch(s["started_at"]) for s in evacuate]
    results = [timeline.iso_epoch(s["ended_at"]) for s in evacuate if s["outcome"] == "done"]
    return {
        "dead": dead[0] if dead else None,
        "stopped": kill.since_wall(timeline.iso_epoch(record.get("created_at"))),
        "fenced": kill.since_wall(timeline.iso_epoch(incident.get("fenced_at"))),
        "forced_down": ended("force_down"),
        "disabled": ended("disable_service"),
        "first_evacuate": kill.since_wall(min(intents)) if intents else None,
        "last_evacuate_confirmed": kill.since_wall(max(results)) if results else None,
        "first_active": min(back.values()) if back else None,
        "all_active": max(back.values()) if back and len(back) == total else None,
        "finished": kill.since_wall(timeline.iso_epoch(record.get("updated_at"))),
    }


def _describe(r: dict[str, Any]) -> str:
    m = r["marks_s"]
    return (f"{r['backend']:4} lab up {r['lab_up_s']} s; kill -> all {r['instances']} ACTIVE "
            f"{r['kill_to_all_active_s']} s (dead {m['dead']}, fenced {m['fenced']}, forced "
            f"down {m['forced_down']}, disabled {m['disabled']}, first evacuate "
            f"{m['first_evacuate']}, first ACTIVE {m['first_active']}; {r['concurrency']} at "
            f"a time; attempts {r.get('attempts')}, evacuations counted failed "
            f"{r.get('evacuate_steps_failed')}, ACTIVE on the dead host after the rebuild "
            f"{r.get('active_on_dead_host_after_rebuild')}, to {r.get('destinations')}); {'ok' if r['ok'] else 'FAILED: ' + '; '.join(r['problems'])}")


def _stats(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return common.percentiles([r[key] for r in runs if r["ok"] and r[key] is not None], 1.0, 2)


def _ratio(real: float | None, sim: float | None) -> float | None:
    return round(real / sim, 2) if real and sim else None


def run(quick: bool = False, *, runs: int | None = None,
        concurrency_part: bool = True) -> dict[str, Any]:
    runs = runs or (1 if quick else 3)
    rng = random.Random(SEED)
    started = time.perf_counter()
    doc: dict[str, Any] = {"quick": quick, "nodes": NODES, "instances": INSTANCES,
                           "lease_ttl_s": LEASE_TTL, "seed": SEED,
                           "background_before": common.background()}
    per: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
    for i in range(runs):
        for backend in BACKENDS:  # alternate: both see the same neighbours
            r = safe_run(backend, rng)
            per[backend].append(r)
            print(f"  run {i + 1}/{runs} {_describe(r)}", flush=True)
    for backend in BACKENDS:
        doc[backend] = {"per_run": per[backend],
                        "kill_to_all_active_s": _stats(per[backend], "kill_to_all_active_s"),
                        "fenced_to_all_active_s": _stats(per[backend], "fenced_to_all_active_s"),
                        "fenced_to_first_evacuate_s": _stats(per[backend],
                                                             "fenced_to_first_evacuate_s"),
                        "runs_retried": sum(1 for r in per[backend] if r.get("attempts", 1) > 1)}
    doc["ratio_real_over_sim"] = {
        key: {"p50": _ratio(doc["real"][key]["p50"], doc["sim"][key]["p50"]),
              "mean": _ratio(doc["real"][key]["mean"], doc["sim"][key]["mean"])}
        for key in ("kill_to_all_active_s", "fenced_to_all_active_s")}
    if concurrency_part and not quick:
        part: dict[str, Any] = {"instances": CONCURRENCY_INSTANCES}
        for backend in BACKENDS:
            for c in (DEFAULT_CONCURRENCY, CONCURRENCY_INSTANCES):
                r = safe_run(backend, rng, CONCURRENCY_INSTANCES, c)
                part[f"{backend}_{c}"] = r
                print(f"  concurrency {_describe(r)}", flush=True)
        doc["concurrency"] = part
    all_runs = per["real"] + per["sim"] + [v for k, v in doc.get("concurrency", {}).items()
                                           if isinstance(v, dict)]
    doc["failed_runs"] = sum(1 for r in all_runs if not r["ok"])
    worst_real = (doc["real"]["kill_to_all_active_s"]["max"]
                  if per["real"] and all(r["ok"] for r in per["real"]) else None)
    doc["goals"] = {"real_kill_to_all_active_max_s": common.goal(worst_real, "<=", GOAL_REAL_S,
                                                                 "s")}
    doc["run_time_s"] = round(time.perf_counter() - started, 1)
    return doc


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    rows: list[tuple[str, Any, dict | None]] = []
    n = doc["instances"]
    for backend, label in (("real", "real Nova"), ("sim", "simulator")):
        k = doc[backend]["kill_to_all_active_s"]
        f = doc[backend]["fenced_to_all_active_s"]
        rows.append((f"{label}: kill -> {n} ACTIVE p50 / max (s, {k['n']} runs)",
                     f"{k['p50']} / {k['max']}",
                     doc["goals"]["real_kill_to_all_active_max_s"] if backend == "real"
                     else None))
        rows.append((f"{label}: fenced -> {n} ACTIVE p50 / max (s)", f"{f['p50']} / {f['max']}",
                     None))
        rows.append((f"{label}: runs retried after an evacuation counted failed",
                     f"{doc[backend]['runs_retried']} of {k['n']}", None))
    ratio = doc["ratio_real_over_sim"]
    rows.append(("real / sim: kill -> all ACTIVE (p50)", ratio["kill_to_all_active_s"]["p50"],
                 None))
    rows.append(("real / sim: fenced -> all ACTIVE (p50)",
                 ratio["fenced_to_all_active_s"]["p50"], None))
    part = doc.get("concurrency")
    if part:
        for key, r in part.items():
            if isinstance(r, dict):
                rows.append((f"{r['backend']}: {r['instances']} at {r['concurrency']}: fenced -> "
                             f"all ACTIVE (s)",
                             f"{r['fenced_to_all_active_s']} (attempts {r.get('attempts')})"
                             if r["ok"] else "FAILED", None))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--no-concurrency", action="store_true",
                    help=f"skip the {CONCURRENCY_INSTANCES}-instance concurrency part")
    args = ap.parse_args(argv)
    doc = run(args.quick, runs=args.runs, concurrency_part=not args.no_concurrency)
    for figure, value, goal in summary(doc):
        verdict = (f"  goal {goal['op']} {goal['target']:g} s: {common.verdict(goal)}"
                   if goal else "")
        print(f"  {figure}: {'-' if value is None else value}{verdict}")
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
