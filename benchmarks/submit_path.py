"""Benchmark: notifications committed per second through the full submit path, and commit latency.

Full path: admin socket (JSON lines) -> agent -> spool write + fsync -> Raft propose -> journal
fsync on a majority -> commit -> apply -> answer ``{"committed": true}``. A 3-voter lab on
loopback; the load generator is one asyncio process speaking the protocol directly, every
request a distinct notification (own uuid, own payload), so nothing is a duplicate.

Phases:

1. throughput: ``--connections`` connections (each one request in flight at a time, closed
   loop) for ``--duration`` s, three times: spread over all three nodes (each compute node
   submits its own notifications, as in production), all on the leader, all on a follower;
   committed answers per second.
2. latency: open loop at ``--rate``/s for ``--latency-duration`` s, via a follower and via
   the leader; latency is measured from each request's *scheduled* time (no coordinated
   omission), p50/p95/p99/max.

Both run twice, each in a fresh lab: with the shipped defaults, then with ``TUNED`` (existing
config knobs; ``doc["tuned"]``). Other processes' CPU use during each phase is recorded
(``foreign_cpu_percent``): this machine is shared, and a busy neighbour shows up as tail
latency.

Goals: >= 2,000 commits/s; p99 <= 50 ms at 200/s.

Run: python -m benchmarks.submit_path [--quick] [--fsync on|off] [--set raft.KEY=VALUE ...]
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from benchmarks import common

NAME = "submit_path"
GOAL_RATE = 2000.0
GOAL_P99_MS = 50.0
#: The second pass ("tuned"): config knobs that exist, set as docs/benchmarks.md recommends.
#: Log compaction snapshots the whole state in the Raft thread; pysyncobj starts one whenever
#: the log holds more than compaction_min_entries (compaction_min_time does not space them
#: out), so at the default 5000 a loaded cluster stalls commits for ~0.3-0.6 s every few
#: seconds once the history holds tens of thousands of notifications.
TUNED: dict[str, dict[str, Any]] = {"raft": {"compaction_min_entries": 200_000}}


async def _throughput(targets: list[tuple[str, str]], connections: int, duration: float,
                      tag: str) -> dict[str, Any]:
    """Closed loop: ``connections`` connections spread round-robin over ``targets``
    ((admin socket, hostname) pairs), each sending its next request when the last is answered."""
    conns: list[tuple[common.AdminConn, str]] = []
    for i, (path, hostname) in enumerate(targets):
        share = connections // len(targets) + (1 if i < connections % len(targets) else 0)
        conns += [(c, hostname) for c in await common.open_many(path, share)]
    counter = iter(range(10**9))
    stats = {"committed": 0, "pending": 0, "errors": 0}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    stop_at = 0.0

    async def worker(conn: common.AdminConn, hostname: str) -> None:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            line = common.notification_line(tag, next(counter), hostname)
            try:
                reply = await conn.call_raw(line)
            except (ConnectionError, OSError) as exc:
                stats["errors"] += 1
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if common.committed(reply):
                stats["committed"] += 1
                latencies.append(time.perf_counter() - now)
            elif reply.get("ok"):
                stats["pending"] += 1
            else:
                stats["errors"] += 1
                key = str(reply.get("error"))[:80]
                errors[key] = errors.get(key, 0) + 1

    started = time.perf_counter()
    stop_at = started + duration
    await asyncio.gather(*(worker(c, h) for c, h in conns))
    elapsed = time.perf_counter() - started  # includes the tail of in-flight requests
    for c, _ in conns:
        await c.close()
    return {"connections": connections, "duration_s": round(elapsed, 2), **stats,
            "error_kinds": errors, "commits_per_s": round(stats["committed"] / elapsed, 1),
            "latency_ms": common.percentiles(latencies, 1000)}


async def _open_loop(path: str, hostname: str, rate: float, duration: float, tag: str,
                     pool_size: int = 64) -> dict[str, Any]:
    pool: asyncio.Queue[common.AdminConn] = asyncio.Queue()
    for c in await common.open_many(path, pool_size):
        pool.put_nowait(c)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    late_sends = 0
    n = int(rate * duration)

    async def one(i: int, scheduled: float) -> None:
        nonlocal late_sends
        conn = await pool.get()
        if time.perf_counter() - scheduled > 0.005:
            late_sends += 1  # the generator itself fell behind (or all connections were busy)
        try:
            reply = await conn.call_raw(common.notification_line(tag, i, hostname))
        finally:
            pool.put_nowait(conn)
        if common.committed(reply):
            latencies.append(time.perf_counter() - scheduled)
        else:
            key = str(reply.get("error") or "not committed")[:80]
            failures[key] = failures.get(key, 0) + 1

    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        await pool.get_nowait().close()
    return {"rate_per_s": rate, "duration_s": duration, "requests": n,
            "committed": len(latencies), "failures": failures, "late_sends": late_sends,
            "latency_ms": common.percentiles(latencies, 1000)}


def _agent_cpu(the_lab, before: dict[str, float], elapsed: float) -> dict[str, float]:
    """% of one core each agent used since ``before``."""
    out = {}
    for name, p in common.agent_processes(the_lab).items():
        out[name] = round((common.cpu_seconds(p) - before.get(name, 0.0)) / elapsed * 100, 1)
    return out


def measure(quick: bool = False, *, connections: int = 128, duration: float | None = None,
            rate: float = 200.0, latency_duration: float | None = None, fsync: bool = True,
            config_extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Throughput via all nodes / the leader / a follower, then open-loop latency via a
    follower and via the leader, all in one 3-voter lab with ``config_extra``."""
    duration = duration if duration is not None else (3.0 if quick else 10.0)
    latency_duration = latency_duration if latency_duration is not None else (5.0 if quick else 20.0)
    extra = {"raft": {"fsync": fsync}}
    for section, values in (config_extra or {}).items():
        extra.setdefault(section, {}).update(values)
    tag = f"sp{int(time.time())}"
    background = common.background()
    background["foreign_cpu_percent_before"] = common.wait_quiet()
    with common.lab(3, 3, config_extra=extra) as the_lab:
        leader = the_lab.leader(timeout=15)
        follower = next(n for n in the_lab.names if n != leader)
        sock = {n: the_lab.node(n).admin_socket for n in the_lab.names}
        variants = {
            "all_nodes": [(sock[n], n) for n in the_lab.names],
            "leader": [(sock[leader], leader)],
            "follower": [(sock[follower], follower)],
        }
        # Warm-up: imports, first allocations, connections, on every node.
        asyncio.run(_throughput(variants["all_nodes"], 24, 1.0, tag + "w"))
        procs = common.agent_processes(the_lab)
        throughput = {}
        for name, targets in variants.items():
            before = {n: common.cpu_seconds(p) for n, p in procs.items()}
            foreign = common.ForeignCpu(list(procs.values()))
            t0 = time.perf_counter()
            thr = asyncio.run(_throughput(targets, connections, duration, f"{tag}t{name}"))
            thr["agent_cpu_percent"] = _agent_cpu(the_lab, before, time.perf_counter() - t0)
            thr["foreign_cpu_percent"] = foreign.percent()
            throughput[name] = thr
            time.sleep(0.5)
        latency = {}
        for name in ("follower", "leader"):
            (path, hostname), = variants[name]
            before = {n: common.cpu_seconds(p) for n, p in procs.items()}
            foreign = common.ForeignCpu(list(procs.values()))
            t0 = time.perf_counter()
            lat = asyncio.run(_open_loop(path, hostname, rate, latency_duration, f"{tag}l{name}"))
            lat["agent_cpu_percent"] = _agent_cpu(the_lab, before, time.perf_counter() - t0)
            lat["foreign_cpu_percent"] = foreign.percent()
            latency[name] = lat
            time.sleep(0.5)
        status = the_lab.status(leader)
    goals = {
        "commits_per_s_all_nodes": common.goal(throughput["all_nodes"]["commits_per_s"], ">=", GOAL_RATE, "/s"),
        "commits_per_s_via_leader": common.goal(throughput["leader"]["commits_per_s"], ">=", GOAL_RATE, "/s"),
        "commits_per_s_via_follower": common.goal(throughput["follower"]["commits_per_s"], ">=", GOAL_RATE, "/s"),
        "p99_ms_at_200_via_follower": common.goal(latency["follower"]["latency_ms"]["p99"], "<=", GOAL_P99_MS, "ms"),
        "p99_ms_at_200_via_leader": common.goal(latency["leader"]["latency_ms"]["p99"], "<=", GOAL_P99_MS, "ms"),
    }
    return {"quick": quick, "leader": leader, "follower": follower, "fsync": fsync,
            "config_extra": config_extra or {}, "background_before": background,
            "throughput": throughput, "latency": latency,
            "final_commit_index": status.get("commit_index"), "goals": goals}


