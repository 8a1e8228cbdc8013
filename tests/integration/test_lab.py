"""The lab for real: 3 agent processes on loopback, crashed, paused, restarted, stopped.

Every wait polls with a deadline (the Lab's own waits, or ``until``); nothing sleeps to
synchronise.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from hagent.config import load_config
from hagent.lab.cluster import LAB_FILE, PAUSED, RUNNING, STOPPED, Lab, LabError

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

DEADLINE = 30.0


def until(what: str, cond: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll ``cond`` until it returns something true; a LabError (no leader yet, an agent not
    answering yet) counts as "not yet"."""
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


def hagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hagent", *args], capture_output=True, text=True,
                          timeout=120)


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


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    lab = Lab.up(tmp_path_factory.mktemp("lab"), nodes=3)
    yield lab
    lab.down()


def test_up_writes_lab_json_and_registers_hosts(lab: Lab) -> None:
    entries = json.loads((lab.dir / LAB_FILE).read_text())
    assert [e["name"] for e in entries] == ["node1", "node2", "node3"]
    for e in entries:
        assert e["voter"] is True and e["pid"] > 0
        assert Path(e["admin_socket"]).is_socket()
        config = load_config(Path(e["config"]))
        assert config.node.name == e["name"] and config.is_voter
    assert oct((lab.dir / "cluster.secret").stat().st_mode & 0o777) == "0o600"
    hosts = lab.admin("node2", "host.list", {"segment": "lab"})
    assert sorted(h["name"] for h in hosts) == ["node1", "node2", "node3"]
    assert all(h["type"] == "COMPUTE" and h["control_attributes"] == "SSH" for h in hosts)
    segment = lab.admin("node3", "segment.show", {"segment": "lab"})
    assert segment["recovery_method"] == "auto" and segment["service_type"] == "compute"
    statuses = [lab.status(n) for n in lab.names]
    assert all(s["ready"] for s in statuses)
    assert sum(s["role"] == "leader" for s in statuses) == 1


def test_crash_leader_then_start_it_again(lab: Lab) -> None:
    leader = lab.leader()
    lab.crash(leader)
    assert lab.state(leader) == STOPPED
    others = [n for n in lab.names if n != leader]
    new_leader = until("a new leader", lambda: lab.leader(timeout=0.5, among=others)
                       if any(lab.status(n).get("leader") != lab.node(leader).raft_address
                              for n in others) else None)
    assert new_leader in others
    answer = lab.admin(others[0], "notification.create", vm_notification(leader))
    assert answer["committed"], answer
    nid = answer["notification"]["notification_uuid"]
    lab.start(leader)
    lab.wait_ready([leader])
    until(f"{leader} has caught up with the notification", lambda: nid in known_uuids(lab, leader))


def test_pause_and_resume_a_follower(lab: Lab) -> None:
    leader = lab.leader()
    follower = next(n for n in lab.names if n != leader)
    lab.pause(follower)
    try:
        assert lab.state(follower) == PAUSED
        with pytest.raises(LabError):
            lab.status(follower, timeout=0.3)
        answer = lab.admin(leader, "notification.create", vm_notification(follower))
        assert answer["committed"]  # two voters of three still commit
    finally:
        lab.resume(follower)
    assert lab.state(follower) == RUNNING
    lab.wait_ready([follower])
    nid = answer["notification"]["notification_uuid"]
    until(f"{follower} has the notification", lambda: nid in known_uuids(lab, follower))


def test_whole_cluster_crash_loses_nothing_acknowledged(lab: Lab) -> None:
    acked = set()
    for name in lab.names:
        answer = lab.admin(name, "notification.create", vm_notification(name))
        assert answer["committed"]
        acked.add(answer["notification"]["notification_uuid"])
    for name in lab.names:
        lab.crash(name)
    assert lab.running() == []
    for name in lab.names:
        lab.start(name)
    lab.wait_ready()
    for name in lab.names:
        until(f"{name} has every acknowledged notification", lambda: acked <= known_uuids(lab, name))


def test_cli_status_and_node_verbs(lab: Lab) -> None:
    victim = lab.names[-1]
    out = hagent("lab", "crash", "--dir", str(lab.dir), victim)
    assert out.returncode == 0, out.stderr
    rows = json.loads(hagent("lab", "status", "--dir", str(lab.dir), "-f", "json").stdout)
    assert {r["name"]: r["state"] for r in rows}[victim] == STOPPED
    out = hagent("lab", "start", "--dir", str(lab.dir), victim)
    assert out.returncode == 0, out.stderr
    loaded = Lab.load(lab.dir)  # the CLI recorded the new pid
    assert loaded.node(victim).pid != lab.node(victim).pid
    lab.nodes = loaded.nodes
    lab.wait_ready([victim])
    table = hagent("lab", "status", "--dir", str(lab.dir)).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "PID"]
    assert all(" running " in line for line in table.splitlines()[1:])
    out = hagent("lab", "crash", "--dir", str(lab.dir), "node9")
    assert out.returncode == 1 and "no node 'node9'" in out.stderr


