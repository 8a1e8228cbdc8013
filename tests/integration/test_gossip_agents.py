"""Real agents (`hagent run`) with gossip: 3 voters and a non-voter find each other through
a seed, show every member alive on /status, `hagentctl members` and /metrics, declare a
SIGKILLed non-voter dead, and stop promptly on SIGTERM (a graceful leave, no ZeroMQ hang)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from hagent.admin import client
from hagent.config import toml_value
from hagent.forward.keys import write_key_pair
from hagent.lab.ports import PortPicker
from hagent.secretfile import write_secret

ROOT = Path(__file__).resolve().parents[2]
NODES, VOTERS = 4, 3

pytestmark = pytest.mark.xdist_group("lab")


def poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, ValueError, client.AdminUnavailable):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.1)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.read().decode()


@dataclass
class Node:
    name: str
    dir: Path
    status_url: str
    admin_socket: Path

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"


def toml(doc: dict[str, dict]) -> str:
    return "".join(f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
                   for section, values in doc.items())


@pytest.fixture
def agents(tmp_path):
    """NODES agents, the first VOTERS of them voters, every voter a gossip seed; written here
    rather than by the lab so this test pins down exactly the gossip settings it needs."""
    picker = PortPicker(tmp_path)
    ports = picker.pick(VOTERS * 2 + NODES * 2)
    raft = [f"127.0.0.1:{p}" for p in ports[:VOTERS]]
    forward = [f"127.0.0.1:{p}" for p in ports[VOTERS:2 * VOTERS]]
    status = [f"127.0.0.1:{p}" for p in ports[2 * VOTERS:2 * VOTERS + NODES]]
    gossip = [f"127.0.0.1:{p}" for p in ports[2 * VOTERS + NODES:]]
    secret = tmp_path / "cluster.secret"
    write_secret(secret)
    names = [f"node{i + 1}" for i in range(NODES)]
    keys = {}
    for name in names:
        (tmp_path / name / "run").mkdir(parents=True, mode=0o700)
        keys[name] = write_key_pair(tmp_path / name / "node.key").public
    voter_keys = [keys[n] for n in names[:VOTERS]]
    nodes, procs = [], {}
    for i, name in enumerate(names):
        d = tmp_path / name
        doc = {
            "node": {"name": name, "state_dir": str(d / "state"), "run_dir": str(d / "run")},
            "raft": {"voters": raft, **({"bind": raft[i], "secret_file": str(secret)}
                                        if i < VOTERS else {})},
            "forward": {"endpoints": forward},
            "security": {"key_file": str(d / "node.key"), "allowed_keys": sorted(keys.values()),
                         "voter_keys": voter_keys},
            "gossip": {"bind": gossip[i], "seeds": gossip[:VOTERS], "seed_keys": voter_keys},
            "admin": {"socket": str(d / "run" / "hagent.sock")},
            "status": {"bind": status[i]},
            # Gossip alone is under test: no watchdog (this machine has none).
            "fencing": {"watchdog_mode": "off", "unsafe_no_fencing": True},
            "recovery": {"enabled": False},  # no Nova here
        }
        (d / "hagent.toml").write_text(toml(doc))
        node = Node(name, d, f"http://{status[i]}", d / "run" / "hagent.sock")
        nodes.append(node)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        with open(node.log, "ab") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "hagent", "run", "--config", str(d / "hagent.toml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
    yield nodes, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    picker.release(ports)


def test_agents_gossip_show_members_and_stop_cleanly(agents):
    plans, procs = agents
    names = [p.name for p in plans]

    def everyone_alive():
        for plan in plans:
            doc = json.loads(get(plan.status_url + "/status"))
            if {m["name"]: m["state"] for m in doc.get("members", [])} != dict.fromkeys(names, "alive"):
                return False
        return True

    poll(everyone_alive, 60, "every agent sees every member alive on /status")

    # hagentctl members on the non-voter (its lease query goes through a voter), once it has
    # heard from node1 directly (it may have learnt node1 from a push-pull relayed by another)
    def members():
        reply = client.call(plans[3].admin_socket, "members", {})
        assert reply["ok"], reply
        rows = {r["name"]: r for r in reply["result"]}
        return rows if rows["node1"]["last_heard_ago"] is not None else None

    rows = poll(members, 10, "node4 hears from node1")
    assert set(rows) == set(names)
    assert [rows[n]["voter"] for n in names] == [True, True, True, False]
    assert rows["node4"]["last_heard_ago"] is None and rows["node1"]["last_heard_ago"] < 5
    assert all("lease_expires_in" in r for r in rows.values())

    status = json.loads(get(plans[0].status_url + "/status"))
    assert status["membership"]["members_by_state"]["alive"] == NODES

    def probed():
        metrics = get(plans[0].status_url + "/metrics")
        probes = [line for line in metrics.splitlines()
                  if line.startswith("hagent_gossip_probes_total")]
        return metrics if probes and float(probes[0].split()[-1]) > 0 else None

    metrics = poll(probed, 10, "node1's /metrics count its probes")
    assert 'hagent_gossip_members{state="alive"} 4.0' in metrics
    assert 'hagent_gossip_dropped_messages_total{direction="in",kind="malformed"} 0.0' in metrics

    procs["node4"].send_signal(signal.SIGKILL)
    procs["node4"].wait()

    def node4_dead():
        return all({m["name"]: m["state"] for m in json.loads(get(p.status_url + "/status"))["members"]}
                   .get("node4") == "dead" for p in plans[:3])

    poll(node4_dead, 30, "the voters declare the killed non-voter dead")
    assert "member node4 dead" in plans[0].log.read_text()

    started = time.monotonic()
    for name in names[:3]:
        procs[name].send_signal(signal.SIGTERM)
    for name in names[:3]:
        assert procs[name].wait(timeout=30) == 0, plans[names.index(name)].log.read_text()[-3000:]
    print(f"three agents stopped in {time.monotonic() - started:.2f} s")
