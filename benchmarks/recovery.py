"""Benchmark: a compute host with 100 HA instances crashes; how long until they all run again?

Every run is a fresh 5-node lab (3 voters) with the Nova simulator at its default timings,
close to real Nova 34's (~3 s from an accepted evacuation to ACTIVE on the new host,
docs/nova-simulator.md), 100 HA instances booted on node5 (a non-voter), and the product's
default config unless a part says otherwise. After a random pause of up to one lease
renewal interval (so the crash falls anywhere in the renewal cycle), node5's agent is
SIGKILLed (``lab crash``); the figure is the time from the kill until Nova's simulator runs the
last of the 100 instances on another host. Every time of the recovery is read where it is
first recorded (hagent/lab/timeline.py), and every run is checked: no double run, nothing
lost, one accepted evacuation per instance, none before the host was off.

- (a) lease: the leader waits until the host's lease has run out (its watchdog powered it off
  ``safety_margin`` earlier). Goal: <= lease_ttl + 10 s.
- (b) fence driver: the BMC inventory names each host's power switch as its fence driver
  (``driver = "lab"``, ``Lab.up(bmc=True)``): the leader powers the dead host off and counts it
  fenced when the switch reports it off, without waiting for the lease. Goal: <= 10 s.
- (c) the same crash under Masakari's default timings, computed from its options (each cited
  in ``MASAKARI``) and the corosync detection measured on this machine, as the ratio
  Masakari / hagent.
- (d) evacuation time (fenced -> all 100 ACTIVE elsewhere) against max_concurrent_evacuations.
- (t) "tuned": (a) and (b) again with max_concurrent_evacuations = 100 (the whole host at
  once), to show what meets the goals (not in --quick).

(b), (d) and (t) use the fence driver only if the log accepts host.fenced method ``lab``;
otherwise (b) is reported skipped and (d) fences by lease.

Run: python -m benchmarks.recovery [--quick] [--runs N] [--only a,b,d,t]
(about 11 minutes on 2 cores; --quick about 3)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from benchmarks import common
from consensus.model import FENCE_METHODS
from hagent.config import FencingConfig, RecoveryConfig
from hagent.fencing.lab_bmc import METHOD as LAB_FENCE_METHOD
from hagent.lab import timeline
from hagent.lab.cluster import Lab
from hagent.lab.nova import Timings

NAME = "recovery"
NODES, VOTERS = 5, 3
VICTIM = "node5"
INSTANCES = 100
LEASE_TTL = FencingConfig().lease_ttl
RENEW_INTERVAL = FencingConfig().renew_interval
DEFAULT_CONCURRENCY = RecoveryConfig().max_concurrent_evacuations
GOAL_LEASE_S = LEASE_TTL + 10.0
GOAL_FENCE_DRIVER_S = 10.0
#: Masakari's 3 up to 64, and 100: every instance of the host at once.
CONCURRENCIES = (3, 8, 16, 32, 64, 100)
QUICK_CONCURRENCIES = (16, 100)
SEED = 20261125

#: Masakari's defaults that set the time of a host recovery, each with where it is defined
#: (openstack/masakari at ae98f25, openstack/masakari-monitors at 249cf19, Nova 34).
MASAKARI = {
    "monitoring_interval_s": (60, "masakari-monitors [host] monitoring_interval "
                              "(masakarimonitors/conf/host.py); hostmonitor.monitor_hosts "
                              "sleeps it between two looks at the pacemaker CIB"),
    "monitoring_samples": (1, "[host] monitoring_samples: one look at the offline host "
                           "suffices"),
    "wait_period_after_service_update_s": (180, "masakari [DEFAULT] "
                                           "wait_period_after_service_update "
                                           "(masakari/conf/engine.py); "
                                           "DisableComputeServiceTask sleeps it after "
                                           "disabling the compute service "
                                           "(engine/drivers/taskflow/host_failure.py)"),
    "host_failure_recovery_threads": (3, "[DEFAULT] host_failure_recovery_threads: the "
                                      "GreenPool that evacuates and confirms instances"),
    "verify_interval_s": (1, "[DEFAULT] verify_interval: the period of the loop that "
                          "confirms each evacuation (first look at once)"),
    "wait_period_after_evacuation_s": (90, "[DEFAULT] wait_period_after_evacuation: only "
                                       "the deadline of that loop; adds nothing when Nova "
                                       "finishes in time"),
    "nova_service_down_time_s": (60, "Nova [DEFAULT] service_down_time (nova/conf/service.py)"),
    "nova_report_interval_s": (10, "Nova [DEFAULT] report_interval"),
    "rpc_response_timeout_s": (60, "oslo.messaging rpc_response_timeout: disabling a compute "
                               "service Nova still counts up RPC-calls the dead compute and "
                               "waits this long (REAL-NOVA.md, 'Order matters'; Nova "
                               "compute/api.py _update_compute_provider_status)"),
}
#: What the model leaves out, all in Masakari's favour (each would only add time).
MASAKARI_LEFT_OUT = (
    "pacemaker's STONITH of the failed host (the hostmonitor's ipmitool check must see it "
    "off, or the notification says host_status UNKNOWN and the engine ignores it): taken "
    "as done by the time the hostmonitor looks",
    "hostmonitor's own checks (tcpdump up to tcpdump_timeout 5 s, crmadmin, cibadmin, "
    "ipmitool up to ipmi_timeout 5 s) and the API -> engine RPC: 0 s",
    "every Nova API call's latency (list, get, lock, evacuate, unlock): 0 s",
)


# --- one run ----------------------------------------------------------------------------------

@contextlib.contextmanager
def fresh_lab(bmc: bool, concurrency: int | None) -> Iterator[Lab]:
    """A 5-node lab with the Nova simulator (default timings); always brought down, its
    directory removed unless the run failed."""
    d = Path(tempfile.mkdtemp(prefix="hb-rec-"))
    extra = ({"recovery": {"max_concurrent_evacuations": concurrency}}
             if concurrency is not None else None)
    lab = Lab.up(d, nodes=NODES, voters=VOTERS, nova=True, nova_timings=Timings(), bmc=bmc,
                 config_extra=extra, timeout=120.0)
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


def one_run(bmc: bool, rng: random.Random, concurrency: int | None = None) -> dict[str, Any]:
    """Crash VICTIM with INSTANCES HA instances; the timeline's marks and checks."""
    c = concurrency or DEFAULT_CONCURRENCY
    with fresh_lab(bmc, concurrency) as lab:
        ids = lab.nova.boot(n_ha=INSTANCES, hosts=[VICTIM], wait=120.0)["ha"]
        pause = round(rng.uniform(0.0, RENEW_INTERVAL), 2)
        time.sleep(pause)
        load = round(os.getloadavg()[0], 2)
        kill = timeline.kill(lab, VICTIM, "crash")
        watch = timeline.Watch(lab, kill, ids)
        # Generous: lease or driver, then waves of ~3.5 s; a run that overruns is a failure.
        deadline = kill.monotonic + LEASE_TTL + 30.0 + math.ceil(INSTANCES / c) * 6.0
        while time.monotonic() < deadline:
            snap = watch.snapshot()
            if watch.done() and snap.active == snap.total:
                break
            time.sleep(0.5)
        tl = timeline.collect(lab, kill, ids)
    m = tl.marks
    problems = tl.violations()
    if not watch.done():
        problems.append("the STOPPED notification did not end in time")
    rebuilds = [i["active"] - i["accepted"] for i in tl.instances
                if i["active"] is not None and i["accepted"] is not None]
    fence_method = (tl.incident or {}).get("fence_method")
    if bmc and fence_method != LAB_FENCE_METHOD:
        problems.append(f"fenced by {fence_method}, not by the lab fence driver")
    return {
        "ok": not problems, "problems": problems[:10], "pause_s": pause,
        "loadavg_at_kill": load, "concurrency": c, "fence_method": fence_method,
        "marks_s": m,
        "kill_to_all_active_s": m["all_active"],
        "fenced_to_all_active_s": (round(m["all_active"] - m["fenced"], 3)
                                   if m["all_active"] is not None and m["fenced"] is not None
                                   else None),
        "fenced_to_first_accepted_s": (round(m["first_accepted"] - m["fenced"], 3)
                                       if m["first_accepted"] is not None
                                       and m["fenced"] is not None else None),
        "rebuild_s_p50": round(statistics.median(rebuilds), 3) if rebuilds else None,
        "double_runs": len(tl.report.get("double_runs", [])),
        "lost": len(tl.report.get("lost", [])),
        "evacuate_calls_accepted": sum(i["evacuations"] for i in tl.instances),
    }


