"""Raft traffic is authenticated and encrypted, frames are bounded, pickles build plain data
only, and voters bind only their configured address."""
from __future__ import annotations

import os
import pickle
import socket
import struct
import zlib

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from pysyncobj import SyncObj, SyncObjConf

from consensus import transport
from consensus.raft import RaftError, RaftNode
from consensus.state import ClusterState
from raft_helpers.cluster import free_port, wait_for
from raft_helpers.inproc import close_all, lease, make_nodes, options, propose, wait_ready


class _CreatesFile:
    """Unpickling this calls open(path, 'w'): proof that loading a pickle ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _frame(payload: bytes) -> bytes:
    return struct.pack("i", len(payload)) + payload


def _attack(address: str, payload: bytes) -> bool:
    """Send ``payload`` as the very first bytes; True when the peer closed the connection."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        s.settimeout(5)
        try:
            return s.recv(1024) == b""
        except (ConnectionResetError, TimeoutError, socket.timeout):
            return True


def _payloads(target: str) -> dict[str, bytes]:
    evil = pickle.dumps({"type": "append_entries", "x": _CreatesFile(target)}, 2)
    return {
        "garbage": os.urandom(3000),
        "raw pickle": evil,
        "framed pickle (pysyncobj framing, no encryption)": _frame(zlib.compress(evil)),
        "framed pickle after a valid-looking frame": _frame(zlib.compress(pickle.dumps("x", 2)))
        + _frame(zlib.compress(evil)),
    }


def test_crafted_pickle_and_garbage_do_not_run_and_cluster_keeps_committing(tmp_path):
    nodes = make_nodes(tmp_path / "c", voters=3)
    try:
        leader = wait_ready(nodes)
        assert propose(leader, lease("before", 1))[1] is None
        target = tmp_path / "pwned"
        for victim in nodes:  # followers and the leader
            for name, payload in _payloads(str(target)).items():
                assert _attack(victim.self_address, payload), f"{name}: connection not dropped"
                assert not target.exists(), f"{name}: the crafted pickle ran code"
        for i in range(20):
            result, error = propose(leader, lease("after", i))
            assert error is None and result["ok"], (result, error)
        assert all(n.read(lambda s: s.get_lease("after"))["seq"] == 19 for n in nodes
                   if n is leader)
        assert sum(n.status()["rejected_connections"] for n in nodes) >= 3 * 4
    finally:
        close_all(nodes)


def test_control_plain_pysyncobj_would_have_run_the_pickle(tmp_path):
    """The payload is real: a stock pysyncobj node (no password, stock unpickler) runs it;
    the restricted unpickler alone already stops it."""
    target = tmp_path / "pwned"
    address = f"127.0.0.1:{free_port()}"
    payload = _frame(zlib.compress(pickle.dumps(_CreatesFile(str(target)), 2)))
    restricted = pysyncobj_pickle.loads
    node = SyncObj(address, [], SyncObjConf(bindAddress=address))
    try:
        node.waitBinded()
        pysyncobj_pickle.loads = pickle.loads  # stock behaviour
        try:
            _attack(address, payload)
            wait_for(target.exists, 5, "the stock node to run the pickle")
        finally:
            pysyncobj_pickle.loads = restricted
        target.unlink()
        _attack(address, payload)  # same stock node, restricted unpickler
        with pytest.raises(AssertionError):
            wait_for(target.exists, 1, "the pickle to run")
    finally:
        node.destroy()
    assert pysyncobj_pickle.loads is transport.restricted_loads


def test_restricted_unpickler_allows_plain_data_only():
    plain = {"type": "append_entries", "entries": [(b"\x00cmd", 3, 2), (b"", 4, 2)],
             "s": {1, 2}, "n": None, "f": 1.5, "t": True, "u": "é"}
    assert transport.restricted_loads(pickle.dumps(plain, 2)) == plain
    for evil in (_CreatesFile("/nonexistent/x"), os.system, ClusterState()):
        with pytest.raises(transport.UnsafePickleError):
            transport.restricted_loads(pickle.dumps(evil, 2))


