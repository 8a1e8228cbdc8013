"""The role watcher (hagent.voters.watcher) against in-test backends on the real ClusterState:
it registers the node, points a non-voter at the voters the log names and saves them, asks
for a re-exec when its add starts, reports catch-up as a candidate, and asks to go back to
non-voter once a voter applied its removal. No sockets, no Raft."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from consensus import voterfile
from consensus.state import ClusterState
from hagent.voters import localfile
from hagent.voters.localfile import LocalVoters
from hagent.voters.role import NON_VOTER, VOTER, Me
from hagent.voters.view import status_summary
from hagent.voters.watcher import RoleWatcher

ME = Me("node4", "10.0.0.4:7170", "10.0.0.4:7171", "key4")
T0 = 1_700_000_000.0


def record(i: int) -> dict[str, Any]:
    return {"node": f"node{i}", "raft_address": f"10.0.0.{i}:7170",
            "forward_address": f"10.0.0.{i}:7171", "public_key": f"key{i}"}


class Log:
    """The replicated state, applied in-process."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.at = T0

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        self.at += 1
        return self.state.apply({"at": self.at, **command})

    def setup(self, nodes: int = 5) -> None:
        self.apply({"op": "voters.bootstrap", "voters": [f"10.0.0.{i}:7170" for i in (1, 2, 3)]})
        for i in range(1, nodes + 1):
            if i != 4:
                assert self.apply({"op": "voters.register", **record(i)})["ok"]


class NonVoter:
    """ReplicaBackend as the watcher uses it."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.refuse: str | None = None
        self.used: list[list[str]] = []

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        if self.refuse is not None:
            return {"ok": False, "retryable": False, "error": self.refuse}
        return self.log.apply(command)

    def voter_set(self) -> dict[str, Any] | None:
        return status_summary(self.log.state.voters())

    async def use_voters(self, voters: list[dict[str, Any]]) -> None:
        self.used.append([v["raft_address"] for v in voters])


class Raft:
    def __init__(self) -> None:
        self.applied, self.leader_commit = 0, 0
        self.leader: str | None = "10.0.0.1:7170"

    def status(self) -> dict[str, Any]:
        return {"ready": True, "leader": self.leader, "applied_index": self.applied,
                "leader_commit_index": self.leader_commit, "commit_index": self.applied}


class Voter(NonVoter):
    """VoterBackend as the watcher uses it."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.raft = Raft()

    def query(self, name: str, kwargs: dict[str, Any]) -> Any:
        assert name == "voters"
        return self.log.state.voters()


def watcher(backend: Any, local: LocalVoters, tmp_path: Path, *, voter: bool,
            switches: list, **kw: Any) -> RoleWatcher:
    return RoleWatcher(backend, ME, local, voter=voter, failure_domain="rack-b",
                       state_dir=tmp_path, switch=switches.append, **kw)


def test_a_non_voter_registers_follows_the_voters_and_re_execs_when_its_add_starts(tmp_path):
    async def main() -> None:
        log = Log()
        log.setup()
        backend = NonVoter(log)
        backend.refuse = "raft address 10.0.0.4:7170 is registered to node node9"
        switches: list = []
        w = watcher(backend, LocalVoters(tuple(record(i) for i in (1, 2, 3))), tmp_path,
                    voter=False, switches=switches)
        assert await w.register() is False  # refused: tried again after REGISTER_RETRY
        assert not w.registered and "node4" not in log.state.voters()["registry"]
        backend.refuse = None
        await w.register()
        assert w.registered
        assert log.state.voters()["registry"]["node4"]["failure_domain"] == "rack-b"
        assert not backend.used  # the set it has is the log's
        # The voter set changes in the log: node5 replaces node3.
        for command in ({"op": "voters.change", "change": "add", "node": "node5", "term": 1},
                        {"op": "voters.commit", "change": "add", "node": "node5", "term": 1},
                        {"op": "voters.change", "change": "remove", "node": "node3",
                         "term": 1, "auto": True},
                        {"op": "voters.commit", "change": "remove", "node": "node3",
                         "term": 1}):
            assert log.apply(command)["ok"], command
        await w.look()
        assert sorted(backend.used[-1]) == ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.5:7170"]
        saved = voterfile.load(localfile.path_in(tmp_path))
        assert sorted(saved.voters) == sorted(backend.used[-1]) and not saved.pending
        assert not switches
        assert log.apply({"op": "voters.change", "change": "add", "node": "node4",
                          "term": 1})["ok"]
        await w.look()
        (switch,) = switches
        assert switch.to == VOTER and switch.pending
    asyncio.run(main())


