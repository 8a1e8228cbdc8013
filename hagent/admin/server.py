"""The admin socket server: hagentctl's way into a running agent.

A Unix stream socket (``admin.socket``, mode 0660, group ``admin.group``) served by
asyncio on the daemon's loop. Each connection is first checked with SO_PEERCRED
(root, the agent's own user, or a member of the socket's group; see ``peercred``),
then carries any number of JSON-line requests (see ``protocol``), answered in
order. A bad line gets an error reply and a bump of
``hagent_admin_malformed_requests_total``; it never stops the server. A line longer
than ``protocol.MAX_LINE`` gets an error reply and the connection is closed, since
the rest of that line cannot be told apart from a next request.

Life cycle (the daemon's)::

    admin = AdminServer(node, config.admin)
    await admin.start()     # raises AdminSocketError if the socket cannot be served
    ...
    await admin.stop()      # closes connections and removes the socket file
"""
from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

from hagent.admin import protocol
from hagent.admin.peercred import check_peer
from hagent.admin.verbs import UnknownVerb, VerbError, run_verb
from hagent.config import AdminConfig
from hagent.metrics import register_agent_metrics
from hagent.node_api import AgentNode

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
# Umask while binding: the socket file is born owner-only (0700 for a socket), so no
# one else can connect in the moment before chmod/chown set the real mode and group.
# 077 rather than 117 because the umask is process-wide: a file another thread
# creates in that moment is only made private, never loses its owner bits.
BIND_UMASK = 0o077
# Answer an admin request within this many seconds or tell the client why not
# (proposals time out at 8 s and submissions at notifications.submit_timeout before this;
# this backstop catches what bounds nothing itself, e.g. a spool fsync on a hung disk).
# asyncio.timeout: one timer per request and no extra task, as requests are many.
REQUEST_TIMEOUT = 60.0
# How long a refused peer may take to send its request before it is hung up on.
REFUSE_READ_TIMEOUT = 5.0


class AdminSocketError(Exception):
    """The admin socket cannot be served; ``str()`` names the path and what to do."""


def resolve_group(name: str) -> int | None:
    """gid of ``admin.group`` (a name or a number); None when empty (keep the default)."""
    if not name:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise AdminSocketError(f"admin.group {name!r} does not exist; create it or leave it empty") from None


def _clear_stale(path: Path) -> None:
    """Remove a socket file left by a dead agent; refuse if a live one answers on it."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AdminSocketError(f"{path} exists and is not a socket; remove it or change admin.socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale admin socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError as exc:
        raise AdminSocketError(f"cannot probe existing admin socket {path}: {exc}") from None
    finally:
        probe.close()
    raise AdminSocketError(f"another agent answers on {path}; stop it first or set admin.socket "
                           "to another path")


class AdminServer:
    """Serves the admin protocol for ``node`` on ``config.socket``."""

    def __init__(self, node: AgentNode, config: AdminConfig) -> None:
        self.node = node
        self.path = Path(config.socket)
        self.group = config.group
        self.metrics = register_agent_metrics(node)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()
        self._inode: int | None = None
        self.agent_uid = os.geteuid()
        self.socket_gid: int | None = None

    # --- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Create the socket (0660, group set) and start accepting connections."""
        gid = resolve_group(self.group)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(BIND_UMASK)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            if gid is not None:
                os.chown(self.path, -1, gid)
            os.chmod(self.path, SOCKET_MODE)
            st = self.path.stat()
            self._inode, self.socket_gid = st.st_ino, st.st_gid
            sock.listen(64)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(
                self._serve_client, sock=sock, limit=protocol.MAX_LINE + 1)
        except OSError as exc:
            sock.close()
            raise AdminSocketError(f"cannot serve admin socket {self.path}: {exc}") from None
        log.info("admin socket %s (mode %o, gid %d)", self.path, SOCKET_MODE, self.socket_gid)

    async def stop(self) -> None:
        """Stop accepting, end open connections, remove our socket file. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()
        # Remove the file only if it is still ours (a successor may have replaced it).
        with contextlib.suppress(FileNotFoundError):
            if self.path.lstat().st_ino == self._inode:
                self.path.unlink()

    @property
    def serving(self) -> bool:
        return self._server is not None

    # --- one request --------------------------------------------------------------------
    async def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line. Never raises: every failure is an error reply."""
        try:
            request = protocol.decode_request(line)
        except protocol.ProtocolError as exc:
            self.metrics.admin_malformed.inc()
            log.warning("malformed admin request: %s", exc)
            return protocol.error(f"malformed request: {exc}")
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                result = await run_verb(self.node, request.verb, request.args)
        except UnknownVerb as exc:
            self.metrics.admin_malformed.inc()
            return protocol.error(str(exc))
        except VerbError as exc:
            self.metrics.admin_requests.labels(request.verb, "error").inc()
            return protocol.error(str(exc))
        except TimeoutError:
            self.metrics.admin_requests.labels(request.verb, "error").inc()
            return protocol.error(f"{request.verb} did not finish within {REQUEST_TIMEOUT:g} s")
        except Exception as exc:  # a bug in one verb must not take the server down
            log.exception("admin verb %s failed", request.verb)
            self.metrics.admin_requests.labels(request.verb, "error").inc()
            return protocol.error(f"internal error in {request.verb}: {type(exc).__name__}: {exc}")
        self.metrics.admin_requests.labels(request.verb, "ok").inc()
        return protocol.ok(result)

    # --- one connection -----------------------------------------------------------------
    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if not self._peer_allowed(writer):
                # Read the peer's request first so it gets the refusal as its answer
                # (closing on unread data would reset the connection instead).
                with contextlib.suppress(ValueError, asyncio.TimeoutError):
                    await asyncio.wait_for(reader.readline(), REFUSE_READ_TIMEOUT)
                await self._send(writer, protocol.error(
                    "permission denied: the admin socket is for root, the agent's user and "
                    "members of its group"))
                return
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the stream limit
                    self.metrics.admin_malformed.inc()
                    log.warning("admin request over %d bytes; closing that connection", protocol.MAX_LINE)
                    await self._send(writer, protocol.error(
                        f"malformed request: line longer than {protocol.MAX_LINE} bytes"))
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                await self._send(writer, await self.answer(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        assert self.socket_gid is not None
        allowed, cred = check_peer(sock, self.agent_uid, self.socket_gid)
        if not allowed:
            self.metrics.admin_refused_peers.inc()
            log.warning("admin socket: refused peer pid %d uid %d gid %d", cred.pid, cred.uid, cred.gid)
        return allowed

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(protocol.encode(reply))
        await writer.drain()
