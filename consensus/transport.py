"""pysyncobj's TCP transport, made safe for hagent: bounded frames, plain-data pickles, no
message leaving before the journal changes it reflects are on disk, and links to voters that
are not (or no longer) members.

Four things pysyncobj 0.3.17 does not do, each done here in one place:

1. **Sync before send** (``HagentTransport.send``/``flush``). While the journal has unsynced
   changes, outgoing messages are queued instead of written; ``flush()`` syncs the journal once
   and then sends the queue in order. The SyncObj subclass in ``consensus.raft`` flushes at the
   start of every tick, and the transport's own tick callback flushes right before pysyncobj
   blocks in ``poll``. So a follower's ack (``next_node_idx``), a vote, or the leader's
   append-entries never reflects an entry that is not durable, and all entries appended in one
   tick share one fdatasync. The leader only counts itself toward a commit for entries it has
   already sent, hence synced.
2. **Frame caps** (``CappedConnection``). pysyncobj buffers whatever length a peer announces in
   a frame's 4-byte prefix. A connection that has not yet completed the encrypted handshake
   may announce at most ``PREAUTH_MAX_FRAME`` bytes, an authenticated one ``MAX_FRAME``; a
   larger or negative length drops the connection before anything is buffered.
3. **Plain-data unpickling** (``install_restricted_unpickler``). pysyncobj's wire messages and
   log entries are pickles. With ``password=`` set, an unauthenticated peer's bytes fail the
   Fernet check before they are unpickled; but every node (voter or replica) holds the
   cluster secret, so a single compromised compute node could otherwise run code on every
   voter. The restricted unpickler only builds plain values (dict, list, tuple, str, bytes,
   numbers, bool, None, set) and raises on anything that names a class or function.
4. **Links to non-members** (``HagentTransport``, "links" below). pysyncobj drops a connection
   from an address that is not one of its nodes, and of two nodes only the one with the
   larger address dials. A voter that is joining (not yet added) or was removed is not a node
   of the members, so nobody would send it the log: it could not catch up before its add,
   nor learn its removal. Here (a) a member serves an unknown address as a read-only peer
   (as it serves replicas: the log, and proposals forwarded to the leader), remembering the
   address; (b) a voter dials a partner with a larger address itself when that partner has
   not connected for ``FALLBACK_DIAL_AFTER`` (it does not know this node); (c) when the
   member then adds that address, the read-only link becomes the member's link if the peer
   is the one that dials by pysyncobj's rule, else it is dropped and the member dials; (d) a
   member refuses a known node's dial against the rule (its own dial is the link).

And the **vote guard** (``_onMessageReceived``): a vote request (or pre-vote, or vote) from a
node outside this node's current cluster (pysyncobj's partners, the latest configuration in
its log) is dropped and counted (``vote_requests_dropped``). pysyncobj would grant it or at
least adopt its term, deposing the leader; a removed voter, or one restarted with a stale
voter list, must not disrupt the cluster it is no longer part of. Pre-votes
(``consensus.prevote``) are handed to ``on_pre_vote_message``.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import pickle
import struct
import time
from typing import Any, Callable

import pysyncobj.pickle as pysyncobj_pickle
from consensus.prevote import PRE_VOTE, PRE_VOTE_RESPONSE
from pysyncobj.node import TCPNode
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

log = logging.getLogger(__name__)

#: Largest frame an authenticated peer may send. Append-entries batches are 64 KiB
#: (pysyncobj splits larger entries), snapshot chunks 64 KiB; a forwarded command is bounded
#: by ``consensus.raft.MAX_COMMAND_BYTES``. Fernet + base64 add about a third.
MAX_FRAME = 8 * 1024 * 1024
#: Largest frame before the handshake: the first message is a 32-byte random key.
PREAUTH_MAX_FRAME = 4096
#: Stop draining a socket into the buffer past this many bytes once a whole frame is
#: buffered; the level-triggered poller brings us back for the rest.
_READ_SOFT_LIMIT = 1024 * 1024
#: At most one "dropped a connection" warning per this many seconds (an attacker must not
#: be able to flood the journal).
_WARN_INTERVAL = 10.0
#: A member dials a partner with a larger address (pysyncobj leaves that to the partner) once
#: the partner has not connected for this long (s): it does not know this node as a member
#: (a removal this node has not heard of). Between members the partner's own dial comes
#: within a tick, so this does not fire. A voter that knows it is not a member (joining,
#: removed) dials every partner at once: nobody would dial it.
FALLBACK_DIAL_AFTER = 1.0

# --- 3. restricted unpickler ----------------------------------------------------------------

# Globals a plain-data protocol-2 pickle needs: bytes are pickled as _codecs.encode(str,
# 'latin1') and b'' as bytes(); sets as set([...]).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes"),
    ("builtins", "set"), ("__builtin__", "set"), ("builtins", "frozenset"),
    ("__builtin__", "frozenset"), ("builtins", "bytearray"), ("__builtin__", "bytearray"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle named a class or function outside the plain-data allow-list."""


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to unpickle global {module}.{name}")


