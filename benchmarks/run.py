"""`make bench`: run every benchmark in sequence, print one summary table, write the JSON.

Each benchmark writes ``benchmarks/results/<name>.json`` (its figures, its goals with
pass/miss, and the machine: nproc, python, pysyncobj, date, git commit, load). Goals are
reported, never asserted: a miss is a figure to act on, not a failed build. A benchmark that
crashes is reported as such and the others still run.

Run: python -m benchmarks.run [--quick] [--only NAME[,NAME...]]
``--quick`` (about 3 minutes) shortens every phase and skips the non-voter comparison;
the full run takes about 10 minutes on a 2-core machine, plus ~20 for ``detection_sim``
(1,000 simulated members) and ~10 for ``recovery_real_nova`` (real Nova labs, installed on
first use).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from typing import Any

from benchmarks import common

#: In order: cheapest first, the 50-agent lab last among the labs; the membership simulator
#: (CPU only, the longest) after them; real Nova (~10 min, 1.8 GiB per lab) last.
BENCHMARKS = ("state_scale", "submit_path", "failover", "idle", "lab50", "detection_sim",
              "corosync_detect", "monitor_storm", "detection_lab", "recovery",
              "voter_changes", "voter_replacement", "recovery_real_nova")
#: Owned by another module; called through its own main(argv) (it writes its own JSON, here
#: results/nonvoters_quick.json).
NONVOTERS = "nonvoters"


def _run_nonvoters(quick: bool) -> dict[str, Any]:
    try:
        mod = importlib.import_module(f"benchmarks.{NONVOTERS}")
    except ImportError as exc:
        return {"skipped": f"benchmarks.{NONVOTERS} not importable: {exc}"}
    if quick:
        return {"skipped": "skipped in --quick (~1 min alone: benchmarks.nonvoters --quick)"}
    if not hasattr(mod, "main"):
        return {"skipped": f"benchmarks.{NONVOTERS} has no main(argv)"}
    # Its own short variant, written beside (not over) the full-run figures its owner keeps
    # in results/nonvoters.json.
    out = common.RESULTS_DIR / f"{NONVOTERS}_quick.json"
    rc = mod.main(["--quick", "--out", str(out)])
    return {"rc": rc, "results": str(out.relative_to(common.ROOT)) if out.exists() else None}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def print_table(rows: list[tuple[str, str, Any, dict | None]]) -> None:
    head = ("benchmark", "figure", "value", "goal", "")
    table = [head] + [(b, f, _fmt(v), f"{g['op']} {_fmt(g['target'])} {g['unit']}".strip() if g else "",
                       common.verdict(g) if g else "") for b, f, v, g in rows]
    w = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("  ".join(c.rjust(w[j]) if j == 2 else c.ljust(w[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in w))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short phases (~3 min in all)")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS + (NONVOTERS,)))
    args = ap.parse_args(argv)
    wanted = args.only.split(",") if args.only else list(BENCHMARKS) + [NONVOTERS]
    unknown = set(wanted) - set(BENCHMARKS) - {NONVOTERS}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    rows: list[tuple[str, str, Any, dict | None]] = []
    times: dict[str, float] = {}
    failed = []
    t_all = time.perf_counter()
    for name in BENCHMARKS:
        if name not in wanted:
            continue
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        t = time.perf_counter()
        mod = importlib.import_module(f"benchmarks.{name}")
        try:
            doc = mod.run(args.quick)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            traceback.print_exc()
            failed.append(name)
            doc = {"quick": args.quick, "error": f"{type(exc).__name__}: {exc}"}
            rows.append((name, "ERROR", str(exc).splitlines()[0][:60] if str(exc) else type(exc).__name__, None))
        times[name] = round(time.perf_counter() - t, 1)
        doc["run_time_s"] = times[name]
        path = common.save(name, doc)
        if "error" not in doc:
            rows += [(name, f, v, g) for f, v, g in mod.summary(doc)]
            for key, g in doc.get("goals", {}).items():
                print(f"   [{common.verdict(g)}] {key}: {g['value']} (goal {g['op']} {g['target']})")
        print(f"   {times[name]:.0f} s, wrote {path.relative_to(common.ROOT)}", flush=True)
    if NONVOTERS in wanted:
        print(f"== {NONVOTERS}", flush=True)
        t = time.perf_counter()
        try:
            nv = _run_nonvoters(args.quick)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            nv = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(NONVOTERS)
        times[NONVOTERS] = round(time.perf_counter() - t, 1)
        note = nv.get("skipped") or nv.get("error") or f"rc {nv.get('rc')}, see {nv.get('results')}"
        rows.append((NONVOTERS, "R vs F non-voters at 50 nodes", note, None))
    total = round(time.perf_counter() - t_all, 1)
    print()
    print(f"hagent benchmarks{' (quick)' if args.quick else ''}: {common.machine()['nproc']} cores, "
          f"python {sys.version.split()[0]}, total {total:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    print_table(rows)
    goals = [g for _, _, _, g in rows if g]
    missed = [f"{b}: {f}" for b, f, _, g in rows if g and g["met"] is False]
    print(f"\ngoals: {sum(1 for g in goals if g['met'])} met, {len(missed)} missed"
          + (f" ({'; '.join(missed)})" if missed else ""))
    (common.RESULTS_DIR / "summary.json").write_text(json.dumps(
        {"quick": args.quick, "total_s": total, "run_time_s": times, "failed": failed,
         "rows": [{"benchmark": b, "figure": f, "value": v, "goal": g} for b, f, v, g in rows]},
        indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
