"""The admin socket for real: file mode and group, peer credentials, framing, life cycle.

The server runs on an asyncio loop in a background thread; the tests talk to it with
blocking sockets and with hagentctl's own client, as an operator would. CI runs as root,
so the refused-peer tests fork a child that drops to ``nobody`` before connecting.
"""
import asyncio
import grp
import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from hagent.admin import client, protocol
from hagent.admin.server import AdminServer, AdminSocketError
from hagent.config import AdminConfig
from hagent.ctl.main import main as hagentctl
from tests.fakes import FakeNode

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid


class LoopThread:
    """An asyncio loop in a daemon thread, as the daemon's loop would be."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def sockdir():
    # Short (sun_path is 108 bytes) and traversable by nobody (tmp_path's parents are 0700).
    d = Path(tempfile.mkdtemp(prefix="hagent-admin-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def node():
    return FakeNode()


@pytest.fixture
def start(loop, node, sockdir):
    servers = []

    def _start(group="", path=None, node_=None):
        server = AdminServer(node_ or node, AdminConfig(socket=path or sockdir / "hagent.sock",
                                                        group=group))
        loop.run(server.start())
        servers.append(server)
        return server

    yield _start
    for server in servers:
        loop.run(server.stop())


def raw(path, data: bytes, replies: int):
    """Send ``data`` on one connection and read ``replies`` reply lines (fewer at EOF)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        f = s.makefile("rb")
        out = []
        for _ in range(replies):
            try:
                line = f.readline()
            except ConnectionResetError:  # the server hung up with our bytes unread
                break
            if not line:
                break
            out.append(json.loads(line))
        return out


def metric(node, name, labels=None):
    return node.registry.get_sample_value(name, labels or {}) or 0.0


# --- the socket file ----------------------------------------------------------------------
def test_socket_is_0660_with_the_agents_group(start):
    server = start()
    st = server.path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getegid() == server.socket_gid


def test_socket_group_from_config(start):
    server = start(group="nogroup")
    assert server.path.stat().st_gid == NOGROUP


def test_unknown_group_refuses_to_start(loop, node, sockdir):
    server = AdminServer(node, AdminConfig(socket=sockdir / "hagent.sock", group="no-such-group-x"))
    with pytest.raises(AdminSocketError, match="admin.group 'no-such-group-x' does not exist"):
        loop.run(server.start())


def test_stale_socket_file_is_replaced(start, sockdir):
    path = sockdir / "hagent.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed agent leaves
    start(path=path)
    assert client.call(path, "status")["ok"]


def test_refuses_to_start_while_another_agent_answers(start, loop, sockdir):
    first = start()
    second = AdminServer(FakeNode("node-2"), AdminConfig(socket=first.path))
    with pytest.raises(AdminSocketError, match="another agent answers on"):
        loop.run(second.start())
    assert client.call(first.path, "status")["result"]["node"] == "node-1"


def test_refuses_a_path_that_is_not_a_socket(loop, node, sockdir):
    path = sockdir / "hagent.sock"
    path.write_text("not a socket")
    with pytest.raises(AdminSocketError, match="exists and is not a socket"):
        loop.run(AdminServer(node, AdminConfig(socket=path)).start())
    assert path.read_text() == "not a socket"


def test_stop_removes_the_socket_and_ends_open_connections(loop, node, sockdir):
    server = AdminServer(node, AdminConfig(socket=sockdir / "hagent.sock"))
    loop.run(server.start())
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(server.path))
    assert raw(server.path, protocol.encode_request("status"), 1)[0]["ok"]
    loop.run(server.stop())
    assert not server.path.exists()
    idle.settimeout(10)
    assert idle.recv(1) == b""  # the server hung up on the idle client
    idle.close()
    loop.run(server.stop())  # idempotent


