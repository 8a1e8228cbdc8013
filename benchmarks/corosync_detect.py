"""Benchmark: SIGKILL one of 5 corosync 3 nodes; how long until the survivors install a new membership?

The baseline hagent's gossip failure detection is judged against. Corosync 3.1 (Debian) runs one
instance per network namespace of a netns lab (``hagent/lab/netns.py``: one bridge, one /24,
no delay), 5 nodes, each with a minimal corosync.conf: nodelist, ``quorum { provider:
corosync_votequorum }``, crypto aes256/sha256 with a random 256-byte authkey, and every totem
timing left at its default: knet transport, token 3000 ms + 650 ms per node above 2 = 4950 ms
for 5 nodes, consensus 1.2 x token = 5940 ms. Corosync allows one instance per machine through
a lock file at /var/run/corosync.pid, so each runs in a private mount namespace (``ip netns
exec`` makes one) with its own directory bound over /run; its IPC (libqb abstract sockets)
is per network namespace, so ``corosync-cmapctl`` in a namespace talks to that node's corosync.

Each run SIGKILLs one node (cycling through all 5), notes the wall-clock time, and reads:

- **log** (the figures): each survivor's corosync.log, ``timestamp: hires`` (ms): the first
  "Token has not been received" (first sign of trouble), "A processor failed, forming new
  configuration" (token timeout, consensus starts), "A new membership (...) was formed.
  Members left: <victim>" (the new membership) and "[QUORUM] Members[4]" (votequorum has
  it). Times are from the kill to the line, per survivor.
- **poll** (cross-check, and the method the hagent side uses too): every survivor's view,
  ``corosync-cmapctl runtime.members.`` in its namespace, polled back to back (~10 ms per
  survivor) until the victim's status is ``left``.

Then the victim is started again and every node must see all 5 before the next run.

Side by side with hagent: ``measure(cluster, runs)`` runs the same kill against anything
implementing ``Cluster``; ``HagentCluster`` drives hagent's netns lab and reads each survivor's
member states from its ``GET /status`` (``hagent_member_states``: the one function to adapt
to the field the gossip layer exposes). ``compare(runs)`` runs both and returns them side by
side; ``--hagent`` does it from the command line.

Run: python -m benchmarks.corosync_detect [--quick] [--runs N] [--hagent]
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from benchmarks import common
from hagent.lab.cluster import Lab, LabError
from hagent.lab.netns import Network

NAME = "corosync_detect"
NODES = 5
#: Give up on a run after this long without the victim leaving every survivor's view.
RUN_TIMEOUT = 60.0
#: A restarted node rejoins in one token timeout plus a join round (~8 s measured).
REJOIN_TIMEOUT = 60.0
ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"


class Cluster(Protocol):
    """What one kill-and-watch measurement needs from a cluster under test."""

    system: str            # "corosync", "hagent"
    names: list[str]

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s daemon (returns once the signal is sent)."""

    def restart(self, name: str) -> None:
        """Start ``name``'s daemon again with the same configuration."""

    def states(self, observer: str) -> dict[str, str]:
        """``observer``'s view right now: member name -> alive | suspect | dead (a member
        it does not list is not in its view). Raises if the observer does not answer."""

    def log_times(self, observer: str, victim: str, since: float) -> dict[str, float]:
        """Extra figures from ``observer``'s own log: event -> seconds after ``since``
        (wall clock). ``{}`` when the system logs nothing comparable."""


# --- corosync ------------------------------------------------------------------------------

CONF = """\
totem {{
  version: 2
  cluster_name: {cluster}
  crypto_cipher: aes256
  crypto_hash: sha256
  keyfile: {keyfile}
}}

nodelist {{
{nodes}}}

quorum {{
  provider: corosync_votequorum
}}

logging {{
  to_logfile: yes
  logfile: {logfile}
  to_syslog: no
  to_stderr: no
  timestamp: hires
}}

system {{
  state_dir: {state_dir}
}}
"""