def _describe(r: dict[str, Any]) -> str:
    m = r["marks_s"]
    return (f"kill -> all {INSTANCES} ACTIVE {r['kill_to_all_active_s']} s (dead {m['dead']}, "
            f"off {m['powered_off']}, fenced {m['fenced']} by {r['fence_method']}, "
            f"evacuations {r['fenced_to_all_active_s']} s at {r['concurrency']}); "
            f"{'ok' if r['ok'] else 'FAILED: ' + '; '.join(r['problems'])}")


def _stats(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return common.percentiles([r[key] for r in runs if r["ok"] and r[key] is not None], 1.0, 2)


def _part(label: str, runs: int, bmc: bool, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(runs):
        r = one_run(bmc, rng)
        out.append(r)
        print(f"  ({label}) run {i + 1}/{runs}: {_describe(r)}", flush=True)
    return out


# --- (c) Masakari as a model ---------------------------------------------------------------

def corosync_detection_s() -> tuple[float, str]:
    """corosync's new membership after a SIGKILL on this machine (benchmarks/corosync_detect)."""
    path = common.RESULTS_DIR / "corosync_detect.json"
    try:
        value = json.loads(path.read_text())["corosync"]["log_new_membership_s"]["p50"]
        return float(value), f"{path.relative_to(common.ROOT)} corosync.log_new_membership_s.p50"
    except (OSError, ValueError, KeyError, TypeError):
        return 10.27, "docs/benchmarks.md (corosync 3 defaults, 5 nodes, p50 of 10 runs)"


def masakari_model(rebuild_s: float, nodes: int = NODES, instances: int = INSTANCES,
                   grid: float = 0.05) -> dict[str, Any]:
    """Masakari's host recovery of the same crash, from its defaults, in seconds after the kill.

    Detection: corosync forms a membership without the host (measured here); each of the
    ``nodes - 1`` surviving hostmonitors looks at the CIB every ``monitoring_interval`` at a
    phase of its own, so the first look comes after the minimum of k uniform waits. The
    engine disables nova-compute: if Nova still counts the service up (its last report
    plus ``service_down_time``, the last report up to ``report_interval`` before the kill),
    that call waits ``rpc_response_timeout``. Then the fixed sleep, then the instances,
    ``host_failure_recovery_threads`` at a time, each confirmed at the first whole
    ``verify_interval`` at or after Nova's rebuild (``rebuild_s``, measured in hagent's runs).
    Expectations over the two uniform phases are taken on a grid of ``grid`` seconds.
    """
    p = {k: v for k, (v, _) in MASAKARI.items()}
    detect, detect_src = corosync_detection_s()
    period, k = p["monitoring_interval_s"], nodes - 1
    down_hi = p["nova_service_down_time_s"]
    down_lo = down_hi - p["nova_report_interval_s"]
    rpc = p["rpc_response_timeout_s"]
    # Looks at 0, 1, 2, ... verify_interval after the call: the first one after the rebuild.
    per_instance = (math.floor(rebuild_s / p["verify_interval_s"]) + 1) * p["verify_interval_s"]
    waves = math.ceil(instances / p["host_failure_recovery_threads"])
    evacuation = waves * per_instance
    fixed = p["wait_period_after_service_update_s"] + evacuation

    def total(wait: float, down: float) -> float:
        notified = detect + wait
        return notified + (rpc if notified < down else 0.0) + fixed

    steps = int(period / grid)
    down_steps = int((down_hi - down_lo) / grid)
    mean = weight_sum = 0.0
    lo, hi = math.inf, -math.inf
    for i in range(steps):
        wait = (i + 0.5) * grid
        weight = (1.0 - wait / period) ** (k - 1)  # density of the min of k uniforms
        for j in range(down_steps):
            t = total(wait, down_lo + (j + 0.5) * grid)
            mean += weight * t
            weight_sum += weight
            lo, hi = min(lo, t), max(hi, t)
    mean /= weight_sum
    wait_mean = period / (k + 1)
    return {
        "total_s": {"best": round(lo, 1), "mean": round(mean, 1), "worst": round(hi, 1)},
        "components_s": {
            "detection_corosync": detect,
            "hostmonitor_first_look": {"best": 0.0, "mean": round(wait_mean, 1),
                                       "worst": float(period), "monitors": k},
            "disable_blocked_on_rpc": {"when": "notified before Nova counts the service down "
                                       f"({down_lo:g}-{down_hi:g} s after the kill)",
                                       "seconds": rpc},
            "sleep_after_disable": p["wait_period_after_service_update_s"],
            "evacuation": {"instances": instances, "threads": p["host_failure_recovery_threads"],
                           "waves": waves, "per_instance_s": per_instance,
                           "rebuild_s": rebuild_s, "seconds": evacuation},
        },
        "sources": {"detection_corosync": detect_src,
                    **{k: f"{v} ({src})" for k, (v, src) in MASAKARI.items()}},
        "left_out_in_masakaris_favour": list(MASAKARI_LEFT_OUT),
    }


# --- the benchmark ---------------------------------------------------------------------------

def _section(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"per_run": runs,
            "kill_to_all_active_s": _stats(runs, "kill_to_all_active_s"),
            "kill_to_fenced_s": common.percentiles(
                [r["marks_s"]["fenced"] for r in runs if r["ok"]], 1.0, 2)}


def _goals(doc: dict[str, Any]) -> dict[str, Any]:
    """Each goal on the slowest run; not measured (None) if a run failed or none ran."""
    worst = {key: (doc[key]["kill_to_all_active_s"]["max"]
                   if doc[key]["per_run"] and all(r["ok"] for r in doc[key]["per_run"])
                   else None)
             for key in ("lease", "fence_driver")}
    return {"lease_max_s": common.goal(worst["lease"], "<=", GOAL_LEASE_S, "s"),
            "fence_driver_max_s": common.goal(worst["fence_driver"], "<=",
                                              GOAL_FENCE_DRIVER_S, "s")}


def run(quick: bool = False, *, runs: int | None = None,
        parts: tuple[str, ...] = ("a", "b", "d", "t")) -> dict[str, Any]:
    """Parts a (lease), b (fence driver), d (concurrency), t (a and b tuned: every instance
    evacuated at once; not in --quick); c, the Masakari model, is always computed."""
    runs = runs if runs is not None else (1 if quick else 3)
    rng = random.Random(SEED)
    background = common.background()
    background["foreign_cpu_percent_before"] = common.wait_quiet()
    started = time.perf_counter()
    driver_ok = LAB_FENCE_METHOD in FENCE_METHODS
    doc: dict[str, Any] = {
        "quick": quick, "runs": runs, "nodes": NODES, "voters": VOTERS, "instances": INSTANCES,
        "victim": VICTIM, "lease_ttl_s": LEASE_TTL, "default_concurrency": DEFAULT_CONCURRENCY,
        "nova_timings": Timings().__dict__, "background_before": background,
        "lab_fence_method_accepted_by_the_log": driver_ok}
    if not driver_ok and ("b" in parts or "t" in parts):
        doc["fence_driver_skipped"] = ("the log refuses host.fenced method 'lab' "
                                      "(consensus/model.py FENCE_METHODS): the lab's fence "
                                      "driver cannot record its confirmation")
    lease_runs = _part("a", runs, False, rng) if "a" in parts else []
    driver_runs = _part("b", runs, True, rng) if "b" in parts and driver_ok else []
    doc["lease"], doc["fence_driver"] = _section(lease_runs), _section(driver_runs)
    sweep: dict[str, Any] = {}
    extra_runs: list[dict[str, Any]] = []
    if "d" in parts:
        base = driver_runs if driver_ok else lease_runs
        for c in QUICK_CONCURRENCIES if quick else CONCURRENCIES:
            if c == DEFAULT_CONCURRENCY and base:
                results = base  # the default is what (b) (or (a)) measured
            else:
                results = [one_run(driver_ok, rng, concurrency=c)]
                extra_runs += results
                print(f"  (d) concurrency {c}: {_describe(results[0])}", flush=True)
            sweep[str(c)] = {
                "runs": len(results),
                "fenced_to_all_active_s": _stats(results, "fenced_to_all_active_s"),
                "kill_to_all_active_s": _stats(results, "kill_to_all_active_s"),
                "per_run": results if results is not base else "see fence_driver/lease",
                "fenced_by": "lab fence driver" if driver_ok else "lease"}
    doc["concurrency"] = sweep
    if "t" in parts and not quick:
        tuned = {"max_concurrent_evacuations": INSTANCES}
        for key, bmc in (("lease", False), ("fence_driver", True)):
            if bmc and not driver_ok:
                tuned[key] = _section([])
                continue
            results = []
            for i in range(2):
                results.append(one_run(bmc, rng, concurrency=INSTANCES))
                print(f"  (tuned {key}) run {i + 1}/2: {_describe(results[-1])}", flush=True)
            extra_runs += results
            tuned[key] = _section(results)
        tuned["goals"] = _goals(tuned)
        doc["tuned"] = tuned
    all_runs = lease_runs + driver_runs + extra_runs
    rebuilds = [r["rebuild_s_p50"] for r in all_runs if r["rebuild_s_p50"] is not None]
    rebuild = round(statistics.median(rebuilds), 3) if rebuilds else 3.0
    model = masakari_model(rebuild)
    doc["masakari_model"] = model
    ratios: dict[str, Any] = {"note": "mean: Masakari's modelled mean over hagent's measured "
                              "p50; least: Masakari's best case over hagent's slowest run "
                              "(both at the default max_concurrent_evacuations)"}
    for key in ("lease", "fence_driver"):
        measured = doc[key]["kill_to_all_active_s"]
        ratios[f"{key}_mean"] = _ratio(model["total_s"]["mean"], measured["p50"])
        ratios[f"{key}_least"] = _ratio(model["total_s"]["best"], measured["max"])
    doc["ratio_masakari_over_hagent"] = ratios
    doc["failed_runs"] = sum(1 for r in all_runs if not r["ok"])
    doc["safety"] = {"runs": len(all_runs),
                     "double_runs": sum(r["double_runs"] for r in all_runs),
                     "lost": sum(r["lost"] for r in all_runs),
                     "evacuate_calls_accepted": sum(r["evacuate_calls_accepted"]
                                                    for r in all_runs),
                     "instances_recovered": INSTANCES * len(all_runs)}
    doc["goals"] = _goals(doc)
    doc["run_time_s"] = round(time.perf_counter() - started, 1)
    return doc


def _ratio(masakari: float, hagent: float | None) -> float | None:
    return round(masakari / hagent, 1) if hagent else None


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    rows: list[tuple[str, Any, dict | None]] = []
    lease = doc["lease"]["kill_to_all_active_s"]
    driver = doc["fence_driver"]["kill_to_all_active_s"]
    n = doc["instances"]
    rows.append((f"lease: kill -> {n} ACTIVE p50 (s, {lease['n']} runs)", lease["p50"], None))
    rows.append(("lease: kill -> all ACTIVE max (s)", lease["max"], doc["goals"]["lease_max_s"]))
    rows.append((f"fence driver: kill -> {n} ACTIVE p50 (s, {driver['n']} runs)", driver["p50"],
                 None))
    rows.append(("fence driver: kill -> all ACTIVE max (s)", driver["max"],
                 doc["goals"]["fence_driver_max_s"]))
    model = doc["masakari_model"]["total_s"]
    rows.append(("Masakari model: kill -> all ACTIVE mean (s)", model["mean"], None))
    ratio = doc["ratio_masakari_over_hagent"]
    for key, label in (("lease", "lease"), ("fence_driver", "fence driver")):
        rows.append((f"Masakari / hagent ({label}): mean, least",
                     f"{ratio[f'{key}_mean']}, {ratio[f'{key}_least']}", None))
    for c, s in doc["concurrency"].items():
        rows.append((f"evacuate {n} at {c} concurrent: fenced -> all ACTIVE (s)",
                     s["fenced_to_all_active_s"]["p50"], None))
    tuned = doc.get("tuned")
    if tuned:
        c = tuned["max_concurrent_evacuations"]
        for key, label in (("lease", "lease"), ("fence_driver", "fence driver")):
            rows.append((f"{label} at {c} concurrent: kill -> all ACTIVE max (s)",
                         tuned[key]["kill_to_all_active_s"]["max"],
                         tuned["goals"][f"{key}_max_s"]))
    rows.append((f"double runs / lost instances ({doc['safety']['runs']} runs)",
                 f"{doc['safety']['double_runs']} / {doc['safety']['lost']}", None))
    return rows


def print_table(doc: dict[str, Any]) -> None:
    width = max(len(f) for f, _, _ in summary(doc))
    for figure, value, goal in summary(doc):
        verdict = (f"  goal {goal['op']} {goal['target']:g} s: {common.verdict(goal)}"
                   if goal else "")
        print(f"  {figure:<{width}}  {'-' if value is None else value}{verdict}")
    if doc.get("fence_driver_skipped"):
        print(f"  (fence driver part skipped: {doc['fence_driver_skipped']})")


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--only", default="a,b,d,t", help="parts to run: a (lease), b (fence "
                    "driver), d (concurrency), t (a and b with every instance evacuated at "
                    "once); c (the Masakari model) is always computed")
    args = ap.parse_args(argv)
    doc = run(args.quick, runs=args.runs, parts=tuple(args.only.split(",")))
    print_table(doc)
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
