"""Forward server and client over real CURVE sockets on loopback, with in-test voters
(a ClusterState behind a handler, no Raft): answers, ZAP refusal of an unknown key, garbage
and oversized frames dropped and counted while the server keeps serving, failover, and the
detection and recovery ops a non-voter may not propose."""
from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from consensus.state import ClusterState
from hagent.forward import protocol
from hagent.forward.client import ForwardClient, ForwardUnavailable
from hagent.forward.keys import KeyPair, generate
from hagent.forward.server import HARD_MAX_BYTES, ForwardServer
from hagent.queries import QueryError, run_query

DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Voter:
    """A handler standing in for a voter: applies commands to its own ClusterState."""

    def __init__(self, address: str, leader: str | None) -> None:
        self.address = address
        self.known_leader = leader
        self.state = ClusterState()
        self.hold: asyncio.Event | None = None   # set: proposals wait for it
        self.refuse: str | None = None           # set: proposals fail retryably
        self.proposals = 0

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        self.proposals += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse is not None:
            return {"ok": False, "retryable": True, "error": self.refuse}
        return self.state.apply({"at": 1_700_000_000.0, **command})

    def query(self, name: str, kwargs: dict[str, Any]) -> Any:
        return run_query(self.state, name, kwargs)

    def status(self) -> dict[str, Any]:
        return {"role": "leader" if self.known_leader == self.address else "follower",
                "leader": self.known_leader, "ready": self.known_leader is not None}

    def leader(self) -> str | None:
        return self.known_leader


def segment(name: str = "s1") -> dict[str, Any]:
    return {"op": "segment.create", "uuid": str(uuid.uuid4()), "name": name,
            "recovery_method": "auto", "service_type": "COMPUTE"}


