"""Leases on three real voters (VoterBackend + pysyncobj in this process, loopback TCP):
renewals go through the batcher into the log, every voter's apply observer feeds its
LeaseJudge, only the leader judges, a host that stops renewing counts as fenced lease_ttl
after the leader applied its last renewal, and a new leader counts every lease from its
own election."""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hagent.agent_voter import VoterBackend
from hagent.config import parse_config
from hagent.fencing.service import LeaseService
from hagent.secretfile import write_secret

from lease_helpers import async_wait_for

pytestmark = pytest.mark.xdist_group("lab")

TTL, MARGIN, INTERVAL = 3.0, 1.0, 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voter_configs(tmp: Path) -> list:
    secret = tmp / "cluster.secret"
    write_secret(secret)
    voters = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    return [parse_config({
        "node": {"name": f"n{i}", "state_dir": str(tmp / f"n{i}")},
        "raft": {"voters": voters, "bind": voters[i], "secret_file": str(secret), "fsync": False,
                 "election_timeout_min": 0.4, "election_timeout_max": 1.0,
                 "append_entries_period": 0.1, "connection_timeout": 1.5},
        "fencing": {"lease_ttl": TTL, "safety_margin": MARGIN, "renew_interval": INTERVAL,
                    "watchdog_mode": "off", "unsafe_no_fencing": True},
    }) for i in range(3)]


async def leader_of(nodes: list[SimpleNamespace]) -> SimpleNamespace:
    def find():
        leaders = [n for n in nodes if n.backend.is_leader()]
        return leaders[0] if len(leaders) == 1 else None
    return await async_wait_for(find, 15.0, "one leader")


def test_voters_judge_leases_from_applied_renewals(tmp_path):
    async def main():
        nodes = []
        for config in voter_configs(tmp_path):
            backend = VoterBackend(config, config.node.name)
            agent = SimpleNamespace(backend=backend, propose=backend.propose)
            nodes.append(SimpleNamespace(name=config.node.name, backend=backend,
                                         lease=LeaseService(config, agent, config.node.name)))
        try:
            for node in nodes:
                await node.lease.start()
            leader = await leader_of(nodes)
            names = {n.name for n in nodes}

            def leader_knows_everyone():
                status = leader.lease.lease_status().get("leader")
                return status and set(status["hosts"]) >= names and status
            status = await async_wait_for(leader_knows_everyone, 10.0,
                                          "the leader to judge every voter")
            assert all(0 < h["expires_in"] <= TTL for h in status["hosts"].values())
            for node in nodes:
                # A follower learns its commit when it applied the entry itself, a bit later.
                await async_wait_for(lambda: node.lease.lease_status()["seq"], 5.0, "own commit")
                own = node.lease.lease_status()
                assert own["deadline_in"] > 0
                if node is not leader:
                    assert "leader" not in own and not node.lease.judge.fenced("n0", time.monotonic())

            # A host that renews once (as a non-voter would, through the forward server)
            # and then falls silent: fenced lease_ttl after the leader applied it, not before.
            answer = await leader.backend.propose({"op": "lease.renew", "hosts": {"cn9": 1}})
            assert answer["ok"], answer
            answered = time.monotonic()
            judge = leader.lease.judge
            await async_wait_for(lambda: judge.fenced("cn9", time.monotonic()), 10.0, "cn9 fenced")
            assert time.monotonic() - answered >= TTL - 0.1
            assert not any(judge.fenced(n, time.monotonic()) for n in names)
            assert leader.backend.renewals.renewals >= leader.backend.renewals.batches > 0

            # The leader goes away: the new one counts every lease, cn9's too, from its election.
            await leader.lease.stop()
            await leader.backend.stop()
            rest = [n for n in nodes if n is not leader]
            new = await leader_of(rest)
            new_judge = new.lease.judge
            await async_wait_for(lambda: new_judge.is_leader, 5.0, "the judge to learn it leads")
            assert new_judge.expires_in("cn9", time.monotonic()) > TTL - 1.0
            assert not new_judge.fenced("cn9", time.monotonic())
            await async_wait_for(lambda: new_judge.fenced("cn9", time.monotonic()), 10.0,
                                 "cn9 fenced by the new leader")
            assert time.monotonic() - new_judge.leader_since >= TTL
            # The dead leader's own lease ran out on the new leader too; the living renew.
            assert new_judge.fenced(leader.name, time.monotonic())
            assert not any(new_judge.fenced(n.name, time.monotonic()) for n in rest)
        finally:
            for node in nodes:
                await node.lease.stop()
                await node.backend.stop()

    asyncio.run(main())
