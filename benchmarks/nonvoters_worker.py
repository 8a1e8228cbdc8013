"""One process of the non-voter benchmark: a voter, or a group of non-voters.

Started by benchmarks.nonvoters as `python -m benchmarks.nonvoters_worker '<json spec>'`.
It prints one JSON line {"ready": ...} once up, then reads one JSON command per line on stdin
and answers each with one JSON line on stdout. Logs go to stderr. Times are time.monotonic()
(CLOCK_MONOTONIC, shared by every process on the machine, so the orchestrator can compare them).
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from typing import Any

from pysyncobj import FAIL_REASON

from benchmarks.nonvoters_state import NotificationLog, make_conf, make_record

log = logging.getLogger("nonvoters.worker")

#: A submission not answered after this long is sent again (same id: idempotent). Long enough
#: that queueing under the pipelined load does not turn into duplicate load; a forwarded call
#: whose entry reached the replica by snapshot never gets its callback and needs this resend.
RESEND_AFTER = 3.0


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


class ReplicaPool:
    """Option R: k pysyncobj read-only replicas (selfNode=None), each with its own tick thread."""

    def __init__(self, k: int, voters: list[str], use_batch: bool) -> None:
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.nodes = [NotificationLog(None, voters, make_conf(use_batch=use_batch)) for _ in range(k)]

    def send(self, node: int, nid: str, rec: dict | None) -> None:
        so = self.nodes[node]
        if rec is None:  # a read is local
            self.done.put((nid, True, time.monotonic(), so.notes.get(nid)))
            return

        def cb(res: Any, err: int) -> None:
            t = time.monotonic()
            if err == FAIL_REASON.SUCCESS:
                self.done.put((nid, True, t, nid in so.notes))
            else:
                self.done.put((nid, False, t, "fail %d" % err))

        so.submit(rec, callback=cb)

    def ready(self) -> bool:
        return all(so._getLeader() is not None and so.isReady() for so in self.nodes)


class Driver:
    """Runs the load phases over a pool of k non-voters (either option)."""

    def __init__(self, pool: Any, k: int, name: str) -> None:
        self.pool = pool
        self.k = k
        self.name = name
        self.seq = 0
        self.probe_thread: threading.Thread | None = None
        self.probe_stop = threading.Event()
        self.probe_log: list[tuple[float, float | None]] = []

    def _nid(self, prefix: str) -> str:
        self.seq += 1
        return "%s%s-%d" % (prefix, self.name, self.seq)

    def _drain(self, timeout: float) -> list[tuple]:
        out = []
        try:
            out.append(self.pool.done.get(timeout=max(0.0, timeout)))
            while True:
                out.append(self.pool.done.get_nowait())
        except queue.Empty:
            pass
        return out

    def wait_ready(self, timeout: float) -> dict:
        """Every node answers a read (F) or knows a leader and has caught up (R)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if isinstance(self.pool, ReplicaPool):
                if self.pool.ready():
                    return {"ok": True, "t": time.monotonic() - t0}
                time.sleep(0.05)
                continue
            for i in range(self.k):
                self.pool.send(i, "ping", None)
            oks = sum(1 for c in self._drain(1.0) if c[1])
            got = oks
            t_end = time.monotonic() + 1.0
            while got < self.k and time.monotonic() < t_end:
                got += sum(1 for c in self._drain(0.2) if c[1])
            if got >= self.k:
                return {"ok": True, "t": time.monotonic() - t0}
            time.sleep(0.2)
        return {"ok": False}

    def run_load(self, mode: str, rate: float, window: int, duration: float, start_at: float,
                 prefix: str, drain: float = 8.0) -> dict:
        """mode "steady": `rate` submissions/s round-robin over the nodes; latency from the
        first send to the commit answer (resends after RESEND_AFTER count against it).
        mode "pipeline": keep `window` submissions outstanding per node; count commits."""
        while time.monotonic() < start_at:
            time.sleep(min(0.01, start_at - time.monotonic()))
        t0 = time.monotonic()
        t_stop = t0 + duration
        pending: dict[str, list] = {}  # nid -> [node, rec, first_send, last_send]
        inflight = [0] * self.k
        lat: list[float] = []
        local_has = 0
        fails = 0
        resends = 0
        committed_in_window = 0
        sent = 0

        def submit(node: int) -> None:
            nonlocal sent
            nid = self._nid(prefix)
            rec = make_record(nid, "compute-%s-%d" % (self.name, node))
            now = time.monotonic()
            pending[nid] = [node, rec, now, now]
            inflight[node] += 1
            sent += 1
            self.pool.send(node, nid, rec)

        if mode == "pipeline":
            for node in range(self.k):
                for _ in range(window):
                    submit(node)
        next_send = t0
        last_check = t0
        while True:
            now = time.monotonic()
            if now >= t_stop + drain or (now >= t_stop and not pending):
                break
            if mode == "steady" and now < t_stop:
                while next_send <= now:
                    submit(sent % self.k)
                    next_send = t0 + sent / rate
                wait = min(next_send, t_stop) - time.monotonic()
            else:
                wait = 0.05
            for nid, ok, t, info in self._drain(min(max(wait, 0.0), 0.05)):
                p = pending.get(nid)
                if p is None:
                    continue
                if ok:
                    del pending[nid]
                    inflight[p[0]] -= 1
                    if t <= t_stop:
                        committed_in_window += 1
                    lat.append(t - p[2])
                    if info is True:
                        local_has += 1
                    if mode == "pipeline" and time.monotonic() < t_stop:
                        submit(p[0])
                else:
                    fails += 1
                    p[3] = time.monotonic()
                    resends += 1
                    self.pool.send(p[0], nid, p[1])
            now = time.monotonic()
            if now - last_check > 0.1:
                last_check = now
                for nid, p in pending.items():
                    if now - p[3] > RESEND_AFTER:
                        p[3] = now
                        resends += 1
                        self.pool.send(p[0], nid, p[1])
        return {
            "sent": sent, "committed": len(lat), "committed_in_window": committed_in_window,
            "unfinished": len(pending), "fail_answers": fails, "resends": resends,
            "local_has": local_has, "duration": duration,
            "lat": lat if mode == "steady" else [],
            "p50": _pct(lat, 50), "p99": _pct(lat, 99),
        }

    def reads(self, n: int, nid: str) -> dict:
        """n sequential reads of one record from node 0: latency of a read that sees it."""
        lat = []
        seen = 0
        for _ in range(n):
            t = time.monotonic()
            self.pool.send(0, nid, None)
            while True:
                got = [c for c in self._drain(2.0) if c[0] == nid]
                if got:
                    break
            lat.append(got[0][2] - t)
            seen += got[0][3] is not None
        return {"p50": _pct(lat, 50), "p99": _pct(lat, 99), "seen": seen, "n": n}

    def probe_start(self, interval: float) -> dict:
        """Node 0 submits a fresh record every `interval` s; each attempt's send/commit time is kept."""
        self.probe_stop.clear()
        self.probe_log = []

        def run() -> None:
            sent: dict[str, int] = {}
            nxt = time.monotonic()
            while not self.probe_stop.is_set():
                now = time.monotonic()
                if now >= nxt:
                    nid = self._nid("p-")
                    sent[nid] = len(self.probe_log)
                    self.probe_log.append((now, None))
                    self.pool.send(0, nid, make_record(nid, "compute-probe"))
                    nxt = now + interval
                for nid, ok, t, _ in self._drain(max(0.0, nxt - time.monotonic())):
                    if ok and nid in sent:
                        i = sent[nid]
                        self.probe_log[i] = (self.probe_log[i][0], t)

        self.probe_thread = threading.Thread(target=run, daemon=True)
        self.probe_thread.start()
        return {"ok": True}

    def probe_stop_(self) -> dict:
        self.probe_stop.set()
        if self.probe_thread is not None:
            self.probe_thread.join()
        return {"log": self.probe_log}


