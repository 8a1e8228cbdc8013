"""The submitter: spooled before proposed, resent until confirmed, refusals final."""
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from hagent.spool import Spool
import pytest

from hagent.submitter import REFUSED, TRANSIENT, CONFIRMED, Submitter, classify


class FakeLog:
    """A propose callable: fails ``fail_first`` times, refuses hosts in ``refuse``, commits once
    per uuid (a second commit of a uuid answers "already known" with the first record)."""

    def __init__(self, fail_first: int = 0, refuse: tuple[str, ...] = (), hang: bool = False,
                 spool_path: Path | None = None) -> None:
        self.fail_first = fail_first
        self.refuse = refuse
        self.hang = hang
        self.spool_path = spool_path
        self.calls: list[dict[str, Any]] = []
        self.committed: dict[str, dict[str, Any]] = {}
        self.spooled_at_propose: list[bool] = []
        self.max_concurrent = 0
        self._concurrent = 0
        self.release = asyncio.Event()

    async def __call__(self, command: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(command)
        if self.spool_path is not None:
            self.spooled_at_propose.append(
                command["notification_uuid"].encode() in self.spool_path.read_bytes())
        self._concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self._concurrent)
        try:
            await asyncio.sleep(0)
            if self.hang and not self.release.is_set():
                await self.release.wait()
            if len(self.calls) <= self.fail_first:
                if len(self.calls) % 2:
                    raise ConnectionError("no leader")
                return {"ok": False, "error": "the log did not commit within 8 s"}
            if command["hostname"] in self.refuse:
                return {"ok": False, "error": f"unknown host {command['hostname']}"}
            nid = command["notification_uuid"]
            record = self.committed.setdefault(
                nid, {**{k: v for k, v in command.items() if k != "op"}, "status": "new"})
            return {"ok": True, "result": record}
        finally:
            self._concurrent -= 1


def fields(host: str = "node2", **kw) -> dict[str, Any]:
    return {"type": "COMPUTE_HOST", "hostname": host, "generated_time": "2026-01-01T00:00:00Z",
            "payload": {"event": "STOPPED"}, **kw}


