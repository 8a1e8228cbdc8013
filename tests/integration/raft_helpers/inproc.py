"""In-process Raft clusters: several RaftNodes in the test process, each with its own thread.

For tests that need no process boundary (security, snapshots, replicas); they are faster and
let the test look inside the nodes. Nodes must be created from the test's main thread.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from consensus.raft import RaftNode
from consensus.state import ClusterState
from hagent.config import RaftConfig

from raft_helpers.cluster import FAST, PASSWORD, free_port, wait_for


def options(voters: list[str], **overrides: Any) -> RaftConfig:
    return RaftConfig(voters=voters, **dict(FAST, **overrides))


def make_nodes(tmp: Path, voters: int = 3, replicas: int = 0,
               states: list[ClusterState] | None = None, **overrides: Any) -> list[RaftNode]:
    """Start the nodes; ``states`` (one per node) replaces their empty initial states."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(voters)]
    opts = options(addresses, **overrides)
    nodes = []
    for i in range(voters + replicas):
        nodes.append(RaftNode(
            self_address=addresses[i] if i < voters else None, voters=addresses,
            state_dir=Path(tmp) / f"n{i}", password=PASSWORD, options=opts,
            state=states[i] if states else ClusterState(), node_name=f"n{i}"))
    return nodes


def restart(node: RaftNode, **overrides: Any) -> RaftNode:
    node.close()
    opts = dataclasses.replace(node.options, **overrides) if overrides else node.options
    return RaftNode(self_address=node.self_address, voters=node.voters, state_dir=node.state_dir,
                    password=PASSWORD, options=opts, state=ClusterState(),
                    node_name=node.node_name)


def wait_ready(nodes: list[RaftNode], timeout: float = 15.0) -> RaftNode:
    """Wait until every node is ready and agrees on one leader; return the leader."""
    def agreed():
        sts = [n.status() for n in nodes]
        leaders = {s["leader"] for s in sts}
        if len(leaders) == 1 and None not in leaders and all(s["ready"] for s in sts):
            leader = leaders.pop()
            return next(n for n in nodes if n.self_address == leader)
        return None
    return wait_for(agreed, timeout, "all nodes ready with one leader")


def lease(host: str, seq: int) -> dict:
    return {"op": "lease.renew", "at": time.time(), "hosts": {host: seq}}


def propose(node: RaftNode, command: dict, timeout: float = 10.0) -> tuple[Any, Any]:
    done = threading.Event()
    out: list = []

    def callback(result, error):
        out.append((result, error))
        done.set()

    node.propose(command, callback)
    assert done.wait(timeout), f"no answer to {command} within {timeout} s"
    return out[0]


def close_all(nodes: list[RaftNode]) -> None:
    for node in nodes:
        node.close()


def big_state(notifications: int) -> ClusterState:
    """A state with one segment, 50 hosts and ``notifications`` distinct notifications,
    built by applying commands directly (no log): large enough that a snapshot takes a while."""
    state = ClusterState()
    at = 1e9

    def ok(cmd: dict) -> None:
        answer = state.apply(cmd)
        assert answer.get("ok"), (cmd, answer)

    ok({"op": "segment.create", "at": at, "uuid": f"00000000-0000-0000-0001-{0:012d}",
        "name": "s1", "recovery_method": "auto", "service_type": "COMPUTE"})
    hosts = [f"node{i}" for i in range(50)]
    for i, name in enumerate(hosts):
        ok({"op": "host.create", "at": at, "uuid": f"00000000-0000-0000-0002-{i:012d}",
            "name": name, "type": "COMPUTE", "control_attributes": "SSH", "segment": "s1"})
    for i in range(notifications):
        ok({"op": "notification.submit", "at": at + i,
            "notification_uuid": f"00000000-0000-0000-0003-{i:012d}", "type": "PROCESS",
            "hostname": hosts[i % len(hosts)], "generated_time": "2024-05-01T10:00:00Z",
            "payload": {"process_name": f"p{i}", "event": "STOPPED"}, "source_node": "node0"})
    return state
