"""The systemd notify protocol (sd_notify), written out by hand.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a Unix datagram socket path, or,
when it starts with ``@``, a name in the abstract namespace (the ``@`` stands for a
leading NUL byte). A notification is one datagram of newline-separated ``KEY=VALUE``
lines: ``READY=1`` once the agent has joined the log, ``WATCHDOG=1`` as the keep-alive
for ``WatchdogSec=``, ``STOPPING=1`` when shutting down, ``STATUS=...`` for
``systemctl status``. Without ``$NOTIFY_SOCKET`` (not under systemd, tests, the lab)
every call is a no-op that returns False.

Why no library: python-systemd needs the libsystemd headers and a compiler to install,
and the whole protocol is one ``sendto`` of a short datagram. This module owns nothing
else (no threads, no state), so it is safe to call from any thread.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(env: Mapping[str, str]) -> str | bytes | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if not path.startswith("/"):
        # systemd also allows vsock:CID:PORT; that is for VMs talking to their host.
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; not notifying", path)
        return None
    return path


def format_message(fields: Mapping[str, object]) -> bytes:
    """``{"ready": 1, "STATUS": "x"}`` -> ``b"READY=1\\nSTATUS=x"``; keys upper-cased.

    A newline inside a value would start a new assignment, so it is replaced by a space.
    """
    lines = []
    for key, value in fields.items():
        key = key.upper()
        if not key or "=" in key or "\n" in key:
            raise ValueError(f"invalid sd_notify field name {key!r}")
        text = str(value).replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode()


def notify(env: Mapping[str, str] | None = None, **fields: object) -> bool:
    """Send one notification with ``fields`` (e.g. ``READY=1``); True if it was sent.

    Returns False, without raising, when there is no ``$NOTIFY_SOCKET`` or sending fails
    (logged): a daemon must not die because its supervisor's socket is gone. ``env``
    replaces ``os.environ`` (tests).
    """
    address = _address(os.environ if env is None else env)
    if address is None or not fields:
        return False
    message = format_message(fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd start-up is complete (the agent has joined the log)."""
    return notify(env, READY=1)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    """Keep-alive for ``WatchdogSec=``; send at least every ``watchdog_interval() / 2``."""
    return notify(env, WATCHDOG=1)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd the agent is shutting down (so a slow stop is not a failure)."""
    return notify(env, STOPPING=1)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """One-line status shown by ``systemctl status``."""
    return notify(env, STATUS=text)


def extend_timeout(seconds: float, env: Mapping[str, str] | None = None) -> bool:
    """Ask for ``seconds`` more before the start (or stop) timeout fires.

    For a start that waits on quorum longer than ``TimeoutStartSec=``; send it again
    before the extension runs out.
    """
    return notify(env, EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The service watchdog timeout in seconds (``WatchdogSec=``), or None if there is none.

    None also when ``$WATCHDOG_PID`` names another process (the timeout is meant for
    it) or the value is not a positive integer. Ping at half of it, as sd_watchdog_enabled
    advises, so one late wake-up does not get the agent killed.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        if not pid.isdigit() or int(pid) != os.getpid():
            return None
    if not usec.isdigit() or int(usec) <= 0:
        log.warning("ignoring WATCHDOG_USEC=%r: not a positive integer", usec)
        return None
    return int(usec) / 1_000_000
