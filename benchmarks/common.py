"""Shared pieces of the benchmarks: machine facts, result files, goals, labs, a fast admin client.

Every benchmark module exposes ``main(argv) -> int`` and a ``run(quick: bool) -> dict`` that
returns its result document; ``benchmarks.run`` calls ``run`` in sequence and ``save``s each
document as ``benchmarks/results/<name>.json`` together with ``machine()``.

Goals are *reported*, never asserted: ``goal(value, "<=", target)`` gives a small record
``{"value", "op", "target", "met"}`` that the summary table prints as pass/miss.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` as well as `python -m benchmarks.x`
    sys.path.insert(0, str(ROOT))

from hagent.admin import protocol  # noqa: E402
from hagent.lab.cluster import Lab  # noqa: E402


# --- facts and results ------------------------------------------------------------------

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def fsync_latency_ms(samples: int = 50) -> float:
    """Median write+fsync of 200 bytes in the temp dir: the disk the labs' spools and journals use."""
    fd, path = tempfile.mkstemp(prefix="hagent-bench-fsync-")
    times = []
    try:
        for _ in range(samples):
            t = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fsync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return round(sorted(times)[len(times) // 2] * 1000, 3)


def machine() -> dict[str, Any]:
    """What the figures were measured on (written into every result file)."""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), platform.processor())
    except OSError:
        cpu = platform.processor()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": psutil.virtual_memory().total // (1 << 20),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pysyncobj": importlib.metadata.version("pysyncobj"),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "tmp_fsync_ms_p50": fsync_latency_ms(),
        "loadavg_at_save": [round(x, 2) for x in os.getloadavg()],
    }


def other_agents(under: str = "") -> int:
    """hagent agent processes running on this machine (other people's labs share the CPUs),
    or only those whose config lies under the directory ``under``."""
    n = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "hagent" in cmd and "run" in cmd and (not under or any(a.startswith(under + "/") for a in cmd)):
            n += 1
    return n


class ForeignCpu:
    """CPU used on this machine by processes other than ours (the lab's agents and this one)
    over a window, in % of one core: other people's work sharing the cores skews figures."""

    def __init__(self, ours: list[psutil.Process]) -> None:
        self.ours = list(ours) + [psutil.Process()]
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        mine = 0.0
        for p in self.ours:
            try:
                mine += cpu_seconds(p)
            except psutil.Error:
                pass
        return time.perf_counter(), busy, mine

    def percent(self) -> float:
        t1, busy1, mine1 = self._sample()
        t0, busy0, mine0 = self._start
        return round(max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (t1 - t0) * 100, 1)


