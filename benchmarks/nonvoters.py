"""Benchmark: two ways of running Raft non-voters at 50 nodes (3 voters + 47 non-voters).

Option R: non-voters are pysyncobj read-only replicas (SyncObj(None, voters, conf)): full
state, every append-entries from the leader, replicated calls forwarded to the leader.
Option F: non-voters keep no Raft state; they send submissions and reads to the leader over
ZeroMQ (CURVE DEALER -> ROUTER on each voter, redirect from followers), and the leader answers
after commit.

Both run on 127.0.0.1 with pysyncobj password= (encryption on), leaderFallbackTimeout=2.5 and
the same appendEntriesUseBatch. Voters run one per process. Non-voters: one alone in its own
process (the one whose CPU, RSS and latency are reported as "a non-voter"), the other 46 packed
into a few processes to fit two cores (see PACKED_PROCESSES).

Run: python -m benchmarks.nonvoters [--quick] [--options R:on,F:off]
Writes benchmarks/results/nonvoters.json and prints a table. docs/nonvoters.md has the method,
the figures and the recommendation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

VOTERS = 3
NONVOTERS = 47
#: The 46 non-voters other than the measured one share this many processes (GIL-bound pysyncobj
#: tick threads; 47 interpreters on two cores would mostly measure the scheduler).
PACKED_PROCESSES = 4
RESULTS = Path(__file__).resolve().parent / "results" / "nonvoters.json"


class Phases:
    """Durations in seconds; --quick shortens everything."""

    def __init__(self, quick: bool) -> None:
        self.settle = 2.0 if quick else 3.0
        self.idle = 5.0 if quick else 20.0
        self.steady = 5.0 if quick else 15.0
        self.steady_rate = 200.0
        self.pipeline = 4.0 if quick else 10.0
        self.window = 10  # outstanding submissions per non-voter in the pipelined phase
        self.failovers = 1 if quick else 3
        self.failover_wait = 10.0
        self.catchup_entries = 3000 if quick else 10000


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


class Worker:
    """A child process (own session, so the whole group can be killed) with a JSON line channel."""

    def __init__(self, spec: dict, logdir: Path) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.logfile = open(logdir / ("%s.log" % self.name), "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.nonvoters_worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logfile,
            cwd=str(Path(__file__).resolve().parent.parent), env=env, start_new_session=True,
            text=True,
        )
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, obj: dict) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 60.0) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("worker %s did not answer in %.0f s (log in %s)"
                               % (self.name, timeout, self.logfile.name)) from None
        if line is None:
            raise RuntimeError("worker %s exited (log in %s)" % (self.name, self.logfile.name))
        return json.loads(line)

    def call(self, obj: dict, timeout: float = 60.0) -> dict:
        self.send(obj)
        return self.recv(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.logfile.close()


def _ss_bytes_sent() -> dict[int, int]:
    """Total TCP bytes_sent per pid over its established sockets (loopback; from ss -tinp)."""
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True,
                         text=True).stdout
    per_sock: dict[tuple, int] = {}
    owner = None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")) or "users:" in line:
            # A forked snapshot writer shares the sockets: credit every pid listed.
            pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
            parts = line.split()
            owner = [(p, parts[2], parts[3]) for p in pids] if len(parts) > 3 else []
            continue
        m = re.search(r"bytes_sent:(\d+)", line)
        for key in owner or []:
            per_sock[key] = int(m.group(1)) if m else 0
    return per_sock


class Snapshot:
    """CPU seconds and TCP bytes sent per worker at one instant."""

    def __init__(self, workers: list[Worker]) -> None:
        self.t = time.monotonic()
        self.cpu = {}
        for w in workers:
            try:
                c = w.ps.cpu_times()
                self.cpu[w.name] = c.user + c.system
            except psutil.Error:
                pass
        self.socks = _ss_bytes_sent()
        self.pids = {w.name: w.proc.pid for w in workers}

    def net(self, name: str) -> int:
        pid = self.pids[name]
        return sum(v for k, v in self.socks.items() if k[0] == pid)


def _delta(a: Snapshot, b: Snapshot, name: str) -> dict:
    dt = b.t - a.t
    cpu = (b.cpu.get(name, 0.0) - a.cpu.get(name, 0.0)) / dt * 100.0
    pid = a.pids[name]
    sent = 0
    for k, v in b.socks.items():
        if k[0] == pid:
            sent += v - a.socks.get(k, 0)
    return {"cpu_pct": round(cpu, 2), "net_kBps": round(sent / dt / 1000.0, 1)}


class Cluster:
    """3 voters + 47 non-voters of one option, with the roles needed to read the figures."""

    def __init__(self, option: str, use_batch: bool, tmp: Path) -> None:
        self.option = option
        self.use_batch = use_batch
        self.tmp = tmp / ("%s-batch-%s" % (option, "on" if use_batch else "off"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(2 * VOTERS)
        self.raft_addrs = ["127.0.0.1:%d" % p for p in ports[:VOTERS]]
        self.zmq_endpoints = ["tcp://127.0.0.1:%d" % p for p in ports[VOTERS:]]
        self.voter_keys = [zmq.curve_keypair() for _ in range(VOTERS)]
        self.node_keys = [zmq.curve_keypair() for _ in range(NONVOTERS)]
        self.voters: list[Worker | None] = [None] * VOTERS
        self.groups: list[Worker] = []
        self.fresh: Worker | None = None

    def _b(self) -> str:
        return "b" if self.use_batch else "u"

    def voter_spec(self, i: int) -> dict:
        return {
            "role": "voter", "option": self.option, "name": "%s%s-voter%d" % (self.option, self._b(), i),
            "index": i, "raft_addrs": self.raft_addrs, "use_batch": self.use_batch,
            "journal": str(self.tmp / ("voter%d.journal" % i)),
            "dump": str(self.tmp / ("voter%d.dump" % i)),
            "zmq_endpoint": self.zmq_endpoints[i],
            "pub": self.voter_keys[i][0].decode(), "sec": self.voter_keys[i][1].decode(),
            "allowed": [k[0].decode() for k in self.node_keys],
        }

    def group_spec(self, name: str, first: int, k: int) -> dict:
        return {
            "role": "group", "option": self.option, "name": "%s%s-%s" % (self.option, self._b(), name), "k": k,
            "raft_addrs": self.raft_addrs, "use_batch": self.use_batch,
            "zmq_endpoints": self.zmq_endpoints,
            "voter_pubs": [k_[0].decode() for k_ in self.voter_keys],
            "keys": [[p.decode(), s.decode()] for p, s in self.node_keys[first:first + k]],
        }

    def start_voter(self, i: int) -> None:
        w = Worker(self.voter_spec(i), self.tmp)
        w.recv(30)
        self.voters[i] = w

    def start(self) -> float:
        t0 = time.monotonic()
        for i in range(VOTERS):
            self.start_voter(i)
        self.leader_index(timeout=30)
        specs = [self.group_spec("nv-solo", 0, 1)]
        rest = NONVOTERS - 1
        first = 1
        for g in range(PACKED_PROCESSES):
            k = rest // PACKED_PROCESSES + (1 if g < rest % PACKED_PROCESSES else 0)
            specs.append(self.group_spec("nv-pack%d" % g, first, k))
            first += k
        self.groups = [Worker(s, self.tmp) for s in specs]
        for w in self.groups:
            w.recv(60)
        for w in self.groups:
            w.send({"op": "wait_ready", "timeout": 60})
        for w in self.groups:
            r = w.recv(70)
            if not r.get("ok"):
                raise RuntimeError("%s never became ready" % w.name)
        if self.option == "R":
            spec = self.group_spec("fresh", 0, 1)
            spec["fresh"] = True
            self.fresh = Worker(spec, self.tmp)
            self.fresh.recv(30)
        return time.monotonic() - t0

    def statuses(self) -> list[dict | None]:
        out = []
        for w in self.voters:
            out.append(w.call({"op": "status"}, 10) if w is not None and w.alive() else None)
        return out

    def leader_index(self, timeout: float = 15.0) -> int:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            for i, st in enumerate(self.statuses()):
                if st and st["leader"]:
                    return i
            time.sleep(0.1)
        raise RuntimeError("no leader among the voters after %.0f s" % timeout)

    def workers(self) -> list[Worker]:
        return [w for w in self.voters if w is not None] + self.groups

    def stop(self) -> None:
        for w in self.workers() + ([self.fresh] if self.fresh else []):
            w.kill()


def _roles(cl: Cluster) -> dict[str, str]:
    leader = cl.leader_index()
    follower = (leader + 1) % VOTERS
    return {"leader": cl.voters[leader].name, "follower": cl.voters[follower].name,
            "nonvoter": cl.groups[0].name, "packed": cl.groups[1].name}


def _measure_window(cl: Cluster, a: Snapshot, b: Snapshot, roles: dict[str, str]) -> dict:
    out = {}
    for role, name in roles.items():
        out[role] = _delta(a, b, name)
    k_packed = cl.groups[1].spec["k"]
    out["packed"]["per_node_cpu_pct"] = round(out["packed"]["cpu_pct"] / k_packed, 2)
    total = sum(_delta(a, b, w.name)["cpu_pct"] for w in cl.workers())
    out["all_processes_cpu_pct"] = round(total, 1)
    return out


def _rss(cl: Cluster, roles: dict[str, str]) -> dict:
    byname = {w.name: w for w in cl.workers()}
    out = {role: round(byname[n].ps.memory_info().rss / 2**20, 1) for role, n in roles.items()}
    out["packed_nodes"] = cl.groups[1].spec["k"]
    return out


def _load(cl: Cluster, mode: str, duration: float, prefix: str, rate: float = 0.0,
          window: int = 1, roles: dict | None = None) -> dict:
    start_at = time.monotonic() + 0.5
    for w in cl.groups:
        k = w.spec["k"]
        w.send({"op": "load", "mode": mode, "rate": rate * k / NONVOTERS, "window": window,
                "duration": duration, "start_at": start_at, "prefix": prefix})
    time.sleep(max(0.0, start_at - time.monotonic()))
    a = Snapshot(cl.workers())
    time.sleep(duration)
    b = Snapshot(cl.workers())
    res = [w.recv(duration + 60) for w in cl.groups]
    lat = [x for r in res for x in r["lat"]]
    out = {
        "sent": sum(r["sent"] for r in res),
        "committed": sum(r["committed"] for r in res),
        "unfinished": sum(r["unfinished"] for r in res),
        "resends": sum(r["resends"] for r in res),
        "fail_answers": sum(r["fail_answers"] for r in res),
        "committed_per_s": round(sum(r["committed_in_window"] for r in res) / duration, 1),
        "resources": _measure_window(cl, a, b, roles or _roles(cl)),
    }
    if mode == "steady":
        out.update({
            "p50_ms": _ms(_pct(lat, 50)), "p99_ms": _ms(_pct(lat, 99)), "max_ms": _ms(max(lat) if lat else None),
            "solo_p50_ms": _ms(res[0]["p50"]), "solo_p99_ms": _ms(res[0]["p99"]),
        })
        if cl.option == "R":
            out["local_state_had_it_pct"] = round(100.0 * sum(r["local_has"] for r in res) / max(1, out["committed"]), 2)
    else:
        out["p50_ms"] = _ms(_pct([r["p50"] for r in res if r["p50"] is not None], 50))
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 2)


def _freshness(cl: Cluster) -> dict:
    """R: how long after the leader applies an entry a non-voter has it (steady-phase ids).
    F: a read from the leader over ZeroMQ (always the leader's latest applied state)."""
    leader = cl.voters[cl.leader_index()]
    t_leader = leader.call({"op": "applied_at"})["t"]
    if cl.option == "R":
        lags = []
        for w in cl.groups[:2]:
            t_nv = w.call({"op": "applied_at", "node": 0})["t"]
            lags += [t_nv[k] - t_leader[k] for k in t_nv if k in t_leader]
        return {"kind": "non-voter apply lag behind leader apply", "n": len(lags),
                "p50_ms": _ms(_pct(lags, 50)), "p99_ms": _ms(_pct(lags, 99)),
                "read_ms": "local dict lookup"}
    nid = next(iter(t_leader)) if t_leader else "none"
    r = cl.groups[0].call({"op": "reads", "n": 200, "nid": nid}, 60)
    return {"kind": "read from the leader over ZeroMQ (fresh by construction)",
            "read_p50_ms": _ms(r["p50"]), "read_p99_ms": _ms(r["p99"]), "seen": r["seen"], "n": r["n"]}


def _catchup(cl: Cluster, entries: int) -> dict:
    li = cl.leader_index()
    r = cl.voters[li].call({"op": "fill", "target": entries}, 120)
    st = cl.voters[li].call({"op": "status"})
    target = st["commit_idx"]
    res = cl.fresh.call({"op": "catchup", "target": target, "timeout": 60}, 90)
    res.update({"target_index": target, "leader_log_len": st["log_len"], "notes": st["notes"],
                "filled": r["submitted"]})
    res["t"] = round(res["t"], 3)
    return res


def _failover(cl: Cluster, runs: int, wait: float) -> list[dict]:
    out = []
    for run in range(runs):
        li = cl.leader_index()
        probe = cl.groups[0]
        probe.call({"op": "probe_start", "interval": 0.02})
        time.sleep(1.0)
        t_kill = time.monotonic()
        cl.voters[li].kill()
        cl.voters[li] = None
        first = None
        while time.monotonic() - t_kill < wait:
            time.sleep(0.2)
            first = probe.call({"op": "probe_first_after", "t": t_kill})["t"]
            if first is not None:
                break
        log = probe.call({"op": "probe_stop"})["log"]
        before = [c for s, c in log if c is not None and c < t_kill]
        new_leader = None
        for st in cl.statuses():
            if st and st["leader"]:
                new_leader = st["leader_addr"]
        out.append({"run": run + 1, "killed": cl.raft_addrs[li],
                    "new_leader": new_leader,
                    "commit_again_s": None if first is None else round(first - t_kill, 3),
                    "last_commit_before_kill_s": round(t_kill - max(before), 3) if before else None})
        # Bring the killed voter back from its journal and let the cluster settle.
        cl.start_voter(li)
        t_end = time.monotonic() + 12.0
        while time.monotonic() < t_end:
            sts = cl.statuses()
            lead = [s for s in sts if s and s["leader"]]
            me = sts[li]
            ok = lead and me and me["commit_idx"] >= lead[0]["commit_idx"] - 5
            if ok and cl.option == "R":
                ok = me["readonly"] >= NONVOTERS  # read-only replicas reconnected to it too
            if ok:
                break
            time.sleep(0.2)
        time.sleep(1.0)
    return out


def run_option(option: str, use_batch: bool, ph: Phases, tmp: Path) -> dict:
    cl = Cluster(option, use_batch, tmp)
    res: dict[str, Any] = {"option": option, "appendEntriesUseBatch": use_batch}
    try:
        res["startup_s"] = round(cl.start(), 2)
        print("[%s] up in %.1f s" % (option, res["startup_s"]), flush=True)
        time.sleep(ph.settle)
        roles = _roles(cl)
        a = Snapshot(cl.workers())
        time.sleep(ph.idle)
        b = Snapshot(cl.workers())
        res["idle"] = _measure_window(cl, a, b, roles)
        res["rss_mib"] = _rss(cl, roles)
        print("[%s] idle done" % option, flush=True)
        res["steady"] = _load(cl, "steady", ph.steady, "s-", rate=ph.steady_rate, roles=roles)
        print("[%s] steady done" % option, flush=True)
        res["freshness"] = _freshness(cl)
        if option == "R":
            res["catchup"] = _catchup(cl, ph.catchup_entries)
            print("[%s] catch-up done" % option, flush=True)
        res["pipeline"] = _load(cl, "pipeline", ph.pipeline, "t-", window=ph.window, roles=roles)
        res["rss_mib_after_load"] = _rss(cl, roles)
        print("[%s] pipeline done" % option, flush=True)
        res["failover"] = _failover(cl, ph.failovers, ph.failover_wait)
        print("[%s] failover done" % option, flush=True)
    finally:
        cl.stop()
    return res


def _machine() -> dict:
    import pysyncobj.version
    return {
        "nproc": os.cpu_count(), "python": platform.python_version(),
        "pysyncobj": pysyncobj.version.VERSION, "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.1f" % v if abs(v) >= 10 else "%.2f" % v
    return str(v)


def print_table(results: dict) -> None:
    opts = list(results["options"])
    rows: list[tuple[str, ...]] = []

    def row(label: str, get) -> None:
        vals = []
        for o in opts:
            try:
                vals.append(_fmt(get(results["options"][o])))
            except (KeyError, TypeError, IndexError):
                vals.append("-")
        rows.append((label, *vals))

    for phase in ("idle", "steady", "pipeline"):
        key = (lambda p: (lambda r: r[p])) if phase == "idle" else (lambda p: (lambda r: r[p]["resources"]))
        g = key(phase)
        row("%s CPU %% leader" % phase, lambda r, g=g: g(r)["leader"]["cpu_pct"])
        row("%s CPU %% follower voter" % phase, lambda r, g=g: g(r)["follower"]["cpu_pct"])
        row("%s CPU %% non-voter (own process)" % phase, lambda r, g=g: g(r)["nonvoter"]["cpu_pct"])
        row("%s CPU %% non-voter (packed, per node)" % phase, lambda r, g=g: g(r)["packed"]["per_node_cpu_pct"])
        row("%s CPU %% all 50 nodes" % phase, lambda r, g=g: g(r)["all_processes_cpu_pct"])
        row("%s leader sends kB/s" % phase, lambda r, g=g: g(r)["leader"]["net_kBps"])
    row("RSS MiB leader (idle)", lambda r: r["rss_mib"]["leader"])
    row("RSS MiB follower (idle)", lambda r: r["rss_mib"]["follower"])
    row("RSS MiB non-voter (idle)", lambda r: r["rss_mib"]["nonvoter"])
    row("RSS MiB packed proc (idle)", lambda r: r["rss_mib"]["packed"])
    row("RSS MiB non-voter (after load)", lambda r: r["rss_mib_after_load"]["nonvoter"])
    row("RSS MiB leader (after load)", lambda r: r["rss_mib_after_load"]["leader"])
    row("200/s commit p50 ms", lambda r: r["steady"]["p50_ms"])
    row("200/s commit p99 ms", lambda r: r["steady"]["p99_ms"])
    row("200/s committed/sent", lambda r: "%d/%d" % (r["steady"]["committed"], r["steady"]["sent"]))
    row("200/s local state had it %", lambda r: r["steady"]["local_state_had_it_pct"])
    row("non-voter apply lag p50 ms", lambda r: r["freshness"]["p50_ms"])
    row("non-voter apply lag p99 ms", lambda r: r["freshness"]["p99_ms"])
    row("read from leader p50 ms", lambda r: r["freshness"]["read_p50_ms"])
    row("pipelined commits/s", lambda r: r["pipeline"]["committed_per_s"])
    row("pipelined p50 ms", lambda r: r["pipeline"]["p50_ms"])
    row("failover: commit again s", lambda r: ", ".join(_fmt(f["commit_again_s"]) for f in r["failover"]))
    row("catch-up: entries / s", lambda r: "%d in %.2f" % (r["catchup"]["target_index"], r["catchup"]["t"]))
    w = [max(len(x[i]) for x in rows + [("", *opts)]) for i in range(len(opts) + 1)]
    hdr = ("figure", *opts)
    w = [max(w[i], len(hdr[i])) for i in range(len(w))]
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short phases (about a minute per option)")
    ap.add_argument("--options", default="R:on,F:off",
                    help="options to run, comma separated, each OPTION:BATCH with BATCH the "
                         "appendEntriesUseBatch setting (default: each option's best, R:on,F:off)")
    ap.add_argument("--out", default=str(RESULTS), help="JSON output path")
    args = ap.parse_args(argv)
    ph = Phases(args.quick)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="hagent-nonvoters-"))
    results: dict[str, Any] = {
        "benchmark": "nonvoters", "machine": _machine(), "quick": args.quick,
        "layout": {"voters": VOTERS, "nonvoters": NONVOTERS,
                   "nonvoter_processes": 1 + PACKED_PROCESSES,
                   "note": "one measured non-voter alone in its process; the other %d packed "
                           "into %d processes" % (NONVOTERS - 1, PACKED_PROCESSES)},
        "settings": {"password": True, "leaderFallbackTimeout": 2.5,
                     "steady_rate": ph.steady_rate, "resend_after_s": 3.0,
                     "pipeline_window_per_node": ph.window, "record_bytes_pickled": 311},
        "options": {},
    }
    ok = True
    try:
        for item in args.options.split(","):
            opt, _, batch = item.strip().partition(":")
            use_batch = (batch or ("on" if opt == "R" else "off")) == "on"
            label = "%s batch=%s" % (opt, "on" if use_batch else "off")
            results["options"][label] = run_option(opt, use_batch, ph, tmp)
    except Exception as e:  # keep what was measured; say what broke
        ok = False
        results["error"] = "%s: %s" % (type(e).__name__, e)
        print("benchmark failed: %s (worker logs in %s)" % (results["error"], tmp), file=sys.stderr)
    results["run_time_s"] = round(time.monotonic() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print("run time %.0f s; JSON in %s" % (results["run_time_s"], out))
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
