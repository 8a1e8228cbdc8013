"""MembershipService over real CURVE sockets on loopback, several in one process: they find
each other through a seed, agree that everyone is alive, and declare a member that stops
without a word dead; a stranger's key gets no answer and changes nothing."""
from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

import zmq
import zmq.asyncio

from hagent.config import Config, parse_config
from hagent.forward.keys import KeyPair, generate
from hagent.lab.ports import PortPicker
from hagent.membership import messages
from hagent.membership.events import MemberDead
from hagent.membership.messages import Alive, Ping, PushPull, MemberState
from hagent.membership.service import MembershipService

_PICKER = PortPicker(tempfile.mkdtemp(prefix="hagent-gossip-test-"))
VOTERS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


async def until(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def configs(names: list[str], keys: dict[str, KeyPair], *, voters: int = 1) -> dict[str, Config]:
    """One config per node; the first node is every node's seed; the first ``voters`` vote."""
    ports = _PICKER.pick(len(names))
    addresses = {n: f"127.0.0.1:{p}" for n, p in zip(names, ports)}
    seed = names[0]
    allowed = [keys[n].public for n in names]
    state = Path(tempfile.mkdtemp(prefix="hagent-gossip-state-"))
    out = {}
    for i, name in enumerate(names):
        raft = {"voters": VOTERS}
        if i < voters:
            raft["bind"] = VOTERS[i]
        out[name] = parse_config({
            "node": {"name": name, "state_dir": str(state / name)},
            "raft": raft,
            "forward": {"endpoints": ["127.0.0.1:11", "127.0.0.1:12", "127.0.0.1:13"]},
            "gossip": {"bind": addresses[name], "seeds": [addresses[seed]],
                       "seed_keys": [keys[seed].public]},
            "security": {"allowed_keys": allowed,
                         "voter_keys": [keys[names[0]].public] * 3},
        })
    return out


def cluster(names: list[str], **kw) -> dict[str, MembershipService]:
    keys = {n: generate() for n in names}
    cfgs = configs(names, keys, **kw)
    return {n: MembershipService(cfgs[n], keys[n], n) for n in names}


def states(service: MembershipService) -> dict[str, str]:
    return dict(service.member_states())


def test_three_services_converge_and_a_silent_stop_is_declared_dead(caplog):
    caplog.set_level(logging.INFO, logger="hagent.membership.service")
    names = ["node1", "node2", "node3"]

    async def scenario():
        services = cluster(names)
        seen: dict[str, list] = {n: [] for n in names}
        for n, s in services.items():
            s.subscribe(seen[n].append)
        for s in services.values():
            await s.start()
        try:
            everyone_alive = dict.fromkeys(names, "alive")
            took = await until(lambda: all(states(s) == everyone_alive for s in services.values()),
                               10, "all three see everyone alive")
            print(f"converged in {took:.2f} s")
            # rows for the operator, read from another thread as the status endpoint does;
            # node2 learnt node1 from node1's push-pull reply, and hears from it directly next
            await until(lambda: services["node2"].members()[0]["last_heard_ago"] is not None,
                        5, "node2 hears from node1")
            rows = await asyncio.to_thread(services["node2"].members)
            assert [r["name"] for r in rows] == names
            assert [r["voter"] for r in rows] == [True, False, False]
            assert rows[0]["raft_address"] == VOTERS[0]
            assert all(r["state"] == "alive" for r in rows)
            assert rows[1]["last_heard_ago"] is None           # node2 itself
            assert rows[0]["last_heard_ago"] is not None

            await services["node3"].stop(leave=False)          # as if the process died
            took = await until(lambda: all(states(services[n]).get("node3") == "dead"
                                           for n in ("node1", "node2")),
                               30, "node1 and node2 declare node3 dead")
            print(f"node3 declared dead {took:.2f} s after it stopped")
            for n in ("node1", "node2"):
                assert any(isinstance(e, MemberDead) and e.name == "node3" for e in seen[n])
                assert states(services[n])["node1" if n == "node2" else "node2"] == "alive"
            assert "member node3 dead" in caplog.text
            assert "member node3 suspect (confirmations" in caplog.text
        finally:
            for s in services.values():
                await s.stop(leave=False)
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_graceful_stop_is_left_not_dead():
    names = ["node1", "node2"]

    async def scenario():
        services = cluster(names)
        for s in services.values():
            await s.start()
        try:
            await until(lambda: states(services["node1"]).get("node2") == "alive", 10, "join")
            await services["node2"].stop()                     # leave=True
            await until(lambda: states(services["node1"]).get("node2") == "left", 5,
                        "node1 sees node2 left")
        finally:
            for s in services.values():
                await s.stop(leave=False)
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_node_started_before_its_seed_joins_once_the_seed_is_up():
    names = ["node1", "node2"]

    async def scenario():
        services = cluster(names)
        await services["node2"].start()                      # its seed, node1, is not up
        try:
            await until(lambda: services["node2"].joins >= 2, 5, "node2 retries the join")
            await services["node1"].start()
            await until(lambda: states(services["node2"]).get("node1") == "alive"
                        and states(services["node1"]).get("node2") == "alive", 10, "join")
        finally:
            for s in services.values():
                await s.stop(leave=False)
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_an_unknown_key_gets_no_answer_and_changes_nothing():
    async def scenario():
        service = cluster(["node1"])["node1"]
        await service.start()
        ctx = zmq.asyncio.Context()
        rogue_key = generate()
        rogue_address = f"127.0.0.1:{_PICKER.pick(1)[0]}"
        inbox = ctx.socket(zmq.PULL)                        # where replies to the rogue would land
        inbox.linger = 0
        inbox.curve_server = True
        inbox.curve_publickey, inbox.curve_secretkey = rogue_key.public_bytes, rogue_key.secret_bytes
        inbox.bind(f"tcp://{rogue_address}")
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        push.curve_publickey, push.curve_secretkey = rogue_key.public_bytes, rogue_key.secret_bytes
        push.curve_serverkey = service.meta["key"].encode()
        push.connect(f"tcp://{service.address}")
        try:
            before = service.snapshot()
            rogue = Alive("rogue", 1, rogue_address, {"key": rogue_key.public})
            for seq in range(3):
                push.send(messages.encode(Ping("rogue", rogue_address, seq, "node1", (rogue,))))
            push.send(messages.encode(PushPull("rogue", rogue_address, True, False,
                                               (MemberState("rogue", rogue_address, 1, "alive",
                                                            {"key": rogue_key.public}),))))
            await until(lambda: service.wire.refused_keys >= 1, 5, "the handshake is refused")
            # Absence of an answer can only be shown by waiting: two probe intervals.
            reply = await asyncio.wait_for(inbox.poll(1000), 2)
            assert reply == 0, "the rogue got an answer"
            after = service.snapshot()
            assert [m["name"] for m in after.members] == ["node1"]
            assert after.counters == before.counters
            wire_before = {k: v for k, v in before.wire.items() if k != "refused_keys"}
            wire_after = {k: v for k, v in after.wire.items() if k != "refused_keys"}
            assert wire_after == wire_before and after.wire["received"] == 0
            assert after.wire["refused_keys"] >= 1
        finally:
            push.close(0)
            inbox.close(0)
            ctx.term()
            await service.stop(leave=False)
    asyncio.run(asyncio.wait_for(scenario(), 30))
