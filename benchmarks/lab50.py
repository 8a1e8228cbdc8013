"""Benchmark: a 50-node lab (3 voters, 47 non-voters) on this machine.

Measures, in order: time until all 50 agents report ``ready`` (processes started at once on
2 cores: imports and joining the log); time to register segment ``lab`` and 50 hosts through
one agent's admin socket; total and per-agent memory and the whole lab's CPU over an idle
window; then commit latency of notifications submitted on a non-voter (sequential, each
acknowledged ``committed``), and how long a clean ``down`` takes.

Run: python -m benchmarks.lab50 [--quick] [--nodes N]
"""
from __future__ import annotations

import json
import time
from typing import Any

from benchmarks import common

NAME = "lab50"
SUBMISSIONS = 20


def run(quick: bool = False, *, nodes: int = 50, idle: float | None = None) -> dict[str, Any]:
    idle = idle if idle is not None else (5.0 if quick else 20.0)
    background = common.background()
    doc: dict[str, Any] = {"quick": quick, "nodes": nodes, "voters": 3, "background_before": background}
    t0 = time.perf_counter()
    holder: dict[str, float] = {}
    with common.lab(nodes, 3, register=False, timeout=300.0) as the_lab:
        doc["up_to_ready_s"] = round(time.perf_counter() - t0, 1)
        t = time.perf_counter()
        the_lab.register(timeout=120.0)
        doc["register_s"] = round(time.perf_counter() - t, 2)
        time.sleep(2.0)
        leader = the_lab.leader(timeout=15)
        procs = common.agent_processes(the_lab)
        doc["agents_running"] = len(procs)
        before = {n: common.cpu_seconds(p) for n, p in procs.items()}
        foreign = common.ForeignCpu(list(procs.values()))
        t = time.perf_counter()
        time.sleep(idle)
        elapsed = time.perf_counter() - t
        background["foreign_cpu_percent_during"] = foreign.percent()
        cpu = {n: (common.cpu_seconds(p) - before[n]) / elapsed * 100 for n, p in procs.items()}
        mem = {n: common.process_memory(p) for n, p in procs.items()}
        non_voters = [n.name for n in the_lab.nodes if not n.voter]
        voters = [n.name for n in the_lab.nodes if n.voter]

        def role_stats(names: list[str], key: str, table: dict) -> dict[str, float]:
            vals = [table[n][key] if isinstance(table[n], dict) else table[n] for n in names if n in table]
            return {"mean": round(sum(vals) / len(vals), 2), "max": round(max(vals), 2)} if vals else {}

        doc["idle_s"] = round(elapsed, 1)
        doc["leader"] = leader
        doc["total_rss_mb"] = round(sum(m["rss_mb"] for m in mem.values()), 1)
        doc["total_uss_mb"] = round(sum(m.get("uss_mb", 0.0) for m in mem.values()), 1)
        doc["total_cpu_percent"] = round(sum(cpu.values()), 2)
        doc["rss_mb"] = {"voters": role_stats(voters, "rss_mb", mem),
                         "non_voters": role_stats(non_voters, "rss_mb", mem)}
        doc["uss_mb"] = {"voters": role_stats(voters, "uss_mb", mem),
                         "non_voters": role_stats(non_voters, "uss_mb", mem)}
        doc["cpu_percent"] = {"leader": round(cpu.get(leader, 0.0), 2),
                              "voters": role_stats(voters, "", {n: cpu[n] for n in voters if n in cpu}),
                              "non_voters": role_stats(non_voters, "", {n: cpu[n] for n in non_voters if n in cpu})}
        # Submissions on a non-voter: it forwards to the leader, which answers after the commit.
        via = non_voters[-1]
        latencies, failures = [], 0
        for i in range(SUBMISSIONS):
            args = json.loads(common.notification_line(f"l50{int(time.time())}", i, via))["args"]
            t = time.perf_counter()
            try:
                result = the_lab.admin(via, "notification.create", args, timeout=30.0)
                ok = bool(result.get("committed"))
            except Exception:  # noqa: BLE001 - counted
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                failures += 1
        doc["non_voter_submit"] = {"via": via, "failures": failures,
                                 "latency_ms": common.percentiles(latencies, 1000)}
        holder["down_start"] = time.perf_counter()
        lab_dir = str(the_lab.dir)
    doc["down_s"] = round(time.perf_counter() - holder["down_start"], 1)
    doc["agents_left_after_down"] = common.other_agents(lab_dir)
    return doc


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    lat = doc["non_voter_submit"]["latency_ms"]
    return [
        (f"{doc['nodes']} agents: start to all ready (s)", doc["up_to_ready_s"], None),
        (f"register segment + {doc['nodes']} hosts (s)", doc["register_s"], None),
        ("total RSS / USS (MB)", f"{doc['total_rss_mb']} / {doc['total_uss_mb']}", None),
        ("RSS per non-voter mean (MB)", doc["rss_mb"]["non_voters"].get("mean"), None),
        (f"total CPU idle (% core, {doc['idle_s']:g} s)", doc["total_cpu_percent"], None),
        ("CPU leader / non-voter mean (% core)",
         f"{doc['cpu_percent']['leader']} / {doc['cpu_percent']['non_voters'].get('mean')}", None),
        ("submit on a non-voter p50 / max (ms)", f"{lat['p50']} / {lat['max']}", None),
        ("lab down (s)", doc["down_s"], None),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--idle", type=float)
    args = ap.parse_args(argv)
    doc = run(args.quick, nodes=args.nodes, idle=args.idle)
    print(json.dumps({k: v for k, v in doc.items() if k != "background_before"}, indent=1))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