@pytest.mark.parametrize("length", [2**31 - 1, 10 * 1024 * 1024, -5])
def test_oversized_or_negative_frame_prefix_drops_the_connection(tmp_path, length):
    nodes = make_nodes(tmp_path / "c", voters=3)
    try:
        leader = wait_ready(nodes)
        victim = nodes[0]
        before = victim.status()["rejected_connections"]
        # Announce a huge frame and keep streaming: pysyncobj alone would buffer it all.
        host, port = victim.self_address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(struct.pack("i", length))
            chunk = b"\0" * 65536
            closed = False
            try:
                for _ in range(400):  # up to 25 MiB
                    s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if not closed:
                s.settimeout(5)
                try:
                    closed = s.recv(1) == b""
                except (ConnectionResetError, TimeoutError, socket.timeout):
                    closed = True
        assert closed, "the voter kept buffering an oversized frame"
        wait_for(lambda: victim.status()["rejected_connections"] > before, 5, "rejection counted")
        assert propose(leader, lease("still", 1))[1] is None
    finally:
        close_all(nodes)


def test_binds_only_the_configured_address_and_replicas_do_not_listen(tmp_path):
    psutil = pytest.importorskip("psutil")
    nodes = make_nodes(tmp_path / "c", voters=3, replicas=1)
    try:
        wait_ready(nodes)
        listening = {f"{c.laddr.ip}:{c.laddr.port}" for c in
                     psutil.Process().net_connections(kind="tcp") if c.status == "LISTEN"}
        assert listening >= set(nodes[0].voters)
        ports = {a.rsplit(":", 1)[1] for a in nodes[0].voters}
        assert not {a for a in listening if a.rsplit(":", 1)[1] in ports} - set(nodes[0].voters)
        # Bound to 127.0.0.1 only: the same port on another loopback address refuses.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", int(nodes[0].self_address.rsplit(":")[1])), 2)
        assert nodes[3].status()["role"] == "replica" and not nodes[3].status()["voter"]
    finally:
        close_all(nodes)


def test_wrong_secret_cannot_join_and_empty_secret_refused(tmp_path):
    nodes = make_nodes(tmp_path / "c", voters=3)
    try:
        leader = wait_ready(nodes)
        intruder = RaftNode(self_address=None, voters=nodes[0].voters, state_dir=tmp_path / "x",
                            password="wrong", options=nodes[0].options, state=ClusterState(),
                            node_name="intruder")
        try:
            assert propose(leader, lease("ok", 1))[1] is None
            wait_for(lambda: sum(n.status()["rejected_connections"] for n in nodes) >= 1, 10,
                     "the voters to drop the intruder")
            assert intruder.status()["leader"] is None and not intruder.status()["ready"]
        finally:
            intruder.close()
    finally:
        close_all(nodes)
    with pytest.raises(RaftError, match="secret"):
        RaftNode(self_address=None, voters=["127.0.0.1:1"], state_dir=tmp_path / "y",
                 password="", options=options(["127.0.0.1:1"]), state=ClusterState(),
                 node_name="x")


def test_leader_fallback_timeout_comes_from_config(tmp_path):
    nodes = make_nodes(tmp_path / "c", voters=3, leader_fallback_timeout=1.7)
    try:
        assert all(n._machine.conf.leaderFallbackTimeout == 1.7 for n in nodes)
        assert all(n._machine.conf.bindAddress == n.self_address for n in nodes)
        assert all(n._machine.conf.password for n in nodes)
    finally:
        close_all(nodes)


def test_socket_inet_ntop_is_not_left_broken_by_pysyncobj():
    import socket
    assert socket.inet_ntop(socket.AF_INET6, bytes(15) + b"\x01") == "::1"
