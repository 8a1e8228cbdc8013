"""A cluster of runner processes (real pysyncobj, real TCP on 127.0.0.1, one process a node).

Every wait polls with a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[3]
PASSWORD = "test-cluster-secret"

#: Timings that keep elections quick on a loaded 2-core CI box.
FAST = {"election_timeout_min": 0.4, "election_timeout_max": 1.0,
        "append_entries_period": 0.1, "connection_timeout": 1.5,
        "leader_fallback_timeout": 2.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # polling interval, not synchronisation


class NodeProc:
    """One runner process; requests are JSON lines, answers are matched by id."""

    def __init__(self, name: str, cfg: dict) -> None:
        self.name = name
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self._answers: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._next_id = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        log = open(Path(self.cfg["state_dir"]).parent / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.raft_helpers.runner", json.dumps(self.cfg)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            text=True, bufsize=1)
        self._answers, self.events = {}, []
        threading.Thread(target=self._reader, args=(self.proc,), daemon=True).start()
        self.wait_event("started", 20)

    def _reader(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                if proc is not self.proc:
                    return
                if "id" in doc and doc["id"] is not None:
                    self._answers[doc["id"]] = doc
                else:
                    self.events.append(doc)
                self._cond.notify_all()

    def wait_event(self, name: str, timeout: float, count: int = 1) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == name]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not found:
                    raise AssertionError(f"{self.name}: no {count}x {name!r} event "
                                         f"(exit {self.proc.poll()})")
                self._cond.wait(min(left, 0.2))

    def request(self, op: str, timeout: float = 10.0, **kw) -> dict:
        rid = self.send(op, **kw)
        return self.answer(rid, timeout)

    def send(self, op: str, **kw) -> int:
        with self._cond:
            self._next_id += 1
            rid = self._next_id
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return rid

    def answer(self, rid: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while rid not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no answer to request {rid}")
                self._cond.wait(min(left, 0.2))
            return self._answers.pop(rid)

    def status(self, timeout: float = 5.0) -> dict | None:
        if not self.alive():
            return None
        try:
            return self.request("status", timeout)["status"]
        except (AssertionError, BrokenPipeError, OSError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if not self.alive():
            return
        try:
            self.send("exit")
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)


class ProcCluster:
    """``voters`` voter processes and ``replicas`` replica processes in ``tmp``."""

    def __init__(self, tmp: Path, voters: int = 3, replicas: int = 0,
                 options: dict | None = None, pysyncobj: dict | None = None,
                 extra: dict[str, dict] | None = None) -> None:
        self.tmp = Path(tmp)
        self.events_path = self.tmp / "events.jsonl"
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(voters)]
        opts = dict(FAST, **(options or {}))
        self.nodes: list[NodeProc] = []
        for i in range(voters + replicas):
            name = f"v{i}" if i < voters else f"r{i - voters}"
            cfg = {"self_address": self.addresses[i] if i < voters else None,
                   "voters": self.addresses, "state_dir": str(self.tmp / name / "raft"),
                   "password": PASSWORD, "events": str(self.events_path), "node_name": name,
                   "options": opts, "pysyncobj": pysyncobj or {}}
            cfg.update((extra or {}).get(name, {}))
            (self.tmp / name).mkdir(parents=True, exist_ok=True)
            self.nodes.append(NodeProc(name, cfg))
        self.voters = self.nodes[:voters]
        self.replicas = self.nodes[voters:]

    def start(self) -> "ProcCluster":
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                pass

    def __enter__(self) -> "ProcCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            if node.alive():
                node.kill()

    def journal(self, node: NodeProc) -> Path:
        return Path(node.cfg["state_dir"]) / "journal"

    def leader(self, timeout: float = 15.0, among: list[NodeProc] | None = None) -> NodeProc:
        """The voter that says it leads and that every live voter names as leader."""
        among = among or self.voters

        def find():
            statuses = {n.name: n.status() for n in among if n.alive()}
            leaders = [n for n in among if (statuses.get(n.name) or {}).get("role") == "leader"]
            if len(leaders) != 1:
                return None
            addr = leaders[0].cfg["self_address"]
            if all(s is not None and s["leader"] == addr for s in statuses.values()):
                return leaders[0]
            return None

        return wait_for(find, timeout, "one agreed leader")

    def role_events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line cut by SIGKILL
        return out