def test_a_candidate_reports_catch_up_and_a_removed_voter_goes_back(tmp_path):
    async def main() -> None:
        log = Log()
        log.setup()
        assert log.apply({"op": "voters.register", **record(4)})["ok"]
        assert log.apply({"op": "voters.change", "change": "add", "node": "node4",
                          "term": 1})["ok"]
        backend = Voter(log)
        backend.raft.applied, backend.raft.leader_commit = 40, 50
        switches: list = []
        voterfile.save(localfile.path_in(tmp_path), ["10.0.0.1:7170", "10.0.0.2:7170",
                                                     "10.0.0.3:7170", "10.0.0.4:7170"],
                       pending=True)
        w = watcher(backend, LocalVoters(tuple(record(i) for i in (1, 2, 3)), pending=True),
                    tmp_path, voter=True, switches=switches)
        await w.look()
        await w._reporting  # the report runs beside the looks
        assert w.reports == 1
        progress = log.state.voters()["change"]["progress"]
        assert progress["applied"] == 40 and progress["leader_commit"] == 50
        assert not switches  # still catching up: its add is in flight
        assert log.apply({"op": "voters.commit", "change": "add", "node": "node4",
                          "term": 1})["ok"]
        backend.raft.applied = backend.raft.leader_commit = 60
        await w.look()
        assert not w.local.pending and not switches and w._reporting.done() and w.reports == 1
        assert voterfile.load(localfile.path_in(tmp_path)).extra["records"][3]["node"] == "node4"
        assert log.apply({"op": "voters.change", "change": "remove", "node": "node4",
                          "term": 1})["ok"]
        assert log.apply({"op": "voters.commit", "change": "remove", "node": "node4",
                          "term": 1})["ok"]
        backend.raft.leader_commit = 70  # heard of, not applied yet: it must not decide
        await w.look()
        assert not switches
        backend.raft.applied = 70
        await w.look()
        (switch,) = switches
        assert switch.to == NON_VOTER and switch.reason == "removed from the voter set (term 1)"
        assert sorted(v["node"] for v in switch.voters) == ["node1", "node2", "node3"]
    asyncio.run(main())


def test_a_voter_that_hears_no_leader_asks_the_voters_it_knows(tmp_path):
    """node4 was removed while it was down and its saved set no longer names the leader: it
    hears no leader, asks the voters it knows, and one that knows the leader says it is out:
    back to non-voter. During an ordinary election (no one knows a leader) it stays."""
    async def main() -> None:
        log = Log()
        log.setup()  # the set is node1-3; node4 is not in it
        backend = Voter(log)
        backend.raft.leader = None
        now = [100.0]
        asked: list[list[str]] = []
        answer: list[dict | None] = [None]

        async def ask(voters: list[dict[str, Any]]) -> dict | None:
            asked.append([v["raft_address"] for v in voters])
            return answer[0]

        switches: list = []
        local = LocalVoters(tuple(record(i) for i in (1, 3, 4)))  # what node4 saved back then
        w = watcher(backend, local, tmp_path, voter=True, switches=switches, ask=ask,
                    clock=lambda: now[0])
        await w.look()
        assert not asked  # an election may be running: not yet
        now[0] += 2.5
        await w.look()
        assert asked == [["10.0.0.1:7170", "10.0.0.3:7170"]] and not switches  # nobody knows
        now[0] += 1.0
        await w.look()
        assert len(asked) == 1  # not more often than every ASK_INTERVAL
        answer[0] = status_summary(log.state.voters())
        now[0] += 1.5
        await w.look()
        (switch,) = switches
        assert switch.to == NON_VOTER and switch.reason.startswith("removed from the voter set")
        assert "as a voter that knows the leader says" in switch.reason
        assert sorted(v["node"] for v in switch.voters) == ["node1", "node2", "node3"]
    asyncio.run(main())
