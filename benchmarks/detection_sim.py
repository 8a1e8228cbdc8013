"""Benchmark: failure detection of the membership core at 10 / 100 / 1,000 nodes, simulated.

Real ``Membership`` instances with default knobs run in the deterministic simulator
(``hagent.lab.simulator``: virtual time, simulated network, one seed). Per cluster size:

- steady state: start, converge, then a quiet window: messages (and bytes) per node per second;
  at 1,000 nodes the window is 10 simulated minutes and its wall time is the simulator's
  performance figure;
- detection: a random running node is crashed (host power loss, silent) every ``GAP`` s and
  restarted ``DOWN`` s later, so crashes never overlap; per crash, the time from the crash to
  the first MemberDead about it by any running node ("first": what starts recovery) and to
  the moment every running node holds it dead ("all");
- false dead verdicts (MemberDead about a node whose process runs) over a simulated hour with
  10 % loss on every message (set once the cluster has converged), and separately over an
  hour with random 3 s process pauses (one every 10 s on average, exponential gaps, so they
  sometimes overlap); at 1,000 nodes 60 s of loss and 10 minutes of pauses (``BIG``) unless
  ``--hour-at-1000``.

Goals (issue): detection p99 <= 2 s at 10 nodes and <= 5 s at 1,000 (first verdict), no
false dead verdict, messages per node per second flat within 20 % across sizes.

Every phase names its seed in the result; ``--seed`` replays a run exactly.

Run: python -m benchmarks.detection_sim [--quick] [--sizes 10,100] [--seed S] [--no-wire]
     [--hour-at-1000]
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from benchmarks import common
from hagent.lab import sim_analysis
from hagent.lab.simulator import SimConfig, Simulator, quiet_core_logs
from hagent.membership.knobs import MembershipKnobs

NAME = "detection_sim"
SIZES = (10, 100, 1000)
GAP = 20.0   # s between crashes
DOWN = 14.0  # s a crashed node stays down before it restarts (detection must finish first)
PAUSE_EVERY = 10.0
PAUSE_LENGTH = 3.0
LOSS = 0.10
#: Simulated seconds of the loss and pause runs at 1,000 nodes (smaller sizes: an hour, or
#: 5 minutes with --quick). Under 10 % loss ~17 suspicions a second are raised at 1,000 nodes
#: and each is gossiped to everyone: the simulation then runs ~4x slower than real time.
BIG = {"loss": 60.0, "pauses": 600.0}
GOAL_P99 = {10: 2.0, 1000: 5.0}
GOAL_FLAT = 1.2  # max/min of messages per node per second across sizes


def _crashes(n: int, quick: bool) -> int:
    if quick:
        return 10
    return 20 if n >= 1000 else 50


def _quiet_s(n: int, quick: bool) -> float:
    if quick:
        return 30.0
    return 600.0 if n >= 1000 else 120.0


def _seed(base: int, n: int, phase: int) -> int:
    return base * 100_000 + n * 10 + phase


def _new(n: int, seed: int, wire: bool) -> tuple[Simulator, dict[str, Any]]:
    """A converged cluster. Loss is set afterwards: under 10 % loss some member is always
    suspected by someone at 1,000 nodes, so "everyone sees everyone alive" never holds."""
    sim = Simulator(n, SimConfig(seed=seed, wire=wire))
    t = time.perf_counter()
    sim.start()
    took = sim.run_until_converged(timeout=600.0)
    return sim, {"seed": seed, "converge_virtual_s": round(took, 1),
                 "converge_wall_s": round(time.perf_counter() - t, 1)}


def steady_and_detection(n: int, quick: bool, base_seed: int, wire: bool) -> dict[str, Any]:
    """Quiet window, then a crash series, on one cluster."""
    sim, doc = _new(n, _seed(base_seed, n, 1), wire)
    quiet = _quiet_s(n, quick)
    meter = sim_analysis.MessageMeter(sim)
    t = time.perf_counter()
    sim.run_for(quiet)
    wall = time.perf_counter() - t
    doc["quiet"] = {"virtual_s": quiet, "wall_s": round(wall, 1),
                    "wall_s_per_virtual_minute": round(wall / quiet * 60, 2),
                    "msgs_per_node_s": round(meter.rate(), 3),
                    "bytes_per_node_s": round(meter.bytes_rate(), 1) if wire else None,
                    "false_dead": len(sim_analysis.false_dead(sim))}
    crashes = _crashes(n, quick)
    t = time.perf_counter()
    meter = sim_analysis.MessageMeter(sim)
    types_before = dict(sim.msg_types)
    sim_analysis.crash_series(sim, every=GAP, down_for=DOWN, until=sim.now + crashes * GAP)
    sim.run_for(crashes * GAP + GAP)
    det = sim_analysis.detections(sim)
    first = [d.first_s for d in det if d.first_s is not None]
    every = [d.all_s for d in det if d.all_s is not None]
    false = sim_analysis.false_dead(sim)
    doc["detection"] = {
        "crashes": len(det), "gap_s": GAP, "down_s": DOWN,
        "first_dead_s": common.percentiles(first, nd=3),
        "all_dead_s": common.percentiles(every, nd=3),
        "never_detected": sum(1 for d in det if d.first_s is None),
        "not_by_all": [{"subject": d.subject, "at": round(d.crashed_at, 3),
                        "missing": len(d.missing)} for d in det if d.all_s is None][:10],
        "false_dead": len(false), "false_dead_first": [tuple(r) for r in false[:5]],
        "msgs_per_node_s": round(meter.rate(), 3),
        "msgs_by_type": {k: v - types_before.get(k, 0) for k, v in sorted(sim.msg_types.items())},
        "wall_s": round(time.perf_counter() - t, 1),
    }
    doc["dropped"] = dict(sim.dropped)
    return doc


def false_verdicts(n: int, base_seed: int, wire: bool, kind: str, seconds: float) -> dict[str, Any]:
    """A simulated ``seconds`` under 10 % loss (kind "loss") or random 3 s pauses ("pauses")."""
    phase = 2 if kind == "loss" else 3
    sim, doc = _new(n, _seed(base_seed, n, phase), wire)
    meter = sim_analysis.MessageMeter(sim)
    if kind == "loss":
        sim.set_loss(LOSS)
    else:
        sim_analysis.random_pauses(sim, every=PAUSE_EVERY, length=PAUSE_LENGTH,
                                   until=sim.now + seconds)
    t = time.perf_counter()
    sim.run_for(seconds)
    false = sim_analysis.false_dead(sim)
    suspects = sum(1 for r in sim.records if r.kind == "suspect" and r.t >= meter.t0)
    raised = sum(sim.nodes[x].member.counters["suspicions_raised"] for x in sim.running())
    doc.update({"virtual_s": seconds, "wall_s": round(time.perf_counter() - t, 1),
                "false_dead": len(false), "false_dead_first": [tuple(r) for r in false[:5]],
                "suspicions_raised": raised, "suspect_events": suspects,
                "pauses": sum(1 for f in sim.faults if f.kind == "pause"),
                "msgs_per_node_s": round(meter.rate(), 3), "dropped": dict(sim.dropped)})
    return doc


def run(quick: bool = False, *, sizes: tuple[int, ...] | None = None, seed: int = 1,
        wire: bool = True, hour_at_1000: bool = False) -> dict[str, Any]:
    with quiet_core_logs():
        return _run(quick, sizes, seed, wire, hour_at_1000)


def _run(quick: bool, sizes: tuple[int, ...] | None, seed: int, wire: bool,
         hour_at_1000: bool) -> dict[str, Any]:
    sizes = sizes or ((10, 100) if quick else SIZES)
    hour = 300.0 if quick else 3600.0
    out: dict[str, Any] = {"quick": quick, "seed": seed, "wire": wire,
                           "knobs": dataclasses.asdict(MembershipKnobs()), "sizes": {}}
    for n in sizes:
        print(f"  {n} nodes: steady state and {_crashes(n, quick)} crashes", flush=True)
        doc = steady_and_detection(n, quick, seed, wire)
        for kind in ("loss", "pauses"):
            seconds = hour if n < 1000 or hour_at_1000 else BIG[kind]
            print(f"  {n} nodes: {seconds:g} s with {kind}", flush=True)
            doc[kind] = false_verdicts(n, seed, wire, kind, seconds)
        out["sizes"][str(n)] = doc
        print(_line(n, doc), flush=True)
    out["goals"] = _goals(out["sizes"])
    return out


def _line(n: int, d: dict[str, Any]) -> str:
    det = d["detection"]
    return (f"  {n:>5} nodes: first dead p50/p99 {det['first_dead_s']['p50']}/"
            f"{det['first_dead_s']['p99']} s, all dead p50/p99 {det['all_dead_s']['p50']}/"
            f"{det['all_dead_s']['p99']} s, {d['quiet']['msgs_per_node_s']} msgs/node/s, "
            f"false dead: crashes {det['false_dead']} loss {d['loss']['false_dead']} "
            f"pauses {d['pauses']['false_dead']}; quiet {d['quiet']['virtual_s']:g} s virtual "
            f"in {d['quiet']['wall_s']} s wall")


def _goals(sizes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    goals = {}
    for n, target in GOAL_P99.items():
        if str(n) in sizes:
            goals[f"detect_p99_{n}"] = common.goal(
                sizes[str(n)]["detection"]["first_dead_s"]["p99"], "<=", target, "s")
    for n, d in sizes.items():
        total = d["detection"]["false_dead"] + d["loss"]["false_dead"] + d["pauses"]["false_dead"]
        goals[f"false_dead_{n}"] = common.goal(total, "<=", 0, "verdicts")
    rates = [d["quiet"]["msgs_per_node_s"] for d in sizes.values()]
    if len(rates) > 1 and min(rates) > 0:
        goals["msgs_flat"] = common.goal(round(max(rates) / min(rates), 3), "<=", GOAL_FLAT,
                                         "max/min")
    return goals


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    rows: list[tuple[str, Any, dict | None]] = []
    goals = doc["goals"]
    for n, d in doc["sizes"].items():
        det = d["detection"]
        f, a = det["first_dead_s"], det["all_dead_s"]
        rows.append((f"{n} nodes: first dead p50 / p99 (s, {det['crashes']} crashes)",
                     f"{f['p50']} / {f['p99']}", goals.get(f"detect_p99_{n}")))
        rows.append((f"{n} nodes: all dead p50 / p99 (s)", f"{a['p50']} / {a['p99']}", None))
        rows.append((f"{n} nodes: false dead (crashes / loss / pauses)",
                     f"{det['false_dead']} / {d['loss']['false_dead']} / "
                     f"{d['pauses']['false_dead']}",
                     goals.get(f"false_dead_{n}")))
        rows.append((f"{n} nodes: msgs per node per s", d["quiet"]["msgs_per_node_s"], None))
    if "msgs_flat" in goals:
        flat = goals["msgs_flat"]
        rows.append(("msgs/node/s max/min across sizes", flat["value"], flat))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--sizes", help="comma-separated cluster sizes (default 10,100,1000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-wire", action="store_true", help="skip encode/decode (faster)")
    ap.add_argument("--hour-at-1000", action="store_true",
                    help="the loss and pause runs at 1,000 nodes last an hour (hours of wall time)")
    args = ap.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else None
    t = time.perf_counter()
    doc = run(args.quick, sizes=sizes, seed=args.seed, wire=not args.no_wire,
              hour_at_1000=args.hour_at_1000)
    doc["run_time_s"] = round(time.perf_counter() - t, 1)
    print()
    for n, d in doc["sizes"].items():
        print(_line(int(n), d))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