def test_kill_host_powers_the_host_and_its_agent_off_and_start_powers_it_on(lab: Lab) -> None:
    victim = lab.names[-1]
    before = time.monotonic()
    out = hagent("lab", "kill-host", "--dir", str(lab.dir), victim)
    assert out.returncode == 0, out.stderr
    assert lab.state(victim) == STOPPED
    power = lab.power_state(victim)
    assert power["on"] is False and power["reason"] == "lab"
    assert before <= power["off_at_monotonic"] <= time.monotonic()
    rows = json.loads(hagent("lab", "status", "--dir", str(lab.dir), "-f", "json").stdout)
    assert {r["name"]: r["power"] for r in rows}[victim] == "off"
    lab.start(victim)
    lab.wait_ready([victim])
    assert lab.power_state(victim)["on"] is True


def test_up_refuses_a_running_lab(lab: Lab) -> None:
    with pytest.raises(LabError, match="already running"):
        Lab.up(lab.dir, nodes=3)


def test_two_labs_in_parallel_and_down(tmp_path: Path) -> None:
    labs: dict[str, Lab] = {}
    errors: list[BaseException] = []

    def start(key: str, directory: Path) -> None:
        try:
            labs[key] = Lab.up(directory, nodes=3, voters=3, register=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # A long directory: the admin sockets must fall back to short paths.
    deep = tmp_path / ("x" * 50) / ("y" * 50)
    threads = [threading.Thread(target=start, args=("a", tmp_path / "a")),
               threading.Thread(target=start, args=("b", deep))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        addresses = [n.raft_address for lab in labs.values() for n in lab.nodes] + \
                    [n.status_url for lab in labs.values() for n in lab.nodes]
        assert len(set(addresses)) == 12
        assert not str(labs["b"].nodes[0].admin_socket).startswith(str(deep))
        assert labs["b"].admin("node1", "status")["ready"]
        pids = [n.pid for n in labs["a"].nodes]
    finally:
        for lab in labs.values():
            lab.down()
    assert labs["a"].running() == [] and labs["b"].running() == []
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)  # reaped, not zombies
    assert (tmp_path / "a" / "node1" / "agent.log").exists()  # kept for debugging
    labs["b"].down(purge=True)
    assert not deep.exists()
    assert not Path(labs["b"].nodes[0].admin_socket).parent.exists()


def test_spooled_notification_survives_agent_crash_without_quorum(tmp_path: Path) -> None:
    """Accepted while no quorum exists (answered "pending"), the agent SIGKILLed before any
    commit: after the cluster restarts, the spool's resend commits it."""
    lab = Lab.up(tmp_path / "lab", nodes=3, config_extra={
        "notifications": {"submit_timeout": 0.5, "resend_interval": 0.2}})
    try:
        submitter, *others = lab.names
        for name in others:
            lab.crash(name)
        answer = lab.admin(submitter, "notification.create", vm_notification(others[0]))
        assert answer["committed"] is False and answer["notification"]["status"] == "pending"
        nid = answer["notification"]["notification_uuid"]
        until("spool depth 1", lambda: lab.status(submitter).get("spool_depth") == 1)
        lab.crash(submitter)
        for name in lab.names:
            lab.start(name)
        lab.wait_ready()
        for name in lab.names:
            until(f"{name} has the spooled notification", lambda: nid in known_uuids(lab, name))
        until("spool drained", lambda: lab.status(submitter).get("spool_depth") == 0)
    finally:
        lab.down()


def test_up_retries_with_new_ports_after_a_collision(tmp_path: Path) -> None:
    """Another process binds a picked port before the agent does: `up` notices and retries."""
    import socket

    from hagent.lab.ports import PortPicker

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]

    class FirstPickCollides(PortPicker):
        picks = 0

        def pick(self, count: int) -> list[int]:
            ports = super().pick(count)
            FirstPickCollides.picks += 1
            if FirstPickCollides.picks == 1:
                node3_status = 2 * 3 + 2  # raft, forward, status, gossip: 3 ports each
                self.release([ports[node3_status]])
                ports[node3_status] = taken
            return ports

    try:
        lab = Lab.up(tmp_path / "lab", nodes=3, register=False,
                     picker=FirstPickCollides(tmp_path / "lab"))
        try:
            assert FirstPickCollides.picks == 2
            assert lab.node("node3").status_url != f"http://127.0.0.1:{taken}"
            lab.wait_ready()
        finally:
            lab.down()
    finally:
        squatter.close()


def test_nova_lab_boots_instances_and_writes_clouds_yaml(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", nodes=3, nova=True, instances=8)
    try:
        import openstack.config
        import openstack.connection

        # As an operator's tool would: openstacksdk reading the lab's clouds.yaml.
        config = openstack.config.OpenStackConfig(config_files=[str(lab.dir / "clouds.yaml")],
                                                  vendor_files=[])
        conn = openstack.connection.Connection(config=config.get_one(cloud="hagent-lab"))
        servers = list(conn.compute.servers(all_projects=True))
        assert len(servers) == 8 and all(s.status == "ACTIVE" for s in servers)
        assert sum(1 for s in servers if s.metadata.get("HA_Enabled") == "True") == 6
        assert {s.compute_host for s in servers} == set(lab.names)
        computes = {svc.host for svc in conn.compute.services() if svc.binary == "nova-compute"}
        assert computes == set(lab.names)
    finally:
        lab.down()
    assert not (lab.dir / "nova.json").exists()
