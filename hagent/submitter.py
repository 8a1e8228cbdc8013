"""Delivers notifications to the replicated log: spool first, then propose until confirmed.

The contract (safety rule 4, "nothing accepted is lost"): ``submit`` answers only after the
notification is fsynced in the spool; from then on the submitter proposes it again every
``resend_interval`` until the log confirms its uuid, across leader changes and across
restarts of this agent (``start`` resends everything the spool still holds).

What confirms a uuid:

- an ``{"ok": True, ...}`` answer from the log: the notification was committed now, or an
  earlier attempt already committed it and the state machine answered "already known";
- a *refusal*: ``{"ok": False, "error": reason}`` from the state machine (unknown host, bad
  field). Resending could never succeed, so it is final: the record leaves the spool and the
  refusal is logged and returned to the submitter's caller.

What does *not* confirm it (the submitter resends): ``propose`` raising, taking longer than
``propose_timeout``, or answering ``{"ok": False, "retryable": True, ...}`` or
``{"committed": False, ...}`` (no leader, leader changed, commit timed out). See
``classify``.

A confirmation is answered to the caller at once; the uuid leaves the spool's pending set
at the same moment and its tombstone is written and fsynced with the spool's next group
commit, not waited for. If the agent dies before that fsync, the record is resent after the
restart and the log answers "already known": still one notification, and the caller was
right to be told it is committed. (Waiting would cost every acknowledgement a second spool
fsync round.)

Timers: one per ``submit`` (``submit_timeout``). ``propose_timeout`` bounds a ``propose``
that does not bound itself; pass None when it does (the daemon's ``Agent.propose`` answers
within its backend's timeout), and proposals run without a timer of their own.

Proposals in flight are bounded by ``max_in_flight`` (``notifications.max_in_flight``) so a
restart with a deep spool does not flood the leader. Counters (``submitted``, ``confirmed``,
``refused``, ``resends``, ``propose_failures``, ``in_flight``, ``pending_count()``) are plain
attributes the daemon exports.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid as uuidlib
from typing import Any, Awaitable, Callable

from hagent.spool import Spool, SpoolError

log = logging.getLogger(__name__)

Propose = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

SUBMIT_OP = "notification.submit"
# Fields a caller may give ``submit``; the submitter adds ``source_node`` and ``op``.
SUBMIT_FIELDS = ("notification_uuid", "type", "hostname", "generated_time", "payload")
# Error texts of the daemon's propose that mean "not committed (yet)", not "refused", for
# answers that lack the ``retryable`` flag.
TRANSIENT_ERROR_PREFIXES = ("the log did not commit", "the log refused the command")

CONFIRMED, REFUSED, TRANSIENT = "confirmed", "refused", "transient"


def classify(result: Any) -> str:
    """CONFIRMED, REFUSED (final) or TRANSIENT (resend) for one ``propose`` answer."""
    if not isinstance(result, dict):
        return TRANSIENT
    if result.get("ok") is True:
        return CONFIRMED
    if result.get("retryable") or result.get("committed") is False:
        return TRANSIENT
    error = result.get("error")
    if not isinstance(error, str) or not error:
        return TRANSIENT
    if error.startswith(TRANSIENT_ERROR_PREFIXES):
        return TRANSIENT
    return REFUSED


def pending_record(command: dict[str, Any]) -> dict[str, Any]:
    """The record shown to a caller whose notification is spooled but not yet committed."""
    record = {k: v for k, v in command.items() if k not in ("op", "at")}
    record["status"] = "pending"
    return record


class Submitter:
    """Spool-backed, resending submitter of ``notification.submit`` commands.

    ``propose(command)`` commits one command through the log and returns
    ``ClusterState.apply``'s answer; the daemon passes its Raft-backed ``Agent.propose``.
    Construct it anywhere; call ``start()`` and ``stop()`` on the event loop.
    """

    def __init__(self, propose: Propose, spool: Spool, node_name: str, *,
                 resend_interval: float = 1.0, submit_timeout: float = 10.0,
                 max_in_flight: int = 64, propose_timeout: float | None = 30.0) -> None:
        if resend_interval <= 0 or submit_timeout < 0 or max_in_flight < 1 \
                or (propose_timeout is not None and propose_timeout <= 0):
            raise ValueError("resend_interval > 0, submit_timeout >= 0, max_in_flight >= 1 and "
                             "propose_timeout None or > 0 required")
        self._propose = propose
        self.spool = spool
        self.node_name = node_name
        self.resend_interval = resend_interval
        self.submit_timeout = submit_timeout
        self.propose_timeout = propose_timeout
        self.max_in_flight = max_in_flight
        self._sem: asyncio.Semaphore | None = None
        self._deliveries: dict[str, asyncio.Task] = {}
        self._stopping = False
        # Metrics.
        self.submitted = 0         # notifications accepted (spooled) by submit()
        self.confirmed = 0         # uuids the log confirmed (committed or already known)
        self.refused = 0           # uuids the state machine refused (final)
        self.resends = 0           # proposals after the first for a uuid
        self.propose_failures = 0  # proposals that neither confirmed nor refused
        self.in_flight = 0         # proposals awaiting the log right now

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Resend everything the spool holds (left by an earlier run), in spool order."""
        self._stopping = False
        pending = self.spool.pending()
        if pending:
            log.info("resending %d spooled notification(s) the log has not confirmed", len(pending))
        for command in pending:
            self._delivery(command)

    async def stop(self) -> None:
        """Stop resending, then flush and close the spool (what is pending stays on disk)."""
        self._stopping = True
        tasks = list(self._deliveries.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.spool.close()

    def pending_count(self) -> int:
        """Notifications spooled and not yet confirmed (the spool-depth metric)."""
        return self.spool.depth

    def stats(self) -> dict[str, int]:
        return {"spool_depth": self.spool.depth, "submitted": self.submitted,
                "confirmed": self.confirmed, "refused": self.refused, "resends": self.resends,
                "propose_failures": self.propose_failures, "in_flight": self.in_flight}

    # ---- submitting ----------------------------------------------------------------------

    def build_command(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The ``notification.submit`` command for ``fields``; raises ValueError on bad input.

        Fills ``notification_uuid`` (uuid4) and ``generated_time`` (now, UTC, ISO 8601) when
        absent; every other check is the state machine's.
        """
        if not isinstance(fields, dict):
            raise ValueError("notification fields must be an object")
        unknown = sorted(set(fields) - set(SUBMIT_FIELDS) - {"source_node"})
        if unknown:
            raise ValueError(f"unknown notification field(s): {', '.join(unknown)} "
                             f"(allowed: {', '.join(SUBMIT_FIELDS)})")
        command: dict[str, Any] = {"op": SUBMIT_OP}
        for key in SUBMIT_FIELDS:
            if key in fields:
                command[key] = fields[key]
        nid = command.get("notification_uuid") or str(uuidlib.uuid4())
        if not isinstance(nid, str):
            raise ValueError("notification_uuid must be a string")
        command["notification_uuid"] = nid
        if not command.get("generated_time"):
            command["generated_time"] = dt.datetime.now(dt.timezone.utc).isoformat()
        command["source_node"] = self.node_name
        return command

    async def submit(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Spool (fsynced) then commit one notification.

        Returns ``{"ok": True, "committed": True, "result": record}`` once committed (or
        already known); ``{"ok": True, "committed": False, "result": <record, status
        "pending">}`` after ``submit_timeout`` (resending goes on); ``{"ok": False, "error":
        reason}`` if the fields are bad, the spool cannot write, or the log refused it.
        """
        try:
            command = self.build_command(fields)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        nid = command["notification_uuid"]
        if self._stopping:
            return {"ok": False, "error": "the agent is stopping; notification not accepted"}
        is_new = nid not in self.spool
        try:
            await self.spool.append(command)
        except (TypeError, ValueError) as exc:
            return {"ok": False, "error": f"notification is not plain JSON: {exc}"}
        except SpoolError as exc:
            log.error("notification %s not accepted: %s", nid, exc)
            return {"ok": False, "error": str(exc)}
        if is_new:
            self.submitted += 1
        task = self._delivery(command)
        done, _ = await asyncio.wait({task}, timeout=self.submit_timeout)
        if task in done and not task.cancelled() and task.exception() is None:
            return task.result()
        return {"ok": True, "committed": False, "result": pending_record(command)}

    # ---- delivery ------------------------------------------------------------------------

    def _delivery(self, command: dict[str, Any]) -> asyncio.Task:
        """The one task delivering ``command``'s uuid, started if not running."""
        nid = command["notification_uuid"]
        task = self._deliveries.get(nid)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._deliver(command),
                                                          name=f"deliver-{nid}")
            self._deliveries[nid] = task
            task.add_done_callback(lambda t, nid=nid: self._delivery_done(nid, t))
        return task

    def _delivery_done(self, nid: str, task: asyncio.Task) -> None:
        if self._deliveries.get(nid) is task:
            del self._deliveries[nid]
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery of notification %s failed unexpectedly; it stays spooled "
                      "and is resent on restart", nid, exc_info=task.exception())

    async def _deliver(self, command: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_in_flight)
        nid = command["notification_uuid"]
        attempts = 0
        while True:
            async with self._sem:
                started = loop.time()
                if attempts:
                    self.resends += 1
                attempts += 1
                self.in_flight += 1
                try:
                    result = await self._propose_once(dict(command))
                except Exception as exc:  # noqa: BLE001 - any failure to propose means resend
                    result = {"ok": False, "retryable": True, "error": f"propose failed: {exc!r}"}
                finally:
                    self.in_flight -= 1
            kind = classify(result)
            if kind == CONFIRMED:
                self.confirmed += 1
                self._confirm(nid)
                if attempts > 1:
                    log.info("notification %s committed after %d attempts", nid, attempts)
                return {"ok": True, "committed": True, "result": result.get("result")}
            if kind == REFUSED:
                self.refused += 1
                self._confirm(nid)
                log.warning("notification %s (%s on %s) refused by the log, dropped from the "
                            "spool: %s", nid, command.get("type"), command.get("hostname"),
                            result["error"])
                return {"ok": False, "error": result["error"]}
            self.propose_failures += 1
            (log.warning if attempts == 1 else log.debug)(
                "notification %s not committed yet (attempt %d): %s; resending every %g s",
                nid, attempts, result.get("error") if isinstance(result, dict) else result,
                self.resend_interval)
            await asyncio.sleep(max(0.0, started + self.resend_interval - loop.time()))

    async def _propose_once(self, command: dict[str, Any]) -> Any:
        if self.propose_timeout is None:  # the propose callable bounds itself
            return await self._propose(command)
        # asyncio.timeout, not wait_for: no extra task per proposal, and on 3.11 wait_for can
        # swallow a cancellation that arrives as the proposal completes (stop() would then
        # wait out a whole resend interval); timeout() tells the two apart.
        try:
            async with asyncio.timeout(self.propose_timeout):
                return await self._propose(command)
        except TimeoutError:
            return {"ok": False, "retryable": True,
                    "error": f"no answer from the log within {self.propose_timeout:g} s"}

    def _confirm(self, nid: str) -> None:
        """Take ``nid`` out of the spool; its tombstone is fsynced with the next batch."""
        try:
            self.spool.confirm_soon(nid)
        except SpoolError as exc:  # losing a tombstone only costs a harmless resend
            log.error("could not record confirmation of %s in the spool: %s", nid, exc)