# --- framing --------------------------------------------------------------------------------
def test_several_requests_on_one_connection(start):
    server = start()
    replies = raw(server.path, protocol.encode_request("status") + b"\n" +
                  protocol.encode_request("segment.list"), 2)
    assert [r["ok"] for r in replies] == [True, True]
    assert replies[1]["result"] == []


def test_malformed_line_is_answered_counted_and_the_server_keeps_serving(start, node):
    server = start()
    replies = raw(server.path, b"this is not json\n" + protocol.encode_request("status"), 2)
    assert replies[0]["ok"] is False and replies[0]["error"].startswith("malformed request")
    assert replies[1]["ok"] is True
    assert metric(node, "hagent_admin_malformed_requests_total") == 1
    assert client.call(server.path, "status")["ok"]


def test_over_long_line_is_refused_and_that_connection_closed(start, node):
    server = start()
    huge = b'{"verb": "status", "args": {"x": "' + b"y" * (protocol.MAX_LINE + 10) + b'"}}\n'
    replies = raw(server.path, huge + protocol.encode_request("status"), 2)
    assert len(replies) == 1 and "longer than" in replies[0]["error"]
    assert metric(node, "hagent_admin_malformed_requests_total") == 1
    assert client.call(server.path, "status")["ok"]


def test_request_without_final_newline_is_still_answered(start):
    server = start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(server.path))
        s.sendall(b'{"verb": "status"}')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(s.makefile("rb").readline())["ok"]


# --- peer credentials ---------------------------------------------------------------------------
def as_user(path, uid, gid, groups, request: bytes) -> dict:
    """Fork a child that becomes (uid, gid, groups), sends ``request`` and returns the reply."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish work, then _exit whatever happens
        code = 1
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                try:
                    s.connect(str(path))
                    s.sendall(request)
                    data = s.makefile("rb").readline()
                except PermissionError:
                    data = b'{"connect": "EACCES"}\n'
            os.write(w, data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def test_peer_with_the_wrong_uid_is_refused(start, node):
    server = start()
    os.chmod(server.path, 0o666)  # let nobody past the kernel's check, to reach ours
    reply = as_user(server.path, NOBODY, NOGROUP, [], protocol.encode_request("status"))
    assert reply["ok"] is False and reply["error"].startswith("permission denied")
    assert metric(node, "hagent_admin_refused_peers_total") == 1
    assert metric(node, "hagent_admin_requests_total", {"verb": "status", "result": "ok"}) == 0


def test_the_kernel_already_keeps_strangers_out_of_a_0660_socket(start):
    server = start()
    reply = as_user(server.path, NOBODY, NOGROUP, [], protocol.encode_request("status"))
    assert reply == {"connect": "EACCES"}


def test_member_of_the_socket_group_is_allowed(start):
    server = start(group="nogroup")
    reply = as_user(server.path, NOBODY, NOGROUP, [], protocol.encode_request("status"))
    assert reply["ok"] is True


def test_supplementary_group_membership_is_allowed(start):
    server = start(group="nogroup")
    users = grp.getgrnam("users").gr_gid
    reply = as_user(server.path, NOBODY, users, [NOGROUP], protocol.encode_request("status"))
    assert reply["ok"] is True


# --- hagentctl over the socket -------------------------------------------------------------------
def test_hagentctl_over_the_socket(start, capsys):
    server = start()
    assert hagentctl(["--socket", str(server.path), "segment", "create", "s1", "auto", "COMPUTE"]) == 0
    capsys.readouterr()
    assert hagentctl(["--socket", str(server.path), "-f", "json", "segment", "list"]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["s1"]


def test_hagentctl_without_an_agent_names_the_socket(sockdir, capsys):
    missing = sockdir / "nothing.sock"
    assert hagentctl(["--socket", str(missing), "status"]) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to {missing}" in err and "is the agent running" in err


def test_hagentctl_on_a_dead_socket_names_it(sockdir, capsys):
    path = sockdir / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    assert hagentctl(["--socket", str(path), "status"]) == 1
    assert f"cannot connect to {path}" in capsys.readouterr().err