def restricted_loads(data: bytes | str) -> Any:
    """``pickle.loads`` that only builds plain data; raises UnsafePickleError otherwise."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _PlainDataUnpickler(io.BytesIO(data)).load()


def restricted_load(file) -> Any:
    return _PlainDataUnpickler(file).load()


def install_restricted_unpickler() -> None:
    """Route every pysyncobj unpickling (wire messages, log entries) through the allow-list.

    pysyncobj's modules call ``pysyncobj.pickle.loads``/``load`` through the module object, so
    replacing the two functions there covers the connection parser, command application and
    chunked entries. Idempotent. Consequence: pysyncobj's own membership entries (which
    pickle Node objects) cannot be read; hagent writes them as ``[kind, address]``
    (``consensus.raft_members``).
    """
    pysyncobj_pickle.loads = restricted_loads
    pysyncobj_pickle.load = restricted_load


# --- 2. frame caps --------------------------------------------------------------------------

class CappedConnection(TcpConnection):
    """TcpConnection that refuses oversized frames before buffering them.

    pysyncobj creates its connections itself (in ``TcpServer`` and ``TCPTransport.addNode``);
    ``HagentTransport`` re-classes each new one to this subclass before it reads a byte. The
    override hooks pysyncobj's private read step (``_TcpConnection__processRead``), which
    appends one ``recv`` to the private read buffer.
    """

    on_rejected: Callable[["CappedConnection", str], None] | None = None

    def _TcpConnection__processRead(self) -> bool:  # noqa: N802 (pysyncobj's name)
        more = TcpConnection._TcpConnection__processRead(self)
        if self.state == CONNECTION_STATE.DISCONNECTED:
            return False
        buf = self._TcpConnection__readBuffer
        if len(buf) < 4:
            return more
        (length,) = struct.unpack("i", buf[:4])
        limit = MAX_FRAME if self.sendRandKey else PREAUTH_MAX_FRAME
        if length < 0 or length > limit:
            reason = (f"frame of {length} bytes announced, limit {limit} "
                      f"({'authenticated' if self.sendRandKey else 'before handshake'})")
            callback = self.on_rejected
            self.disconnect()
            if callback is not None:
                callback(self, reason)
            return False
        if len(buf) >= 4 + length and len(buf) > _READ_SOFT_LIMIT:
            return False  # parse what we have before reading more
        return more

    def peer(self) -> str:
        try:
            host, port = self._TcpConnection__socket.getpeername()[:2]
            return f"{host}:{port}"
        except Exception:
            return "?"


# --- 1. sync before send + the transport ----------------------------------------------------

_AE_KEYS = frozenset({"type", "term", "commit_index", "entries", "prevLogIdx", "prevLogTerm"})
#: Largest merged append-entries batch (bytes of commands).
_MERGE_LIMIT = 512 * 1024


def _coalesce(pending: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Merge the queued messages one tick produced, per destination, where Raft allows it.

    With ``appendEntriesUseBatch=False`` pysyncobj sends one append-entries per proposal and
    a follower one ack per append-entries. Held back while the journal synced, consecutive
    ones to the same node are merged: append-entries whose entries continue each other
    become one message (the later commit index), and successive successful acks become the
    last one. Per-destination order is kept; nothing else is touched.
    """
    out: list[list] = []
    last: dict[Any, int] = {}
    for node, message in pending:
        i = last.get(node)
        if i is not None and isinstance(message, dict):
            prev = out[i][1]
            kind = message.get("type")
            if kind == "append_entries" and prev.get("type") == kind \
                    and prev.keys() == _AE_KEYS and message.keys() == _AE_KEYS \
                    and prev["term"] == message["term"] and prev["entries"] and message["entries"] \
                    and prev["entries"][-1][1] == message["prevLogIdx"] \
                    and prev["entries"][-1][2] == message["prevLogTerm"] \
                    and out[i][2] + sum(len(e[0]) for e in message["entries"]) < _MERGE_LIMIT:
                out[i][1] = dict(prev, entries=list(prev["entries"]) + list(message["entries"]),
                                 commit_index=message["commit_index"])
                out[i][2] += sum(len(e[0]) for e in message["entries"])
                continue
            if kind == "next_node_idx" and prev.get("type") == kind and prev.get("success") \
                    and message.get("success") and not prev.get("reset") \
                    and not message.get("reset") \
                    and message["next_node_idx"] >= prev["next_node_idx"]:
                out[i][1] = message
                continue
        last[node] = len(out)
        size = sum(len(e[0]) for e in message.get("entries", ())) \
            if isinstance(message, dict) and message.get("type") == "append_entries" else 0
        out.append([node, message, size])
    return [(node, message) for node, message, _ in out]


