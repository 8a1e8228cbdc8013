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
from pathlib import Path

import pytest

from hagent.admin import client
from hagent.forward.keys import write_key_pair
from hagent.lab.configs import node_config, plan_nodes, render_toml
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


@pytest.fixture
def agents(tmp_path):
    picker = PortPicker(tmp_path)
    ports = picker.pick(VOTERS * 2 + NODES * 2)
    raft, forward = ports[:VOTERS], ports[VOTERS:2 * VOTERS]
    status, gossip = ports[2 * VOTERS:2 * VOTERS + NODES], ports[2 * VOTERS + NODES:]
    plans = plan_nodes(tmp_path, NODES, VOTERS, raft, status, forward_ports=forward)
    secret = tmp_path / "cluster.secret"
    write_secret(secret)
    keys = {}
    for plan in plans:
        for d in (plan.dir, plan.state_dir, plan.run_dir, plan.admin_socket.parent):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys[plan.name] = write_key_pair(plan.key_file, overwrite=True).public
    gossip_address = {p.name: f"127.0.0.1:{port}" for p, port in zip(plans, gossip)}
    seed = plans[0].name
    procs = {}
    for plan in plans:
        doc = node_config(plan, [p.raft_address for p in plans if p.voter], secret,
                          forward_endpoints=[p.forward_address for p in plans if p.voter],
                          public_keys=keys, voter_keys=[keys[p.name] for p in plans if p.voter])
        doc["security"]["allowed_keys"] = [keys[n] for n in sorted(keys)]
        doc["gossip"] = {"bind": gossip_address[plan.name], "seeds": [gossip_address[seed]],
                         "seed_keys": [keys[seed]]}
        plan.config.write_text(render_toml(doc))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        with open(plan.log, "ab") as log:
            procs[plan.name] = subprocess.Popen(
                [sys.executable, "-m", "hagent", "run", "--config", str(plan.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
    yield plans, procs
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