async def poll_until(predicate, what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Cluster:
    """n in-test voters with forward servers, and a factory for clients."""

    def __init__(self, n: int = 3, leader: int | None = 0, more_keys: int = 0) -> None:
        self.addresses = [f"10.9.9.{i + 1}:7170" for i in range(n)]  # Raft addresses (names only)
        self.endpoints = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        self.server_keys = [generate() for _ in range(n)]
        self.client_key = generate()
        self.more_keys = [generate() for _ in range(more_keys)]  # other allowed non-voters
        lead = self.addresses[leader] if leader is not None else None
        self.voters = [Voter(a, lead) for a in self.addresses]
        allowed = [self.client_key.public, *(k.public for k in self.more_keys)]
        self.servers = [ForwardServer(v, e, k, allowed)
                        for v, e, k in zip(self.voters, self.endpoints, self.server_keys)]
        self.clients: list[ForwardClient] = []

    async def start(self) -> "Cluster":
        for server in self.servers:
            await server.start()
        return self

    async def client(self, key: KeyPair | None = None, timeout: float = 2.0) -> ForwardClient:
        c = ForwardClient(self.endpoints, self.addresses, [k.public for k in self.server_keys],
                          key or self.client_key, timeout)
        await c.start()
        self.clients.append(c)
        if key is None:  # a known key: wait for every CURVE handshake, so "preferred" holds
            await poll_until(lambda: all(c.connected()), "connections to every voter")
        return c

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        for s in self.servers:
            await s.stop()


def run(coro_fn):
    """Run ``coro_fn(cluster)`` against a started 3-voter cluster, closing it after."""
    async def main():
        cluster = await Cluster().start()
        try:
            await coro_fn(cluster)
        finally:
            await cluster.close()
    asyncio.run(asyncio.wait_for(main(), 60))


def test_propose_query_status_through_the_leader():
    async def body(c: Cluster):
        client = await c.client()
        answer = await client.propose(segment())
        assert answer["ok"] and answer["result"]["name"] == "s1"
        assert c.voters[0].proposals == 1  # the leader was asked
        assert [s["name"] for s in await client.query("list_segments", {})] == ["s1"]
        assert await client.query("get_segment", {"ref": "nope"}) is None
        index, status = await client.status()
        assert index == 0 and status["role"] == "leader"
        # A state-machine refusal comes back as the state machine's answer, not retryable.
        refused = await client.propose({"op": "segment.delete", "segment": "nope"})
        assert refused["ok"] is False and "retryable" not in refused
        with pytest.raises(QueryError, match="sort_dir"):
            await client.query("list_segments", {"sort_dir": "sideways"})
        with pytest.raises(QueryError, match="unknown query"):
            await client.query("apply", {})
        assert c.servers[0].requests["propose"] == 2 and c.servers[0].requests["query"] == 3
    run(body)


def test_the_client_follows_the_leader_a_voter_names():
    async def body(c: Cluster):
        for v in c.voters:
            v.known_leader = c.addresses[2]
        client = await c.client()
        await client.status()            # voter 0 answers, naming voter 2 leader
        assert client.preferred == 2
        assert (await client.propose(segment()))["ok"]
        assert c.voters[2].proposals == 1 and c.voters[0].proposals == 0
    run(body)


def test_many_requests_in_flight_are_answered_out_of_order():
    async def body(c: Cluster):
        client = await c.client()
        c.voters[0].hold = asyncio.Event()
        slow = asyncio.ensure_future(client.propose(segment("slow")))
        await poll_until(lambda: c.voters[0].proposals == 1, "the slow proposal to arrive")
        # Reads are not stuck behind the commit, unlike REQ/REP.
        counts = await asyncio.gather(*(client.query("notification_count", {}) for _ in range(50)))
        assert counts == [0] * 50 and not slow.done()
        c.voters[0].hold.set()
        assert (await slow)["ok"]
    run(body)


def test_an_unknown_key_is_refused_by_zap():
    async def body(c: Cluster):
        stranger = await c.client(key=generate(), timeout=0.5)
        with pytest.raises(ForwardUnavailable, match="no connection"):
            await stranger.status()
        await poll_until(lambda: all(s.refused_keys > 0 for s in c.servers), "ZAP refusals")
        assert sum(s.requests.total() for s in c.servers) == 0
        assert stranger.connected() == [False, False, False]
        client = await c.client()  # the allowed key still gets in
        assert (await client.status())[0] == 0
    run(body)


def test_garbage_is_dropped_and_counted_and_the_server_keeps_serving():
    async def body(c: Cluster):
        ctx = zmq.asyncio.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.linger = 0
        raw.curve_publickey = c.client_key.public_bytes
        raw.curve_secretkey = c.client_key.secret_bytes
        raw.curve_serverkey = c.server_keys[0].public_bytes
        raw.connect(f"tcp://{c.endpoints[0]}")
        try:
            server = c.servers[0]
            await raw.send(b"\xc1 not msgpack")
            await raw.send(msgpack.packb({"v": 99, "id": 1, "kind": "status"}))
            await raw.send(msgpack.packb({"v": 1, "id": 2, "kind": "query", "name": "apply",
                                          "kwargs": {}}))
            await raw.send_multipart([b"two", b"frames"])
            await raw.send(b"\x00" * (protocol.MAX_REQUEST_BYTES + 10))
            await poll_until(lambda: server.dropped.total() == 5, "five drops")
            assert server.dropped == {"malformed": 3, "version": 1, "too_large": 1}
            # The same connection still gets answers...
            await raw.send(protocol.encode_request(protocol.Status(77)))
            reply = protocol.decode_reply(await asyncio.wait_for(raw.recv(), DEADLINE))
            assert reply.id == 77 and reply.ok
            # ...and past MAXMSGSIZE libzmq cuts the sender off before buffering, while the
            # server goes on serving everyone else.
            await raw.send(b"\x00" * (HARD_MAX_BYTES + 1))
            client = await c.client()
            assert (await client.propose(segment()))["ok"]
            assert server.dropped.total() == 5
        finally:
            raw.close(0)
            ctx.term()
    run(body)


def test_failover_on_a_dead_voter_a_silent_voter_and_a_retryable_error():
    async def body(c: Cluster):
        client = await c.client(timeout=0.5)
        assert (await client.status())[0] == 0
        # A voter that answers retryably (no leader yet): the next voter is asked.
        c.voters[0].refuse = "MISSING_LEADER"
        for v in c.voters:
            v.known_leader = None
        assert (await client.propose(segment("a")))["ok"]
        assert c.voters[0].proposals == 1 and c.voters[1].proposals == 1
        # A voter that does not answer in time: the request moves on after the timeout.
        c.voters[1].hold = asyncio.Event()
        client.preferred = 1
        assert (await client.propose(segment("b")))["ok"]
        assert c.voters[2].proposals == 1 and client.timeouts == 1
        c.voters[1].hold.set()
        await poll_until(lambda: client.late_replies == 1, "the late reply")
        # A voter whose process is gone: not connected, skipped at once.
        await c.servers[2].stop()
        await poll_until(lambda: not client.connected()[2], "the dead voter to disconnect")
        client.preferred = 2
        c.voters[0].refuse = None
        assert (await client.propose(segment("c")))["ok"]
        assert c.voters[2].proposals == 1
        # Every voter failing: the last retryable answer, marked retryable.
        for v in c.voters:
            v.refuse = "LEADER_CHANGED"
        answer = await client.propose(segment("d"))
        assert answer["ok"] is False and answer["retryable"] is True
        assert "LEADER_CHANGED" in answer["error"]
    run(body)


def test_no_voter_at_all_is_unavailable_within_the_timeout():
    async def body():
        endpoints = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        client = ForwardClient(endpoints, ["a:1", "b:1", "c:1"],
                               [generate().public for _ in range(3)], generate(), 0.3)
        await client.start()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await client.propose(segment())
            assert answer["ok"] is False and answer["retryable"] is True
            assert loop.time() - started < 2.0
            with pytest.raises(ForwardUnavailable):
                await client.query("notification_count", {})
        finally:
            await client.close()
    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_non_voter_cannot_propose_detection_or_recovery_ops(caplog):
    """A non-voter's key must not forge a fence, claim recovery or end a recovery: those ops
    are refused (not retryable, counted, logged with the key) before they reach the log,
    while its ordinary proposals and reads still pass."""
    async def body(c: Cluster):
        client = await c.client()
        seg = segment()
        assert (await client.propose(seg))["ok"]
        assert (await client.propose({"op": "host.create", "uuid": str(uuid.uuid4()),
                                      "name": "cn1", "type": "COMPUTE",
                                      "control_attributes": "SSH", "segment": "s1"}))["ok"]
        stopped = {"op": "host.down", "hostname": "cn1", "notification_uuid": str(uuid.uuid4()),
                   "generated_time": "2024-01-01T00:00:00", "source_node": "cn2"}
        forged = [
            {"op": "recovery.claim", "term": 99, "node": "cn2"},
            {"op": "recovery.intent", "notification_uuid": stopped["notification_uuid"],
             "step": "evacuate", "key": "cn1", "term": 99},
            stopped,
            {"op": "host.fenced", "hostname": "cn1", "method": "lease", "detail": "forged"},
            {"op": "notification.transition", "notification_uuid": stopped["notification_uuid"],
             "status": "finished"},
            {"op": "notification.submit", "notification_uuid": str(uuid.uuid4()),
             "type": "COMPUTE_HOST", "hostname": "cn1", "generated_time": "2024-01-01T00:00:00",
             "payload": {"event": "STOPPED", "host_status": "NORMAL",
                         "cluster_status": "OFFLINE"}, "source_node": "cn2"},
        ]
        with caplog.at_level(logging.WARNING, logger="hagent.forward.server"):
            for command in forged:
                answer = await client.propose(command)
                assert answer["ok"] is False and answer["retryable"] is False, answer
                assert "refused" in answer["error"] and "non-voter" in answer["error"]
        assert "recovery.claim is proposed only by the voters' own" in \
            (await client.propose(forged[0]))["error"]
        assert "COMPUTE_HOST" in (await client.propose(forged[-1]))["error"]
        leader = c.voters[0]
        assert leader.proposals == 2  # only the segment and the host reached the log
        assert leader.state.recovery_claim() is None
        assert leader.state.incidents() == [] and leader.state.notification_count() == 0
        assert c.servers[0].failures == {"forbidden": len(forged) + 2}
        assert not any(s.failures for s in c.servers[1:])  # not retryable: no failover
        # Logged once per key and op, naming the key.
        warnings = [r.getMessage() for r in caplog.records
                    if "refused a proposal" in r.getMessage()]
        assert len(warnings) == len(forged)
        assert all(c.client_key.public in w for w in warnings)
        # A normal notification (a VM event of the proposer's host) still passes, and the
        # new recovery_claim read is answered.
        vm = {"op": "notification.submit", "notification_uuid": str(uuid.uuid4()),
              "type": "VM", "hostname": "cn1", "generated_time": "2024-01-01T00:00:00",
              "payload": {"event": "LIFECYCLE", "instance_uuid": str(uuid.uuid4()),
                          "vir_domain_event": "STOPPED_FAILED"}, "source_node": "cn1"}
        answer = await client.propose(vm)
        assert answer["ok"] and answer["result"]["status"] == "new"
        assert await client.query("recovery_claim", {}) is None
        leader.state.apply({"at": 1_700_000_000.0, "op": "recovery.claim", "term": 3,
                            "node": "v1"})
        assert (await client.query("recovery_claim", {}))["term"] == 3
    run(body)


def test_a_non_voter_registers_itself_only_under_its_own_key():
    """voters.register through the forward path: the record's key must be the one the
    sender's CURVE handshake proved, and a name registered under another key cannot be
    taken over; voters.progress only from the key its node registered; the voter-set
    changes themselves never from a non-voter."""
    async def main():
        c = await Cluster(more_keys=1).start()
        try:
            me = await c.client()
            other = await c.client(c.more_keys[0])
            await poll_until(lambda: all(other.connected()), "the second client's connections")

            def register(key: KeyPair, node: str = "cn4") -> dict[str, Any]:
                return {"op": "voters.register", "node": node, "raft_address": "10.9.9.4:7170",
                        "forward_address": "10.9.9.4:7171", "public_key": key.public}

            answer = await me.propose(register(c.more_keys[0]))
            assert not answer["ok"] and "not the key" in answer["error"]
            assert (await me.propose(register(c.client_key)))["ok"]
            assert (await me.propose(register(c.client_key)))["ok"]  # idempotent
            answer = await other.propose(register(c.more_keys[0]))
            assert not answer["ok"] and "registered with another public key" in answer["error"]
            assert answer["retryable"] is False
            assert c.voters[0].state.voters()["registry"]["cn4"]["public_key"] == \
                c.client_key.public
            progress = {"op": "voters.progress", "node": "cn4", "applied": 5, "leader_commit": 5}
            answer = await other.propose(progress)
            assert not answer["ok"] and "not the one" in answer["error"]
            # From its own key it reaches the log, which refuses it for its own reason.
            answer = await me.propose(progress)
            assert not answer["ok"] and "no add of cn4 is in flight" in answer["error"]
            change = {"op": "voters.change", "change": "add", "node": "cn4", "term": 1}
            answer = await me.propose(change)
            assert not answer["ok"] and "non-voter" in answer["error"]
            assert c.voters[0].state.voters()["change"] is None
        finally:
            await c.close()
    asyncio.run(asyncio.wait_for(main(), 60))
