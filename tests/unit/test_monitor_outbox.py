"""The outbox between a monitor and the submit path: bounded, never drops, never blocks early."""
from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from hagent.monitors.base import Outbox
from hagent.monitors.metrics import monitor_metrics


class GatedSubmit:
    """A submit that records every call and answers only when the test opens the gate."""

    def __init__(self, answer=None):
        self.calls: list[dict] = []
        self.gate = asyncio.Event()
        self.answer = answer or {"ok": True, "committed": True, "result": {}}

    async def __call__(self, fields):
        self.calls.append(fields)
        await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def fields(i: int) -> dict:
    return {"notification_uuid": f"00000000-0000-4000-8000-{i:012d}", "type": "PROCESS",
            "payload": {"process_name": "x", "event": "STOPPED"}}


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_notification_fields_are_stamped_when_the_event_is_seen():
    box = Outbox(GatedSubmit(), hostname="compute-01", size=4)
    note = box.notification("PROCESS", {"process_name": "libvirtd", "event": "STOPPED"}, at=0.0)
    assert note["type"] == "PROCESS" and note["hostname"] == "compute-01"
    assert note["generated_time"] == "1970-01-01T00:00:00+00:00"
    assert note["payload"] == {"process_name": "libvirtd", "event": "STOPPED"}
    uuid.UUID(note["notification_uuid"])
    assert box.notification("PROCESS", {})["notification_uuid"] != note["notification_uuid"]


def test_senders_bound_the_submits_and_the_rest_waits_in_the_queue():
    async def main():
        submit = GatedSubmit()
        box = Outbox(submit, hostname="h", size=10, senders=2)
        await box.start()
        answers = []
        for i in range(5):
            answers.append(await box.put(fields(i)))
            await settle()
        assert len(submit.calls) == 2 and box.depth == 3 and box.in_flight == 2
        submit.gate.set()
        await asyncio.gather(*answers)
        assert [c["notification_uuid"] for c in submit.calls] == [fields(i)["notification_uuid"]
                                                                  for i in range(5)]
        stats = box.stats()
        assert stats["notifications_sent"] == stats["notifications_committed"] == 5
        assert stats["queue_depth"] == 0 and stats["queue_max_depth"] == 3
        await box.stop()

    asyncio.run(main())


def test_a_full_queue_makes_put_wait_and_loses_nothing():
    async def main():
        submit = GatedSubmit()
        box = Outbox(submit, hostname="h", size=2, senders=1)
        await box.start()
        for i in range(3):  # one in flight, two queued
            await box.put(fields(i))
            await settle()
        assert box.full_waits == 0 and box.depth == 2
        blocked = asyncio.ensure_future(box.put(fields(3)))
        await settle()
        assert not blocked.done() and box.full_waits == 1
        submit.gate.set()
        await asyncio.wait_for(blocked, 5)
        await asyncio.wait_for(await blocked, 5)
        assert len(submit.calls) == 4
        await box.stop()

    asyncio.run(main())


def test_stop_hands_every_queued_notification_to_submit_and_refuses_new_ones():
    async def main():
        submit = GatedSubmit()
        box = Outbox(submit, hostname="h", size=100, senders=1)
        await box.start()
        for i in range(10):
            await box.put(fields(i))
        await settle()
        assert len(submit.calls) == 1
        await box.stop(grace=0.05)  # the gate never opens: answers never come
        assert len(submit.calls) == 10  # each submit started, so each was spooled
        assert box.in_flight == 0
        with pytest.raises(RuntimeError, match="not running"):
            await box.put(fields(99))

    asyncio.run(main())


def test_refusals_and_exceptions_are_counted_and_answered():
    async def main():
        for answer in ({"ok": False, "error": "unknown host"}, RuntimeError("boom")):
            submit = GatedSubmit(answer)
            submit.gate.set()
            box = Outbox(submit, hostname="h", size=4)
            await box.start()
            result = await (await box.put(fields(1)))
            assert result["ok"] is False and result["error"]
            assert box.failed == 1 and box.submitted == 0
            await box.stop()

    asyncio.run(main())


def test_put_threadsafe_from_another_thread_and_not_from_the_loop():
    async def main():
        submit = GatedSubmit()
        submit.gate.set()
        box = Outbox(submit, hostname="h", size=1, senders=1)
        await box.start()
        errors = []

        def producer():
            try:
                for i in range(20):
                    box.put_threadsafe(fields(i), timeout=10)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=producer)
        thread.start()
        await asyncio.to_thread(thread.join)
        assert errors == []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while box.submitted < 20 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert box.submitted == 20
        with pytest.raises(RuntimeError, match="event loop thread"):
            box.put_threadsafe(fields(0))
        await box.stop()

    asyncio.run(main())


def test_metrics_are_labelled_by_monitor():
    families = {f.name: f for f in monitor_metrics({
        "process": {"events_seen": 3, "queue_depth": 1, "running": True, "restarts": 2,
                    "processes": {"/usr/sbin/libvirtd": "running", "nova-compute": "failed"}},
        "instance": {"events_seen": 7},
    })}
    events = {s.labels["monitor"]: s.value for s in families["hagent_monitor_events_seen"].samples
              if s.name.endswith("_total")}
    assert events == {"process": 3.0, "instance": 7.0}
    assert [s.value for s in families["hagent_monitor_queue_depth"].samples] == [1.0]
    running = {s.labels["process"]: s.value
               for s in families["hagent_monitor_process_running"].samples}
    assert running == {"/usr/sbin/libvirtd": 1.0, "nova-compute": 0.0}
    assert "hagent_monitor_reconnects" not in families
