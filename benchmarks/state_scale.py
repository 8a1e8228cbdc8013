"""Benchmark: the replicated state machine with a long notification history.

``ClusterState`` alone (no Raft, no I/O), one segment with 50 hosts: ``--count``
``notification.submit`` commands (distinct uuids; payloads repeat, so some land as
``ignored`` duplicates, as in real life), timed per op; then the leader's hot read, "the
oldest new notifications" (``list_notifications({"status": "new"}, limit=10)``), a full
listing, ``counts_by_status`` and a snapshot (``to_snapshot``), each timed.

Submit must not scan the history: the per-op time of the later 10k-chunks must stay near
that of the earlier ones (the ratio of their medians is reported; goal <= 2x). This replaces the timed unit test that used to live
in tests/unit/test_state_scale.py.

Run: python -m benchmarks.state_scale [--quick] [--count N]
"""
from __future__ import annotations

import json
import statistics
import time
import uuid
from typing import Any

from benchmarks import common
from consensus.state import ClusterState

NAME = "state_scale"
HOSTS = [f"node{i}" for i in range(50)]
AT = 1e9
#: Goal: submit per op at the full count no more than this many times the first 10k's.
GOAL_GROWTH = 2.0


def _ok(state: ClusterState, cmd: dict[str, Any]) -> Any:
    answer = state.apply(cmd)
    if not answer.get("ok"):
        raise RuntimeError(f"{cmd['op']} refused: {answer.get('error')}")
    return answer.get("result")


def _cluster() -> ClusterState:
    state = ClusterState()
    _ok(state, {"op": "segment.create", "at": AT, "uuid": str(uuid.UUID(int=10**12)), "name": "s1",
                "recovery_method": "auto", "service_type": "COMPUTE"})
    for i, name in enumerate(HOSTS):
        _ok(state, {"op": "host.create", "at": AT, "uuid": str(uuid.UUID(int=10**12 + 1 + i)),
                    "name": name, "type": "COMPUTE", "control_attributes": "SSH", "segment": "s1"})
    return state


def _submit(i: int) -> dict[str, Any]:
    return {"op": "notification.submit", "at": AT + i,
            "notification_uuid": str(uuid.UUID(int=i + 1)), "type": "PROCESS",
            "hostname": HOSTS[i % len(HOSTS)],
            "generated_time": f"2024-05-01T10:{i // 6000 % 60:02d}:{i // 100 % 60:02d}Z",
            "payload": {"process_name": f"p{i % 7}", "event": "STOPPED"}, "source_node": "node0"}


def _timed(fn, repeat: int) -> float:
    """Mean µs per call of ``fn()`` over ``repeat`` calls."""
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - t) / repeat * 1e6, 1)


def run(quick: bool = False, *, count: int | None = None) -> dict[str, Any]:
    count = count if count is not None else (20_000 if quick else 100_000)
    state = _cluster()
    commands = [_submit(i) for i in range(count)]  # built outside the timed loop
    chunk = 10_000
    per_chunk_us = []
    t_all = time.perf_counter()
    for start in range(0, count, chunk):
        t = time.perf_counter()
        for cmd in commands[start:start + chunk]:
            state.apply(cmd)
        n = min(chunk, count - start)
        per_chunk_us.append(round((time.perf_counter() - t) / n * 1e6, 2))
    total_s = time.perf_counter() - t_all
    counts = state.counts_by_status()
    if state.notification_count() != count:
        raise RuntimeError(f"{state.notification_count()} notifications stored, {count} submitted")
    reads = {
        "list_new_limit10_us": _timed(lambda: state.list_notifications({"status": "new"}, limit=10), 100),
        "list_all_limit100_us": _timed(lambda: state.list_notifications(limit=100), 5),
        "counts_by_status_us": _timed(state.counts_by_status, 1000),
        "get_notification_us": _timed(lambda: state.get_notification(str(uuid.UUID(int=count // 2))), 1000),
    }
    t = time.perf_counter()
    snap = state.to_snapshot()
    reads["to_snapshot_ms"] = round((time.perf_counter() - t) * 1000, 1)
    t = time.perf_counter()
    ClusterState.from_snapshot(snap)
    reads["from_snapshot_ms"] = round((time.perf_counter() - t) * 1000, 1)
    # Medians of the later and the earlier half of the chunks: a GC pause in one chunk is noise.
    half = max(1, len(per_chunk_us) // 2)
    growth = round(statistics.median(per_chunk_us[-half:]) / statistics.median(per_chunk_us[:half]), 2)
    return {"quick": quick, "count": count, "hosts": len(HOSTS), "submit_total_s": round(total_s, 2),
            "submit_us_per_op": round(total_s / count * 1e6, 2), "submit_us_per_op_by_10k": per_chunk_us,
            "counts_by_status": counts, **reads,
            "goals": {"submit_growth_later_vs_earlier": common.goal(growth, "<=", GOAL_GROWTH, "x")}}


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    return [
        (f"submit into ClusterState ({doc['count']:,}) µs/op", doc["submit_us_per_op"], None),
        ("submit µs/op, later vs earlier half (x)", doc["goals"]["submit_growth_later_vs_earlier"]["value"],
         doc["goals"]["submit_growth_later_vs_earlier"]),
        ("list status=new limit 10 (µs)", doc["list_new_limit10_us"], None),
        ("list all limit 100 (µs)", doc["list_all_limit100_us"], None),
        ("to_snapshot / from_snapshot (ms)", f"{doc['to_snapshot_ms']} / {doc['from_snapshot_ms']}", None),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--count", type=int)
    args = ap.parse_args(argv)
    doc = run(args.quick, count=args.count)
    print(json.dumps(doc, indent=1))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