_TS = re.compile(r"^(\w{3}\s+\d+ \d\d:\d\d:\d\d\.\d{3}) ")
_MEMBER = re.compile(r"^runtime\.members\.(\d+)\.status \(str\) = (\w+)")
#: Log events, first occurrence after the kill: name -> (substring, must name the victim).
LOG_EVENTS = {
    "token_not_received": ("Token has not been received", False),
    "processor_failed": ("A processor failed, forming new configuration", False),
    "new_membership": ("was formed. Members left:", True),
    "quorum_members": ("[QUORUM] Members[", False),
}


def log_time(line: str, now: float) -> float | None:
    """The wall-clock time of a corosync log line ("Nov 25 13:10:52.239 ...", local time, no
    year), or None if it has no timestamp."""
    m = _TS.match(line)
    if not m:
        return None
    year = dt.datetime.fromtimestamp(now).year
    stamp = dt.datetime.strptime(f"{year} {' '.join(m.group(1).split())}", "%Y %b %d %H:%M:%S.%f")
    if stamp.timestamp() > now + 86400:  # a line from last December read in January
        stamp = stamp.replace(year=year - 1)
    return stamp.timestamp()


class CorosyncCluster:
    """``n`` corosync daemons, one per namespace of a netns lab in ``dir``."""

    system = "corosync"

    def __init__(self, dir: Path, n: int = NODES) -> None:
        self.dir = Path(dir)
        self.names = [f"node{i + 1}" for i in range(n)]
        self.nodeid = {name: i + 1 for i, name in enumerate(self.names)}
        self.network = Network.create(self.dir, self.names)
        self.procs: dict[str, subprocess.Popen] = {}
        key = os.urandom(256)  # what corosync-keygen writes: 256 random bytes
        nodes = "".join(f"  node {{\n    ring0_addr: {link.address}\n    nodeid: {i + 1}\n"
                        f"    name: {link.name}\n  }}\n" for i, link in enumerate(self.network.nodes))
        for name in self.names:
            d = self.node_dir(name)
            (d / "run").mkdir(parents=True, exist_ok=True)
            keyfile = d / "authkey"
            keyfile.write_bytes(key)
            keyfile.chmod(0o400)
            (d / "corosync.conf").write_text(CONF.format(
                cluster=f"hl{self.network.lab_id}", keyfile=keyfile, nodes=nodes,
                logfile=self.log(name), state_dir=d))

    def node_dir(self, name: str) -> Path:
        return self.dir / name

    def log(self, name: str) -> Path:
        return self.node_dir(name) / "corosync.log"

    def start(self, name: str) -> None:
        d = self.node_dir(name)
        # Its own /run: corosync refuses a second instance through /var/run/corosync.pid.
        script = (f"mount --bind {shlex.quote(str(d / 'run'))} /run && "
                  f"exec corosync -f -c {shlex.quote(str(d / 'corosync.conf'))}")
        with open(d / "stdout.log", "ab") as out:
            self.procs[name] = subprocess.Popen(self.network.exec_argv(name, ["sh", "-c", script]),
                                                stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def up(self) -> None:
        for name in self.names:
            self.start(name)
        wait_full_view(self, REJOIN_TIMEOUT)

    def kill(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGKILL)

    def restart(self, name: str) -> None:
        self.procs[name].wait(timeout=10)
        self.start(name)

    def states(self, observer: str) -> dict[str, str]:
        proc = subprocess.run(self.network.exec_argv(observer, ["corosync-cmapctl", "runtime.members."]),
                              capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise RuntimeError(f"corosync-cmapctl on {observer}: {proc.stderr.strip()}")
        by_id = {v: k for k, v in self.nodeid.items()}
        out = {}
        for line in proc.stdout.splitlines():
            m = _MEMBER.match(line)
            if m and int(m.group(1)) in by_id:
                out[by_id[int(m.group(1))]] = ALIVE if m.group(2) == "joined" else DEAD
        return out

    def log_times(self, observer: str, victim: str, since: float) -> dict[str, float]:
        now = time.time()
        found: dict[str, float] = {}
        victim_id = str(self.nodeid[victim])
        for line in self.log(observer).read_text(errors="replace").splitlines():
            t = log_time(line, now)
            if t is None or t < since - 0.001:
                continue
            for event, (text, names_victim) in LOG_EVENTS.items():
                if event in found or text not in line:
                    continue
                if names_victim and victim_id not in line.rsplit(":", 1)[-1].split():
                    continue
                found[event] = round(t - since, 3)
        return found

    def down(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.network.teardown()


# --- hagent --------------------------------------------------------------------------------

def hagent_member_states(status: dict[str, Any]) -> dict[str, str]:
    """Member states from an agent's ``GET /status``: the gossip layer's ``members`` field,
    either rows ``[{"name", "state", ...}]`` (MemberView) or ``{name: state}``. ``left`` and
    ``dead`` both mean out of the view. KeyError when the agent has no gossip yet."""
    members = status["members"]
    rows = members.items() if isinstance(members, dict) else ((m["name"], m["state"]) for m in members)
    return {name: DEAD if state in ("dead", "left") else state for name, state in rows}


class HagentCluster:
    """hagent's netns lab of ``n`` agents (the first 3 vote), for the same kill."""

    system = "hagent"

    def __init__(self, dir: Path, n: int = NODES,
                 config_extra: dict[str, dict[str, Any]] | None = None) -> None:
        extra = {"logging": {"level": "WARNING"}}
        for section, values in (config_extra or {}).items():
            extra.setdefault(section, {}).update(values)
        self.lab = Lab.up(dir, nodes=n, voters=min(n, 3), netns=True, register=False,
                          config_extra=extra)
        self.names = self.lab.names

    def kill(self, name: str) -> None:
        self.lab.crash(name)

    def restart(self, name: str) -> None:
        self.lab.start(name)
        self.lab.wait_ready([name])

    def states(self, observer: str) -> dict[str, str]:
        try:
            return hagent_member_states(self.lab.status(observer, timeout=1.0))
        except LabError as exc:
            raise RuntimeError(str(exc)) from None

    def log_times(self, observer: str, victim: str, since: float) -> dict[str, float]:
        return {}

    def down(self) -> None:
        self.lab.down()


# --- the measurement -----------------------------------------------------------------------

def wait_full_view(cluster: Cluster, timeout: float) -> None:
    """Return once every node lists every node as alive."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if all(all(cluster.states(o).get(n) == ALIVE for n in cluster.names)
                   for o in cluster.names):
                return
        except RuntimeError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cluster.system}: not every node sees all {len(cluster.names)} "
                               f"alive within {timeout:g} s")
        time.sleep(0.1)


def one_run(cluster: Cluster, victim: str) -> dict[str, Any]:
    """Kill ``victim``; poll every survivor until it has left each one's view."""
    survivors = [n for n in cluster.names if n != victim]
    suspected: dict[str, float] = {}
    removed: dict[str, float] = {}
    t_kill = time.time()
    cluster.kill(victim)
    while True:
        for s in survivors:
            if s in removed:
                continue
            try:
                state = cluster.states(s).get(victim, DEAD)
            except RuntimeError:
                continue
            t = round(time.time() - t_kill, 3)
            if state != ALIVE:
                suspected.setdefault(s, t)
            if state == DEAD:
                removed[s] = t
        if len(removed) == len(survivors) or time.time() - t_kill > RUN_TIMEOUT:
            break
        time.sleep(0.005)
    logs = {s: cluster.log_times(s, victim, t_kill) for s in survivors}
    return {"victim": victim, "ok": len(removed) == len(survivors),
            "poll_first_suspect_s": min(suspected.values(), default=None),
            "poll_removed_first_s": min(removed.values(), default=None),
            "poll_removed_all_s": max(removed.values()) if len(removed) == len(survivors) else None,
            "poll_removed_by_survivor_s": removed, "log_by_survivor_s": logs}


def measure(cluster: Cluster, runs: int) -> dict[str, Any]:
    """``runs`` kills of each node in turn against ``cluster`` (already up), each followed by
    a restart and a wait for the full view; per-run records and percentiles."""
    per_run = []
    for i in range(runs):
        victim = cluster.names[i % len(cluster.names)]
        wait_full_view(cluster, REJOIN_TIMEOUT)
        r = one_run(cluster, victim)
        t = time.perf_counter()
        cluster.restart(victim)
        wait_full_view(cluster, REJOIN_TIMEOUT)
        r["rejoin_s"] = round(time.perf_counter() - t, 2)
        per_run.append(r)
        print(f"  {cluster.system} run {i + 1}/{runs}: killed {victim}, out of every view after "
              f"{r['poll_removed_all_s']} s (poll){_log_note(r)}; rejoined in {r['rejoin_s']} s",
              flush=True)
    return {"system": cluster.system, "runs": runs, "per_run": per_run, **figures(per_run)}


def _log_note(r: dict[str, Any]) -> str:
    times = [v["new_membership"] for v in r["log_by_survivor_s"].values() if "new_membership" in v]
    return f", {max(times)} s (log)" if times else ""


def figures(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99 over the runs of each reading: ``log_<event>_s`` is the slowest survivor's
    line (runs where every survivor logged it), ``log_<event>_first_s`` the first survivor's
    (not every survivor logs every event: "A processor failed" comes from those whose token
    timer fired, the others follow their consensus)."""
    ok = [r for r in per_run if r["ok"]]
    out: dict[str, Any] = {"failed_runs": len(per_run) - len(ok)}
    for key in ("poll_first_suspect_s", "poll_removed_first_s", "poll_removed_all_s"):
        out[key] = common.percentiles([r[key] for r in ok if r[key] is not None], 1.0, 3)
    for event in LOG_EVENTS:
        logged = [[v[event] for v in r["log_by_survivor_s"].values() if event in v] for r in ok]
        first = [min(times) for times in logged if times]
        slowest = [max(times) for times, r in zip(logged, ok)
                   if times and len(times) == len(r["log_by_survivor_s"])]
        if first:
            out[f"log_{event}_first_s"] = common.percentiles(first, 1.0, 3)
        if slowest:
            out[f"log_{event}_s"] = common.percentiles(slowest, 1.0, 3)
    return out


def run_corosync(runs: int, n: int = NODES) -> dict[str, Any]:
    """The corosync baseline: a fresh netns lab of ``n`` corosyncs, ``runs`` kills."""
    if not shutil.which("corosync"):
        return {"skipped": "corosync not installed (apt-get install corosync)"}
    d = Path(tempfile.mkdtemp(prefix="hcs-"))
    cluster = CorosyncCluster(d, n)
    try:
        t = time.perf_counter()
        cluster.up()
        started = round(time.perf_counter() - t, 2)
        doc = measure(cluster, runs)
        doc.update(nodes=n, start_to_full_membership_s=started, version=_corosync_version(),
                   totem="defaults: knet, token 3000 ms + 650 ms/node above 2, consensus 1.2 x token")
        return doc
    finally:
        cluster.down()
        shutil.rmtree(d, ignore_errors=True)


def run_hagent(runs: int, n: int = NODES,
               config_extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The same kill against hagent's netns lab; ``skipped`` when the agents' /status has no
    gossip members yet."""
    d = Path(tempfile.mkdtemp(prefix="hhd-"))
    try:
        cluster = HagentCluster(d, n, config_extra)
    except LabError:
        shutil.rmtree(d, ignore_errors=True)
        raise
    try:
        try:
            cluster.states(cluster.names[0])
        except KeyError:
            return {"skipped": "hagent's /status has no 'members' (gossip not wired in yet); "
                               "adapt hagent_member_states() to what it exposes"}
        doc = measure(cluster, runs)
        doc.update(nodes=n, config_extra=config_extra or {})
        return doc
    finally:
        cluster.down()
        shutil.rmtree(d, ignore_errors=True)


def compare(runs: int, n: int = NODES,
            hagent_config: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Both systems, same kill, same lab network: {"corosync", "hagent", "side_by_side"}."""
    coro = run_corosync(runs, n)
    hag = run_hagent(runs, n, hagent_config)
    rows = []
    for label, ckey, hkey in (
            ("kill -> failure detected (corosync: first 'processor failed', i.e. token timeout, "
             "log; hagent: first survivor suspects, poll)", "log_processor_failed_first_s",
             "poll_first_suspect_s"),
            ("kill -> out of every survivor's view (poll, both)", "poll_removed_all_s",
             "poll_removed_all_s")):
        c, h = coro.get(ckey) or {}, hag.get(hkey) or {}
        rows.append({"figure": label, "corosync_p50": c.get("p50"), "corosync_p99": c.get("p99"),
                     "hagent_p50": h.get("p50"), "hagent_p99": h.get("p99")})
    return {"corosync": coro, "hagent": hag, "side_by_side": rows}


def _corosync_version() -> str:
    out = subprocess.run(["corosync", "-v"], capture_output=True, text=True).stdout
    m = re.search(r"version '([^']+)'", out)
    return m.group(1) if m else out.strip()[:40]


def run(quick: bool = False, *, runs: int | None = None, with_hagent: bool = True) -> dict[str, Any]:
    runs = runs if runs is not None else (3 if quick else 10)
    background = common.background()
    started = time.perf_counter()
    doc = compare(runs) if with_hagent else {"corosync": run_corosync(runs), "hagent": {
        "skipped": "not asked for (--hagent)"}}
    doc.update(quick=quick, runs=runs, background_before=background,
               run_time_s=round(time.perf_counter() - started, 1))
    return doc


def summary(doc: dict[str, Any]) -> list[tuple[str, Any, dict | None]]:
    c = doc["corosync"]
    if "skipped" in c:
        return [("corosync", c["skipped"], None)]
    rows = []
    failed = c.get("log_processor_failed_first_s") or {}
    log = c.get("log_new_membership_s") or {}
    rows.append((f"corosync token timeout, log p50 (s, {c['runs']} runs)", failed.get("p50"), None))
    rows.append(("corosync new membership, log p50 (s)", log.get("p50"), None))
    rows.append(("corosync new membership, log p99 (s)", log.get("p99"), None))
    rows.append(("corosync out of every view, poll p50 (s)", c["poll_removed_all_s"]["p50"], None))
    h = doc.get("hagent") or {}
    if "skipped" in h:
        rows.append(("hagent (same kill)", "skipped: " + h["skipped"][:50], None))
    else:
        rows.append(("hagent out of every view, poll p50 (s)", h["poll_removed_all_s"]["p50"], None))
        rows.append(("hagent out of every view, poll p99 (s)", h["poll_removed_all_s"]["p99"], None))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--hagent", action="store_true",
                    help="also run the same kill against hagent's netns lab, side by side")
    args = ap.parse_args(argv)
    doc = run(args.quick, runs=args.runs, with_hagent=args.hagent)
    for key in ("log_token_not_received_first_s", "log_processor_failed_first_s",
                "log_new_membership_s", "log_quorum_members_s", "poll_removed_all_s"):
        if key in doc["corosync"]:
            print(f"corosync {key}: {json.dumps(doc['corosync'][key])}")
    if "side_by_side" in doc:
        print(json.dumps(doc["side_by_side"], indent=1))
    common.report(NAME, doc, write=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
