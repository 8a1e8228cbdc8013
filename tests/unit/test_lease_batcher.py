"""RenewalBatcher: renewals that arrive together, or while a batch is in flight, become one
log entry; every caller gets the answer it would have had alone."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consensus.state import ClusterState
from hagent.fencing.renewals import RenewalBatcher, batchable


class Log:
    """A propose callable on a real ClusterState; ``hold`` keeps a proposal in flight."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.proposals: list[dict[str, Any]] = []
        self.hold: asyncio.Event | None = None
        self.hold_first_only = False
        self.entered = asyncio.Event()
        self.answer: dict[str, Any] | None = None  # set: answer this instead of applying
        self.raise_: Exception | None = None

    async def __call__(self, command: dict[str, Any]) -> dict[str, Any]:
        self.proposals.append(command)
        self.entered.set()
        if self.hold is not None and (len(self.proposals) == 1 or not self.hold_first_only):
            await self.hold.wait()
        if self.raise_ is not None:
            raise self.raise_
        if self.answer is not None:
            return self.answer
        return self.state.apply({"at": 1_700_000_000.0, **command})


def renew(host: str, seq: int) -> dict[str, Any]:
    return {"op": "lease.renew", "hosts": {host: seq}, "at": 1_700_000_000.0}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5.0))


def test_renewals_in_one_window_become_one_entry_and_each_caller_sees_its_own_hosts():
    async def main():
        log = Log()
        batcher = RenewalBatcher(log, window=0.0)
        answers = await asyncio.gather(*(batcher.renew(renew(f"cn{i}", i)) for i in range(1, 4)))
        return log, batcher, answers

    log, batcher, answers = run(main())
    assert log.proposals == [{"op": "lease.renew", "hosts": {"cn1": 1, "cn2": 2, "cn3": 3}}]
    for i, answer in enumerate(answers, start=1):
        assert answer["ok"] is True
        assert list(answer["result"]) == [f"cn{i}"]
        assert answer["result"][f"cn{i}"]["seq"] == i
    assert (batcher.batches, batcher.renewals) == (1, 3)


def test_renewals_arriving_while_a_batch_is_in_flight_go_in_the_next_one():
    async def main():
        log = Log()
        log.hold = asyncio.Event()
        batcher = RenewalBatcher(log, window=0.0)
        first = asyncio.ensure_future(batcher.renew(renew("cn1", 1)))
        await log.entered.wait()
        later = [asyncio.ensure_future(batcher.renew(renew(h, 7))) for h in ("cn2", "cn3")]
        await asyncio.sleep(0)  # let them queue behind the proposal in flight
        assert len(log.proposals) == 1
        log.hold.set()
        return log, await first, await asyncio.gather(*later)

    log, first, later = run(main())
    assert [p["hosts"] for p in log.proposals] == [{"cn1": 1}, {"cn2": 7, "cn3": 7}]
    assert first["ok"] and all(a["ok"] for a in later)


def test_a_batch_stuck_in_flight_holds_later_renewals_only_max_hold():
    async def main():
        log = Log()
        log.hold, log.hold_first_only = asyncio.Event(), True  # the first never commits
        batcher = RenewalBatcher(log, window=0.0, max_hold=0.05)
        stuck = asyncio.ensure_future(batcher.renew(renew("cn1", 1)))
        await log.entered.wait()
        later = await batcher.renew(renew("cn2", 1))  # answered although cn1's is stuck
        assert not stuck.done()
        log.hold.set()
        return log, later, await stuck

    log, later, stuck = run(main())
    assert [p["hosts"] for p in log.proposals] == [{"cn1": 1}, {"cn2": 1}]
    assert later["ok"] and stuck["ok"]


def test_two_renewals_of_one_host_keep_the_highest_number():
    async def main():
        log = Log()
        batcher = RenewalBatcher(log, window=0.0)
        return log, await asyncio.gather(batcher.renew(renew("cn1", 4)), batcher.renew(renew("cn1", 5)))

    log, answers = run(main())
    assert log.proposals[0]["hosts"] == {"cn1": 5}
    assert [a["result"]["cn1"]["seq"] for a in answers] == [5, 5]


def test_a_failure_reaches_every_caller():
    async def main():
        log = Log()
        log.answer = {"ok": False, "retryable": True, "error": "the log did not commit within 8 s"}
        batcher = RenewalBatcher(log, window=0.0)
        failed = await asyncio.gather(batcher.renew(renew("cn1", 1)), batcher.renew(renew("cn2", 1)))
        log.answer, log.raise_ = None, RuntimeError("boom")
        raised = await batcher.renew(renew("cn3", 1))
        return failed, raised

    failed, raised = run(main())
    assert all(a == {"ok": False, "retryable": True, "error": "the log did not commit within 8 s"}
               for a in failed)
    assert raised["ok"] is False and "boom" in raised["error"]


def test_batches_are_capped_in_hosts():
    async def main():
        log = Log()
        batcher = RenewalBatcher(log, window=0.0, max_hosts=2)
        await asyncio.gather(*(batcher.renew(renew(f"cn{i}", 1)) for i in range(5)))
        return log

    log = run(main())
    assert [len(p["hosts"]) for p in log.proposals] == [2, 2, 1]


def test_close_answers_waiting_callers_with_a_retryable_failure():
    async def main():
        log = Log()
        log.hold = asyncio.Event()
        batcher = RenewalBatcher(log, window=0.0)
        in_flight = asyncio.ensure_future(batcher.renew(renew("cn1", 1)))
        await log.entered.wait()
        waiting = asyncio.ensure_future(batcher.renew(renew("cn2", 1)))
        await asyncio.sleep(0)
        await batcher.close()
        return await in_flight, await waiting

    in_flight, waiting = run(main())
    for answer in (in_flight, waiting):
        assert answer == {"ok": False, "retryable": True, "error": "the voter is stopping"}


@pytest.mark.parametrize("command, expected", [
    ({"op": "lease.renew", "hosts": {"cn1": 1}}, True),
    ({"op": "lease.renew", "hosts": {"cn1": 1}, "at": 1.0}, True),
    ({"op": "lease.renew", "hosts": {}}, False),
    ({"op": "lease.renew", "hosts": {"bad host!": 1}}, False),
    ({"op": "lease.renew", "hosts": {"cn1": -1}}, False),
    ({"op": "lease.renew", "hosts": {"cn1": True}}, False),
    ({"op": "lease.renew", "hosts": {"cn1": 1}, "extra": 1}, False),
    ({"op": "notification.create", "hosts": {"cn1": 1}}, False),
    ("lease.renew", False),
])
def test_only_renewals_the_state_machine_accepts_are_batched(command, expected):
    assert batchable(command) is expected
