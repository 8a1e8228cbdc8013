"""`make demo`: a 5-node lab (3 voters, 2 non-voters), notifications submitted from every
node, the leader SIGKILLed mid-stream and restarted, a live view of the cluster, and a
closing check that every node holds the same notifications, none lost, none doubled.

Exit status 0 only if the closing check passes.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from hagent.lab.cluster import Lab, LabError
from hagent.lab.workload import History, log_agreement, new_keys, start_clients, wait_all_hold

VIEW_PERIOD = 0.5


def view_line(lab: Lab, started: float, history: History, total: int) -> str:
    """One line of the live view: leader, term, each node's commit index, counts."""
    cells, leader, term, counts = [], "-", 0, {}
    for name in lab.names:
        try:
            st = lab.status(name, timeout=0.5)
        except LabError:
            cells.append(f"{name}:down")
            continue
        cells.append(f"{name}:{st.get('commit_index', '?')}")
        if st.get("role") == "leader":
            leader, term = name, st.get("term", 0)
        counts = st.get("notifications") or counts
    stored = sum(counts.values())
    return (f"t={time.monotonic() - started:5.1f}s leader={leader:<6} term={term:<3} "
            f"commit[{' '.join(cells)}] acked={history.acked_count()}/{total} "
            f"stored={stored} retries={len(history.errors())}")


def live_view(lab: Lab, started: float, history: History, total: int,
              done: threading.Event) -> None:
    while not done.wait(VIEW_PERIOD):
        print(view_line(lab, started, history, total), flush=True)


def run(lab_dir: Path, total: int, nodes: int, voters: int) -> int:
    print(f"starting a {nodes}-node lab ({voters} voters) in {lab_dir} ...", flush=True)
    lab = Lab.up(lab_dir, nodes=nodes, voters=voters)
    try:
        keys = new_keys(total)
        history, stop, done = History(), threading.Event(), threading.Event()
        started = time.monotonic()
        viewer = threading.Thread(target=live_view, args=(lab, started, history, total, done),
                                  daemon=True)
        viewer.start()
        # Paced so the live view shows the stream before, during and after the kill.
        clients = start_clients(lab, keys, history, stop, interval=0.02)
        while history.acked_count() < total // 3:
            time.sleep(0.05)
        victim = lab.leader()
        print(f">>> SIGKILL leader {victim} after {history.acked_count()} acknowledged", flush=True)
        lab.crash(victim)
        successor = lab.leader(timeout=15.0, among=[n for n in lab.names if n != victim])
        print(f">>> new leader {successor} after {time.monotonic() - started:.1f}s; "
              f"restarting {victim}", flush=True)
        lab.start(victim)
        lab.wait_ready([victim])
        print(f">>> {victim} is back as a follower", flush=True)
        for client in clients:
            client.join()
        seen = wait_all_hold(lab, total, timeout=60.0)
        done.set()
        viewer.join()
        print(view_line(lab, started, history, total))
        problems = log_agreement(seen, set(keys))
        print("\nclosing check:")
        for name, entries in seen.items():
            print(f"  {name}: {len(entries)} notifications, {len({u for _, u in entries})} distinct")
        if problems:
            print("FAIL: " + "; ".join(problems))
            return 1
        print(f"PASS: all {nodes} nodes hold the same {total} notifications in the same order; "
              f"none lost, none doubled ({len(history.errors())} submissions retried on "
              f"another node during the failover)")
        return 0
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hagent.lab.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=600)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--voters", type=int, default=3)
    parser.add_argument("--dir", help="lab directory (default: a temporary one, removed on success)")
    args = parser.parse_args(argv)
    lab_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hagent-demo-"))
    status = run(lab_dir, args.notifications, args.nodes, args.voters)
    if status == 0 and not args.dir:
        shutil.rmtree(lab_dir, ignore_errors=True)
    elif status:
        print(f"lab files and agent logs kept in {lab_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
