"""The netns lab for real: agents in network namespaces on one bridge, partitioned, healed,
made to lose packets, and torn down without leaving a namespace, link or table behind.

Reachability is proved with real probes (a TCP connect from one namespace to another: an
answer, even a RST, proves packets went both ways; a timeout proves they did not). Every wait
polls with a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from hagent.lab.cluster import LAB_FILE, STOPPED, Lab, LabError
from hagent.lab.configs import DEPLOYMENT_PORTS
from hagent.lab.netns import PREFIX, RECORD_FILE, REACHABLE, Network

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

DEADLINE = 30.0
RAFT = DEPLOYMENT_PORTS["raft"]
STATUS = DEPLOYMENT_PORTS["status"]
# A probe to a port nothing listens on: "refused" (reachable) or "timeout" (dropped).
PROBE_TIMEOUT = 0.5
MAJORITY, MINORITY = ["node1", "node2"], ["node3", "node4", "node5"]  # voters: node1-3


def until(what: str, cond: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except LabError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def vm_notification(host: str) -> dict[str, Any]:
    return {"type": "VM", "hostname": host, "generated_time": "2026-01-01T00:00:00",
            "payload": {"event": "LIFECYCLE", "instance_uuid": str(uuid.uuid4()),
                        "vir_domain_event": "STOPPED_FAILED"}}


def known_uuids(lab: Lab, name: str) -> set[str]:
    try:
        records = lab.admin(name, "notification.list", {}, timeout=5)
    except LabError:
        return set()
    return {r["notification_uuid"] for r in records}


def reachable(lab: Lab, src: str, dst: str, port: int = RAFT + 100) -> bool:
    net = lab.network
    return net.probe(src, net.address(dst), port, PROBE_TIMEOUT) in REACHABLE


def leftovers(lab_id: str) -> list[str]:
    """Every namespace, link and nftables table whose name carries this lab's id."""
    tag = PREFIX + lab_id

    def lines(*argv: str) -> list[str]:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()

    return ([f"netns {line}" for line in lines("ip", "netns", "list") if tag in line]
            + [f"link {line}" for line in lines("ip", "-o", "link") if tag in line]
            + [f"nft {line}" for line in lines("nft", "list", "tables") if tag in line])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    lab = Lab.up(tmp_path_factory.mktemp("nl"), nodes=5, voters=3, netns=True, config_extra={
        "notifications": {"submit_timeout": 1.0, "resend_interval": 0.2}})
    yield lab
    lab_id = lab.network.lab_id
    lab.down()
    assert leftovers(lab_id) == []


def test_agents_run_in_their_namespaces_and_commit(lab: Lab) -> None:
    net = lab.network
    for node in lab.nodes:
        ident = subprocess.run(["ip", "netns", "identify", str(node.pid)], capture_output=True,
                               text=True, check=True).stdout.strip()
        assert ident == node.netns == net.link(node.name).netns
        assert node.status_url == f"http://{net.address(node.name)}:{STATUS}"
        assert lab.status(node.name)["ready"]  # reached from the root namespace over the bridge
    assert net.probe("node4", net.address("node1"), STATUS) == "open"
    for via in ("node1", "node4"):  # a voter, and a non-voter through its forward link
        answer = lab.admin(via, "notification.create", vm_notification(via))
        assert answer["committed"], answer


def test_partition_cuts_groups_both_ways_and_the_voter_minority_commits_nothing(lab: Lab) -> None:
    lab.partition([MAJORITY, MINORITY])
    try:
        assert not reachable(lab, "node1", "node3") and not reachable(lab, "node3", "node1")
        assert not reachable(lab, "node5", "node2") and not reachable(lab, "node2", "node4")
        assert reachable(lab, "node1", "node2") and reachable(lab, "node3", "node5")
        assert lab.status("node3")["ready"] is not None  # the lab tooling still reaches all
        minority_commit = lab.status("node3")["commit_index"]

        def majority_commits() -> str | None:
            answer = lab.admin("node1", "notification.create", vm_notification("node1"))
            return answer["notification"]["notification_uuid"] if answer["committed"] else None

        majority_id = until("the majority side commits", majority_commits)
        pending = []
        for via in ("node3", "node4"):
            answer = lab.admin(via, "notification.create", vm_notification(via))
            assert answer["committed"] is False, answer
            pending.append(answer["notification"]["notification_uuid"])
        assert lab.status("node3")["commit_index"] == minority_commit
        assert not set(pending) & known_uuids(lab, "node1")
        assert majority_id not in known_uuids(lab, "node3")
    finally:
        lab.heal()
    assert reachable(lab, "node1", "node3") and reachable(lab, "node3", "node1")
    until("node3 catches up with the majority", lambda: majority_id in known_uuids(lab, "node3"))
    until("the minority's spooled notifications commit after heal",
          lambda: set(pending) <= known_uuids(lab, "node1"))


