"""The instance monitor: libvirt domain events become VM notifications, as
masakari-instancemonitor makes them, without its thread per event.

It subscribes, on one read-only libvirt connection, to the six event IDs of Masakari's event
filter (lifecycle, reboot, watchdog, I/O error, I/O error with reason, control error). Each
callback runs in libvirt's event-loop thread (``libvirt_events``); it looks the event up in
the table (``eventfilter``) and either counts it as filtered or builds the notification,
stamped now, and puts it into the monitor's bounded ``Outbox``. That is all a callback does:
no libvirt call, no I/O, no thread. While the outbox has room the put returns at once, so a
storm slows nothing; when it is full the callback waits for room, which holds back libvirt's
event delivery (events queue in libvirtd and its socket) instead of dropping any.

libvirtd may go away (restart, crash, upgrade). The connection's close callback (EOF,
keepalive timeout, error) wakes the keeper task, which reconnects after
``reconnect_min`` seconds, doubling the wait after each failed attempt up to
``reconnect_max``. Events that happen while there is no connection are not seen: the gap
is logged when it starts and when it ends (with its length), counted (``disconnects``,
``reconnects``, ``disconnected_seconds``) and shown in ``status()`` as
``disconnected_since``. Keepalive (5 s x 3, as Masakari) turns a hung libvirtd into a
closed connection.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import libvirt

from hagent.config import MonitorsConfig
from hagent.monitors import libvirt_events
from hagent.monitors.base import MonitorContext, Outbox, utc_iso
from hagent.monitors.eventfilter import NONE, classify, vm_payload

log = logging.getLogger(__name__)

# Keepalive probes: one every KEEPALIVE_INTERVAL s; the connection is closed after
# KEEPALIVE_COUNT unanswered ones (masakari-instancemonitor's setKeepAlive(5, 3)).
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
# Seconds between two looks at ``isAlive()`` while connected: a close the callback missed
# (the connection died before the callback was registered) is noticed within this time.
ALIVE_CHECK = 5.0
# Seconds ``stop`` waits for a callback that is putting into the outbox to return.
STOP_CALLBACK_WAIT = 5.0

CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "end of file (libvirtd went away)",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout (libvirtd does not answer)",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
}

Opener = Callable[[str], libvirt.virConnect]


class InstanceMonitor:
    """Watches the domains of one libvirt connection; see the module docstring."""

    name = "instance"

    def __init__(self, uri: str, outbox: Outbox, *, reconnect_min: float = 1.0,
                 reconnect_max: float = 30.0, open_connection: Opener = libvirt.openReadOnly
                 ) -> None:
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("0 < reconnect_min <= reconnect_max required")
        self.uri = uri
        self.outbox = outbox
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._open = open_connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: asyncio.Task | None = None
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self._generation = 0          # connections opened; tells a late close callback apart
        self._closed: asyncio.Event | None = None
        self._close_reason: str | None = None
        self._busy = threading.Condition()   # guards _in_callback
        self._in_callback = 0
        self._connecting: asyncio.Future | None = None  # an attempt in a worker thread
        # Gap bookkeeping (event loop only): monotonic and wall-clock start of the current gap.
        self._down_since: float | None = None
        self._down_since_wall: float | None = None
        self._gaps_total = 0.0
        self._attempts = 0            # failed attempts in the current gap
        # Counters (status()); the event counters are written by the libvirt thread only.
        self.events_seen = 0
        self.events_filtered = 0
        self.events_reported = 0
        self.events_lost = 0          # seen while stopping, after the outbox closed
        self.disconnects = 0
        self.reconnects = 0
        self.connect_failures = 0

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the outbox and connect; if libvirtd is not there yet, keep trying in the
        background (the gap is reported) rather than fail the agent's start."""
        self._loop = asyncio.get_running_loop()
        libvirt_events.ensure_running()
        await self.outbox.start()
        started, started_wall = time.monotonic(), time.time()
        connected = await self._try_connect()
        if not connected:  # the gap runs from the start
            self._mark_down(started, started_wall)
        self._keeper = self._loop.create_task(self._keep_connected(connected),
                                              name="instance-monitor")

    async def stop(self) -> None:
        """Stop receiving events, wait for a callback still queueing one, close the
        connection and hand everything queued to the spool."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        await self._abandon_attempt()
        await self._disconnect()
        if not await asyncio.to_thread(self._wait_callbacks_idle, STOP_CALLBACK_WAIT):
            log.warning("instance monitor: a libvirt callback is still queueing an event "
                        "%g s after the connection closed", STOP_CALLBACK_WAIT)
        await self.outbox.stop()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        gap = self._gaps_total
        if self._down_since is not None:
            gap += now - self._down_since
        return {
            "running": self._keeper is not None and not self._keeper.done(),
            "uri": self.uri,
            "connected": self._conn is not None,
            "disconnected_since": (utc_iso(self._down_since_wall)
                                   if self._down_since_wall is not None else None),
            "disconnects": self.disconnects, "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "disconnected_seconds": round(gap, 3),
            "events_seen": self.events_seen, "events_filtered": self.events_filtered,
            "events_reported": self.events_reported, "events_lost": self.events_lost,
            **self.outbox.stats(),
        }

    # ---- the connection ------------------------------------------------------------------

    async def _keep_connected(self, connected: bool) -> None:
        delay = self.reconnect_min
        while True:
            if connected:
                delay = self.reconnect_min
                reason = await self._wait_closed()
                self._mark_down(time.monotonic(), time.time())
                self.disconnects += 1
                log.warning("instance monitor: libvirt connection %s lost (%s); domain events "
                            "are not seen until it is back; reconnecting in %g s",
                            self.uri, reason, delay)
                await self._disconnect()
            await asyncio.sleep(delay)
            connected = await self._try_connect()
            if not connected:
                delay = min(delay * 2, self.reconnect_max)

    async def _try_connect(self) -> bool:
        """One attempt; on success the gap is closed and reported."""
        self._generation += 1
        self._closed = asyncio.Event()
        self._close_reason = None
        self._connecting = asyncio.get_running_loop().run_in_executor(
            None, self._connect, self._generation)
        try:
            # Shielded: if stop() cancels the keeper now, the attempt is still closed.
            conn, ids = await asyncio.shield(self._connecting)
        except libvirt.libvirtError as exc:
            self._connecting = None
            self.connect_failures += 1
            self._attempts += 1
            (log.warning if self._attempts == 1 else log.debug)(
                "instance monitor: cannot connect to libvirt at %s: %s (attempt %d; "
                "retrying with backoff up to %g s)", self.uri, exc, self._attempts,
                self.reconnect_max)
            return False
        self._connecting = None
        self._conn, self._callback_ids = conn, ids
        if self._down_since is None:  # the first attempt at start
            log.info("instance monitor: watching domain events on %s", self.uri)
        else:
            gap = time.monotonic() - self._down_since
            self._gaps_total += gap
            self.reconnects += 1
            log.warning("instance monitor: libvirt connection %s back after %.1f s without it "
                        "(since %s, %d failed attempt(s)); domain events of that gap were "
                        "not seen", self.uri, gap, utc_iso(self._down_since_wall),
                        self._attempts)
            self._down_since = self._down_since_wall = None
        self._attempts = 0
        return True

    def _connect(self, generation: int) -> tuple[libvirt.virConnect, list[int]]:
        """Open, subscribe and arm keepalive (blocking: runs in a worker thread)."""
        conn = self._open(self.uri)
        ids: list[int] = []
        try:
            conn.registerCloseCallback(self._on_close, generation)
            for event_id, callback in self._callbacks().items():
                ids.append(conn.domainEventRegisterAny(None, event_id, callback, None))
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            except libvirt.libvirtError as exc:  # local drivers (test:///) have none
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
        except libvirt.libvirtError:
            self._close_quietly(conn, ids)
            raise
        return conn, ids

    async def _abandon_attempt(self) -> None:
        """At stop: close what a connection attempt still under way opens (it may hang
        while libvirtd does not answer; its thread is then left behind)."""
        attempt, self._connecting = self._connecting, None
        if attempt is None:
            return
        done, _ = await asyncio.wait({attempt}, timeout=STOP_CALLBACK_WAIT)
        if not done:
            log.warning("instance monitor: a connection attempt to %s has not returned at "
                        "stop; leaving it", self.uri)
            return
        if not attempt.cancelled() and attempt.exception() is None:
            await asyncio.to_thread(self._close_quietly, *attempt.result())

    async def _wait_closed(self) -> str:
        """Wait until the close callback fires or the connection is found dead."""
        assert self._closed is not None and self._conn is not None
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for may lose a cancellation
                # that lands as the event fires, and stop() must end this wait.
                async with asyncio.timeout(ALIVE_CHECK):
                    await self._closed.wait()
                return self._close_reason or "closed"
            except TimeoutError:
                conn = self._conn
                try:
                    alive = await asyncio.to_thread(conn.isAlive)
                except libvirt.libvirtError:
                    alive = 0
                if alive != 1:
                    return "connection found dead"

    async def _disconnect(self) -> None:
        conn, ids = self._conn, self._callback_ids
        self._conn, self._callback_ids = None, []
        if conn is not None:
            await asyncio.to_thread(self._close_quietly, conn, ids)

    @staticmethod
    def _close_quietly(conn: libvirt.virConnect, ids: list[int]) -> None:
        """Unsubscribe and close; a dead connection fails each step, which is fine."""
        for cid in ids:
            try:
                conn.domainEventDeregisterAny(cid)
            except libvirt.libvirtError:
                pass
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _mark_down(self, now: float, wall: float) -> None:
        if self._down_since is None:
            self._down_since, self._down_since_wall = now, wall

    def _on_close(self, _conn: libvirt.virConnect, reason: int, generation: int) -> None:
        """libvirt thread: the connection closed; wake the keeper (if it is the current one)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        text = CLOSE_REASONS.get(reason, f"reason {reason}")
        try:
            loop.call_soon_threadsafe(self._closed_on_loop, generation, text)
        except RuntimeError:  # the loop is closing: the agent stops
            pass

    def _closed_on_loop(self, generation: int, reason: str) -> None:
        if generation == self._generation and self._closed is not None:
            self._close_reason = reason
            self._closed.set()

    def _wait_callbacks_idle(self, timeout: float) -> bool:
        with self._busy:
            return self._busy.wait_for(lambda: self._in_callback == 0, timeout)

    # ---- events (libvirt thread) ---------------------------------------------------------

    def _callbacks(self) -> dict[int, Callable[..., None]]:
        """One callback per event ID, each passing type and detail as Masakari's do."""
        return {
            libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE:
                lambda _c, dom, event, detail, _o: self.seen(
                    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, event, detail, dom),
            libvirt.VIR_DOMAIN_EVENT_ID_REBOOT:
                lambda _c, dom, _o: self.seen(
                    libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, NONE, NONE, dom),
            libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG:
                lambda _c, dom, action, _o: self.seen(
                    libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, action, NONE, dom),
            libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR:
                lambda _c, dom, _src, _alias, action, _o: self.seen(
                    libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR, action, NONE, dom),
            libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON:
                lambda _c, dom, _src, _alias, _action, _reason, _o: self.seen(
                    libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, NONE, NONE, dom),
            libvirt.VIR_DOMAIN_EVENT_ID_CONTROL_ERROR:
                lambda _c, dom, _o: self.seen(
                    libvirt.VIR_DOMAIN_EVENT_ID_CONTROL_ERROR, NONE, NONE, dom),
        }

    def seen(self, event_id: int, event_type: int, detail: int, dom: Any) -> None:
        """One event from libvirt (called in libvirt's thread, never on the event loop):
        count it, and queue its notification if the table reports it. Never raises: an
        exception would only be printed by libvirt-python."""
        with self._busy:
            self._in_callback += 1
        try:
            self.events_seen += 1
            reported = classify(event_id, event_type, detail)
            if reported is None:
                self.events_filtered += 1
                return
            uuid = dom.UUIDString()
            fields = self.outbox.notification("VM", vm_payload(uuid, reported))
            try:
                self.outbox.put_threadsafe(fields)
            except RuntimeError:  # the outbox closed: the agent is stopping
                self.events_lost += 1
                log.error("instance monitor: %s %s of domain %s seen while stopping; not "
                          "reported", reported.event, reported.vir_domain_event, uuid)
                return
            self.events_reported += 1
            log.info("instance monitor: domain %s: %s %s (notification %s)", uuid,
                     reported.event, reported.vir_domain_event, fields["notification_uuid"])
        except Exception:  # noqa: BLE001 - never into libvirt's loop
            log.exception("instance monitor: handling libvirt event %d/%d/%d failed",
                          event_id, event_type, detail)
        finally:
            with self._busy:
                self._in_callback -= 1
                self._busy.notify_all()


def build(config: MonitorsConfig, context: MonitorContext) -> InstanceMonitor | None:
    """The instance monitor ``config`` asks for, or None when it is disabled."""
    if not config.instance_enabled:
        return None
    outbox = Outbox(context.submit, hostname=context.hostname, size=config.instance_queue_size,
                    name="instance")
    return InstanceMonitor(config.libvirt_uri, outbox,
                           reconnect_min=config.instance_reconnect_min,
                           reconnect_max=config.instance_reconnect_max)
