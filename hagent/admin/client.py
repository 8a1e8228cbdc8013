"""Blocking client of the admin socket (what hagentctl uses): one request, one reply."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from hagent.admin import protocol

# Longer than the server's own request timeout, so the server's answer (even "timed
# out") is what the operator sees.
CLIENT_TIMEOUT = 75.0


class AdminUnavailable(Exception):
    """No agent answers on the socket; ``str()`` names the path and the cause."""


def call(path: Path | str, verb: str, args: dict[str, Any] | None = None,
         timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    """Send one request and return the decoded reply ``{"ok": ..., ...}``.

    Raises AdminUnavailable when the socket cannot be reached or the agent hangs up
    without answering, ProtocolError when the answer is not a protocol reply.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise AdminUnavailable(f"cannot connect to {path}: no such socket (is the agent "
                                   "running? use --socket PATH for another one)") from None
        except PermissionError:
            raise AdminUnavailable(f"cannot connect to {path}: permission denied (run as root or "
                                   "as a member of the socket's group)") from None
        except OSError as exc:
            raise AdminUnavailable(f"cannot connect to {path}: {exc.strerror or exc} (is the agent "
                                   "running?)") from None
        try:
            sock.sendall(protocol.encode_request(verb, args))
            data = _read_line(sock)
        except socket.timeout:
            raise AdminUnavailable(f"no answer from {path} within {timeout:g} s") from None
        except OSError as exc:
            raise AdminUnavailable(f"connection to {path} failed: {exc.strerror or exc}") from None
        if not data:
            raise AdminUnavailable(f"the agent on {path} closed the connection without answering")
        return protocol.decode_reply(data)
    finally:
        sock.close()


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        nl = chunk.find(b"\n")
        if nl >= 0:
            chunks.append(chunk[:nl + 1])
            break
        chunks.append(chunk)
    return b"".join(chunks)