def _voter(spec: dict) -> None:
    idx = spec["index"]
    addrs = spec["raft_addrs"]
    me = addrs[idx]
    conf = make_conf(use_batch=spec["use_batch"], journal=spec["journal"], dump=spec["dump"])
    so = NotificationLog(me, [a for a in addrs if a != me], conf)
    if spec["option"] == "F":
        from benchmarks.nonvoters_forward import ForwardServer
        ForwardServer(so, spec["zmq_endpoint"], spec["pub"].encode(), spec["sec"].encode(),
                      {k.encode() for k in spec["allowed"]}, {a: i for i, a in enumerate(addrs)})
    _reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "status":
            leader = so._getLeader()
            st = _status(so)
            _reply({"leader": so._isLeader(), "leader_addr": leader.address if leader else None,
                    "term": st["raft_term"], "commit_idx": st["commit_idx"],
                    "last_applied": st["last_applied"], "readonly": st["readonly_nodes_count"],
                    "log_len": st["log_len"], "notes": len(so.notes)})
        elif op == "applied_at":
            _reply({"t": dict(so.applied_at)})
        elif op == "fill":
            # Leader-local pipelined submissions until the commit index reaches the target.
            target = cmd["target"]
            inflight = threading.Semaphore(500)
            n = 0
            while so.raftCommitIndex < target:
                inflight.acquire()
                n += 1
                nid = "f-%d-%d" % (idx, n)
                so.submit(make_record(nid, "compute-fill"), callback=lambda r, e: inflight.release())
            _reply({"submitted": n, "commit_idx": so.raftCommitIndex})
        else:
            _reply({"error": "unknown op %s" % op})


