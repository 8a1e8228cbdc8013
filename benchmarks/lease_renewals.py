"""Benchmark: lease renewals of many hosts through three real voters, batched or not.

Three VoterBackends (pysyncobj, loopback TCP, fsync on) in this process; ``--hosts``
simulated hosts each renew every ``--interval`` seconds at a random phase by calling the
leader's ``propose``, as the forward server does for non-voters. Run once with the
RenewalBatcher (what voters do) and once proposing each renewal as its own entry. Reports
log entries per second, renewal latency (propose to answer) and this process's CPU.

What matters for the lease: latency is slack taken from lease_ttl - safety_margin (10 s);
entries/s is what every voter pickles, encrypts, fsyncs and applies.

Run: python -m benchmarks.lease_renewals [--quick] [--hosts N]
"""
from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import common
from hagent.agent_voter import VoterBackend
from hagent.config import parse_config
from hagent.secretfile import write_secret

NAME = "lease_renewals"
#: Goal: a renewal's p99 latency stays a small part of the 10 s self-fence window.
GOAL_P99_MS = 500.0


def _configs(tmp: Path) -> list:
    import socket

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    secret = tmp / "cluster.secret"
    write_secret(secret)
    voters = [f"127.0.0.1:{port()}" for _ in range(3)]
    return [parse_config({"node": {"name": f"v{i}", "state_dir": str(tmp / f"v{i}")},
                          "raft": {"voters": voters, "bind": voters[i], "secret_file": str(secret)}})
            for i in range(3)]


async def _pass(backends: list[VoterBackend], hosts: int, interval: float, duration: float,
                batched: bool) -> dict[str, Any]:
    leader = next(b for b in backends if b.is_leader())
    propose = leader.propose if batched else leader._propose
    latencies: list[float] = []
    failures = 0
    start_index = leader.raft.status()["commit_index"]
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    stop_at = t0 + duration

    async def host(name: str) -> None:
        nonlocal failures
        seq = 0
        await asyncio.sleep(random.uniform(0, interval))
        while time.monotonic() < stop_at:
            seq += 1
            sent = time.monotonic()
            answer = await propose({"op": "lease.renew", "hosts": {name: seq}, "at": time.time()})
            if answer.get("ok"):
                latencies.append(time.monotonic() - sent)
            else:
                failures += 1
            await asyncio.sleep(max(0.0, sent + interval - time.monotonic()))

    await asyncio.gather(*(host(f"cn{i}") for i in range(hosts)))
    elapsed = time.monotonic() - t0
    cpu1 = proc.cpu_times()
    entries = leader.raft.status()["commit_index"] - start_index
    return {
        "renewals": len(latencies), "failures": failures,
        "renewals_per_s": round(len(latencies) / elapsed, 1),
        "entries_per_s": round(entries / elapsed, 1),
        "latency_ms": common.percentiles(latencies, 1000),
        "cpu_percent_of_a_core": round(100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system))
                                       / elapsed, 1),
    }


async def _run(hosts: int, interval: float, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hagent-bench-lease-") as tmp:
        backends = [VoterBackend(c, c.node.name) for c in _configs(Path(tmp))]
        try:
            deadline = time.monotonic() + 30
            while not any(b.is_leader() for b in backends) or not all(b.ready() for b in backends):
                if time.monotonic() > deadline:
                    raise RuntimeError("no leader within 30 s")
                await asyncio.sleep(0.05)
            batched = await _pass(backends, hosts, interval, duration, batched=True)
            single = await _pass(backends, hosts, interval, duration, batched=False)
        finally:
            for b in backends:
                await b.stop()
    return {"batched": batched, "one_entry_each": single}


def run(quick: bool = False, hosts: int | None = None) -> dict[str, Any]:
    hosts = hosts or (300 if quick else 1000)
    interval, duration = 5.0, 10.0 if quick else 20.0
    result = asyncio.run(_run(hosts, interval, duration))
    return {
        "hosts": hosts, "interval_s": interval, "duration_s": duration, **result,
        "goals": {"batched_p99_ms": common.goal(result["batched"]["latency_ms"]["p99"], "<=",
                                                 GOAL_P99_MS, "ms")},
        "machine": common.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--hosts", type=int)
    args = ap.parse_args(argv)
    doc = run(args.quick, args.hosts)
    for key in ("batched", "one_entry_each"):
        print(key, doc[key])
    common.report(NAME, doc, not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