class HagentTransport(TCPTransport):
    """TCPTransport with frame caps, sync-before-send and a halt switch.

    ``journal`` is the node's ``DurableJournal`` (None: send at once, as pysyncobj does; with
    the journal's fsync off its sync() costs nothing but messages are still coalesced). ``halt()`` drops every later message: a node that found it cannot
    continue safely (e.g. a snapshot of a newer format) must not ack anything.
    """

    def __init__(self, syncObj, selfNode, otherNodes, journal=None) -> None:  # noqa: N803
        self._journal = journal
        self._pending: list[tuple[Any, Any]] = []
        self._halted = False
        self._last_warning = 0.0
        self._suppressed = 0
        #: Connections dropped for an oversized frame, and unauthenticated connections that
        #: went away before completing the handshake (garbage, wrong password, scanners).
        self.rejected_frames = 0
        self.unauthenticated_drops = 0
        #: Acks (next_node_idx success) sent, and those sent for entries not yet durable
        #: (must stay 0; a test and the status document watch it).
        self.acks_sent = 0
        self.acks_ahead_of_disk = 0
        #: Number of flushes that synced the journal.
        self.syncing_flushes = 0
        # Links (module docstring, 4): read-only peers that announced a voter address, our own
        # dials to partners with a larger address, since when each such partner has had no
        # link, and when we last dialed it.
        self._peer_addresses: dict[Any, str] = {}
        self._peers_logged: set[str] = set()
        self._dialed: dict[TCPNode, TcpConnection] = {}
        self._unlinked_since: dict[TCPNode, float] = {}
        self._last_dial: dict[TCPNode, float] = {}
        #: Vote requests, votes and pre-votes dropped because the sender is not a member here.
        self.vote_requests_dropped = 0
        #: When (monotonic) an append-entries of this node's term or later last arrived.
        self.last_leader_contact = 0.0
        #: fn(sender, message) for pre-votes and their responses (consensus.raft).
        self.on_pre_vote_message: Callable[[Any, dict], None] | None = None
        #: Whether this node is in its latest configuration (kept by consensus.raft).
        self.member = True
        super().__init__(syncObj, selfNode, otherNodes)

    # -- sync before send
    def send(self, node, message) -> bool:
        if self._halted:
            return False
        if self._journal is not None and (self._journal.dirty or self._pending):
            conn = self._connections.get(node)
            if conn is None or conn.state != CONNECTION_STATE.CONNECTED:
                return False
            self._pending.append((node, message))
            return True
        return self._send_now(node, message)

    def flush(self) -> None:
        """Sync the journal if it changed, then send every queued message in order."""
        if self._journal is not None and self._journal.dirty:
            self._journal.sync()
            self.syncing_flushes += 1
        if not self._pending:
            return
        pending, self._pending = _coalesce(self._pending), []
        for node, message in pending:
            self._send_now(node, message)

    def _send_now(self, node, message) -> bool:
        if self._halted:
            return False
        if isinstance(message, dict) and message.get("type") == "next_node_idx" \
                and message.get("success"):
            self.acks_sent += 1
            if self._journal is not None and message["next_node_idx"] - 1 > self._journal.durable_index:
                self.acks_ahead_of_disk += 1
                log.error("durability bug: ack for index %d while only %d is on disk",
                          message["next_node_idx"] - 1, self._journal.durable_index)
        # pysyncobj's send() looks the connection up again after sending; a failed send
        # disconnects synchronously and _onDisconnected forgets a read-only peer's link, so
        # that second lookup raised KeyError in the Raft thread. Hold the connection instead.
        conn = self._connections.get(node)
        if conn is None or conn.state != CONNECTION_STATE.CONNECTED:
            return False
        conn.send(message)
        return conn.state == CONNECTION_STATE.CONNECTED

    def halt(self) -> None:
        self._halted = True
        self._pending = []

    def _onTick(self) -> None:  # noqa: N802 (pysyncobj's name)
        self.flush()
        super()._onTick()
        self._dial_unlinked()

    # -- frame caps and logging of refused peers
    def _cap(self, conn) -> None:
        if type(conn) is TcpConnection:
            conn.__class__ = CappedConnection
        if isinstance(conn, CappedConnection):
            conn.on_rejected = self._on_rejected

    def _onNewIncomingConnection(self, conn) -> None:  # noqa: N802
        self._cap(conn)
        conn._hagent_peer = conn.peer() if isinstance(conn, CappedConnection) else "?"
        super()._onNewIncomingConnection(conn)

    def addNode(self, node) -> None:  # noqa: N802
        """A node joins the cluster (at start, or a membership entry was appended)."""
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None:
            self._cap(conn)
        peer = next((p for p, a in self._peer_addresses.items() if a == node.address), None)
        if peer is None:
            return
        del self._peer_addresses[peer]
        conn = self._connections.get(peer)
        if conn is None or conn.state != CONNECTION_STATE.CONNECTED:
            return
        if self._dials(node):
            conn.disconnect()  # (c) our own dial replaces its read-only link
            return
        # (c) it dials us by pysyncobj's rule: its read-only link becomes the member's link.
        self._connections.pop(peer, None)
        self._readonlyNodes.discard(peer)
        self._onReadonlyNodeDisconnected(peer)
        self._connections[node] = conn
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        self._onNodeConnected(node)
        log.info("raft: %s is a member now; its read-only link carries on as its link",
                 node.address)

    def dropNode(self, node) -> None:  # noqa: N802
        """A node leaves the cluster (a membership entry was appended) or the transport stops."""
        dialed = self._dialed.pop(node, None)
        if dialed is not None and self._connections.get(node) is not dialed:
            self._close_quietly(dialed)
        self._unlinked_since.pop(node, None)
        self._last_dial.pop(node, None)
        super().dropNode(node)

    def destroy(self) -> None:
        for conn in list(self._dialed.values()):
            self._close_quietly(conn)
        self._dialed.clear()
        super().destroy()

    def _onIncomingMessageReceived(self, conn, message) -> None:  # noqa: N802
        # Only the node's first message after the handshake (its address) is handled here.
        if (self._syncObj.encryptor and not conn.sendRandKey) or not isinstance(message, str) \
                or message == "readonly":
            super()._onIncomingMessageReceived(conn, message)
            return
        node = self._nodeAddrToNode.get(message)
        if node is None:
            # (a) Not one of our nodes: a joining or removed voter. Serve it as pysyncobj
            # serves a replica; the log tells it what it is.
            super()._onIncomingMessageReceived(conn, "readonly")
            peer = self._connToNode(conn)
            if peer is not None:
                self._peer_addresses[peer] = message
                if message not in self._peers_logged:
                    self._peers_logged.add(message)
                    log.info("raft: %s connected but is not a member here; serving it the log "
                             "as a read-only peer", message)
            return
        if self._dials(node):
            # (d) A known node dialing against pysyncobj's rule (it did not know it was a
            # member here yet): our own dial is its link.
            self._unknownConnections.discard(conn)
            conn.disconnect()
            return
        dialed = self._dialed.pop(node, None)
        if dialed is not None:
            self._close_quietly(dialed)  # its dial is the link (pysyncobj's rule)
        super()._onIncomingMessageReceived(conn, message)

    def _onDisconnected(self, conn) -> None:  # noqa: N802
        if conn in self._unknownConnections:
            self.unauthenticated_drops += 1
            peer = getattr(conn, "_hagent_peer", "?")
            self._warn("dropped an unauthenticated Raft connection from %s (bad handshake, "
                       "wrong cluster secret, or not a Raft peer)", peer)
        node = self._connToNode(conn)
        super()._onDisconnected(conn)
        if node is not None and not isinstance(node, TCPNode):
            # A read-only peer left; pysyncobj would keep its dead connection forever.
            self._peer_addresses.pop(node, None)
            if self._connections.get(node) is conn:
                del self._connections[node]

    # -- the vote guard
    def _onMessageReceived(self, node, message) -> None:  # noqa: N802
        if isinstance(message, dict):
            kind = message.get("type")
            if kind in (PRE_VOTE, PRE_VOTE_RESPONSE):
                if self.on_pre_vote_message is not None:
                    self.on_pre_vote_message(node, message)
                return
            if kind in ("request_vote", "response_vote") \
                    and node not in self._syncObj._SyncObj__otherNodes:
                self.drop_vote_request(node, message)
                return
            if kind == "append_entries" \
                    and message.get("term", -1) >= self._syncObj.raftCurrentTerm:
                self.last_leader_contact = time.monotonic()
        super()._onMessageReceived(node, message)

    def drop_vote_request(self, node, message: dict) -> None:
        """Count and (rate-limited) log a vote message from a node not in this cluster."""
        self.vote_requests_dropped += 1
        sender = self._peer_addresses.get(node) or getattr(node, "id", "?")
        self._warn("dropped a %s (term %s) from %s: not a member of this node's voter set (a "
                   "removed voter, or one not added yet); it must not change the term",
                   message.get("type"), message.get("term"), sender)

    # -- (b) dialing partners that do not dial us
    def _dials(self, node) -> bool:
        """pysyncobj's rule: of two nodes, the one with the larger address dials."""
        return not self._selfIsReadonlyNode and self._selfNode.address > node.address

    def _dial_unlinked(self) -> None:
        if self._selfIsReadonlyNode or self._halted:
            return
        now = time.monotonic()
        for node in list(self._nodes):
            if self._dials(node):
                continue
            conn = self._connections.get(node)
            if conn is not None and conn.state != CONNECTION_STATE.DISCONNECTED:
                self._unlinked_since.pop(node, None)
                continue
            if now - self._unlinked_since.setdefault(node, now) < FALLBACK_DIAL_AFTER \
                    and self.member:
                continue
            dialed = self._dialed.get(node)
            if dialed is not None and dialed.state != CONNECTION_STATE.DISCONNECTED:
                continue
            if now - self._last_dial.get(node, 0.0) < self._syncObj.conf.connectionRetryTime:
                continue
            self._last_dial[node] = now
            self._dial(node)

    def _dial(self, node: TCPNode) -> None:
        conf = self._syncObj.conf
        conn = CappedConnection(poller=self._syncObj._poller, timeout=conf.connectionTimeout,
                                sendBufferSize=conf.sendBufferSize,
                                recvBufferSize=conf.recvBufferSize, keepalive=conf.tcp_keepalive)
        conn.encryptor = self._syncObj.encryptor
        conn.on_rejected = self._on_rejected
        conn._hagent_peer = node.address
        conn.setOnConnectedCallback(functools.partial(self._dial_connected, node, conn))
        conn.setOnDisconnectedCallback(functools.partial(self._dial_lost, node, conn))
        self._dialed[node] = conn
        conn.connect(node.ip, node.port)

    def _dial_connected(self, node: TCPNode, conn: TcpConnection) -> None:
        # As pysyncobj's _onOutgoingConnected / _onOutgoingMessageReceived: key exchange,
        # then our address, then the link is the node's.
        if self._syncObj.encryptor:
            conn.setOnMessageReceivedCallback(
                functools.partial(self._dial_handshake, node, conn))
            conn.recvRandKey = os.urandom(32)
            conn.send(conn.recvRandKey)
        else:
            conn.send(self._selfNode.address)
            self._adopt(node, conn)

    def _dial_handshake(self, node: TCPNode, conn: TcpConnection, message) -> None:
        if not conn.sendRandKey:
            conn.sendRandKey = message
            conn.send(self._selfNode.address)
        self._adopt(node, conn)

    def _adopt(self, node: TCPNode, conn: TcpConnection) -> None:
        current = self._connections.get(node)
        if current is not None and current is not conn \
                and current.state == CONNECTION_STATE.CONNECTED:
            self._dialed.pop(node, None)
            self._close_quietly(conn)  # the node dialed us meanwhile: its link wins
            return
        self._connections[node] = conn
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        self._onNodeConnected(node)

    def _dial_lost(self, node: TCPNode, conn: TcpConnection) -> None:
        if self._dialed.get(node) is conn:
            del self._dialed[node]
        if self._connections.get(node) is conn:
            del self._connections[node]
            self._unlinked_since[node] = time.monotonic()
            self._onNodeDisconnected(node)

    @staticmethod
    def _close_quietly(conn: TcpConnection) -> None:
        conn.setOnDisconnectedCallback(None)
        conn.disconnect()

    def _on_rejected(self, conn: CappedConnection, reason: str) -> None:
        self.rejected_frames += 1
        self._warn("dropped Raft connection from %s: %s",
                   getattr(conn, "_hagent_peer", None) or conn.peer(), reason)

    def _warn(self, fmt: str, *args) -> None:
        now = time.monotonic()
        if now - self._last_warning < _WARN_INTERVAL:
            self._suppressed += 1
            return
        if self._suppressed:
            fmt += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._suppressed = 0
        self._last_warning = now
        log.warning(fmt, *args)
