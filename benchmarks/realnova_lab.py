"""Benchmark: what the real Nova lab (hagent.lab.realnova) costs: install (warm: the check
that nothing is missing), start to READY, booting servers, memory, stop.

Each run starts a fresh 3-host lab (``RealNova.start``), boots 6 servers pinned 2 per host
and waits until ACTIVE, reads the RSS of every process of the lab (supervisor, MariaDB,
RabbitMQ, epmd, Keystone, Placement, nova-api, -conductor, -scheduler, 3 nova-computes),
then stops it (``RealNova.stop``: everything ended, data removed). A cold install (nothing
installed, empty caches) is measured by hand and written in docs/nova-real.md: it cannot be
repeated here without removing the machine's MariaDB and RabbitMQ.

Goals (issue 7 and REAL-NOVA.md's measured figures): READY <= 60 s, RSS <= 1,800 MiB, stop
<= 20 s.

Run: python -m benchmarks.realnova_lab [--quick] [--runs N]
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from hagent.lab.realnova import RealNova, install

NAME = "realnova_lab"
HOSTS = ["cmp1", "cmp2", "cmp3"]
GOAL_READY_S = 60.0
GOAL_RSS_MIB = 1800.0
GOAL_STOP_S = 20.0


def one_run(base: Path) -> dict[str, Any]:
    began = time.monotonic()
    nova = RealNova.start(base / "lab", HOSTS)
    ready = time.monotonic() - began
    try:
        t = time.monotonic()
        nova.boot(n_ha=4, n_non_ha=2)
        boot = time.monotonic() - t
        procs = nova.processes()
        rss = nova.rss_bytes() / (1 << 20)
        phases = {k: round(v, 1) for k, v in nova.record["timings"].items()}
    finally:
        stop = nova.stop()
    return {"ready_s": round(ready, 1), "boot_6_active_s": round(boot, 1),
            "rss_mib": round(rss), "processes": len(procs), "stop_s": round(stop, 1),
            "supervisor_phases_s": phases}


def run(quick: bool = False, *, runs: int | None = None) -> dict[str, Any]:
    runs = runs or (1 if quick else 3)
    background = common.background()
    t = time.monotonic()
    install.ensure()
    warm_install = time.monotonic() - t
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="hagent-realnova-bench-") as tmp:
            results.append(one_run(Path(tmp)))
    worst = {key: max(r[key] for r in results) for key in ("ready_s", "rss_mib", "stop_s")}
    goals = {"ready_s": common.goal(worst["ready_s"], "<=", GOAL_READY_S, "s"),
             "rss_mib": common.goal(worst["rss_mib"], "<=", GOAL_RSS_MIB, "MiB"),
             "stop_s": common.goal(worst["stop_s"], "<=", GOAL_STOP_S, "s")}
    return {"quick": quick, "runs": results, "install_warm_s": round(warm_install, 2),
            "pins": list(install.PINS), "background_before": background, "goals": goals}


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    def span(key: str) -> str:
        values = [r[key] for r in doc["runs"]]
        return f"{min(values):g}-{max(values):g}"
    return [("install, warm (s)", doc["install_warm_s"], None),
            ("start to READY (s)", span("ready_s"), doc["goals"]["ready_s"]),
            ("boot 6 servers to ACTIVE (s)", span("boot_6_active_s"), None),
            ("RSS of the lab, 6 servers (MiB)", span("rss_mib"), doc["goals"]["rss_mib"]),
            ("stop (s)", span("stop_s"), doc["goals"]["stop_s"])]


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--runs", type=int)
    args = ap.parse_args(argv)
    doc = run(args.quick, runs=args.runs)
    print(json.dumps(doc["runs"], indent=1))
    for row in summary(doc):
        print(f"  {row[0]}: {row[1]}")
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
