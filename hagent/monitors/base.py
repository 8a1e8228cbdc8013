"""What every monitor shares: the ``Monitor`` protocol and the ``Outbox`` to the submit path.

A monitor watches one thing on this node (processes, libvirt domains, guest agents) and turns
what it sees into notifications. It never calls the submitter directly: it puts notification
fields into its ``Outbox``, a bounded queue drained into the node's ``submit`` (the daemon's
``Agent.submit_notification``, which fsyncs the notification into the spool and resends it
until the log commits it).

Why a queue, and why bounded: a producer (a libvirt callback thread, a check loop) must not
wait for a commit, so a storm of events slows nothing; and memory must not grow without
limit, so when the queue is full ``put`` waits for room instead of dropping. Nothing a
monitor has put is dropped by the outbox: every notification is either handed to ``submit``
(and from there spooled) or, at stop, handed to ``submit`` in one last batch. Up to
``SENDERS`` submits run at once, so one slow commit (a leader election) holds up one slot,
not the queue; the submitter itself bounds what reaches the leader.

Each notification gets its ``notification_uuid`` and ``generated_time`` when the monitor
*sees* the event (``Outbox.notification``), not when it is sent: a resend is the same
notification, and duplicate detection in the log compares event times.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

log = logging.getLogger(__name__)

Submit = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# Submits running at once per outbox. A submit answers once committed (milliseconds) or after
# notifications.submit_timeout with the notification spooled; during a leader election each
# in-flight submit waits, so this many notifications are spooled and waiting before the
# queue starts to fill. Each is one coroutine: cheap.
SENDERS = 256
# Seconds ``Outbox.stop`` waits for the last submits to answer before cancelling them; a
# notification a submit has started on is already queued for the spool's next write.
STOP_GRACE = 1.0
# Seconds between two "outbox full" warnings of one outbox.
FULL_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class MonitorContext:
    """What the agent gives every monitor it builds: this host's name as Nova knows it (the
    ``hostname`` of every notification), its submit path, and a directory of its own for
    state that must survive an agent restart."""

    hostname: str
    submit: Submit
    state_dir: Path


class Monitor(Protocol):
    """A node-local monitor. The daemon calls ``start``/``stop`` on its event loop and reads
    ``status()`` for `hagentctl status` and `/metrics`."""

    name: str

    async def start(self) -> None:
        """Begin watching; raises (with the reason) if the monitor cannot run at all."""

    async def stop(self) -> None:
        """Stop watching and hand every queued notification to the submit path."""

    def status(self) -> dict[str, Any]:
        """Counters and state: plain ints, strings and dicts of them (JSON as it is)."""


def utc_iso(at: float | None = None) -> str:
    """``at`` (epoch seconds; default now) as the ISO 8601 UTC time notifications carry."""
    when = dt.datetime.now(dt.timezone.utc) if at is None else \
        dt.datetime.fromtimestamp(at, dt.timezone.utc)
    return when.isoformat()


class Outbox:
    """Bounded queue from one monitor to the node's ``submit``.

    ``put`` (event loop) and ``put_threadsafe`` (any other thread) wait while the queue is
    full. Both return once the notification is queued; the future ``put`` returns resolves
    with ``submit``'s answer (a dict; failures become ``{"ok": False, "error": ...}``), for a
    caller that must know the notification is spooled before it moves on.
    """

    def __init__(self, submit: Submit, *, hostname: str, size: int, name: str = "monitor",
                 senders: int = SENDERS) -> None:
        if size < 1 or senders < 1:
            raise ValueError("outbox size and senders must be at least 1")
        self._submit = submit
        self.hostname = hostname
        self.name = name
        self.size = size
        self.senders = senders
        self._queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._slots: asyncio.Semaphore | None = None
        self._dispatcher: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._closed = False
        self._next_full_log = 0.0
        # Counters (read by status()).
        self.queued = 0        # notifications put
        self.submitted = 0     # submit answered ok (committed, or spooled and pending)
        self.committed = 0     # of those, committed by the time submit answered
        self.failed = 0        # submit answered not ok (refused by the log, spool error)
        self.full_waits = 0    # puts that found the queue full and waited
        self.max_depth = 0     # most notifications queued at once

    # ---- building ------------------------------------------------------------------------

    def notification(self, notification_type: str, payload: dict[str, str],
                     at: float | None = None) -> dict[str, Any]:
        """The submit fields of one notification of this host, stamped now (or at ``at``)."""
        return {"notification_uuid": str(uuidlib.uuid4()), "type": notification_type,
                "hostname": self.hostname, "generated_time": utc_iso(at),
                "payload": dict(payload)}

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start draining into ``submit`` (call on the event loop that runs the submitter)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue = asyncio.Queue(self.size)
        self._slots = asyncio.Semaphore(self.senders)
        self._closed = False
        self._dispatcher = self._loop.create_task(self._dispatch(), name=f"outbox-{self.name}")

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Refuse new puts, hand everything still queued to ``submit`` at once, wait up to
        ``grace`` seconds for the answers, then cancel the submits still waiting for the log
        (each has already queued its notification for the spool's next write, which the
        submitter's stop flushes; it is resent when the agent starts again)."""
        if self._queue is None or self._closed:
            return
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        left = self._drain()
        if left:
            log.info("%s: handing %d queued notification(s) to the spool at stop", self.name, left)
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=grace)
        # One more loop turn: every submit task created so far has made its first step, in
        # which submit() queues the notification for the spool, before it can be cancelled.
        await asyncio.sleep(0)
        unanswered = list(self._sending)
        for task in unanswered:
            task.cancel()
        await asyncio.gather(*unanswered, return_exceptions=True)
        if unanswered:
            log.info("%s: %d notification(s) still waiting for the log at stop; they stay "
                     "spooled and are resent when the agent starts", self.name, len(unanswered))

    def _drain(self) -> int:
        """Hand everything queued to ``submit`` now, without waiting for a slot."""
        count = 0
        while not self._queue.empty():
            fields, answer = self._queue.get_nowait()
            self._send(fields, answer)
            count += 1
        return count

    # ---- putting -------------------------------------------------------------------------

    async def put(self, fields: dict[str, Any]) -> asyncio.Future:
        """Queue ``fields`` (waits while the queue is full); returns the future of its answer.

        Raises RuntimeError once the outbox is stopped (or before it started).
        """
        if self._queue is None or self._closed:
            raise RuntimeError(f"{self.name}: outbox is not running; notification not queued")
        answer: asyncio.Future = self._loop.create_future()
        if self._queue.full():
            self.full_waits += 1
            now = self._loop.time()
            if now >= self._next_full_log:  # a storm fills it again and again: say it rarely
                self._next_full_log = now + FULL_LOG_INTERVAL
                log.warning("%s: outbox full (%d queued): the monitor waits for the spool "
                            "(%d waits so far)", self.name, self.size, self.full_waits)
        await self._queue.put((fields, answer))
        self.queued += 1
        self.max_depth = max(self.max_depth, self._queue.qsize())
        if self._closed:  # stop() drained the queue while this put waited for room
            self._drain()
        return answer

    def put_threadsafe(self, fields: dict[str, Any], timeout: float | None = None) -> None:
        """``put`` from a thread other than the event loop's (a libvirt callback thread).

        Blocks that thread while the queue is full (up to ``timeout``; None waits as long as
        it takes). Raises RuntimeError if the outbox is stopped, TimeoutError on timeout.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.name}: outbox is not running; notification not queued")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("put_threadsafe called on the event loop thread; use put()")
        asyncio.run_coroutine_threadsafe(self.put(fields), loop).result(timeout)

    @property
    def depth(self) -> int:
        """Notifications queued and not yet handed to ``submit``."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def in_flight(self) -> int:
        """Submits that have not answered yet."""
        return len(self._sending)

    def stats(self) -> dict[str, int]:
        """The counters every monitor's ``status()`` includes, under these names."""
        return {"notifications_queued": self.queued, "notifications_sent": self.submitted,
                "notifications_committed": self.committed, "notifications_failed": self.failed,
                "notifications_in_flight": self.in_flight, "queue_depth": self.depth,
                "queue_max_depth": self.max_depth, "queue_size": self.size,
                "queue_full_waits": self.full_waits}

    # ---- draining ------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            await self._slots.acquire()
            try:
                fields, answer = await self._queue.get()
            except BaseException:
                self._slots.release()
                raise
            self._send(fields, answer, slot=True)

    def _send(self, fields: dict[str, Any], answer: asyncio.Future, slot: bool = False) -> None:
        task = self._loop.create_task(self._submit_one(fields, answer, slot),
                                      name=f"outbox-{self.name}-send")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _submit_one(self, fields: dict[str, Any], answer: asyncio.Future,
                          slot: bool) -> None:
        try:
            try:
                result = await self._submit(fields)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the submit path must not kill the outbox
                log.exception("%s: submitting notification %s failed", self.name,
                              fields.get("notification_uuid"))
                result = {"ok": False, "error": f"submit raised {exc!r}"}
            if not isinstance(result, dict):
                result = {"ok": False, "error": f"submit answered {result!r}"}
            if result.get("ok"):
                self.submitted += 1
                if result.get("committed"):
                    self.committed += 1
            else:
                self.failed += 1
                log.error("%s: notification %s (%s %s) not accepted: %s", self.name,
                          fields.get("notification_uuid"), fields.get("type"),
                          fields.get("payload"), result.get("error"))
            if not answer.done():
                answer.set_result(result)
        finally:
            if not answer.done():
                answer.cancel()
            if slot:
                self._slots.release()