def run(quick: bool = False, *, tuned: bool = True, **kw: Any) -> dict[str, Any]:
    """The shipped defaults; then (``tuned``) the same with ``TUNED`` on top."""
    doc = measure(quick, **kw)
    if tuned and not kw.get("config_extra"):
        t = measure(quick, **{**kw, "config_extra": TUNED})
        doc["tuned"] = {k: t[k] for k in ("config_extra", "background_before", "leader", "follower",
                                          "throughput", "latency", "goals")}
    return doc


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    rows = _rows(doc, "")
    if "tuned" in doc:
        rows += _rows(doc["tuned"], "tuned: ", brief=True)
    return rows


def _rows(doc: dict[str, Any], prefix: str, brief: bool = False) -> list[tuple[str, Any, dict | None]]:
    g = doc["goals"]
    rows = []
    for name, key in (("all_nodes", "commits_per_s_all_nodes"), ("leader", "commits_per_s_via_leader"),
                      ("follower", "commits_per_s_via_follower")):
        thr = doc["throughput"][name]
        rows.append((f"{prefix}commits/s via {name} ({thr['connections']} conns)", thr["commits_per_s"], g[key]))
    for name in ("follower", "leader"):
        lat = doc["latency"][name]
        ms = lat["latency_ms"]
        if not brief:
            rows.append((f"latency @{lat['rate_per_s']:g}/s via {name} p50/p95 (ms)", f"{ms['p50']}/{ms['p95']}", None))
        rows.append((f"{prefix}latency @{lat['rate_per_s']:g}/s via {name} p99 (ms)", ms["p99"],
                     g[f"p99_ms_at_200_via_{name}"]))
        if not brief:
            rows.append((f"latency @{lat['rate_per_s']:g}/s via {name} max (ms)", ms["max"], None))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__, set_example="raft.append_entries_period=0.05")
    ap.add_argument("--connections", type=int, default=128)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--latency-duration", type=float)
    ap.add_argument("--fsync", choices=("on", "off"), default="on")
    ap.add_argument("--no-tuned", action="store_true", help="skip the second, tuned pass")
    args = ap.parse_args(argv)
    extra = common.parse_sets(args.set)
    doc = run(args.quick, tuned=not args.no_tuned, connections=args.connections,
              duration=args.duration, rate=args.rate, latency_duration=args.latency_duration,
              fsync=args.fsync == "on", config_extra=extra)
    print(json.dumps({k: doc[k] for k in ("throughput", "latency")}, indent=1))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
