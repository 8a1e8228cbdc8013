"""The sd_notify protocol against a datagram socket the test owns (path and abstract)."""
from __future__ import annotations

import os
import socket

import pytest

from hagent import sdnotify


@pytest.fixture
def path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": path}


@pytest.fixture
def abstract_socket():
    name = f"hagent-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": "@" + name}


@pytest.mark.parametrize("call, expected", [
    (lambda env: sdnotify.ready(env), b"READY=1"),
    (lambda env: sdnotify.watchdog(env), b"WATCHDOG=1"),
    (lambda env: sdnotify.stopping(env), b"STOPPING=1"),
    (lambda env: sdnotify.status("joined; leader a:1", env), b"STATUS=joined; leader a:1"),
    (lambda env: sdnotify.extend_timeout(1.5, env), b"EXTEND_TIMEOUT_USEC=1500000"),
    (lambda env: sdnotify.notify(env, READY=1, status="up"), b"READY=1\nSTATUS=up"),
])
def test_messages_on_a_path_socket(path_socket, call, expected):
    sock, env = path_socket
    assert call(env) is True
    assert sock.recv(4096) == expected


def test_abstract_namespace(abstract_socket):
    sock, env = abstract_socket
    assert sdnotify.ready(env) is True
    assert sock.recv(4096) == b"READY=1"


def test_uses_os_environ_by_default(path_socket, monkeypatch):
    sock, env = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert sdnotify.watchdog() is True
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_newline_in_a_value_cannot_inject_a_field(path_socket):
    sock, env = path_socket
    sdnotify.status("line one\nREADY=1", env)
    assert sock.recv(4096) == b"STATUS=line one READY=1"


def test_no_socket_is_a_no_op():
    assert sdnotify.ready({}) is False
    assert sdnotify.notify({"NOTIFY_SOCKET": ""}, READY=1) is False
    assert sdnotify.notify({"NOTIFY_SOCKET": "vsock:2:1"}, READY=1) is False


def test_vanished_socket_returns_false(tmp_path):
    assert sdnotify.ready({"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_bad_field_name_rejected():
    with pytest.raises(ValueError):
        sdnotify.format_message({"A=B": 1})


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "abc"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
])
def test_watchdog_interval(env, expected):
    assert sdnotify.watchdog_interval(env) == expected


def test_watchdog_interval_reads_os_environ(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 0.5
