"""libvirt's event loop for this process: one thread, started once, shared by every connection.

libvirt delivers domain events, close notices and keepalive messages only while an event
loop implementation runs. hagent uses libvirt's own (``virEventRegisterDefaultImpl``) in one
daemon thread that calls ``virEventRunDefaultImpl`` forever; every callback of every
connection runs in that thread, one at a time. masakari-instancemonitor also runs its loop
in one thread, but then starts a thread per event; hagent's callbacks only queue (see
``instance.py``), so a storm costs no threads.

Why not libvirtaio (libvirt's asyncio implementation): it binds libvirt, for the life of
the process, to the asyncio loop that registered it, and a libvirt callback then runs on
that loop, where the outbox's thread-safe put could not wait for room. A thread of its own
keeps the agent's loop free and works with any number of asyncio loops (tests, benchmarks).

The implementation must be registered before the connections whose events are wanted are
opened, and cannot be unregistered: ``ensure_running()`` is called by every monitor before
it connects, and the thread lives until the process exits (idle, it sleeps in ``poll``).
It also routes libvirt's error reports to this module's logger at DEBUG: by default libvirt
prints every error to stderr, which a reconnect loop would flood; the callers log the
errors they act on.
"""
from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)

THREAD_NAME = "libvirt-events"

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _run() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("libvirt event loop iteration failed")


def _log_error(_context: object, error: tuple) -> None:
    log.debug("libvirt: %s", error[2] if len(error) > 2 else error)


def ensure_running() -> None:
    """Register libvirt's default event loop and start its thread, unless already done."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.registerErrorHandler(_log_error, None)
        if libvirt.virEventRegisterDefaultImpl() < 0:
            raise RuntimeError("libvirt refused to register its default event loop")
        _thread = threading.Thread(target=_run, name=THREAD_NAME, daemon=True)
        _thread.start()
