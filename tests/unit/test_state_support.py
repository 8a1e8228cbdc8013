"""Command builders shared by the ClusterState tests (this module holds no tests).

Uuids are derived from short labels so a failing assertion names something readable.
"""
from __future__ import annotations

import uuid as uuidlib
from typing import Any

from consensus.state import ClusterState

AT = 1_714_557_600.0  # 2024-05-01T10:00:00Z
GEN = "2024-05-01T10:00:00Z"


def uid(label: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, label))


def segment_create(name: str = "seg1", **kw: Any) -> dict[str, Any]:
    cmd = {"op": "segment.create", "at": AT, "uuid": uid("segment/" + name), "name": name,
           "recovery_method": "auto", "service_type": "COMPUTE"}
    cmd.update(kw)
    return cmd


def host_create(name: str = "node1", segment: str = "seg1", **kw: Any) -> dict[str, Any]:
    cmd = {"op": "host.create", "at": AT, "uuid": uid("host/" + name), "name": name,
           "type": "COMPUTE", "control_attributes": "SSH", "segment": segment}
    cmd.update(kw)
    return cmd


def host_payload(event: str = "STOPPED") -> dict[str, str]:
    return {"event": event, "host_status": "NORMAL", "cluster_status": "OFFLINE"}


def submit(label: str, hostname: str = "node1", type: str = "COMPUTE_HOST",
           generated_time: str = GEN, payload: dict[str, Any] | None = None,
           **kw: Any) -> dict[str, Any]:
    cmd = {"op": "notification.submit", "at": AT, "notification_uuid": uid("n/" + label),
           "type": type, "hostname": hostname, "generated_time": generated_time,
           "payload": host_payload() if payload is None else payload, "source_node": "node2"}
    cmd.update(kw)
    return cmd


def transition(label: str, status: str, **kw: Any) -> dict[str, Any]:
    return {"op": "notification.transition", "at": AT + 1, "notification_uuid": uid("n/" + label),
            "status": status, **kw}


def vmove(label: str, instance: str, status: str, **kw: Any) -> dict[str, Any]:
    return {"op": "notification.vmove", "at": AT + 2, "notification_uuid": uid("n/" + label),
            "instance_uuid": uid("vm/" + instance), "status": status, **kw}


def host_down(label: str, hostname: str = "node1", **kw: Any) -> dict[str, Any]:
    return {"op": "host.down", "at": AT, "hostname": hostname,
            "notification_uuid": uid("n/" + label), "generated_time": GEN,
            "source_node": "node2", **kw}


def host_fenced(hostname: str = "node1", method: str = "lease", **kw: Any) -> dict[str, Any]:
    return {"op": "host.fenced", "at": AT + 20, "hostname": hostname, "method": method,
            "detail": "lease expired 15 s after renewal 7", **kw}


def host_up(label: str, hostname: str = "node1", **kw: Any) -> dict[str, Any]:
    return {"op": "host.up", "at": AT + 60, "hostname": hostname,
            "notification_uuid": uid("n/" + label), "generated_time": "2024-05-01T10:01:00Z",
            "source_node": "node3", **kw}


def claim(term: int, node: str = "node1", **kw: Any) -> dict[str, Any]:
    return {"op": "recovery.claim", "at": AT + 3, "term": term, "node": node, **kw}


def intent(label: str, step: str, key: str, term: int, **kw: Any) -> dict[str, Any]:
    return {"op": "recovery.intent", "at": AT + 4, "notification_uuid": uid("n/" + label),
            "step": step, "key": key, "term": term, **kw}


def result(label: str, step: str, key: str, term: int, outcome: str = "done",
           **kw: Any) -> dict[str, Any]:
    return {"op": "recovery.result", "at": AT + 5, "notification_uuid": uid("n/" + label),
            "step": step, "key": key, "term": term, "outcome": outcome, **kw}


def ok(state: ClusterState, command: dict[str, Any]) -> Any:
    """Apply a command that must succeed; return its result."""
    answer = state.apply(command)
    assert answer["ok"], answer
    return answer["result"]


def refused(state: ClusterState, command: Any, *fragments: str) -> str:
    """Apply a command that must be refused without changing the state; return the error."""
    before = state.canonical()
    answer = state.apply(command)
    assert answer["ok"] is False, answer
    assert set(answer) == {"ok", "error"}
    for fragment in fragments:
        assert fragment in answer["error"], answer["error"]
    assert state.canonical() == before
    return answer["error"]


def cluster(*hosts: str, **kw: Any) -> ClusterState:
    """A state with segment seg1 holding ``hosts`` (default node1)."""
    state = ClusterState(**kw)
    ok(state, segment_create())
    for name in hosts or ("node1",):
        ok(state, host_create(name))
    return state
