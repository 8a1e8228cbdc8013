"""One RaftNode in its own process, driven by JSON lines on stdin.

    python -m tests.integration.raft_helpers.runner '<json config>'

Config keys: self_address (or null), voters, state_dir, password, events (file path),
options (RaftConfig overrides), pysyncobj (overrides of consensus.raft constants),
propose_on_sigcont (int: proposals tagged "stale-<i>" made by the SIGCONT handler),
voters_file (path: start as the agent does, ``consensus.voterfile.choose`` over ``voters``,
a voter only if the file or config says so, and keep the file).

Requests (one JSON object a line): {"id", "op": "status"|"propose"|"bench"|"exit"|
"add_member"|"remove_member"|"state"|"read_lease", ...}; answers on stdout as {"id", ...}. Role changes are appended to the events file as JSON lines
{"t", "node", "old", "new", "term"}, flushed at once (they survive SIGKILL: page cache).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from consensus import raft, voterfile
from consensus.state import ClusterState
from hagent.config import RaftConfig

_out_lock = threading.Lock()


def emit(doc: dict) -> None:
    line = json.dumps(doc) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def lease(host: str, seq: int) -> dict:
    return {"op": "lease.renew", "at": time.time(), "hosts": {host: seq}}


def bench(node: raft.RaftNode, req: dict) -> dict:
    """Propose ``count`` commands: ``window`` in flight at once (1 = synchronous), or at
    ``rate`` per second; report commits/s and latency percentiles (ms)."""
    count, window, rate = req["count"], req.get("window", 1), req.get("rate")
    latencies: list[float] = []
    errors: list[str] = []
    sem = threading.Semaphore(window)
    finished = threading.Event()
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()

        def done(result, error):
            with lock:
                latencies.append(time.perf_counter() - start)
                if error:
                    errors.append(error)
                if len(latencies) == count:
                    finished.set()
            sem.release()

        node.propose(lease(f"bench-{i % 50}", i), done)

    t0 = time.perf_counter()
    for i in range(count):
        if rate:
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sem.acquire()
        one(i)
    finished.wait(120)
    elapsed = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else -1

    return {"count": len(lat), "errors": len(errors), "seconds": round(elapsed, 3),
            "per_second": round(len(lat) / elapsed, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "max_ms": pct(1.0)}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    for name, value in cfg.get("pysyncobj", {}).items():
        setattr(raft, name, value)
    options = RaftConfig(voters=cfg["voters"], **cfg.get("options", {}))
    events = open(cfg["events"], "a") if cfg.get("events") else None
    name = cfg.get("node_name", cfg.get("self_address") or "replica")
    node_ref: list[raft.RaftNode] = []

    def on_role(old: str, new: str, term: int) -> None:
        if events is not None:
            events.write(json.dumps({"t": time.time(), "node": name, "old": old, "new": new,
                                     "term": term, "pid": os.getpid()}) + "\n")
            events.flush()

    stale = cfg.get("propose_on_sigcont", 0)
    if stale:
        # Only the main thread may take SIGCONT, so the handler runs the moment the process
        # resumes (its blocking read is interrupted), before the Raft thread learns anything.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCONT})
    self_address, voters, voters_index, voters_file = cfg["self_address"], cfg["voters"], 0, None
    if cfg.get("voters_file"):
        voters_file = Path(cfg["voters_file"])
        start = voterfile.choose(voters, voters_file, self_address)
        voters, voters_index = start.voters, start.index
        if not start.is_voter(self_address):
            self_address = None
    node = raft.RaftNode(self_address=self_address, voters=voters,
                         state_dir=Path(cfg["state_dir"]), password=cfg["password"],
                         options=options, state=ClusterState(), node_name=name,
                         on_role_change=on_role, voters_index=voters_index,
                         voters_file=voters_file)
    node_ref.append(node)

    if stale:
        def on_cont(signum, frame):
            st = node.status()
            emit({"event": "sigcont", "role": st["role"], "term": st["term"],
                  "commit_index": st["commit_index"]})
            for i in range(stale):
                tag = f"stale-{i}"
                node.propose(lease(tag, 1), lambda r, e, tag=tag: emit(
                    {"event": "stale_result", "tag": tag, "ok": e is None, "error": e}))
        signal.signal(signal.SIGCONT, on_cont)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCONT})

    emit({"event": "started", "pid": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        op, rid = req["op"], req.get("id")
        if op == "status":
            emit({"id": rid, "status": node.status()})
        elif op == "propose":
            node.propose(req["command"], lambda r, e, rid=rid: emit(
                {"id": rid, "result": r, "error": e}))
        elif op == "read_lease":
            emit({"id": rid, "lease": node.read(lambda s: s.get_lease(req["host"]))})
        elif op == "state":
            emit({"id": rid, "voters": node.read(lambda s: s.voters()),
                  "leases": node.read(lambda s: s.list_leases()),
                  "members": node.cluster_members(), "committed": node.committed_members(),
                  "member": node.is_member(), "applied": node.applied_index(),
                  "leader_commit": node.leader_commit_index()})
        elif op in ("add_member", "remove_member"):
            getattr(node, op)(req["address"], lambda ok, error, rid=rid: emit(
                {"id": rid, "ok": ok, "error": error}))
        elif op == "bench":
            threading.Thread(target=lambda req=req, rid=rid: emit(
                {"id": rid, "bench": bench(node, req)}), daemon=True).start()
        elif op == "exit":
            break
    node.close()
    emit({"event": "closed"})


if __name__ == "__main__":
    main()
