"""ClusterState stays fast with 100k notifications: submit does not scan the history.

The bounds are ~20x what this 2-core machine measures (1.4 s for 100k submits), so they
catch an accidental O(n) scan per submit (which would take minutes), not noise.
"""
from __future__ import annotations

import time
import uuid

from test_state_support import cluster, ok

N = 100_000
HOSTS = [f"node{i}" for i in range(50)]


def test_100k_notifications_stay_fast():
    state = cluster(*HOSTS)
    started = time.perf_counter()
    for i in range(N):
        ok(state, {"op": "notification.submit", "at": 1e9 + i,
                   "notification_uuid": str(uuid.UUID(int=i + 1)), "type": "PROCESS",
                   "hostname": HOSTS[i % len(HOSTS)],
                   "generated_time": f"2024-05-01T10:{i // 6000 % 60:02d}:{i // 100 % 60:02d}Z",
                   "payload": {"process_name": f"p{i % 7}", "event": "STOPPED"},
                   "source_node": "node0"})
    assert time.perf_counter() - started < 30.0
    assert state.notification_count() == N
    counts = state.counts_by_status()
    assert counts["new"] + counts["ignored"] == N and counts["new"] > 0

    started = time.perf_counter()
    for _ in range(100):
        new = state.list_notifications({"status": "new"}, limit=10)
    assert time.perf_counter() - started < 2.0, "status listing must use the status index"
    assert len(new) == 10