def wait_quiet(max_wait: float = 60.0, threshold: float = 25.0) -> float:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` % of one
    core over a 2 s sample; returns the last sample. A shared machine skews every figure."""
    deadline = time.monotonic() + max_wait
    while True:
        f = ForeignCpu([])
        time.sleep(2.0)
        pct = f.percent()
        if pct < threshold or time.monotonic() >= deadline:
            return pct
        print(f"  (machine busy: other processes use {pct:.0f} % of a core; waiting)", flush=True)


def background() -> dict[str, Any]:
    """Load on the machine right now, before a benchmark starts its own agents."""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "hagent_agents_running": other_agents()}


def save(name: str, doc: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``doc`` (plus machine facts) to ``<out_dir>/<name>.json``; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine(), **doc}
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def goal(value: float | None, op: str, target: float, unit: str = "") -> dict[str, Any]:
    """A goal record: ``met`` is None when nothing was measured."""
    if value is None:
        met = None
    elif op == "<=":
        met = value <= target
    elif op == ">=":
        met = value >= target
    else:
        raise ValueError(op)
    return {"value": value, "op": op, "target": target, "unit": unit, "met": met}


def verdict(g: dict[str, Any]) -> str:
    return {True: "pass", False: "MISS", None: "n/a"}[g["met"]]


def percentiles(xs: list[float], scale: float = 1.0, nd: int = 2) -> dict[str, float | None]:
    """p50/p95/p99/max/mean of ``xs`` times ``scale`` (nearest-rank), rounded."""
    if not xs:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    s = sorted(xs)

    def at(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, int(round(p * len(s) + 0.5)) - 1))] * scale, nd)

    return {"n": len(s), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99),
            "max": round(s[-1] * scale, nd), "mean": round(sum(s) / len(s) * scale, nd)}


def print_goals(name: str, goals: dict[str, dict[str, Any]]) -> None:
    for key, g in goals.items():
        print(f"  [{verdict(g):4}] {name}.{key}: {g['value']} {g['unit']} (goal {g['op']} {g['target']})")


def arg_parser(doc: str, set_example: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--no-save`` and, for benchmarks
    that start a lab, ``--set section.key=JSON`` (extra agent config, for tuning)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-save", action="store_true", help="print only (for tuning runs)")
    if set_example is not None:
        ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help=f"extra agent config, e.g. --set {set_example}")
    return ap


def report(name: str, doc: dict[str, Any], write: bool) -> None:
    """Print the goals of ``doc`` (and of its tuned pass, if any); write it unless told not to."""
    if "goals" in doc:
        print_goals(name, doc["goals"])
    if "tuned" in doc:
        print_goals(name + " (tuned)", doc["tuned"]["goals"])
    if write:
        print("wrote", save(name, doc))


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set section.key=JSON`` options -> a config_extra document for the lab."""
    extra: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=JSON_VALUE")
        try:
            extra.setdefault(section, {})[name] = json.loads(value)
        except ValueError:
            extra.setdefault(section, {})[name] = value  # a bare string
    return extra


# --- labs -------------------------------------------------------------------------------

@contextlib.contextmanager
def lab(nodes: int = 3, voters: int = 3, *, config_extra: dict[str, dict[str, Any]] | None = None,
        timeout: float = 120.0, keep: bool = False,
        env: dict[str, str] | None = None, register: bool = True) -> Iterator[Lab]:
    """A running lab in a fresh temp dir; always brought down (and deleted unless ``keep``)."""
    d = Path(tempfile.mkdtemp(prefix="hb-"))  # short: admin sockets live under it
    extra = {"logging": {"level": "WARNING"}}
    for section, values in (config_extra or {}).items():
        extra.setdefault(section, {}).update(values)
    the_lab: Lab | None = None
    try:
        the_lab = Lab.up(d, nodes=nodes, voters=voters, timeout=timeout, config_extra=extra,
                         env=env, register=register)
    except BaseException:
        with contextlib.suppress(Exception):
            Lab.load(d).down()
        raise  # the directory stays: its agent logs say why
    try:
        yield the_lab
    finally:
        the_lab.down()
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def agent_processes(the_lab: Lab) -> dict[str, psutil.Process]:
    """name -> psutil.Process of every running agent."""
    out = {}
    for node in the_lab.nodes:
        p = the_lab._process(node)  # the lab's own pid-recycling-safe lookup
        if p is not None:
            out[node.name] = p
    return out


def process_memory(p: psutil.Process) -> dict[str, float]:
    """RSS and (when readable) USS/PSS of ``p`` in MB."""
    out: dict[str, float] = {}
    try:
        full = p.memory_full_info()
        out["rss_mb"] = round(full.rss / 2**20, 1)
        out["uss_mb"] = round(full.uss / 2**20, 1)
        out["pss_mb"] = round(getattr(full, "pss", 0) / 2**20, 1)
    except (psutil.AccessDenied, psutil.ZombieProcess):
        out["rss_mb"] = round(p.memory_info().rss / 2**20, 1)
    return out


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def ready_leader(the_lab: Lab, timeout: float = 15.0) -> str:
    return the_lab.leader(timeout=timeout)


# --- a lean asyncio admin client ----------------------------------------------------------

class AdminConn:
    """One admin-socket connection speaking the JSON-lines protocol (one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> AdminConn:
        reader, writer = await asyncio.open_unix_connection(path, limit=protocol.MAX_LINE + 1)
        return cls(reader, writer)

    async def call_raw(self, line: bytes) -> dict[str, Any]:
        self.writer.write(line)
        reply = await self.reader.readline()
        if not reply:
            raise ConnectionError("agent closed the admin connection")
        return json.loads(reply)

    async def call(self, verb: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.call_raw(protocol.encode_request(verb, args))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def open_many(path: str, n: int) -> list[AdminConn]:
    """``n`` connections, opened a few at a time (the server's listen backlog is 64)."""
    conns: list[AdminConn] = []
    for i in range(0, n, 32):
        conns += await asyncio.gather(*(AdminConn.open(path) for _ in range(min(32, n - i))))
    return conns


def notification_line(tag: str, i: int, hostname: str) -> bytes:
    """A ``notification.create`` request no other request duplicates (distinct uuid and payload)."""
    return protocol.encode_request("notification.create", {
        "type": "PROCESS", "hostname": hostname,
        "generated_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
        "payload": {"process_name": f"{tag}-{i}", "event": "STOPPED"}})


def committed(reply: dict[str, Any]) -> bool:
    return bool(reply.get("ok")) and bool((reply.get("result") or {}).get("committed"))