def test_total_loss_isolates_a_node_and_zero_restores_it(lab: Lab) -> None:
    lab.loss("node5", 100)
    try:
        assert not reachable(lab, "node5", "node1") and not reachable(lab, "node2", "node5")
        assert reachable(lab, "node1", "node2")
        assert lab.status("node5")["ready"] is not None  # tooling traffic is never dropped
        assert lab.network.faults.loss == {"node5": 100}
    finally:
        lab.loss("node5", 0)
    assert lab.network.faults.loss == {}
    assert reachable(lab, "node5", "node1") and reachable(lab, "node2", "node5")


# Counts UDP datagrams until 1 s passes without one; prints "ready" once bound, then the count.
RECEIVER = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10.0)
print("ready", flush=True)
n = 0
try:
    while True:
        s.recv(64)
        n += 1
        s.settimeout(1.0)
except OSError:
    pass
print(n, flush=True)
"""
SENDER = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
"""


def test_partial_loss_drops_about_that_share(lab: Lab) -> None:
    """50 % on node2: of 400 datagrams node1 sends it, about 200 arrive (10 standard
    deviations either side of the mean are accepted)."""
    net = lab.network
    port, sent = 7999, 400
    assert reachable(lab, "node1", "node2")  # neighbour entries resolved before the loss
    lab.loss("node2", 50)
    try:
        receiver = subprocess.Popen(net.exec_argv("node2", [sys.executable, "-c", RECEIVER,
                                                            net.address("node2"), str(port)]),
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert receiver.stdout.readline().strip() == "ready"
            subprocess.run(net.exec_argv("node1", [sys.executable, "-c", SENDER,
                                                   net.address("node2"), str(port), str(sent)]),
                           check=True, timeout=30)
            received = int(receiver.communicate(timeout=30)[0].strip())
        finally:
            receiver.kill()
            receiver.wait()
    finally:
        lab.loss("node2", 0)
    assert 0.25 * sent < received < 0.75 * sent, received


def test_down_after_the_lab_cli_was_killed_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    directory = tmp_path / "killed"
    cli = subprocess.Popen([sys.executable, "-m", "hagent", "lab", "up", "--netns", "--nodes", "3",
                            "--no-register", "--dir", str(directory)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until("the lab CLI recorded its agents", lambda: (directory / LAB_FILE).exists())
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
    lab_id = json.loads((directory / RECORD_FILE).read_text())["lab_id"]
    pids = [n["pid"] for n in json.loads((directory / LAB_FILE).read_text())]
    assert leftovers(lab_id)
    out = subprocess.run([sys.executable, "-m", "hagent", "lab", "down", "--dir", str(directory)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert leftovers(lab_id) == []
    assert not (directory / RECORD_FILE).exists()
    assert Lab.load(directory).running() == []
    # Orphans of the killed CLI: init reaps them, a moment after they exit.
    until("the agents are reaped", lambda: all(not Path(f"/proc/{pid}").exists() for pid in pids))
    # Nothing of the other lab on this machine was touched.
    assert len(leftovers(lab.network.lab_id)) == 5 + 5 + 1 + 1  # netns, veths, bridge, table
    assert all(lab.state(n) != STOPPED for n in lab.names)


def test_down_without_lab_json_removes_the_network_and_what_runs_in_it(tmp_path: Path) -> None:
    """An `up --netns` that died after making its network but before recording its agents:
    `down` finds the network in netns.json and ends what still runs inside it."""
    directory = tmp_path / "early"
    net = Network.create(directory, ["node1", "node2"])
    orphan = subprocess.Popen(net.exec_argv("node1", ["sleep", "300"]))
    until("the orphan is in node1's namespace", lambda: orphan.pid in net.pids("node1"))
    out = subprocess.run([sys.executable, "-m", "hagent", "lab", "down", "--dir", str(directory)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert orphan.wait(timeout=10) == -signal.SIGKILL
    assert leftovers(net.lab_id) == []
    assert not (directory / RECORD_FILE).exists()
    assert os.path.isdir(directory)
