"""The voter side of forwarding: a CURVE ROUTER that answers non-voters from this voter.

Why ROUTER/DEALER and not REQ/REP: a non-voter has many requests in flight at once (the
submitter proposes up to `notifications.max_in_flight` notifications concurrently, hagentctl
reads meanwhile, the status refresh runs every 0.5 s), and a voter answers a proposal only
once the entry is committed, a read at once. REQ/REP allows one outstanding request per socket and answers in order, so
one slow commit would block every read behind it, and a lost reply wedges a REQ socket for
good. A ROUTER prefixes every incoming message with the sender's identity and routes a reply
sent with that identity back to it, so replies go out in whatever order they complete; the
request id in the body pairs them with their requests on the DEALER side.

Security: the ROUTER is a CURVE server bound only to this voter's ``forward.endpoints``
entry. Every connecting key is checked by ZAP (pyzmq's asyncio authenticator, on this
server's own context) against ``security.allowed_keys``; an unknown key never completes the
handshake, so it cannot send a single message. Messages are msgpack, validated by
``hagent.forward.protocol`` (no pickles: a non-voter cannot run code on a voter). Proposals of
the ops that drive detection and recovery (``protocol.forward_refusal``) are answered
``forbidden`` without reaching the log, and logged once per key and op with the proposer's
public key (the ZAP User-Id of the message). That key is also what lets a non-voter register
itself for promotion and report its catch-up (``protocol.self_op_refusal``): only about the
node that registered it.

Robustness: a message libzmq would have to buffer beyond ``HARD_MAX_BYTES`` (``MAXMSGSIZE``)
cuts that peer's connection before it is read; anything smaller that is malformed, of another
protocol version or over ``MAX_REQUEST_BYTES`` is dropped and counted by reason
(``dropped``), never raised out of the receive loop. Everything runs on the daemon's asyncio
loop; a proposal waits for its commit in its own task.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Protocol

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from hagent.forward import protocol
from hagent.forward.keys import LOGGED_REFUSED_KEYS, AllowList, KeyPair
from hagent.queries import QueryError

log = logging.getLogger(__name__)

#: libzmq closes the connection of a peer that sends a larger message, before buffering it
#: (``ZMQ_MAXMSGSIZE``). Above the protocol's request cap so that oversized-but-bounded
#: requests are seen, counted and dropped by the codec; a peer sending more is cut off.
HARD_MAX_BYTES = 4 * protocol.MAX_REQUEST_BYTES
#: Requests a voter works on at once for all non-voters together; beyond it a request is
#: answered ``busy`` (retryable) at once instead of queueing without bound. Far above what
#: hundreds of nodes submit (each submitter keeps at most `notifications.max_in_flight`,
#: 64 by default, in flight).
MAX_IN_FLIGHT = 10_000
#: The ZAP domain of the forward socket (appears in ZAP requests and logs).
ZAP_DOMAIN = "hagent-forward"


class VoterHandler(Protocol):
    """What the server asks of the voter it runs in (the daemon's voter backend)."""

    address: str  # this voter's Raft address (sent in every reply)

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """ClusterState.apply's answer once committed, or {"ok": False, "retryable": True,
        "error": ...} when the log did not commit it."""

    def query(self, name: str, kwargs: dict[str, Any]) -> Any:
        """A whitelisted read on this voter's state; raises QueryError on bad arguments."""

    def status(self) -> dict[str, Any]:
        """This voter's Raft status (RaftNode.status plus notification counts)."""

    def leader(self) -> str | None:
        """The Raft address of the leader this voter knows, or None."""


def _peer_key(frame: zmq.Frame) -> str:
    """The sender's CURVE public key (Z85), as ZAP set the message's User-Id."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP metadata (cannot happen on a CURVE server socket)
        return "(unknown)"


def zmq_endpoint(host_port: str) -> tuple[str, bool]:
    """``host:port`` or ``[v6]:port`` as a ZeroMQ tcp endpoint, and whether it is IPv6."""
    ipv6 = host_port.startswith("[")
    return f"tcp://{host_port}", ipv6


class ForwardServer:
    """One voter's forward endpoint. ``await start()`` binds; ``await stop()`` closes."""

    def __init__(self, handler: VoterHandler, bind: str, key_pair: KeyPair,
                 allowed_keys: list[str]) -> None:
        self.handler = handler
        self.bind = bind
        self.key_pair = key_pair
        self._allow = AllowList(allowed_keys, "forward")
        self._ctx: zmq.asyncio.Context | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._receiver: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        # Metrics (read at scrape time by hagent.forward.metrics).
        self.dropped: Counter[str] = Counter()    # by ProtocolError.reason
        self.requests: Counter[str] = Counter()   # by kind
        self.failures: Counter[str] = Counter()   # failure replies by code
        self._logged_forbidden: set[tuple[str, str]] = set()  # (peer key, op) logged once

    @property
    def refused_keys(self) -> int:
        return self._allow.refused

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        """Bind the endpoint (raises zmq.ZMQError if it is taken) and start serving."""
        self._ctx = zmq.asyncio.Context()
        self._auth = AsyncioAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self._allow)
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.curve_server = True
        router.curve_publickey = self.key_pair.public_bytes
        router.curve_secretkey = self.key_pair.secret_bytes
        router.zap_domain = ZAP_DOMAIN.encode()
        router.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_BYTES)
        endpoint, ipv6 = zmq_endpoint(self.bind)
        if ipv6:
            router.setsockopt(zmq.IPV6, 1)
        try:
            router.bind(endpoint)
        except zmq.ZMQError:
            router.close(0)
            self._auth.stop()
            self._ctx.term()
            self._ctx = self._auth = None
            raise
        self._router = router
        self._receiver = asyncio.get_running_loop().create_task(self._receive(), name="forward-server")
        log.info("forward server on %s (CURVE, %d allowed keys)", endpoint, len(self._allow.keys))

    async def stop(self) -> None:
        """Stop receiving, abandon requests in flight (their clients time out), close."""
        tasks = [t for t in (self._receiver, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._receiver = None
        if self._router is not None:
            self._router.close(0)
            self._router = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # --- the receive loop -----------------------------------------------------------------
    async def _receive(self) -> None:
        assert self._router is not None
        loop = asyncio.get_running_loop()
        while True:
            # Frames, not bytes: the body's "User-Id" property is the peer's CURVE key.
            frames = await self._router.recv_multipart(copy=False)
            try:
                self._dispatch(loop, frames)
            except Exception:  # the loop outlives any one message
                log.exception("forward server: failed to handle a message")
                self.dropped["internal"] += 1

    def _dispatch(self, loop: asyncio.AbstractEventLoop, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            self.dropped[protocol.MalformedMessage.reason] += 1
            log.debug("forward server: dropped a message of %d frames", len(frames) - 1)
            return
        identity, body = frames[0].bytes, frames[1]
        try:
            request = protocol.decode_request(body.bytes)
        except protocol.ProtocolError as exc:
            self.dropped[exc.reason] += 1
            log.debug("forward server: dropped a request: %s", exc)
            return
        self.requests[request.kind] += 1
        if isinstance(request, protocol.Propose):
            refusal = protocol.forward_refusal(request.command)
            if refusal is None and request.command["op"] in protocol.SELF_VOTER_OPS:
                peer = _peer_key(body)
                refusal = protocol.self_op_refusal(request.command, peer,
                                                   self._registered_key(request.command))
            if refusal is not None:
                self._log_forbidden(_peer_key(body), request.command["op"], refusal)
                self._send_soon(loop, identity, self._failure(
                    request, refusal, protocol.CODE_FORBIDDEN, retryable=False))
                return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._send_soon(loop, identity, self._failure(
                request, f"voter has {MAX_IN_FLIGHT} requests in flight", protocol.CODE_BUSY,
                retryable=True))
            return
        task = loop.create_task(self._answer(identity, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _registered_key(self, command: dict[str, Any]) -> str | None:
        """The public key the state has on record for the command's node (None: none)."""
        try:
            view = self.handler.query("voters", {})
        except QueryError:
            return None
        record = (view.get("registry") or {}).get(command.get("node")) \
            if isinstance(view, dict) else None
        return record.get("public_key") if isinstance(record, dict) else None

    def _log_forbidden(self, peer: str, op: str, refusal: str) -> None:
        """Warn once per key and op (bounded): a non-voter proposing these is either a bug or
        someone holding its key; every refusal is counted (failures, code forbidden)."""
        seen = self._logged_forbidden
        if (peer, op) in seen or len(seen) >= LOGGED_REFUSED_KEYS:
            return
        self._logged_forbidden.add((peer, op))
        log.warning("forward: refused a proposal of %s from the non-voter with key %s (%s); "
                    "further ones from it are only counted", op, peer, refusal)

    async def _answer(self, identity: bytes, request: protocol.Request) -> None:
        try:
            reply = await self._reply_to(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("forward server: %s request failed", request.kind)
            reply = self._failure(request, f"voter failed: {type(exc).__name__}: {exc}",
                                  protocol.CODE_INTERNAL, retryable=True)
        await self._send(identity, reply)

    async def _reply_to(self, request: protocol.Request) -> protocol.Reply:
        h = self.handler
        if isinstance(request, protocol.Propose):
            answer = await h.propose(request.command)
            if isinstance(answer, dict) and not answer.get("ok") and answer.get("retryable"):
                return self._failure(request, str(answer.get("error") or "not committed"),
                                     protocol.CODE_UNAVAILABLE, retryable=True)
            return self._ok(request, answer)
        if isinstance(request, protocol.Query):
            try:
                result = h.query(request.name, request.kwargs)
            except QueryError as exc:
                return self._failure(request, str(exc), protocol.CODE_QUERY, retryable=False)
            return self._ok(request, result)
        return self._ok(request, h.status())

    def _ok(self, request: protocol.Request, result: Any) -> protocol.Reply:
        return protocol.Reply(id=request.id, ok=True, result=result, leader=self.handler.leader(),
                              voter=self.handler.address)

    def _failure(self, request: protocol.Request, error: str, code: str, *,
                 retryable: bool) -> protocol.Reply:
        self.failures[code] += 1
        return protocol.failure(request.id, error, code, retryable=retryable,
                                leader=self.handler.leader(), voter=self.handler.address)

    def _send_soon(self, loop: asyncio.AbstractEventLoop, identity: bytes,
                   reply: protocol.Reply) -> None:
        task = loop.create_task(self._send(identity, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, identity: bytes, reply: protocol.Reply) -> None:
        if self._router is None:
            return
        try:
            # A ROUTER drops a message for a peer that is gone or over its high-water mark
            # (ROUTER_MANDATORY off): the client times out and asks another voter.
            await self._router.send_multipart([identity, protocol.encode_reply(reply)])
        except zmq.ZMQError as exc:
            log.debug("forward server: reply %d not sent: %s", reply.id, exc)
