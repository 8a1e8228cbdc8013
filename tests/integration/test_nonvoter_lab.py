"""Non-voters for real: a 5-agent lab (3 voters, 2 non-voters) whose non-voters keep no Raft
state, hold no Raft secret, and propose, read and report status through the voters.

Every wait polls with a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from hagent.config import load_config
from hagent.lab.cluster import Lab, LabError, http_json

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

DEADLINE = 30.0
PAYLOAD = {"event": "LIFECYCLE", "vir_domain_event": "STOPPED_FAILED"}


def until(what: str, cond: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def http_code(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def notify(lab: Lab, name: str) -> dict[str, Any]:
    return lab.admin(name, "notification.create", {
        "type": "VM", "hostname": name, "generated_time": "2024-01-01T00:00:00Z",
        "payload": {**PAYLOAD, "instance_uuid": str(uuid.uuid4())}})


def ready(lab: Lab, name: str) -> bool:
    try:
        return bool(lab.status(name, timeout=1.0).get("ready"))
    except Exception:
        return False


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    # Plain non-voters (never promoted): this file is about what they hold and do.
    lab = Lab.up(tmp_path_factory.mktemp("nv") / "lab", nodes=5, voters=3, eligible=False)
    yield lab
    lab.down()


def test_a_non_voter_keeps_no_raft_state_and_holds_no_secret(lab: Lab):
    for name in ("node4", "node5"):
        node = lab.node(name)
        config = load_config(Path(node.config))
        assert not config.is_voter and config.raft.secret_file == Path("/etc/hagent/cluster.secret")
        assert not (config.node.state_dir / "raft").exists()
        status = lab.status(name)
        assert status["role"] == "replica" and status["voter"] is False and status["ready"]
        assert status["log_size"] is None and status["forward_voter"] in config.raft.voters
        assert status["term"] >= 1 and status["leader"] in config.raft.voters
        assert http_code(node.status_url + "/leader") == 503
        assert http_code(node.status_url + "/health") == 200


def test_a_non_voter_proposes_and_reads_through_the_voters(lab: Lab):
    answer = notify(lab, "node4")
    assert answer["committed"] is True
    nid = answer["notification"]["notification_uuid"]
    assert lab.admin("node5", "notification.show", {"notification_uuid": nid})["source_node"] == "node4"

    def on_node1() -> dict | None:
        # A follower voter answers from what it has applied: the commit reaches it a moment later.
        try:
            return lab.admin("node1", "notification.show", {"notification_uuid": nid})
        except LabError:
            return None

    assert until("node1 applied the notification", on_node1)["hostname"] == "node4"
    assert [s["name"] for s in lab.admin("node4", "segment.list")] == ["lab"]
    hosts = lab.admin("node5", "host.list", {"segment": "lab"})
    assert sorted(h["name"] for h in hosts) == [f"node{i}" for i in range(1, 6)]
    # The non-voter prefers the leader: its status says which voter answered.
    leader = lab.leader()
    leader_raft = lab.node(leader).raft_address
    until("node4 talks to the leader", lambda: lab.status("node4")["forward_voter"] == leader_raft)
    metrics = urllib.request.urlopen(lab.node("node4").status_url + "/metrics").read().decode()
    assert 'hagent_forward_client_requests_total{kind="propose"}' in metrics
    metrics = urllib.request.urlopen(lab.node(leader).status_url + "/metrics").read().decode()
    assert 'hagent_forward_requests_total{kind="propose"}' in metrics
    assert 'hagent_forward_dropped_requests_total{reason="malformed"} 0.0' in metrics


def test_a_non_voter_follows_a_leader_kill_and_is_not_ready_without_voters(lab: Lab):
    leader = lab.leader()
    lab.crash(leader)
    try:
        new = lab.leader(timeout=15.0)
        assert new != leader
        until("node4 ready again with the new leader",
              lambda: lab.status("node4").get("leader") == lab.node(new).raft_address
              and lab.status("node4")["ready"])
        assert notify(lab, "node4")["committed"] is True
    finally:
        lab.start(leader)
        lab.wait_ready([leader])
    voters = [n.name for n in lab.nodes if n.voter]
    for name in voters:
        lab.crash(name)
    try:
        until("node5 not ready without voters", lambda: not ready(lab, "node5"), timeout=15.0)
        health = http_json(lab.node("node5").status_url + "/health")
        assert health["healthy"] is False and "no voter" in health["reason"]
        assert lab.status("node5")["error"]
    finally:
        for name in voters:
            lab.start(name)
        lab.wait_ready()
    assert notify(lab, "node5")["committed"] is True