async def until(cond, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_classify() -> None:
    assert classify({"ok": True, "result": {}}) == CONFIRMED
    assert classify({"ok": True, "result": None}) == CONFIRMED
    assert classify({"ok": False, "error": "unknown host x"}) == REFUSED
    assert classify({"ok": False, "error": "x", "retryable": True}) == TRANSIENT
    assert classify({"ok": False, "error": "the log did not commit within 8 s"}) == TRANSIENT
    assert classify({"ok": False, "committed": False}) == TRANSIENT
    assert classify(None) == TRANSIENT


def test_submit_commits_after_spooling(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        fake = FakeLog(spool_path=spool.path)
        sub = Submitter(fake, spool, "node1")
        await sub.start()
        answer = await sub.submit(fields())
        assert answer["ok"] and answer["committed"]
        record = answer["result"]
        assert record["source_node"] == "node1" and record["hostname"] == "node2"
        assert len(record["notification_uuid"]) == 36  # uuid4 filled in
        assert fake.calls[0]["op"] == "notification.submit"
        assert fake.spooled_at_propose == [True]  # in the file before the log saw it
        assert sub.pending_count() == 0
        assert (sub.submitted, sub.confirmed, sub.resends) == (1, 1, 0)
        await sub.stop()
        assert Spool(tmp_path).pending() == []

    asyncio.run(main())


def test_resend_after_propose_failures(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeLog(fail_first=4)
        sub = Submitter(fake, Spool(tmp_path), "node1", resend_interval=0.01, submit_timeout=5)
        answer = await sub.submit(fields(notification_uuid="n-1"))
        assert answer["committed"] and answer["result"]["notification_uuid"] == "n-1"
        assert len(fake.calls) == 5
        assert sub.resends == 4 and sub.propose_failures == 4 and sub.confirmed == 1
        await sub.stop()

    asyncio.run(main())


def test_timeout_answers_pending_and_keeps_resending(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeLog(fail_first=10**9)
        sub = Submitter(fake, Spool(tmp_path), "node1", resend_interval=0.01, submit_timeout=0.05)
        answer = await sub.submit(fields(notification_uuid="n-2"))
        assert answer == {"ok": True, "committed": False, "result": {
            **fields(notification_uuid="n-2"), "source_node": "node1", "status": "pending"}}
        assert sub.pending_count() == 1
        calls = len(fake.calls)
        await until(lambda: len(fake.calls) >= calls + 3)  # still resending
        fake.fail_first = 0
        await until(lambda: sub.pending_count() == 0)
        assert "n-2" in fake.committed and sub.confirmed == 1
        await sub.stop()

    asyncio.run(main())


def test_restart_resends_pending_once_each(tmp_path: Path) -> None:
    async def first_run() -> None:
        sub = Submitter(FakeLog(fail_first=10**9), Spool(tmp_path), "node1",
                        resend_interval=10, submit_timeout=0.01)
        for n in range(3):
            answer = await sub.submit(fields(notification_uuid=f"n-{n}"))
            assert answer["committed"] is False
        await sub.stop()  # the agent stops (or crashes) with three unconfirmed

    async def second_run() -> None:
        spool = Spool(tmp_path)
        assert [r["notification_uuid"] for r in spool.pending()] == ["n-0", "n-1", "n-2"]
        fake = FakeLog()
        sub = Submitter(fake, spool, "node1", resend_interval=0.01)
        await sub.start()
        await until(lambda: sub.pending_count() == 0)
        assert [c["notification_uuid"] for c in fake.calls] == ["n-0", "n-1", "n-2"]
        assert all(c["source_node"] == "node1" for c in fake.calls)
        await sub.stop()

    asyncio.run(first_run())
    asyncio.run(second_run())
    assert Spool(tmp_path).pending() == []


def test_crash_without_stop_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """No close(), no tombstones flushed: whatever submit acknowledged is on disk."""
    async def main() -> list[str]:
        sub = Submitter(FakeLog(fail_first=10**9), Spool(tmp_path), "node1",
                        resend_interval=10, submit_timeout=0)
        acked = []
        for n in range(20):
            answer = await sub.submit(fields(notification_uuid=f"n-{n}"))
            acked.append(answer["result"]["notification_uuid"])
        return acked

    acked = asyncio.run(main())  # loop ends, tasks are dropped: a crash, as far as the disk knows
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == acked


def test_duplicate_submit_is_one_notification(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeLog()
        sub = Submitter(fake, Spool(tmp_path), "node1")
        answers = await asyncio.gather(*(sub.submit(fields(notification_uuid="same")) for _ in range(5)))
        assert all(a["committed"] for a in answers)
        assert len(fake.calls) == 1 and sub.submitted == 1
        again = await sub.submit(fields(notification_uuid="same"))  # after confirmation
        assert again["committed"] and again["result"] == answers[0]["result"]  # "already known"
        assert len(fake.committed) == 1
        await sub.stop()

    asyncio.run(main())


def test_refusal_is_final(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeLog(refuse=("ghost",))
        sub = Submitter(fake, Spool(tmp_path), "node1", resend_interval=0.01)
        answer = await sub.submit(fields(host="ghost"))
        assert answer == {"ok": False, "error": "unknown host ghost"}
        assert sub.refused == 1 and sub.pending_count() == 0
        await asyncio.sleep(0.05)
        assert len(fake.calls) == 1  # never resent
        await sub.stop()

    asyncio.run(main())
    assert Spool(tmp_path).pending() == []


def test_bad_fields_are_not_spooled(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeLog()
        sub = Submitter(fake, Spool(tmp_path), "node1")
        answer = await sub.submit({**fields(), "colour": "red"})
        assert not answer["ok"] and "colour" in answer["error"]
        answer = await sub.submit(fields(payload={"x": object()}))
        assert not answer["ok"] and "JSON" in answer["error"]
        assert fake.calls == [] and sub.pending_count() == 0
        await sub.stop()

    asyncio.run(main())


def test_in_flight_proposals_are_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeLog(hang=True)
        sub = Submitter(fake, Spool(tmp_path), "node1", max_in_flight=4, submit_timeout=10)
        tasks = [asyncio.create_task(sub.submit(fields(notification_uuid=f"n-{i}"))) for i in range(50)]
        await until(lambda: len(fake.calls) >= 4)
        await asyncio.sleep(0.02)
        assert len(fake.calls) == 4 and sub.in_flight == 4
        fake.release.set()
        answers = await asyncio.gather(*tasks)
        assert all(a["committed"] for a in answers)
        assert fake.max_concurrent == 4
        await sub.stop()

    asyncio.run(main())


def test_hanging_propose_is_timed_out_and_resent(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeLog(hang=True)
        sub = Submitter(fake, Spool(tmp_path), "node1", resend_interval=0.01,
                        propose_timeout=0.02, submit_timeout=5)
        task = asyncio.create_task(sub.submit(fields(notification_uuid="n-h")))
        await until(lambda: len(fake.calls) >= 3)
        fake.release.set()
        answer = await task
        assert answer["committed"] and sub.resends >= 2
        await sub.stop()

    asyncio.run(main())


@pytest.mark.parametrize("propose_timeout", [30.0, None])
def test_stop_keeps_pending_on_disk(tmp_path: Path, propose_timeout: float | None) -> None:
    async def main() -> None:
        sub = Submitter(FakeLog(hang=True), Spool(tmp_path), "node1", submit_timeout=0.01,
                        propose_timeout=propose_timeout)
        answer = await sub.submit(fields(notification_uuid="n-s"))
        assert answer["committed"] is False
        await sub.stop()
        answer = await sub.submit(fields())
        assert not answer["ok"] and "stopping" in answer["error"]

    asyncio.run(main())
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == ["n-s"]
    assert os.stat(tmp_path / "spool.log").st_size > 0


class GatedFsync:
    """An fsync that, once ``close_gate()`` was called, blocks until ``open_gate()``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()

    def close_gate(self) -> None:
        self.gate.clear()

    def open_gate(self) -> None:
        self.gate.set()

    def __call__(self, fd: int) -> None:
        if not self.gate.is_set():
            self.blocked.set()
            assert self.gate.wait(10), "gate never opened"
        os.fsync(fd)


def test_answer_does_not_wait_for_the_tombstone_fsync(tmp_path: Path) -> None:
    fsync = GatedFsync()

    async def main() -> None:
        spool = Spool(tmp_path, fsync=fsync)
        fake = FakeLog()
        real_call = fake.__call__

        async def propose(command: dict[str, Any]) -> dict[str, Any]:
            fsync.close_gate()  # the put is durable; every later fsync (the tombstone) blocks
            return await real_call(command)

        sub = Submitter(propose, spool, "node1")
        # wait_for is a guard against a hang, not synchronisation: the answer needs no fsync.
        answer = await asyncio.wait_for(sub.submit(fields(notification_uuid="n-t")), 5)
        assert answer["committed"] and sub.pending_count() == 0
        await asyncio.get_running_loop().run_in_executor(None, fsync.blocked.wait, 5)
        assert fsync.blocked.is_set()  # the tombstone's fsync is under way, still unfinished
        fsync.open_gate()
        await sub.stop()

    asyncio.run(main())
    assert b'"op":"done","uuid":"n-t"' in (tmp_path / "spool.log").read_bytes()
    assert Spool(tmp_path).pending() == []


def test_propose_timeout_must_be_positive_or_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="propose_timeout"):
        Submitter(FakeLog(), Spool(tmp_path), "node1", propose_timeout=0)
