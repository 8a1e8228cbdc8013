"""Benchmark: how long an operator's voter change takes, add (re-exec and catch-up included)
and remove.

A 4-agent lab, 3 bootstrap voters, node4 eligible, the autopilot off. Each run promotes
node4 (``raft.add_voter`` on a voter, which answers once the log committed the change: node4
noticed its add, re-executed as a voter, caught up, was added to pysyncobj's cluster) and
demotes it again (``raft.remove_voter``: membership change and commit); then waits until
node4 re-executed as a non-voter and is ready, so every add starts from a non-voter. The
figures are the verbs' wall times as the operator sees them; there is no goal (issue 8 sets
none for manual changes; its bound, a dead voter replaced within lease_ttl + 10 s, is
``benchmarks.voter_replacement``'s).

Run: python -m benchmarks.voter_changes [--quick] [--runs N]
"""
from __future__ import annotations

import json
import time
from typing import Any

from benchmarks import common
from hagent.lab.cluster import Lab, LabError

NAME = "voter_changes"
CANDIDATE = "node4"
#: Longest a run may wait for the candidate to be a ready non-voter again.
SETTLE_TIMEOUT = 30.0


def _timed(the_lab: Lab, via: str, verb: str) -> float:
    started = time.perf_counter()
    answer = the_lab.admin(via, verb, {"node": CANDIDATE}, timeout=60)
    took = time.perf_counter() - started
    if answer.get("result") != "committed":
        raise LabError(f"{verb} {CANDIDATE}: {answer}")
    return round(took, 3)


def _settled(the_lab: Lab) -> float:
    """Seconds until the candidate is a ready non-voter again (it re-execs after removal)."""
    started = time.perf_counter()
    while time.perf_counter() - started < SETTLE_TIMEOUT:
        try:
            status = the_lab.status(CANDIDATE, timeout=1.0)
            if status["role"] == "replica" and status["ready"]:
                return round(time.perf_counter() - started, 3)
        except LabError:
            pass
        time.sleep(0.05)
    raise LabError(f"{CANDIDATE} not a ready non-voter {SETTLE_TIMEOUT:g} s after its removal")


def run(quick: bool = False, *, runs: int | None = None,
        config_extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    runs = runs if runs is not None else (3 if quick else 10)
    extra = {"voters": {"auto_replace": False}}
    for section, values in (config_extra or {}).items():
        extra.setdefault(section, {}).update(values)
    background = common.background()
    background["foreign_cpu_percent_before"] = common.wait_quiet()
    per_run: list[dict[str, Any]] = []
    started = time.perf_counter()
    with common.lab(4, 3, config_extra=extra) as the_lab:
        _settled(the_lab)
        for i in range(runs):
            via = the_lab.leader(timeout=15)
            r = {"via": via, "add_s": _timed(the_lab, via, "raft.add_voter")}
            r["remove_s"] = _timed(the_lab, the_lab.leader(timeout=15), "raft.remove_voter")
            r["back_to_non_voter_s"] = _settled(the_lab)
            per_run.append(r)
            print(f"  run {i + 1}/{runs}: add {r['add_s']} s, remove {r['remove_s']} s, "
                  f"non-voter again {r['back_to_non_voter_s']} s later", flush=True)
    return {"quick": quick, "runs": runs, "config_extra": extra,
            "background_before": background,
            "add_s": common.percentiles([r["add_s"] for r in per_run], 1.0, 3),
            "remove_s": common.percentiles([r["remove_s"] for r in per_run], 1.0, 3),
            "back_to_non_voter_s": common.percentiles(
                [r["back_to_non_voter_s"] for r in per_run], 1.0, 3),
            "run_time_s": round(time.perf_counter() - started, 1), "per_run": per_run,
            "goals": {}}


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    return [
        (f"add-voter p50 (s, {doc['runs']} runs; re-exec + catch-up)", doc["add_s"]["p50"], None),
        ("add-voter max (s)", doc["add_s"]["max"], None),
        ("remove-voter p50 (s)", doc["remove_s"]["p50"], None),
        ("remove-voter max (s)", doc["remove_s"]["max"], None),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__, set_example="voters.max_catchup_lag=10")
    ap.add_argument("--runs", type=int)
    args = ap.parse_args(argv)
    doc = run(args.quick, runs=args.runs, config_extra=common.parse_sets(args.set))
    print(json.dumps({k: doc[k] for k in ("add_s", "remove_s", "back_to_non_voter_s")}))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
