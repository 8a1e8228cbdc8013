"""The gossip wire: membership messages over CURVE-secured ZeroMQ, behaving like datagrams.

SWIM assumes an unreliable datagram service: a probe either arrives soon or not at all, and
the protocol (timeouts, indirect probes, suspicion) copes with loss. ZeroMQ gives reliable
streams, so this module makes them behave like datagrams (docs/gossip-wire.md says why each
choice):

- **Inbound**: one PULL socket bound on ``gossip.bind``, a CURVE server. ZAP (pyzmq's asyncio
  authenticator, on this wire's own context) admits only ``security.allowed_keys``: an unknown
  key never completes the handshake and cannot deliver a byte. ``ZMQ_MAXMSGSIZE`` cuts a peer
  that sends something absurdly large before it is buffered.
- **Outbound**: one PUSH socket per peer address, a CURVE client that must find that peer's
  server key at the other end. ``ZMQ_IMMEDIATE`` queues nothing for a peer without a live
  connection, ``SNDHWM`` is small, ``linger`` is 0, and a message that cannot be handed to a
  connection within ``SEND_GRACE`` (a fresh connection's handshake, a peer that stopped
  reading) is dropped, never delivered late. A message is sent once; nothing retries it.
- **Keys**: a peer's server key comes from ``gossip.seed_keys`` (seeds), from the key a peer
  proved it holds when it connected to us (ZAP's User-Id, for replies to ``source_address``),
  or from a member's gossiped ``meta["key"]`` if that key is in ``security.allowed_keys``.
  A peer whose key is unknown gets nothing (counted ``no_key``).

Everything malformed is dropped and counted by kind, never raised out of the receive loop:
``malformed``, ``version``, ``oversized`` (the codec's verdicts), ``internal`` (the core
failed on a valid message: a bug, logged with its traceback). Everything runs on the
asyncio loop of the caller; nothing here blocks.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from functools import partial
from typing import Callable

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from hagent.forward.keys import AllowList, KeyPair
from hagent.forward.server import zmq_endpoint
from hagent.membership import messages
from hagent.membership.messages import DecodeError, Message

log = logging.getLogger(__name__)

#: The ZAP domain of the gossip socket (appears in ZAP requests and logs).
ZAP_DOMAIN = "hagent-gossip"
#: Inbound drop kinds: the codec's three, and ``internal`` for a core that raised.
DROP_IN_KINDS = ("malformed", "version", "oversized", "internal")
#: Outbound drop kinds: no server key known for the address; no connection or no room within
#: SEND_GRACE; too many sends already waiting for that peer; larger than the codec allows;
#: any other ZeroMQ error.
DROP_OUT_KINDS = ("no_key", "stalled", "backlog", "oversized", "error")
#: Seconds a message may wait for a connection to come up (CURVE handshake on a LAN: ~1 ms;
#: libzmq's first reconnect after a refusal: 100 ms) or for room in a full pipe. Below the
#: probe timeout (0.2 s), so a ping that could not go out in time is gone before its probe is
#: judged, and is never delivered after it.
SEND_GRACE = 0.15
#: Messages queued per peer socket before the sender notices the peer is slow (a paused
#: process keeps its connection): enough for a burst (ping + gossip + ack), small enough that a
#: stalled peer costs little.
SNDHWM = 16
#: Sends waiting for one peer's connection (beyond them messages are dropped as ``backlog``).
MAX_WAITING_SENDS = 32
#: libzmq's reconnect back-off to a peer that refuses (100 ms, doubling to this): a dead peer
#: costs a connection attempt a second, a restarted one is reached within a second.
RECONNECT_IVL_MAX_MS = 1000
#: Outbound sockets unused this long are closed (probe round-robin reaches each member
#: every n * probe_interval; a socket per member for ever would cost 1000 TCP connections
#: per node in a 1000-node cluster).
IDLE_CLOSE = 60.0
#: How often idle outbound sockets are looked for.
REAP_INTERVAL = 10.0
#: Outbound sockets kept at most; the least recently used is closed first beyond it.
MAX_PEER_SOCKETS = 2000
#: Addresses whose keys were learned from connections (bounded: an admitted peer can claim any
#: number of source addresses).
MAX_LEARNED_KEYS = 10_000
#: libzmq drops a connection whose peer sends a message larger than ``HARD_MAX_FACTOR`` times
#: the codec's cap; anything between the two is read, counted ``oversized`` and dropped.
HARD_MAX_FACTOR = 4


class GossipBindError(Exception):
    """``gossip.bind`` could not be bound; ``str()`` names the address, the cause and the fix."""


class PeerKeys:
    """Which CURVE server key to expect at a gossip address.

    Seeds' keys come from the config and never change. Other addresses learn a key from a
    connection that proved it (``learn_proven``) or from gossip meta (``learn_gossiped``);
    either only if the key is allowed. The latest learned key wins, so a member that
    restarts with a new (allowed) key pair is reached again."""

    def __init__(self, seed_keys: dict[str, str], allowed_keys: frozenset[str]) -> None:
        self.seeds = dict(seed_keys)
        self.allowed = allowed_keys
        self._learned: OrderedDict[str, str] = OrderedDict()

    def key_for(self, address: str) -> str | None:
        return self._learned.get(address) or self.seeds.get(address)

    def learn(self, address: str, key: str | None) -> bool:
        """Record ``key`` for ``address`` if allowed; True if that changed the key in use."""
        if not key or key not in self.allowed or address in self.seeds:
            return False
        before = self.key_for(address)
        self._learned[address] = key
        self._learned.move_to_end(address)
        while len(self._learned) > MAX_LEARNED_KEYS:
            self._learned.popitem(last=False)
        return before != key


class _Peer:
    __slots__ = ("address", "key", "sock", "last_used", "waiting")

    def __init__(self, address: str, key: str, sock: zmq.asyncio.Socket, now: float) -> None:
        self.address = address
        self.key = key
        self.sock = sock
        self.last_used = now
        self.waiting = 0


class GossipWire:
    """This node's gossip socket and its sockets to peers. ``await start()``; ``await stop()``.

    ``on_message(msg)`` is called on the loop for every valid message received; an exception
    it raises is logged and counted (``internal``), never propagated.
    """

    def __init__(self, bind: str, key_pair: KeyPair, allowed_keys: list[str],
                 seed_keys: dict[str, str], max_message_bytes: int,
                 on_message: Callable[[Message], None]) -> None:
        self.bind = bind
        self.key_pair = key_pair
        self.max_message_bytes = max_message_bytes
        self.keys = PeerKeys(seed_keys, frozenset(allowed_keys))
        self._on_message = on_message
        self._allow = AllowList(allowed_keys, "gossip")
        self._ctx: zmq.asyncio.Context | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._pull: zmq.asyncio.Socket | None = None
        self._receiver: asyncio.Task | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._peers: OrderedDict[str, _Peer] = OrderedDict()   # least recently used first
        # Counters (read at scrape time by hagent.metrics).
        self.received = 0            # messages that arrived, valid or not
        self.sent = 0                # messages handed to a live connection
        self.dropped_in: Counter[str] = Counter()
        self.dropped_out: Counter[str] = Counter()

    @property
    def refused_keys(self) -> int:
        """CURVE handshakes ZAP refused (the key is not in security.allowed_keys)."""
        return self._allow.refused

    @property
    def peer_sockets(self) -> int:
        """Outbound sockets open now."""
        return len(self._peers)

    @property
    def waiting_sends(self) -> int:
        """Sends waiting for a connection or for room (each gone within SEND_GRACE)."""
        return sum(p.waiting for p in self._peers.values())

    # --- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Bind ``bind`` (raises GossipBindError if it cannot) and start receiving."""
        self._ctx = zmq.asyncio.Context()
        self._ctx.max_sockets = MAX_PEER_SOCKETS + 64
        self._auth = AsyncioAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self._allow)
        pull = self._ctx.socket(zmq.PULL)
        pull.linger = 0
        pull.curve_server = True
        pull.curve_publickey = self.key_pair.public_bytes
        pull.curve_secretkey = self.key_pair.secret_bytes
        pull.zap_domain = ZAP_DOMAIN.encode()
        pull.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_FACTOR * self.max_message_bytes)
        pull.rcvhwm = 1000
        endpoint, ipv6 = zmq_endpoint(self.bind)
        if ipv6:
            pull.setsockopt(zmq.IPV6, 1)
        try:
            pull.bind(endpoint)
        except zmq.ZMQError as exc:
            pull.close(0)
            await self._close_context()
            raise GossipBindError(
                f"cannot bind gossip.bind {self.bind}: {exc.strerror}; another process holds "
                f"it or the address is not this host's: stop it or set another gossip.bind") from None
        self._pull = pull
        loop = asyncio.get_running_loop()
        self._receiver = loop.create_task(self._receive(), name="gossip-receive")
        self._reaper = loop.call_later(REAP_INTERVAL, self._reap_periodically)
        log.info("gossip on %s (CURVE, %d allowed keys, %d seeds)", endpoint,
                 len(self._allow.keys), len(self.keys.seeds))

    async def stop(self) -> None:
        """Stop receiving and close every socket; returns promptly (linger 0, no monitors)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
            self._receiver = None
        for peer in self._peers.values():
            peer.sock.close(0)
        self._peers.clear()
        if self._pull is not None:
            self._pull.close(0)
            self._pull = None
        await self._close_context()

    async def _close_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # --- inbound --------------------------------------------------------------------------
    def accept(self, data: bytes) -> Message | None:
        """One received datagram as a message, or None (dropped and counted by kind).

        The whole receive path minus the socket; never raises."""
        self.received += 1
        try:
            return messages.decode(data, self.max_message_bytes)
        except DecodeError as exc:
            kind = exc.kind if exc.kind in DROP_IN_KINDS else "malformed"
            self.dropped_in[kind] += 1
            log.debug("gossip: dropped a message: %s", exc)
        except Exception:  # a codec bug must not stop the receive loop
            log.exception("gossip: the codec failed on a message")
            self.dropped_in["malformed"] += 1
        return None

    def deliver(self, data: bytes, peer_key: str | None = None) -> None:
        """Decode ``data`` (from a peer that proved ``peer_key``) and hand it to the core."""
        msg = self.accept(data)
        if msg is None:
            return
        if peer_key is not None:
            self._learn(msg.source_address, peer_key)
        try:
            self._on_message(msg)
        except Exception:  # the loop outlives any one message
            log.exception("gossip: failed to handle a %s from %s", type(msg).__name__,
                          getattr(msg, "source", "?"))
            self.dropped_in["internal"] += 1

    async def _receive(self) -> None:
        assert self._pull is not None
        while True:
            frames = await self._pull.recv_multipart(copy=False)
            if len(frames) != 1:
                self.received += 1
                self.dropped_in["malformed"] += 1
                continue
            frame = frames[0]
            try:
                peer_key = frame.get("User-Id")
            except zmq.ZMQError:
                peer_key = None
            self.deliver(frame.bytes, peer_key)

    # --- outbound -------------------------------------------------------------------------
    def learn_key(self, address: str, key: str | None) -> None:
        """A member's gossiped key (meta["key"]); used only if in security.allowed_keys."""
        self._learn(address, key)

    def _learn(self, address: str, key: str | None) -> None:
        if self.keys.learn(address, key):
            peer = self._peers.pop(address, None)
            if peer is not None:  # reconnect expecting the new key
                peer.sock.close(0)

    def send(self, address: str, msg: Message) -> None:
        """Send ``msg`` to ``address`` at most once, now or within SEND_GRACE; never blocks."""
        try:
            data = messages.encode(msg)
        except Exception:
            log.exception("gossip: cannot encode a %s for %s", type(msg).__name__, address)
            self.dropped_out["error"] += 1
            return
        if len(data) > self.max_message_bytes:
            self.dropped_out["oversized"] += 1
            log.warning("gossip: a %s for %s is %d bytes, over the %d-byte limit; dropped",
                        type(msg).__name__, address, len(data), self.max_message_bytes)
            return
        peer = self._peer(address)
        if peer is None:
            self.dropped_out["no_key"] += 1
            log.debug("gossip: no CURVE key known for %s; dropped a %s", address, type(msg).__name__)
            return
        if peer.waiting >= MAX_WAITING_SENDS:
            self.dropped_out["backlog"] += 1
            return
        try:
            future = peer.sock.send(data)
        except zmq.ZMQError as exc:
            self.dropped_out["error"] += 1
            log.debug("gossip: send to %s failed: %s", address, exc)
            return
        if future.done():
            self._sent(None, future)
        else:
            peer.waiting += 1
            future.add_done_callback(partial(self._sent, peer))

    def _sent(self, peer: _Peer | None, future: asyncio.Future) -> None:
        if peer is not None:
            peer.waiting -= 1
        if future.cancelled():  # the socket closed first
            return
        exc = future.exception()
        if exc is None:
            self.sent += 1
        elif isinstance(exc, zmq.Again):
            self.dropped_out["stalled"] += 1
        else:
            self.dropped_out["error"] += 1

    def _peer(self, address: str) -> _Peer | None:
        now = time.monotonic()
        peer = self._peers.get(address)
        if peer is not None:
            peer.last_used = now
            self._peers.move_to_end(address)
            return peer
        key = self.keys.key_for(address)
        if key is None or self._ctx is None:
            return None
        try:
            endpoint, ipv6 = zmq_endpoint(address)
            sock = self._ctx.socket(zmq.PUSH)
        except zmq.ZMQError as exc:
            log.warning("gossip: cannot open a socket to %s: %s", address, exc)
            return None
        sock.linger = 0
        sock.sndhwm = SNDHWM
        sock.sndtimeo = int(SEND_GRACE * 1000)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.curve_publickey = self.key_pair.public_bytes
        sock.curve_secretkey = self.key_pair.secret_bytes
        sock.curve_serverkey = key.encode("ascii")
        if ipv6:
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            log.warning("gossip: cannot connect to %s: %s", address, exc)
            return None
        peer = _Peer(address, key, sock, now)
        self._peers[address] = peer
        while len(self._peers) > MAX_PEER_SOCKETS:
            _, oldest = self._peers.popitem(last=False)
            oldest.sock.close(0)
        return peer

    def reap(self, now: float) -> int:
        """Close outbound sockets idle for IDLE_CLOSE; returns how many were closed."""
        idle = [p for p in self._peers.values() if now - p.last_used > IDLE_CLOSE and not p.waiting]
        for peer in idle:
            del self._peers[peer.address]
            peer.sock.close(0)
        return len(idle)

    def _reap_periodically(self) -> None:
        self.reap(time.monotonic())
        self._reaper = asyncio.get_running_loop().call_later(REAP_INTERVAL, self._reap_periodically)
