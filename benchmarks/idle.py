"""Benchmark: what an idle agent costs: memory (RSS, USS) and CPU.

A 4-node lab (3 voters + 1 non-voter), registered (segment + 4 hosts), left alone for
``--duration`` s after a short settle. CPU is the agent's user+system time over the window
divided by the window (% of one core); memory is read at the end (psutil ``memory_full_info``:
RSS, USS = pages only this process holds, PSS). The leader, the two followers and the non-voter
are reported separately: only the leader sends heartbeats, and a non-voter holds whatever
the lab's non-voter mode gives it (a forwarding node keeps no Raft state).

Goals (per agent, the worst one counts): <= 60 MB RSS, <= 0.5 % of one core.

Run: python -m benchmarks.idle [--quick] [--duration S]
"""
from __future__ import annotations

import json
import time
from typing import Any

from benchmarks import common

NAME = "idle"
GOAL_RSS_MB = 60.0
GOAL_CPU_PERCENT = 0.5
SETTLE = 3.0


def run(quick: bool = False, *, duration: float | None = None,
        config_extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    duration = duration if duration is not None else (10.0 if quick else 30.0)
    background = common.background()
    with common.lab(4, 3, config_extra=config_extra) as the_lab:
        time.sleep(SETTLE)
        leader = the_lab.leader(timeout=15)
        procs = common.agent_processes(the_lab)
        before = {n: common.cpu_seconds(p) for n, p in procs.items()}
        foreign = common.ForeignCpu(list(procs.values()))
        t0 = time.perf_counter()
        time.sleep(duration)
        elapsed = time.perf_counter() - t0
        background["foreign_cpu_percent_during"] = foreign.percent()
        agents = {}
        for name, p in procs.items():
            node = the_lab.node(name)
            role = "leader" if name == leader else ("follower" if node.voter else "non-voter")
            agents[name] = {"role": role,
                            "cpu_percent": round((common.cpu_seconds(p) - before[name]) / elapsed * 100, 3),
                            "threads": p.num_threads(), **common.process_memory(p)}
    worst_rss = max(a["rss_mb"] for a in agents.values())
    worst_cpu = max(a["cpu_percent"] for a in agents.values())
    by_role: dict[str, dict[str, float]] = {}
    for a in agents.values():
        r = by_role.setdefault(a["role"], {"n": 0, "rss_mb": 0.0, "uss_mb": 0.0, "cpu_percent": 0.0})
        r["n"] += 1
        for k in ("rss_mb", "uss_mb", "cpu_percent"):
            r[k] += a.get(k, 0.0)
    for r in by_role.values():
        for k in ("rss_mb", "uss_mb", "cpu_percent"):
            r[k] = round(r[k] / r["n"], 3)
    goals = {"max_rss_mb": common.goal(worst_rss, "<=", GOAL_RSS_MB, "MB"),
             "max_cpu_percent": common.goal(worst_cpu, "<=", GOAL_CPU_PERCENT, "% core")}
    return {"quick": quick, "duration_s": round(elapsed, 1), "nodes": 4, "voters": 3,
            "config_extra": config_extra or {},
            "background_before": background, "agents": agents, "by_role": by_role, "goals": goals}


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    rows = []
    for role in ("leader", "follower", "non-voter"):
        r = doc["by_role"].get(role)
        if r:
            rows.append((f"{role}: RSS / USS (MB)", f"{r['rss_mb']:.1f} / {r['uss_mb']:.1f}", None))
            rows.append((f"{role}: CPU (% core, {doc['duration_s']:g} s idle)", r["cpu_percent"], None))
    rows.append(("worst agent RSS (MB)", doc["goals"]["max_rss_mb"]["value"], doc["goals"]["max_rss_mb"]))
    rows.append(("worst agent CPU (% core)", doc["goals"]["max_cpu_percent"]["value"],
                 doc["goals"]["max_cpu_percent"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__, set_example="raft.append_entries_period=0.12")
    ap.add_argument("--duration", type=float)
    args = ap.parse_args(argv)
    doc = run(args.quick, duration=args.duration, config_extra=common.parse_sets(args.set))
    print(json.dumps(doc["agents"], indent=1))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
