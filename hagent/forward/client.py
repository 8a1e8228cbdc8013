"""The non-voter side of forwarding: one CURVE DEALER per voter, requests by id, failover.

A non-voter keeps no Raft state. Every proposal, read and status refresh is a request to one
voter (``hagent.forward.protocol``); the voter proposes through its own RaftNode (pysyncobj
forwards to the leader) and answers once committed, or answers a read from its state.

Which voter: the one that last named itself leader in a reply's ``leader`` (every reply
carries the leader its voter knows), so a proposal normally costs one hop. A request moves
on to the next voter, in ``raft.voters`` order, when its voter

- is not connected (``ZMQ_IMMEDIATE``: a send to a voter with no live connection fails at
  once instead of queueing for a voter that may never come back),
- does not answer within ``timeout`` (a voter killed with requests in flight), or
- answers a retryable failure (no leader yet, the commit did not happen in time).

Each voter gets one attempt per call; when no voter is connected the call waits up to
``timeout`` for one to become writable (agent start-up, a voter restarting). A call that runs
out raises ``ForwardUnavailable``. A proposal that timed out may still commit on the voter;
that is why the commands a non-voter sends repeatedly (notifications) are idempotent.

Replies are paired with requests by id; a reply for a request that already timed out is
counted (``late_replies``) and dropped, as is any malformed reply (``dropped``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections import Counter
from typing import Any, Callable

import zmq
import zmq.asyncio

from hagent.forward import protocol
from hagent.forward.keys import KeyPair
from hagent.forward.server import zmq_endpoint
from hagent.node_api import Unavailable
from hagent.queries import QueryError

log = logging.getLogger(__name__)

#: libzmq cuts a voter connection that sends a larger message (ZMQ_MAXMSGSIZE).
HARD_MAX_REPLY_BYTES = protocol.MAX_REPLY_BYTES + 4096


class ForwardUnavailable(Unavailable):
    """No voter answered the request (none connected, all timed out or all said retry)."""


class ForwardClient:
    """Requests from this non-voter to the voters. ``await start()``, then call; ``close()``.

    ``endpoints``, ``voters`` (Raft addresses) and ``server_keys`` (Z85) are parallel lists in
    ``raft.voters`` order.
    """

    def __init__(self, endpoints: list[str], voters: list[str], server_keys: list[str],
                 key_pair: KeyPair, timeout: float) -> None:
        if not (len(endpoints) == len(voters) == len(server_keys)) or not endpoints:
            raise ValueError("endpoints, voters and server_keys must be parallel, non-empty lists")
        self.endpoints = list(endpoints)
        self.voters = list(voters)
        self.server_keys = list(server_keys)
        self.key_pair = key_pair
        self.timeout = timeout
        #: Index of the voter asked first: the last one reported leader (else the last that
        #: answered).
        self.preferred = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._socks: list[zmq.asyncio.Socket] = []
        self._readers: list[asyncio.Task] = []
        # Metrics.
        self.requests: Counter[str] = Counter()   # by kind (calls, not attempts)
        self.failovers = 0                        # attempts moved on to another voter
        self.timeouts = 0                         # attempts a voter did not answer in time
        self.late_replies = 0
        self.dropped: Counter[str] = Counter()    # malformed replies by reason

    # --- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._ctx = zmq.asyncio.Context()
        for endpoint, server_key in zip(self.endpoints, self.server_keys):
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.curve_publickey = self.key_pair.public_bytes
            sock.curve_secretkey = self.key_pair.secret_bytes
            sock.curve_serverkey = server_key.encode("ascii")
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_REPLY_BYTES)
            address, ipv6 = zmq_endpoint(endpoint)
            if ipv6:
                sock.setsockopt(zmq.IPV6, 1)
            sock.connect(address)
            self._socks.append(sock)
        loop = asyncio.get_running_loop()
        self._readers = [loop.create_task(self._read(s), name=f"forward-client-{i}")
                         for i, s in enumerate(self._socks)]

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ForwardUnavailable("the forward client closed"))
        self._pending.clear()
        for sock in self._socks:
            sock.close(0)
        self._socks = []
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def connected(self) -> list[bool]:
        """Per voter: whether a send would go out now (a CURVE connection is up)."""
        return [bool(s.getsockopt(zmq.EVENTS) & zmq.POLLOUT) for s in self._socks]

    # --- the calls ------------------------------------------------------------------------
    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """ClusterState.apply's answer, or {"ok": False, "retryable": True, "error": ...}."""
        try:
            reply = await self.call(lambda rid: protocol.Propose(rid, command))
        except ForwardUnavailable as exc:
            return {"ok": False, "retryable": True, "error": f"no voter committed it: {exc}"}
        except protocol.ProtocolError as exc:
            return {"ok": False, "error": f"command refused before sending: {exc}"}
        if reply.ok:
            return reply.result
        return {"ok": False, "retryable": reply.retryable, "error": f"voter {reply.voter}: {reply.error}"}

    async def query(self, name: str, kwargs: dict[str, Any], timeout: float | None = None) -> Any:
        """The result of a whitelisted query on a voter's state; raises QueryError for bad
        arguments, ForwardUnavailable when no voter answered."""
        try:
            reply = await self.call(lambda rid: protocol.Query(rid, name, kwargs), timeout)
        except protocol.ProtocolError as exc:
            raise QueryError(str(exc)) from None
        if reply.ok:
            return reply.result
        if reply.code == protocol.CODE_QUERY:
            raise QueryError(reply.error)
        raise ForwardUnavailable(f"voter {reply.voter}: {reply.error}")

    async def status(self, timeout: float | None = None) -> tuple[int, dict[str, Any]]:
        """(voter index, that voter's status); raises ForwardUnavailable."""
        holder: dict[str, int] = {}
        reply = await self.call(lambda rid: protocol.Status(rid), timeout, answered_by=holder)
        if not reply.ok:
            raise ForwardUnavailable(f"voter {reply.voter}: {reply.error}")
        return holder["index"], reply.result

    async def call(self, make: Callable[[int], protocol.Request], timeout: float | None = None,
                   answered_by: dict[str, int] | None = None) -> protocol.Reply:
        """Send ``make(request_id)`` to the preferred voter, failing over as the module
        docstring says; the final Reply (ok, or not retryable, or the last retryable one)."""
        if not self._socks:
            raise ForwardUnavailable("the forward client is not started")
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        n = len(self._socks)
        asked: set[int] = set()
        last: protocol.Reply | None = None
        problems: list[str] = []
        first = True
        self.requests[make(1).kind] += 1
        while len(asked) < n:
            order = [(self.preferred + k) % n for k in range(n)]
            candidates = [i for i in order if i not in asked]
            sent_to = None
            for i in candidates:
                rid = next(self._ids)
                data = protocol.encode_request(make(rid))
                try:
                    await self._socks[i].send(data, flags=zmq.DONTWAIT)
                except zmq.Again:
                    continue
                sent_to = i
                break
            if sent_to is None:
                # No untried voter is connected: wait for one (start-up, a voter restarting).
                if not await self._wait_writable(candidates, timeout):
                    problems.append(f"no connection to {self._names(candidates)} within {timeout:g} s")
                    break
                continue
            if not first:
                self.failovers += 1
            first = False
            asked.add(sent_to)
            future = loop.create_future()
            self._pending[rid] = future
            try:
                done, _ = await asyncio.wait({future}, timeout=timeout)
            finally:
                self._pending.pop(rid, None)
            if not done:
                self.timeouts += 1
                problems.append(f"{self.endpoints[sent_to]} did not answer within {timeout:g} s")
                if self.preferred == sent_to:
                    self.preferred = (sent_to + 1) % n
                continue
            reply: protocol.Reply = future.result()
            self._learn(sent_to, reply)
            if answered_by is not None:
                answered_by["index"] = sent_to
            if reply.ok or not reply.retryable:
                return reply
            last = reply
            problems.append(f"{self.endpoints[sent_to]}: {reply.error}")
        if last is not None:
            return dataclasses.replace(last, error="; ".join(problems))
        raise ForwardUnavailable("; ".join(problems) or "no voter answered")

    # --- internals ------------------------------------------------------------------------
    def _names(self, indexes: list[int]) -> str:
        return ", ".join(self.endpoints[i] for i in indexes)

    def _learn(self, index: int, reply: protocol.Reply) -> None:
        """Prefer the leader the voter named; else the voter that answered."""
        if reply.leader in self.voters:
            self.preferred = self.voters.index(reply.leader)
        elif reply.ok:
            self.preferred = index
        else:
            self.preferred = (index + 1) % len(self._socks)

    async def _wait_writable(self, indexes: list[int], timeout: float) -> bool:
        poller = zmq.asyncio.Poller()
        for i in indexes:
            poller.register(self._socks[i], zmq.POLLOUT)
        events = await poller.poll(timeout * 1000)
        return bool(events)

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 1:
                self.dropped[protocol.MalformedMessage.reason] += 1
                continue
            try:
                reply = protocol.decode_reply(frames[0])
            except protocol.ProtocolError as exc:
                self.dropped[exc.reason] += 1
                log.debug("forward client: dropped a reply: %s", exc)
                continue
            future = self._pending.get(reply.id)
            if future is None or future.done():
                self.late_replies += 1
                continue
            future.set_result(reply)
