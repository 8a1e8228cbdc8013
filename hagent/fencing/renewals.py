"""Group lease renewals into few log entries (the voter's side of the renewal path).

Every node renews every ``renew_interval``: with hundreds of nodes that is many tiny
entries, each pickled, encrypted, fsynced and applied on every voter. A voter therefore
holds the ``lease.renew`` commands it is asked to propose (by its own agent, or by
non-voters through the forward server) for ``BATCH_WINDOW`` or while its previous batch is
still in flight, and proposes them as one ``lease.renew`` naming every host. Each caller
gets the batch's answer cut down to its own hosts, as if it had proposed alone.

Only well-formed renewals join a batch: one malformed host name would make the state
machine refuse the whole entry, so anything that does not pass the state machine's own
argument checks is proposed alone and refused alone.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from consensus import validate
from consensus.validate import CommandError

log = logging.getLogger(__name__)

#: Seconds a renewal waits for others before its batch is proposed. Renewals have seconds
#: of slack (lease_ttl - safety_margin = 10 s by default); 50 ms turns 1,000 nodes renewing
#: every 5 s (200/s) into at most 20 entries/s.
BATCH_WINDOW = 0.05
#: Longest a renewal waits behind a batch still in flight before it goes in a batch of its
#: own. A commit takes milliseconds; a batch older than this is stuck behind an election
#: and may take up to PROPOSE_TIMEOUT (8 s) of the 10 s the renewals have.
MAX_HOLD = 0.5
#: Most hosts in one entry: ~30 bytes each keeps an entry far below the 1 MiB command cap.
MAX_BATCH_HOSTS = 5000

Propose = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def batchable(command: Any) -> bool:
    """Whether ``command`` is a ``lease.renew`` the state machine would accept."""
    if not isinstance(command, dict) or command.get("op") != "lease.renew":
        return False
    if set(command) - {"op", "hosts", "at"}:
        return False
    hosts = command.get("hosts")
    if not isinstance(hosts, dict) or not hosts:
        return False
    try:
        for name, seq in hosts.items():
            validate.hostname(name, "hosts")
            validate.sequence_number(seq, "seq")
    except CommandError:
        return False
    return True


class RenewalBatcher:
    """Coalesces ``lease.renew`` commands into few proposals (asyncio, one loop).

    ``propose`` is the voter's own propose (answers within its timeout, never raises for a
    log failure). ``renew`` answers like ``propose`` would have for that command alone.
    Renewals wait ``window`` for company, then for the batch in flight to be answered,
    but never more than ``max_hold`` behind it: a batch stuck in an election (up to
    PROPOSE_TIMEOUT) must not hold every later renewal that long.
    """

    def __init__(self, propose: Propose, window: float = BATCH_WINDOW,
                 max_hosts: int = MAX_BATCH_HOSTS, max_hold: float = MAX_HOLD) -> None:
        self._propose = propose
        self.window = window
        self.max_hosts = max_hosts
        self.max_hold = max_hold
        self._waiting: list[tuple[dict[str, int], asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: dict[asyncio.Task, float] = {}  # batch -> loop time it was proposed
        #: Counters: renewals answered, proposals made for them.
        self.renewals = 0
        self.batches = 0

    async def renew(self, command: dict[str, Any]) -> dict[str, Any]:
        """Propose a (``batchable``) renewal as part of the next batch; its answer."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._waiting.append((dict(command["hosts"]), future))
        if self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await future

    def _flush(self) -> None:
        """Propose the waiting renewals (up to ``max_hosts`` hosts) as one entry, unless a
        batch proposed less than ``max_hold`` ago is still in flight: then try again when
        it is answered or reaches that age, whichever comes first."""
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight:
            newest = max(self._in_flight.values())
            if loop.time() < newest + self.max_hold:
                self._timer = loop.call_at(newest + self.max_hold, self._flush)
                return
        batch: list[tuple[dict[str, int], asyncio.Future]] = []
        hosts: dict[str, int] = {}
        while self._waiting:
            own, future = self._waiting[0]
            if batch and len(hosts.keys() | own.keys()) > self.max_hosts:
                break
            self._waiting.pop(0)
            if future.done():  # the caller gave up (cancelled)
                continue
            batch.append((own, future))
            for name, seq in own.items():
                hosts[name] = max(seq, hosts.get(name, seq))  # the log keeps the highest anyway
        if batch:
            task = loop.create_task(self._send(hosts, batch))
            self._in_flight[task] = loop.time()
        if self._waiting and self._timer is None:
            self._timer = loop.call_later(0, self._flush)  # more than max_hosts were waiting

    async def _send(self, hosts: dict[str, int],
                    batch: list[tuple[dict[str, int], asyncio.Future]]) -> None:
        try:
            try:
                answer = await self._propose({"op": "lease.renew", "hosts": hosts})
            except asyncio.CancelledError:
                _answer_all(batch, _STOPPING)
                raise
            except Exception as exc:  # noqa: BLE001 - answer every caller whatever happened
                log.exception("proposing a batch of %d renewals failed", len(hosts))
                answer = {"ok": False, "retryable": True, "error": f"{type(exc).__name__}: {exc}"}
            self.batches += 1
            self.renewals += len(batch)
            _answer_all(batch, answer)
        finally:
            task = asyncio.current_task()
            self._in_flight.pop(task, None)  # type: ignore[arg-type]
            if self._waiting and not self._in_flight:
                # They already waited at least as long as this batch took: no new window.
                self._flush()

    async def close(self) -> None:
        """Answer everything waiting with a retryable failure and stop (voter shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        _answer_all(waiting, _STOPPING)
        tasks, self._in_flight = list(self._in_flight), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_STOPPING = {"ok": False, "retryable": True, "error": "the voter is stopping"}


def _answer_all(batch: list[tuple[dict[str, int], asyncio.Future]], answer: Any) -> None:
    for own, future in batch:
        if not future.done():
            future.set_result(_answer_for(own, answer))


def _answer_for(own: dict[str, int], answer: Any) -> dict[str, Any]:
    """The batch's answer as the caller who renewed ``own`` would have had it alone."""
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        if isinstance(answer, dict):
            return dict(answer)
        return {"ok": False, "error": f"bad answer {answer!r}"}
    result = answer.get("result")
    if not isinstance(result, dict) or not all(name in result for name in own):
        return {"ok": False, "retryable": True, "error": "the log's answer to a batched renewal "
                                                         "does not name every host"}
    return {"ok": True, "result": {name: result[name] for name in own}}
