"""Option F of the non-voter benchmark: non-voters keep no Raft state and forward over ZeroMQ.

Each voter runs a CURVE ROUTER next to its SyncObj. A non-voter holds one DEALER per voter
(ZMQ_IMMEDIATE, so a send to a dead voter fails at once instead of queueing) and sends to the
voter it believes leads. A follower answers with a redirect naming the leader (or "unknown"
during an election); the leader proposes the record and answers only after it has applied the
committed entry. Reads are answered by the leader from its state.

Wire format: DEALER sends [request id (8 bytes), msgpack body]; the ROUTER answers
[identity, request id, msgpack reply]. Bodies: {"op": "submit", "rec": {...}} or
{"op": "get", "id": nid}. Replies: {"s": "ok"|"dup"|"redirect"|"err", "leader": i|None, "rec": ...}.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
from typing import Any

import msgpack
import zmq
from zmq.auth.thread import ThreadAuthenticator

from pysyncobj import FAIL_REASON

from benchmarks.nonvoters_state import NotificationLog


class _AllowList:
    """ZAP credentials provider: accept exactly the CURVE public keys we were given."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class ForwardServer:
    """The voter side: answers submissions and reads from non-voters. Runs in its own thread."""

    def __init__(self, so: NotificationLog, endpoint: str, public: bytes, secret: bytes,
                 allowed: set[bytes], raft_addr_to_index: dict[str, int]) -> None:
        self.so = so
        self.raft_addr_to_index = raft_addr_to_index
        self.ctx = zmq.Context()
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(allowed))
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.curve_server = True
        self.router.curve_publickey = public
        self.router.curve_secretkey = secret
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.bind(endpoint)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind("inproc://commits")
        self.local = threading.local()
        threading.Thread(target=self._run, name="forward-server", daemon=True).start()

    def _push(self) -> zmq.Socket:
        # The commit callback runs on pysyncobj's tick thread: that thread owns its own PUSH.
        sock = getattr(self.local, "push", None)
        if sock is None:
            sock = self.local.push = self.ctx.socket(zmq.PUSH)
            sock.connect("inproc://commits")
        return sock

    def _leader_index(self) -> int | None:
        leader = self.so._getLeader()
        if leader is None:
            return None
        return self.raft_addr_to_index.get(leader.address)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                if sock is self.pull:
                    self.router.send_multipart(self.pull.recv_multipart())
                    continue
                ident, rid, body = self.router.recv_multipart()
                req = msgpack.unpackb(body)
                if not self.so._isLeader():
                    reply = {"s": "redirect", "leader": self._leader_index()}
                    self.router.send_multipart([ident, rid, msgpack.packb(reply)])
                elif req["op"] == "get":
                    reply = {"s": "ok", "rec": self.so.notes.get(req["id"])}
                    self.router.send_multipart([ident, rid, msgpack.packb(reply)])
                else:
                    self.so.submit(req["rec"], callback=self._on_commit(ident, rid))

    def _on_commit(self, ident: bytes, rid: bytes):
        def done(res: Any, err: int) -> None:
            if err == FAIL_REASON.SUCCESS:
                reply = {"s": res}
            else:
                reply = {"s": "err", "reason": int(err)}
            self._push().send_multipart([ident, rid, msgpack.packb(reply)])
        return done


class ForwardClientPool:
    """k simulated non-voters sharing one I/O thread; completions go to `self.done`.

    `send` may be called from one other thread (the load driver). Each completion is
    (nid, ok, t_done, info) with info the result ("ok"/"dup"/record) or the failure reason.
    """

    def __init__(self, k: int, voters: list[tuple[str, bytes]], keys: list[tuple[bytes, bytes]]) -> None:
        self.k = k
        self.nv = len(voters)
        self.ctx = zmq.Context()
        self.socks: list[list[zmq.Socket]] = []
        for i in range(k):
            pub, sec = keys[i]
            row = []
            for endpoint, server_pub in voters:
                s = self.ctx.socket(zmq.DEALER)
                s.curve_publickey = pub
                s.curve_secretkey = sec
                s.curve_serverkey = server_pub
                s.setsockopt(zmq.IMMEDIATE, 1)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(endpoint)
                row.append(s)
            self.socks.append(row)
        self.guess = [0] * k
        self.pending: dict[int, tuple[int, str, dict | None, int, float]] = {}
        self.next_rid = 0
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.bind("inproc://pool")
        self.local = threading.local()
        threading.Thread(target=self._run, name="forward-pool", daemon=True).start()

    def send(self, node: int, nid: str, rec: dict | None) -> None:
        """Submit rec (or read nid when rec is None) from simulated non-voter `node`."""
        sock = getattr(self.local, "push", None)
        if sock is None:
            sock = self.local.push = self.ctx.socket(zmq.PUSH)
            sock.connect("inproc://pool")
        sock.send(msgpack.packb([node, nid, rec]))

    def _attempt(self, node: int, nid: str, rec: dict | None, tries: int) -> None:
        """Send to the guessed leader; on a dead connection try the next voter."""
        body = msgpack.packb({"op": "submit", "rec": rec} if rec is not None else {"op": "get", "id": nid})
        while tries < self.nv:
            v = self.guess[node]
            self.next_rid += 1
            rid = self.next_rid
            try:
                self.socks[node][v].send_multipart([struct.pack("!Q", rid), body], flags=zmq.NOBLOCK)
            except zmq.Again:
                self.guess[node] = (v + 1) % self.nv
                tries += 1
                continue
            self.pending[rid] = (node, nid, rec, tries, time.monotonic())
            return
        self.done.put((nid, False, time.monotonic(), "no voter reachable"))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        owner: dict[zmq.Socket, int] = {}
        for row in self.socks:
            for s in row:
                poller.register(s, zmq.POLLIN)
                owner[s] = 1
        last_gc = time.monotonic()
        while True:
            for sock, _ in poller.poll(500):
                if sock is self.inbox:
                    node, nid, rec = msgpack.unpackb(sock.recv())
                    self._attempt(node, nid, rec, 0)
                    continue
                rid_b, body = sock.recv_multipart()
                rid = struct.unpack("!Q", rid_b)[0]
                entry = self.pending.pop(rid, None)
                if entry is None:
                    continue
                node, nid, rec, tries, _ = entry
                reply = msgpack.unpackb(body)
                status = reply["s"]
                if status == "redirect":
                    leader = reply.get("leader")
                    if leader is None or tries + 1 >= self.nv:
                        self.done.put((nid, False, time.monotonic(), "no leader"))
                    else:
                        self.guess[node] = leader
                        self._attempt(node, nid, rec, tries + 1)
                elif status == "err":
                    self.done.put((nid, False, time.monotonic(), "err %s" % reply.get("reason")))
                else:
                    self.done.put((nid, True, time.monotonic(), reply.get("rec", status)))
            now = time.monotonic()
            if now - last_gc > 2.0:  # drop requests whose voter died; the driver times them out
                last_gc = now
                for rid in [r for r, e in self.pending.items() if now - e[4] > 5.0]:
                    del self.pending[rid]
