"""The voter set as operators see it: ``hagentctl raft voters``, ``/status``'s ``voter_set``.

Pure functions over the log's ``voters`` query (consensus/voterset.py) and, on a voter, its
Raft status (who it hears from, who leads) and pysyncobj's cluster as it stands; a non-voter
has only the query (through a voter) and shows reachability as unknown.
"""
from __future__ import annotations

from typing import Any, Mapping


def status_summary(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``voter_set`` of ``/status``: the committed voters (full records: non-voters find the
    voters' forward endpoints and keys here), the eligible non-voters by name, the change in
    flight with its catch-up progress, the last change. None before the state has one."""
    if not doc:
        return None
    voters = [dict(v) for v in doc.get("voters") or []]
    addresses = {v["raft_address"] for v in voters}
    eligible = sorted(name for name, reg in (doc.get("registry") or {}).items()
                      if reg.get("raft_address") not in addresses)
    return {"voters": voters, "eligible": eligible, "change": doc.get("change"),
            "last_change": doc.get("last_change"), "bootstrapped": bool(doc.get("bootstrapped"))}


def describe(doc: Mapping[str, Any], *, raft_status: Mapping[str, Any] | None = None,
             members: list[str] | None = None, target: int, auto_replace: bool,
             commit_index: int | None = None) -> dict[str, Any]:
    """The ``raft.voters`` answer: one row per voter (name, addresses, failure domain, whether
    this node hears from it and whether it leads), one per eligible non-voter, the change in
    flight (with its lag against ``commit_index`` when known), the last change, pysyncobj's
    cluster as this node has it (``members``, voters only) and the autopilot's settings."""
    status = raft_status or {}
    reachable = {v["address"]: v.get("reachable") for v in status.get("voters") or []}
    leader = status.get("leader")
    voters = []
    for v in doc.get("voters") or []:
        address = v["raft_address"]
        voters.append({"node": v.get("node"), "raft_address": address,
                       "forward_address": v.get("forward_address"),
                       "failure_domain": v.get("failure_domain") or "",
                       "reachable": reachable.get(address), "leader": address == leader})
    addresses = {v["raft_address"] for v in voters}
    eligible = [{"node": name, "raft_address": reg.get("raft_address"),
                 "forward_address": reg.get("forward_address"),
                 "failure_domain": reg.get("failure_domain") or "",
                 "registered_at": reg.get("registered_at")}
                for name, reg in sorted((doc.get("registry") or {}).items())
                if reg.get("raft_address") not in addresses]
    change = dict(doc["change"]) if doc.get("change") else None
    if change and change.get("progress") and commit_index is not None:
        change["progress"] = {**change["progress"],
                              "lag_now": max(0, commit_index - change["progress"]["applied"])}
    return {"voters": voters, "eligible": eligible, "change": change,
            "last_change": doc.get("last_change"), "bootstrapped": bool(doc.get("bootstrapped")),
            "members": sorted(members) if members is not None else None,
            "target": target, "auto_replace": auto_replace}


def change_line(change: Mapping[str, Any] | None) -> str:
    """One line for a change in flight: ``add node4 (catching_up, term 3), lag 12``."""
    if not change:
        return "none"
    text = f"{change.get('op')} {change.get('node')} ({change.get('phase')}, term {change.get('term')})"
    progress = change.get("progress")
    if progress:
        lag = progress.get("lag_now", progress.get("lag"))
        text += f", applied {progress.get('applied')}, lag {lag}"
    elif change.get("op") == "add":
        text += ", no catch-up report yet"
    return text + (" [autopilot]" if change.get("auto") else "")


def last_change_line(last: Mapping[str, Any] | None) -> str:
    """One line for the last change: ``add node4 committed (term 3)`` or with the reason."""
    if not last:
        return "none"
    text = f"{last.get('op')} {last.get('node')} {last.get('result')} (term {last.get('term')})"
    if last.get("reason"):
        text += f": {last['reason']}"
    return text + (" [autopilot]" if last.get("auto") else "")
