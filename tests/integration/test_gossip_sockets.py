"""The gossip wire over real CURVE sockets on loopback: only allowed keys get a message in,
junk sent by an allowed peer is counted and dropped without disturbing the next message."""
from __future__ import annotations

import asyncio
import tempfile
import time

import pytest
import zmq
import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from hagent.forward.keys import KeyPair, generate
from hagent.lab.ports import PortPicker
from hagent.membership import messages
from hagent.membership.messages import Ack, Ping
from hagent.membership.shell import GossipBindError, GossipWire

LIMIT = 64 * 1024
_PICKER = PortPicker(tempfile.mkdtemp(prefix="hagent-gossip-test-"))


def free_port() -> int:
    return _PICKER.pick(1)[0]


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def raw_push(ctx: zmq.asyncio.Context, pair: KeyPair, server_key: str, address: str) -> zmq.asyncio.Socket:
    """A bare CURVE client, as a rogue or a buggy peer would open one."""
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey = pair.public_bytes, pair.secret_bytes
    sock.curve_serverkey = server_key.encode()
    sock.connect(f"tcp://{address}")
    return sock


class Pair:
    """Two wires, ``a`` and ``b``, that trust each other."""

    def __init__(self) -> None:
        self.ka, self.kb = generate(), generate()
        self.aa, self.ab = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.got_a: list = []
        self.got_b: list = []
        allowed = [self.ka.public, self.kb.public]
        self.a = GossipWire(self.aa, self.ka, allowed, {self.ab: self.kb.public}, LIMIT, self.got_a.append)
        self.b = GossipWire(self.ab, self.kb, allowed, {self.aa: self.ka.public}, LIMIT, self.got_b.append)

    async def __aenter__(self) -> "Pair":
        await self.a.start()
        await self.b.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.a.stop()
        await self.b.stop()


def ping(source="node2", address="127.0.0.1:1", seq=1) -> Ping:
    return Ping(source, address, seq, "node1")


def test_messages_flow_both_ways_and_replies_use_the_proven_key():
    async def scenario():
        async with Pair() as p:
            # b knows a only as a seed; a learns b's key from b's connection, not from config
            p.a.keys.seeds.clear()
            p.b.send(p.aa, ping(address=p.ab))
            await until(lambda: p.got_a)
            assert p.got_a == [ping(address=p.ab)]
            p.a.send(p.ab, Ack("node1", p.aa, 1))
            await until(lambda: p.got_b)
            assert p.got_b == [Ack("node1", p.aa, 1)]
            assert p.a.sent == 1 and p.b.sent == 1
    asyncio.run(scenario())


def test_an_unknown_key_cannot_deliver_anything():
    async def scenario():
        async with Pair() as p:
            ctx = zmq.asyncio.Context()
            rogue = raw_push(ctx, generate(), p.ka.public, p.aa)
            try:
                for seq in range(5):
                    rogue.send(messages.encode(ping(seq=seq)))
                await until(lambda: p.a.refused_keys >= 1)
                # an allowed peer's message after the rogue's proves the socket was serving
                p.b.send(p.aa, ping(address=p.ab, seq=99))
                await until(lambda: p.got_a)
                assert p.got_a == [ping(address=p.ab, seq=99)]
                assert p.a.received == 1 and not p.a.dropped_in
            finally:
                rogue.close(0)
                ctx.term()
    asyncio.run(scenario())


def test_a_message_to_a_peer_that_is_not_up_is_dropped_not_delivered_later():
    async def scenario():
        p = Pair()
        await p.b.start()
        try:
            p.b.send(p.aa, ping(address=p.ab, seq=1))     # a is not listening yet
            await until(lambda: p.b.dropped_out.get("stalled", 0) == 1)
            await p.a.start()
            # b reconnects on its own back-off (up to 1 s); send until something arrives
            seq = 2
            while not p.got_a:
                p.b.send(p.aa, ping(address=p.ab, seq=seq))
                await until(lambda: p.got_a or p.b.waiting_sends == 0)
                seq += 1
            await asyncio.sleep(0.2)                     # room for a late delivery to show up
            assert 1 not in [m.seq for m in p.got_a]
        finally:
            await p.a.stop()
            await p.b.stop()
    asyncio.run(scenario())


@settings(max_examples=8, deadline=None)
@given(st.lists(st.binary(max_size=512), min_size=1, max_size=20))
def test_junk_from_an_allowed_peer_is_counted_and_the_wire_keeps_serving(junk):
    async def scenario():
        async with Pair() as p:
            ctx = zmq.asyncio.Context()
            sock = raw_push(ctx, p.kb, p.ka.public, p.aa)
            try:
                for data in junk:
                    await sock.send(data)
                await sock.send_multipart([b"two", b"frames"])
                await sock.send(messages.encode(ping(address=p.ab, seq=7)))
                await until(lambda: p.a.received == len(junk) + 2)
                valid = [m for m in p.got_a if m == ping(address=p.ab, seq=7)]
                assert len(valid) == 1
                assert sum(p.a.dropped_in.values()) + len(p.got_a) == len(junk) + 2
            finally:
                sock.close(0)
                ctx.term()
    asyncio.run(scenario())


def test_a_taken_gossip_bind_is_refused_naming_the_address():
    async def scenario():
        async with Pair() as p:
            other = GossipWire(p.aa, generate(), [], {}, LIMIT, lambda m: None)
            with pytest.raises(GossipBindError, match=f"cannot bind gossip.bind {p.aa}"):
                await other.start()
            await other.stop()  # safe after a failed start
    asyncio.run(scenario())