def _status(so: NotificationLog) -> dict:
    """getStatus() iterates dicts the tick thread mutates: retry until it reads cleanly."""
    while True:
        try:
            return so.getStatus()
        except RuntimeError:
            time.sleep(0.001)


def _group(spec: dict) -> None:
    k = spec["k"]
    if spec["option"] == "R":
        if spec.get("fresh"):
            _fresh(spec)
            return
        pool: Any = ReplicaPool(k, spec["raft_addrs"], spec["use_batch"])
    else:
        from benchmarks.nonvoters_forward import ForwardClientPool
        voters = [(e, p.encode()) for e, p in zip(spec["zmq_endpoints"], spec["voter_pubs"])]
        keys = [(p.encode(), s.encode()) for p, s in spec["keys"]]
        pool = ForwardClientPool(k, voters, keys)
    drv = Driver(pool, k, spec["name"])
    _reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "wait_ready":
            _reply(drv.wait_ready(cmd["timeout"]))
        elif op == "load":
            _reply(drv.run_load(cmd["mode"], cmd.get("rate", 0.0), cmd.get("window", 1),
                                cmd["duration"], cmd["start_at"], cmd["prefix"]))
        elif op == "reads":
            _reply(drv.reads(cmd["n"], cmd["nid"]))
        elif op == "probe_start":
            _reply(drv.probe_start(cmd["interval"]))
        elif op == "probe_stop":
            _reply(drv.probe_stop_())
        elif op == "probe_first_after":
            # Earliest commit of an attempt sent after t (the leader kill), or None yet.
            done = [c for s, c in list(drv.probe_log) if s >= cmd["t"] and c is not None]
            _reply({"t": min(done) if done else None})
        elif op == "applied_at":
            _reply({"t": dict(pool.nodes[cmd.get("node", 0)].applied_at)} if hasattr(pool, "nodes") else {"t": {}})
        else:
            _reply({"error": "unknown op %s" % op})


def _fresh(spec: dict) -> None:
    """Option R catch-up: on command, start an empty replica and time it to the target index."""
    _reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        target = cmd["target"]
        t0 = time.monotonic()
        so = NotificationLog(None, spec["raft_addrs"], make_conf(use_batch=spec["use_batch"]))
        t_leader = None
        while time.monotonic() - t0 < cmd["timeout"]:
            if t_leader is None and so._getLeader() is not None:
                t_leader = time.monotonic() - t0
            if so.raftLastApplied >= target:
                break
            time.sleep(0.005)
        done = so.raftLastApplied >= target
        _reply({"ok": done, "t": time.monotonic() - t0, "t_leader": t_leader,
                "applied": so.raftLastApplied, "notes": len(so.notes)})


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s " + spec.get("name", "?") + " %(levelname)s %(message)s")
    if spec["role"] == "voter":
        _voter(spec)
    else:
        _group(spec)


if __name__ == "__main__":
    main()
