"""A test double of our own agent node: ``AgentNode`` on the real ``ClusterState``, no Raft.

``propose`` applies the command to the state in-process, exactly as every replica would
once the log committed it, so admin, hagentctl and status-endpoint tests exercise the
real state machine without a cluster. Knobs let a test play a follower, an unhealthy
replica, a log that refuses to commit, or a submit that times out.
"""
from __future__ import annotations

import copy
import threading
import uuid
from typing import Any, Callable, TypeVar

from prometheus_client import CollectorRegistry

from consensus.state import ClusterState
from hagent.node_api import Unavailable
from hagent.queries import run_query
from hagent.voters.view import status_summary

T = TypeVar("T")

START_TIME = 1_700_000_000.0  # 2023-11-14T22:13:20Z; each proposal advances one second


class FakeNode:
    """Implements hagent.node_api.AgentNode for tests."""

    def __init__(self, name: str = "node-1", *, leader: bool = True, healthy: bool = True,
                 duplicate_interval: float = 180.0) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.state = ClusterState(duplicate_interval=duplicate_interval)
        self.leader = leader
        self.healthy = healthy
        self.health_reason = "leader 127.0.0.1:7101, lag 0" if healthy else "not joined: no leader known"
        # When set, propose answers {"ok": False, "error": refuse_log} (no quorum, say).
        self.refuse_log: str | None = None
        # When set, query raises Unavailable with this text (a non-voter whose voters are gone).
        self.unavailable: str | None = None
        # When False, submit_notification answers as after the submit timeout.
        self.commit_submissions = True
        self.proposed: list[dict[str, Any]] = []  # commands as proposed (before "at")
        self.now = START_TIME
        self.submitted = 0
        self._lock = threading.Lock()
        self._applied = 0

    # --- AgentNode ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "role": "leader" if self.leader else "follower",
            "voter": True,
            "leader": "127.0.0.1:7101" if self.leader else "127.0.0.1:7102",
            "term": 4,
            "commit_index": self._applied,
            "applied_index": self._applied,
            "log_size": self._applied,
            "voters": [{"address": "127.0.0.1:7101", "reachable": True},
                       {"address": "127.0.0.1:7102", "reachable": True},
                       {"address": "127.0.0.1:7103", "reachable": False}],
            "voter_set": status_summary(self.read(lambda s: s.voters())),
            "notifications": self.read(lambda s: s.counts_by_status()),
            "ready": self.healthy,
            "spool_depth": 0,
            "submissions_total": self.submitted,
        }

    def members(self) -> list[dict[str, Any]]:
        return [{"name": f"node-{i}", "raft_address": f"127.0.0.1:710{i}", "voter": True,
                 "reachable": i != 3} for i in (1, 2, 3)]

    def is_leader(self) -> bool:
        return self.leader

    def health(self) -> tuple[bool, str]:
        return self.healthy, self.health_reason

    async def query(self, name: str, **kwargs: Any) -> Any:
        if self.unavailable is not None:
            raise Unavailable(self.unavailable)
        with self._lock:
            return run_query(self.state, name, kwargs)

    def read(self, fn: Callable[[ClusterState], T]) -> T:
        """Test helper (not AgentNode): inspect the state directly."""
        with self._lock:
            return fn(self.state)

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        if self.refuse_log is not None:
            return {"ok": False, "error": self.refuse_log}
        self.proposed.append(copy.deepcopy(command))  # as the caller proposed it
        command = {"at": self._tick(), **command}
        with self._lock:
            self._applied += 1
            return self.state.apply(command)

    async def voters_view(self) -> dict[str, Any]:
        from hagent.voters.view import describe

        return describe(self.read(lambda s: s.voters()), raft_status=self.status(),
                        target=3, auto_replace=True, commit_index=self._applied)

    async def change_voters(self, kind: str, node: str, *, wait: float) -> dict[str, Any]:
        """The log's refusals are real; the change then commits at once (no leader's
        catch-up to wait for in a fake)."""
        from hagent.voters.changer import VoterChangeRefused

        answer = await self.propose({"op": "voters.change", "change": kind, "node": node,
                                     "term": 4, "leader": self.name})
        if not answer["ok"]:
            raise VoterChangeRefused(answer["error"])
        committed = await self.propose({"op": "voters.commit", "change": kind, "node": node,
                                        "term": 4})
        return committed["result"]

    async def submit_notification(self, fields: dict[str, Any]) -> dict[str, Any]:
        command = {"op": "notification.submit",
                   "notification_uuid": fields.get("notification_uuid") or str(uuid.uuid4()),
                   **{k: v for k, v in fields.items() if k != "notification_uuid"},
                   "source_node": self.name}
        self.submitted += 1
        if not self.commit_submissions:
            pending = {k: v for k, v in command.items() if k != "op"}
            return {"ok": True, "committed": False, "result": {**pending, "status": "pending"}}
        answer = await self.propose(command)
        if not answer["ok"]:
            return answer
        return {"ok": True, "committed": True, "result": answer["result"]}

    def _tick(self) -> float:
        self.now += 1.0
        return self.now
