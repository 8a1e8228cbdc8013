"""The introspective monitor: QEMU guest agent pings, as masakari-introspectiveinstancemonitor.

Every ``interval`` seconds it lists the running domains that have a guest agent channel
(``org.qemu.guest_agent.0`` in their XML: Nova adds it for images with
``hw_qemu_guest_agent=yes``) and sends each one ``guest-ping`` through
``libvirt_qemu.qemuAgentCommand``. ``guest_ping.GuestPings`` turns the answers into
verdicts: ``failures`` pings in a row that fail or take longer than ``timeout`` report the
guest with a VM notification whose payload is Masakari's:
``{"instance_uuid": <domain uuid>, "vir_domain_event": "STOPPED_FAILED",
"event": "QEMU_GUEST_AGENT_ERROR"}``.

Blocking libvirt calls never run on the event loop. Pings run in a pool of ``concurrency``
threads, one slot per ping in flight, so a guest whose agent hangs holds one slot for
``timeout`` seconds and the other guests go on being pinged. A ping is judged at
``timeout`` even if its thread has not returned; libvirt's own agent timeout (the same
seconds, rounded up) returns that thread soon after, and until it does the guest is not
pinged again but counted as failing each round, and its slot stays taken (the pool never
grows past ``concurrency`` threads). A round waits at most ``interval`` seconds for a free
slot; a guest that gets none is skipped that round, without a verdict.

``GuestSource`` is where guests and pings come from: ``LibvirtGuests`` in production, a fake
in tests (libvirt's test driver has no guest agent); ``LibvirtGuests`` also takes the ping
function, so tests can use real domains of the test driver with a stand-in agent.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import libvirt
import libvirt_qemu

from hagent.config import MonitorsConfig
from hagent.monitors import libvirt_events
from hagent.monitors.base import MonitorContext, Outbox
from hagent.monitors.guest_ping import GuestPings, GuestState

log = logging.getLogger(__name__)

AGENT_CHANNEL = "org.qemu.guest_agent.0"
GUEST_PING = '{"execute": "guest-ping"}'
# Masakari's payload for a guest whose agent stopped answering.
AGENT_ERROR_PAYLOAD = {"vir_domain_event": "STOPPED_FAILED", "event": "QEMU_GUEST_AGENT_ERROR"}
# Notifications this monitor can have queued: one per guest per run of failures.
QUEUE_SIZE = 1024


class GuestAgentError(Exception):
    """A guest agent answered, but not with a ``return``."""


@dataclass(frozen=True)
class Guest:
    """A running domain with a guest agent channel. ``generation`` is its domain ID, which
    changes when the domain is started again; ``handle`` is what the ping needs."""

    uuid: str
    generation: int
    handle: Any = None


class GuestSource(Protocol):
    """Where the monitor finds guests and pings them; both calls block (worker threads)."""

    def guests(self) -> list[Guest]:
        """The running guests that have an agent channel; raises when it cannot tell."""

    def ping(self, guest: Guest, timeout: float) -> None:
        """One ``guest-ping``; returns when the agent answered, raises otherwise."""

    def close(self) -> None:
        """Release what the source holds (its libvirt connection)."""


def has_agent_channel(domain_xml: str) -> bool:
    """True when the domain XML has a guest agent channel (target name
    ``org.qemu.guest_agent.0``)."""
    root = ElementTree.fromstring(domain_xml)
    return any(target.get("name") == AGENT_CHANNEL
               for target in root.iterfind("./devices/channel/target"))


def qemu_agent_ping(domain: libvirt.virDomain, timeout: float) -> None:
    """``guest-ping`` through libvirt; libvirt waits at most ``timeout`` s (rounded up)."""
    answer = libvirt_qemu.qemuAgentCommand(domain, GUEST_PING, max(1, math.ceil(timeout)), 0)
    try:
        parsed = json.loads(answer)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict) or "return" not in parsed:
        raise GuestAgentError(f"unexpected guest agent answer {str(answer)[:200]!r}")


Ping = Callable[[Any, float], None]


class LibvirtGuests:
    """Guests of one libvirt connection (read-write: libvirt refuses agent commands on a
    read-only one), opened on first use and again after it failed."""

    def __init__(self, uri: str, ping: Ping = qemu_agent_ping,
                 open_connection: Callable[[str], libvirt.virConnect] = libvirt.open) -> None:
        self.uri = uri
        self._ping = ping
        self._open = open_connection
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._has_agent: dict[tuple[str, int], bool] = {}  # by (uuid, domain ID)

    def guests(self) -> list[Guest]:
        conn = self._connection()
        try:
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
        except libvirt.libvirtError:
            self.close()
            raise
        found: dict[tuple[str, int], bool] = {}
        out = []
        for dom in domains:
            key = (dom.UUIDString(), dom.ID())
            has = self._has_agent.get(key)
            if has is None:
                try:
                    has = has_agent_channel(dom.XMLDesc(0))
                except libvirt.libvirtError:  # it stopped meanwhile
                    continue
            found[key] = has
            if has:
                out.append(Guest(key[0], key[1], dom))
        self._has_agent = found
        return out

    def ping(self, guest: Guest, timeout: float) -> None:
        self._ping(guest.handle, timeout)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or self._conn.isAlive() != 1:
                libvirt_events.ensure_running()
                self._conn = self._open(self.uri)
            return self._conn


class IntrospectiveMonitor:
    """Pings the guest agents of one ``GuestSource``; see the module docstring."""

    name = "introspective"

    def __init__(self, source: GuestSource, outbox: Outbox, *, interval: float = 10.0,
                 timeout: float = 2.0, failures: int = 3, concurrency: int = 8) -> None:
        if interval <= 0 or timeout <= 0 or concurrency < 1:
            raise ValueError("interval > 0, timeout > 0 and concurrency >= 1 required")
        self.source = source
        self.outbox = outbox
        self.interval = interval
        self.timeout = timeout
        self.concurrency = concurrency
        self.pings = GuestPings(failures)
        self._pool: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task | None = None
        self._hung: set[str] = set()   # guests whose ping thread has not returned
        self._list_failing = False
        # Counters (status()).
        self.rounds = 0
        self.list_errors = 0
        self.pings_sent = 0
        self.ping_failures = 0
        self.guests_reported = 0
        self.slot_waits_expired = 0

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="guest-ping")
        self._slots = asyncio.Semaphore(self.concurrency)
        await self.outbox.start()
        self._loop_task = asyncio.get_running_loop().create_task(self._run(),
                                                                 name="introspective-monitor")
        log.info("introspective monitor: pinging guest agents every %g s (timeout %g s, "
                 "report after %d failures, %d at once)", self.interval, self.timeout,
                 self.pings.threshold, self.concurrency)

    async def stop(self) -> None:
        """Stop pinging (pings under way are abandoned), then hand the queue to the spool."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.source.close)
        await self.outbox.stop()

    def status(self) -> dict[str, Any]:
        counts = self.pings.counts()
        return {
            "running": self._loop_task is not None and not self._loop_task.done(),
            "guests": counts, "guests_watched": sum(counts.values()),
            "rounds": self.rounds, "list_errors": self.list_errors,
            "pings": self.pings_sent, "ping_failures": self.ping_failures,
            "pings_hung": len(self._hung), "slot_waits_expired": self.slot_waits_expired,
            "guests_reported": self.guests_reported,
            **self.outbox.stats(),
        }

    # ---- rounds --------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.check_round()
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))

    async def check_round(self) -> None:
        """List the guests and ping each once; returns when every ping has a verdict (at
        most ``interval`` waiting for a slot plus ``timeout`` per guest, in parallel)."""
        self.rounds += 1
        try:
            guests = await asyncio.to_thread(self.source.guests)
        except Exception as exc:  # noqa: BLE001 - libvirtd away: try again next round
            self.list_errors += 1
            (log.debug if self._list_failing else log.warning)(
                "introspective monitor: cannot list the guests at %s: %s; trying again every "
                "%g s", getattr(self.source, "uri", "the source"), exc, self.interval)
            self._list_failing = True
            return
        if self._list_failing:
            log.info("introspective monitor: listing guests works again")
            self._list_failing = False
        self.pings.present({g.uuid: g.generation for g in guests})
        await asyncio.gather(*(self._check(g) for g in guests))

    async def _check(self, guest: Guest) -> None:
        if guest.uuid in self._hung:  # its last ping has not even returned: still failing
            await self._verdict(guest.uuid, False, "the previous ping has not returned")
            return
        assert self._slots is not None and self._pool is not None
        try:
            await asyncio.wait_for(self._slots.acquire(), self.interval)
        except TimeoutError:
            self.slot_waits_expired += 1
            log.warning("introspective monitor: no free ping slot for guest %s within %g s "
                        "(%d pings hung); skipped this round", guest.uuid, self.interval,
                        len(self._hung))
            return
        loop = asyncio.get_running_loop()
        try:
            future = self._pool.submit(self.source.ping, guest, self.timeout)
        except RuntimeError:  # the pool shut down: stopping
            self._slots.release()
            return
        self.pings_sent += 1
        future.add_done_callback(lambda _f: self._returned_threadsafe(loop, guest.uuid))
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)
        except TimeoutError:
            if not future.done():
                self._hung.add(guest.uuid)
            await self._verdict(guest.uuid, False, f"no answer within {self.timeout:g} s")
        except Exception as exc:  # noqa: BLE001 - any failure of the ping is a failed ping
            await self._verdict(guest.uuid, False, str(exc) or type(exc).__name__)
        else:
            await self._verdict(guest.uuid, True, "")

    def _returned_threadsafe(self, loop: asyncio.AbstractEventLoop, uuid: str) -> None:
        """Pool thread: a ping returned; free its slot on the event loop."""
        try:
            loop.call_soon_threadsafe(self._returned, uuid)
        except RuntimeError:  # the loop closed: the agent stopped
            pass

    def _returned(self, uuid: str) -> None:
        self._hung.discard(uuid)
        assert self._slots is not None
        self._slots.release()

    async def _verdict(self, uuid: str, ok: bool, reason: str) -> None:
        before = self.pings.state(uuid)
        if ok:
            self.pings.answered(uuid)
            if before in (GuestState.FAILING, GuestState.REPORTED):
                log.info("introspective monitor: guest agent of %s answers again", uuid)
            return
        self.ping_failures += 1
        report = self.pings.failed(uuid)
        if report:
            fields = self.outbox.notification(
                "VM", {"instance_uuid": uuid, **AGENT_ERROR_PAYLOAD})
            await self.outbox.put(fields)
            self.guests_reported += 1
            log.error("introspective monitor: guest agent of %s failed %d pings in a row (%s); "
                      "reporting QEMU_GUEST_AGENT_ERROR (notification %s)", uuid,
                      self.pings.threshold, reason, fields["notification_uuid"])
        elif self.pings.state(uuid) is GuestState.FAILING:
            log.warning("introspective monitor: guest agent of %s did not answer (%s): %d of "
                        "%d", uuid, reason, self.pings.failures(uuid), self.pings.threshold)
        else:
            log.debug("introspective monitor: guest agent of %s did not answer (%s; state %s)",
                      uuid, reason, self.pings.state(uuid))


def build(config: MonitorsConfig, context: MonitorContext) -> IntrospectiveMonitor | None:
    """The introspective monitor ``config`` asks for, or None when it is disabled."""
    if not config.introspective_enabled:
        return None
    outbox = Outbox(context.submit, hostname=context.hostname, size=QUEUE_SIZE,
                    name="introspective")
    return IntrospectiveMonitor(
        LibvirtGuests(config.libvirt_uri), outbox, interval=config.introspective_interval,
        timeout=config.introspective_timeout, failures=config.introspective_failures,
        concurrency=config.introspective_concurrency)
