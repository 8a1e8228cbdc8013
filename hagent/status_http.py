"""Read-only HTTP status endpoint: ``/status``, ``/health``, ``/leader``, ``/metrics``.

Why stdlib ``ThreadingHTTPServer`` in a daemon thread rather than an asyncio server
or a web framework: the endpoint only answers a handful of read-only GETs, every
answer comes from thread-safe reads of the node (``status()``, ``health()``,
``is_leader()``, the Prometheus registry), and the stdlib server needs no extra
dependency. Keeping it off the asyncio loop also means a slow or stuck scraper can
never delay the admin socket or the submitter, and the endpoint still answers while
the loop is busy (which is when an operator most wants to look).

``/status`` is ``node.status()``: Raft role and indexes, and with gossip the members and their
states (``members``) plus the membership figures (``membership``), read from a snapshot the
agent's loop takes (or the previous one if the loop is stuck), so the endpoint never waits
long on a busy agent.

Status codes mean something to machines (as Patroni's API does): ``/leader`` answers
200 only on the Raft leader, so a load balancer can route to it; ``/health`` answers
503 when this replica is not joined or lags the leader.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hagent.metrics import register_agent_metrics
from hagent.node_api import AgentNode

log = logging.getLogger(__name__)

PATHS = ("/status", "/health", "/leader", "/metrics")
# serve_forever checks for shutdown this often when nothing arrives. stop() does not wait for
# it (it wakes the loop with a connection), so this only sets idle wake-ups: the stdlib's
# 0.5 s, or the 0.1 s used before, cost an idle agent 0.05-0.07 % of a core for nothing.
POLL_INTERVAL = 5.0


class BindError(ValueError):
    """A ``status.bind`` value that is not ``host:port``."""


def parse_bind(bind: str) -> tuple[str, int]:
    """``"127.0.0.1:7180"`` or ``"[::1]:7180"`` → (host, port); port 0 picks a free one."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise BindError(f"status.bind {bind!r} is not host:port (e.g. 127.0.0.1:7180)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    server_version = "hagent-status"
    protocol_version = "HTTP/1.1"

    # --- dispatch ----------------------------------------------------------------
    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def __getattr__(self, name: str):
        # Every other method (POST, PUT, DELETE, PATCH, OPTIONS, or anything invented)
        # gets 405 instead of BaseHTTPRequestHandler's 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"method {self.command} not allowed"},
                   body=True, extra={"Allow": "GET, HEAD"})

    def _serve(self, body: bool) -> None:
        node = self.server.node
        path = self.path.split("?", 1)[0]
        try:
            if path == "/status":
                self._send(HTTPStatus.OK, node.status(), body)
            elif path == "/health":
                healthy, reason = node.health()
                self._send(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE,
                           {"node": node.name, "healthy": healthy, "reason": reason}, body)
            elif path == "/leader":
                leader = node.is_leader()
                self._send(HTTPStatus.OK if leader else HTTPStatus.SERVICE_UNAVAILABLE,
                           {"node": node.name, "leader": leader}, body)
            elif path == "/metrics":
                self._send_raw(HTTPStatus.OK, generate_latest(node.registry), CONTENT_TYPE_LATEST, body)
            else:
                self._send(HTTPStatus.NOT_FOUND,
                           {"error": f"no such path {path}; try {', '.join(PATHS)}"}, body)
        except Exception as exc:  # the endpoint reports, it never dies of one bad read
            log.exception("status endpoint failed on %s", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"}, body)

    # --- responses ---------------------------------------------------------------
    def _send(self, code: HTTPStatus, doc: Any, body: bool, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(doc, default=str, sort_keys=True).encode() + b"\n"
        self._send_raw(code, data, "application/json", body, extra)

    def _send_raw(self, code: HTTPStatus, data: bytes, ctype: str, body: bool,
                  extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never blocks shutdown

    def __init__(self, addr: tuple[str, int], node: AgentNode) -> None:
        host = addr[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.node = node
        super().__init__(addr, _Handler)


class StatusServer:
    """The endpoint of one agent. ``start()`` binds and serves; ``stop()`` closes."""

    def __init__(self, node: AgentNode, bind: str) -> None:
        self.node = node
        self.bind = bind
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; useful after binding port 0."""
        if self._server is None:
            raise RuntimeError("status server not started")
        return self._server.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> "StatusServer":
        """Bind ``bind`` and serve in a daemon thread; raises OSError if the port is taken."""
        if self._server is not None:
            return self
        register_agent_metrics(self.node)
        self._server = _Server(parse_bind(self.bind), self.node)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_INTERVAL,),
                                        name="hagent-status-http", daemon=True)
        self._thread.start()
        log.info("status endpoint on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice or before start()."""
        server, self._server = self._server, None
        if server is None:
            return
        # shutdown() waits until serve_forever notices the request; a connection wakes its
        # select() at once instead of after POLL_INTERVAL.
        waiter = threading.Thread(target=server.shutdown, name="hagent-status-shutdown")
        waiter.start()
        while waiter.is_alive():
            _wake(server.server_address)
            waiter.join(0.05)
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _wake(address: tuple) -> None:
    try:
        socket.create_connection(address[:2], timeout=1.0).close()
    except OSError:
        pass  # already closed: serve_forever has returned


def start(node: AgentNode, bind: str) -> StatusServer:
    """Start the status endpoint of ``node`` on ``bind``; call ``.stop()`` on the result."""
    return StatusServer(node, bind).start()


def stop(server: StatusServer) -> None:
    server.stop()
