"""One notification's recovery records in the replicated log, as one leader writes them.

The ledger is the only writer of ``recovery.intent``, ``recovery.result``,
``notification.vmove`` and ``notification.transition`` for the engine. What callers may rely
on:

- every write carries this leader's claimed ``term`` and is made only while
  ``still_leading()`` holds; a refusal for a stale term (a newer leader claimed recovery)
  raises ``LeadershipLost``, as does losing leadership while a write is retried;
- writes are retried while the log answers "not committed" (no quorum yet, a timeout): the
  ops are idempotent for a resend (the same intent, the same result, a vmove or transition
  already at the wanted status), so a retried write never records twice;
- ``steps`` and ``vmoves`` mirror what the log holds for the notification, updated from each
  write's answer, so the step code reads them without asking the log again.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

from consensus.model import STALE_TERM
from recovery.outcomes import LeadershipLost, StepFailed

log = logging.getLogger(__name__)

# Pauses between resends of a write the log did not commit (no quorum, timeout).
_RESEND_PAUSES = (0.1, 0.2, 0.5, 1.0, 2.0)


class AgentLike(Protocol):
    def is_leader(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...
    async def query(self, name: str, **kwargs: Any) -> Any: ...
    async def propose(self, command: dict[str, Any]) -> dict[str, Any]: ...


class Refused(Exception):
    """The log refused a write for a reason other than a stale term (a bug, or the record
    moved on meanwhile); ``str()`` is the state machine's reason."""


async def commit(agent: AgentLike, command: dict[str, Any],
                 still_leading: Callable[[], bool],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Any:
    """Commit ``command`` and return its result; resend while the log answers "not yet"
    and this node still leads. Raises LeadershipLost or Refused."""
    attempt = 0
    while True:
        if not still_leading():
            raise LeadershipLost(f"no longer leading; {command['op']} not sent")
        answer = await agent.propose(dict(command))
        if answer.get("ok"):
            return answer.get("result")
        error = str(answer.get("error", "refused"))
        if STALE_TERM in error:
            raise LeadershipLost(error)
        if not answer.get("retryable"):
            raise Refused(error)
        pause = _RESEND_PAUSES[min(attempt, len(_RESEND_PAUSES) - 1)]
        attempt += 1
        log.info("%s not committed (%s); again in %g s", command["op"], error, pause)
        await sleep(pause)


class Ledger:
    """The records of one notification's current run (``record``: the notification as the
    log showed it when the run started, after its transition to running)."""

    def __init__(self, agent: AgentLike, record: dict[str, Any], term: int,
                 still_leading: Callable[[], bool]) -> None:
        self._agent = agent
        self.term = term
        self.still_leading = still_leading
        self.uuid: str = record["notification_uuid"]
        self.attempt: int = record.get("recovery_attempts", 0)
        self.steps: list[dict[str, Any]] = list(record.get("recovery_steps", []))
        self.vmoves: dict[str, dict[str, Any]] = {v["instance_uuid"]: v
                                                   for v in record.get("vmoves", [])}

    def ensure_leading(self) -> None:
        """Raise LeadershipLost unless this node still leads in its claimed term."""
        if not self.still_leading():
            raise LeadershipLost(f"no longer leading in term {self.term}")

    def latest(self, step: str, key: str) -> dict[str, Any] | None:
        """The newest record of ``step`` on ``key`` (open intent or result), or None."""
        for item in reversed(self.steps):
            if item["step"] == step and item["key"] == key:
                return item
        return None

    def done_in_attempt(self, step: str, key: str) -> dict[str, Any] | None:
        """The step's result if it was done (or skipped) in this attempt, else None."""
        item = self.latest(step, key)
        if item and item["attempt"] == self.attempt and item["outcome"] in ("done", "skipped"):
            return item
        return None

    async def _commit(self, command: dict[str, Any]) -> Any:
        return await commit(self._agent, command, self.still_leading)

    def _store(self, item: dict[str, Any]) -> None:
        for i in range(len(self.steps) - 1, -1, -1):
            old = self.steps[i]
            if (old["step"], old["key"], old["started_at"]) == (item["step"], item["key"],
                                                                 item["started_at"]):
                self.steps[i] = item
                return
        self.steps.append(item)

    async def intent(self, step: str, key: str, detail: str | None) -> None:
        """Commit the intent; only then may the caller act."""
        item = await self._commit({"op": "recovery.intent", "notification_uuid": self.uuid,
                                   "step": step, "key": key, "term": self.term,
                                   "detail": _clip(detail)})
        self._store(item)

    async def result(self, step: str, key: str, outcome: str, detail: str | None) -> None:
        item = await self._commit({"op": "recovery.result", "notification_uuid": self.uuid,
                                   "step": step, "key": key, "term": self.term,
                                   "outcome": outcome, "detail": _clip(detail)})
        self._store(item)

    async def vmove(self, instance: str, status: str, **fields: str | None) -> None:
        """Record an instance's progress; a vmove already at ``status`` is left alone."""
        current = self.vmoves.get(instance)
        if current is not None and current["status"] == status:
            return
        command = {"op": "notification.vmove", "notification_uuid": self.uuid,
                   "instance_uuid": instance, "status": status,
                   **{k: _clip(v) for k, v in fields.items()}}
        try:
            record = await self._commit(command)
        except Refused:
            record = await self._agent.query("get_notification", notification_uuid=self.uuid)
            found = {v["instance_uuid"]: v for v in (record or {}).get("vmoves", [])}
            if found.get(instance, {}).get("status") != status:
                raise
        # Only this instance's row: answers to concurrent writes may arrive in any order.
        self.vmoves[instance] = next(v for v in record["vmoves"] if v["instance_uuid"] == instance)

    async def host_update(self, host: str, **changes: bool) -> None:
        """Set ``reserved`` / ``on_maintenance`` of a registered host (idempotent)."""
        try:
            await self._commit({"op": "host.update", "host": host, **changes})
        except Refused as exc:
            raise StepFailed(f"could not update host {host} ({changes}): {exc}") from None


async def transition(agent: AgentLike, uuid: str, status: str, message: str | None,
                     still_leading: Callable[[], bool]) -> dict[str, Any]:
    """Move a notification to ``status`` (with ``message``); a notification already there
    (an earlier copy of this write committed) counts as done. Returns its record."""
    command: dict[str, Any] = {"op": "notification.transition", "notification_uuid": uuid,
                               "status": status}
    if message is not None:
        command["message"] = _clip(message, 4000)
    try:
        return await commit(agent, command, still_leading)
    except Refused:
        record = await agent.query("get_notification", notification_uuid=uuid)
        if record is None or record["status"] != status:
            raise
        return record


def _clip(text: str | None, limit: int = 1000) -> str | None:
    """Details and messages are bounded in the log (RECOVERY_DETAIL_MAX)."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 3] + "..."
