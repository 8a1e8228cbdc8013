"""Throughput/latency matrix for docs/raft.md: 3 voter processes on loopback, fsync on.

    .venv/bin/python -m tests.integration.raft_helpers.bench
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from tests.integration.raft_helpers.cluster import ProcCluster

SETTINGS = [
    {"APPEND_ENTRIES_USE_BATCH": True, "AUTO_TICK_PERIOD": 0.05},
    {"APPEND_ENTRIES_USE_BATCH": False, "AUTO_TICK_PERIOD": 0.05},
    {"APPEND_ENTRIES_USE_BATCH": False, "AUTO_TICK_PERIOD": 0.01},
    {"APPEND_ENTRIES_USE_BATCH": False, "AUTO_TICK_PERIOD": 0.002},
]


def main() -> None:
    for fsync in (True, False):
        for setting in SETTINGS if fsync else SETTINGS[2:3]:
            with tempfile.TemporaryDirectory() as tmp, \
                    ProcCluster(Path(tmp), voters=3, pysyncobj=setting,
                                options={"fsync": fsync}) as c:
                leader = c.leader()
                t0 = time.monotonic()
                sync = leader.request("bench", 120, count=200, window=1)["bench"]
                piped = leader.request("bench", 120, count=5000, window=500)["bench"]
                rated = leader.request("bench", 120, count=1000, window=1000, rate=200)["bench"]
                print(json.dumps({"fsync": fsync, **setting, "sync": sync, "pipelined": piped,
                                  "rate200": rated, "s": round(time.monotonic() - t0, 1)}),
                      flush=True)
                c.stop()
    # Election time after SIGKILL of the leader.
    with tempfile.TemporaryDirectory() as tmp, ProcCluster(Path(tmp), voters=3) as c:
        times = []
        for _ in range(10):
            leader = c.leader(timeout=20)
            t0 = time.monotonic()
            leader.kill()
            c.leader(timeout=20, among=[n for n in c.voters if n is not leader])
            times.append(round(time.monotonic() - t0, 2))
            leader.start()
        print(json.dumps({"election_after_kill_s": sorted(times)}), flush=True)


if __name__ == "__main__":
    main()
