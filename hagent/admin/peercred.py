"""Who may use the admin socket: SO_PEERCRED plus the peer's supplementary groups.

The socket is mode 0660, so the kernel already keeps out anyone who is neither its
owner nor in its group. This check is the second lock on the door: it still holds
if someone loosens the socket's mode or its directory. The decision itself
(``is_allowed``) is a pure function of numbers, so it is tested without sockets.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def read_peercred(sock: socket.socket) -> PeerCred:
    """The connecting process's pid, uid and gid as the kernel recorded them at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def parse_groups(status_text: str) -> set[int]:
    """The ``Groups:`` line of a /proc/PID/status text, as a set of gids (empty if absent)."""
    for line in status_text.splitlines():
        if line.startswith("Groups:"):
            return {int(g) for g in line.split(":", 1)[1].split()}
    return set()


def supplementary_groups(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """Supplementary gids of ``pid``; empty if the process is gone or unreadable.

    Read at accept time: a peer that exits (and whose pid is reused) before we read
    loses only its supplementary groups, never gains any, because the primary gid
    comes from SO_PEERCRED and an unreadable file yields nothing.
    """
    try:
        return parse_groups((proc / str(pid) / "status").read_text())
    except OSError:
        return set()


def is_allowed(peer_uid: int, peer_gids: set[int], agent_uid: int, socket_gid: int) -> bool:
    """Root, the agent's own user, or a member of the socket's group may talk to the agent."""
    return peer_uid == 0 or peer_uid == agent_uid or socket_gid in peer_gids


def check_peer(sock: socket.socket, agent_uid: int, socket_gid: int,
               proc: Path = Path("/proc")) -> tuple[bool, PeerCred]:
    """(allowed, credentials) for the peer of a connected Unix socket."""
    cred = read_peercred(sock)
    gids = {cred.gid} | supplementary_groups(cred.pid, proc)
    return is_allowed(cred.uid, gids, agent_uid, socket_gid), cred
