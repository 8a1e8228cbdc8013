"""The instance monitor's event filter: Masakari's table, and how each libvirt callback feeds it.

The expected table is written out here from masakari-monitors'
``instancemonitor/libvirt_handler/eventfilter_table.py`` by constant *name*, so a typo in
hagent's table (a wrong constant, a missing or extra entry) fails. The callback tests call
the monitor's six libvirt callbacks with the arguments libvirt-python passes them, from a
thread other than the event loop's (as libvirt's event thread does), into a real Outbox.
"""
from __future__ import annotations

import asyncio
import uuid

import libvirt
import pytest

from consensus.payload import check_payload
from hagent.monitors import eventfilter
from hagent.monitors.base import Outbox
from hagent.monitors.eventfilter import NONE, Reported, classify, vm_payload
from hagent.monitors.instance import InstanceMonitor


def c(name: str) -> int:
    return getattr(libvirt, name)


# (event ID, type, detail) by constant name -> (event, vir_domain_event): every reported event.
MASAKARI = {
    ("LIFECYCLE", "SUSPENDED", "SUSPENDED_IOERROR"): ("LIFECYCLE", "SUSPENDED_IOERROR"),
    ("LIFECYCLE", "SUSPENDED", "SUSPENDED_WATCHDOG"): ("LIFECYCLE", "SUSPENDED_WATCHDOG"),
    ("LIFECYCLE", "SUSPENDED", "SUSPENDED_API_ERROR"): ("LIFECYCLE", "SUSPENDED_API_ERROR"),
    ("LIFECYCLE", "STOPPED", "STOPPED_SHUTDOWN"): ("LIFECYCLE", "STOPPED_SHUTDOWN"),
    ("LIFECYCLE", "STOPPED", "STOPPED_DESTROYED"): ("LIFECYCLE", "STOPPED_DESTROYED"),
    ("LIFECYCLE", "STOPPED", "STOPPED_FAILED"): ("LIFECYCLE", "STOPPED_FAILED"),
    ("LIFECYCLE", "SHUTDOWN", "SHUTDOWN_FINISHED"): ("LIFECYCLE", "SHUTDOWN_FINISHED"),
    ("REBOOT", None, None): ("REBOOT", "UNKNOWN"),
    ("WATCHDOG", "WATCHDOG_NONE", None): ("WATCHDOG", "WATCHDOG_NONE"),
    ("WATCHDOG", "WATCHDOG_PAUSE", None): ("WATCHDOG", "WATCHDOG_PAUSE"),
    ("WATCHDOG", "WATCHDOG_RESET", None): ("WATCHDOG", "WATCHDOG_RESET"),
    ("WATCHDOG", "WATCHDOG_POWEROFF", None): ("WATCHDOG", "WATCHDOG_POWEROFF"),
    ("WATCHDOG", "WATCHDOG_SHUTDOWN", None): ("WATCHDOG", "WATCHDOG_SHUTDOWN"),
    ("WATCHDOG", "WATCHDOG_DEBUG", None): ("WATCHDOG", "WATCHDOG_DEBUG"),
    ("IO_ERROR", "IO_ERROR_NONE", None): ("IO_ERROR", "IO_ERROR_NONE"),
    ("IO_ERROR", "IO_ERROR_PAUSE", None): ("IO_ERROR", "IO_ERROR_PAUSE"),
    ("IO_ERROR", "IO_ERROR_REPORT", None): ("IO_ERROR", "IO_ERROR_REPORT"),
    ("IO_ERROR_REASON", None, None): ("IO_ERROR_REASON", "UNKNOWN"),
    ("CONTROL_ERROR", None, None): ("CONTROL_ERROR", "UNKNOWN"),
}


def key(event_id: str, event_type: str | None, detail: str | None) -> tuple[int, int, int]:
    return (c(f"VIR_DOMAIN_EVENT_ID_{event_id}"),
            NONE if event_type is None else c(f"VIR_DOMAIN_EVENT_{event_type}"),
            NONE if detail is None else c(f"VIR_DOMAIN_EVENT_{detail}"))


def test_the_table_is_masakaris_entry_for_entry():
    expected = {key(*k): v for k, v in MASAKARI.items()}
    assert {k: (eventfilter.EVENT_NAMES[k[0]], v) for k, v in eventfilter.TABLE.items()} \
        == expected
    for k, (event, vir_domain_event) in expected.items():
        assert classify(*k) == Reported(event, vir_domain_event)


@pytest.mark.parametrize("event_type, detail", [
    ("DEFINED", "DEFINED_ADDED"), ("UNDEFINED", "UNDEFINED_REMOVED"),
    ("STARTED", "STARTED_BOOTED"), ("STARTED", "STARTED_RESTORED"),
    ("RESUMED", "RESUMED_UNPAUSED"), ("SUSPENDED", "SUSPENDED_PAUSED"),
    ("SUSPENDED", "SUSPENDED_MIGRATED"), ("STOPPED", "STOPPED_SAVED"),
    ("STOPPED", "STOPPED_MIGRATED"), ("STOPPED", "STOPPED_FROM_SNAPSHOT"),
    ("SHUTDOWN", "SHUTDOWN_GUEST"), ("SHUTDOWN", "SHUTDOWN_HOST"),
    ("CRASHED", "CRASHED_PANICKED"), ("PMSUSPENDED", "PMSUSPENDED_MEMORY"),
])
def test_lifecycle_events_outside_the_table_are_filtered(event_type, detail):
    assert classify(*key("LIFECYCLE", event_type, detail)) is None


def test_events_with_a_type_or_detail_the_callbacks_never_pass_are_filtered():
    # Masakari's callbacks pass -1 where an event has no type or detail; anything else misses.
    assert classify(c("VIR_DOMAIN_EVENT_ID_REBOOT"), 0, 0) is None
    assert classify(c("VIR_DOMAIN_EVENT_ID_WATCHDOG"), c("VIR_DOMAIN_EVENT_WATCHDOG_RESET"),
                    0) is None
    assert classify(c("VIR_DOMAIN_EVENT_ID_RTC_CHANGE"), NONE, NONE) is None
    assert classify(c("VIR_DOMAIN_EVENT_ID_GRAPHICS"), NONE, NONE) is None


def test_every_reported_payload_is_accepted_by_the_log():
    instance = str(uuid.uuid4())
    for reported in {classify(*k) for k in eventfilter.TABLE}:
        payload = vm_payload(instance, reported)
        assert check_payload("VM", payload) == {
            "instance_uuid": instance, "vir_domain_event": reported.vir_domain_event,
            "event": reported.event}


# ---- the callbacks -----------------------------------------------------------------------

class Dom:
    """What a callback uses of a virDomain: its UUID string."""

    def __init__(self, uuid_string: str | None = None):
        self.uuid_string = uuid_string or str(uuid.uuid4())

    def UUIDString(self) -> str:
        if self.uuid_string == "broken":
            raise libvirt.libvirtError("domain not found")
        return self.uuid_string


class Recorder:
    def __init__(self):
        self.submitted: list[dict] = []

    async def __call__(self, fields):
        self.submitted.append(fields)
        return {"ok": True, "committed": True}


async def fire(monitor: InstanceMonitor, calls) -> None:
    """Run ``calls`` (callback, args) in a thread that is not the event loop's, as libvirt's
    event thread is, and wait for the outbox to hand everything to submit."""
    callbacks = monitor._callbacks()

    def run():
        for event_id, args in calls:
            callbacks[c(f"VIR_DOMAIN_EVENT_ID_{event_id}")](None, *args, None)

    await asyncio.to_thread(run)
    while monitor.outbox.depth or monitor.outbox.in_flight:
        await asyncio.sleep(0)


def with_monitor(test):
    async def main():
        submit = Recorder()
        monitor = InstanceMonitor("test:///default", Outbox(submit, hostname="compute-1",
                                                            size=8, name="instance"))
        await monitor.outbox.start()
        try:
            await test(monitor, submit)
        finally:
            await monitor.outbox.stop()
    asyncio.run(main())


def payloads(submit: Recorder) -> list[tuple[str, str, str]]:
    return [(n["payload"]["instance_uuid"], n["payload"]["event"],
             n["payload"]["vir_domain_event"]) for n in submit.submitted]


def test_each_callback_passes_type_and_detail_as_masakaris_do():
    dom = Dom()
    u = dom.uuid_string

    async def test(monitor, submit):
        await fire(monitor, [
            ("LIFECYCLE", (dom, c("VIR_DOMAIN_EVENT_STOPPED"),
                           c("VIR_DOMAIN_EVENT_STOPPED_FAILED"))),
            ("REBOOT", (dom,)),
            ("WATCHDOG", (dom, c("VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF"))),
            ("IO_ERROR", (dom, "/var/lib/nova/disk", "virtio-disk0",
                          c("VIR_DOMAIN_EVENT_IO_ERROR_PAUSE"))),
            ("IO_ERROR_REASON", (dom, "/var/lib/nova/disk", "virtio-disk0",
                                 c("VIR_DOMAIN_EVENT_IO_ERROR_REPORT"), "enospc")),
            ("CONTROL_ERROR", (dom,)),
        ])
        assert payloads(submit) == [
            (u, "LIFECYCLE", "STOPPED_FAILED"), (u, "REBOOT", "UNKNOWN"),
            (u, "WATCHDOG", "WATCHDOG_POWEROFF"), (u, "IO_ERROR", "IO_ERROR_PAUSE"),
            (u, "IO_ERROR_REASON", "UNKNOWN"), (u, "CONTROL_ERROR", "UNKNOWN")]
        assert all(n["type"] == "VM" and n["hostname"] == "compute-1"
                   for n in submit.submitted)
        assert monitor.events_seen == 6 and monitor.events_reported == 6
        assert monitor.events_filtered == 0

    with_monitor(test)


def test_filtered_events_are_counted_and_not_queued():
    dom = Dom()

    async def test(monitor, submit):
        await fire(monitor, [
            ("LIFECYCLE", (dom, c("VIR_DOMAIN_EVENT_STARTED"),
                           c("VIR_DOMAIN_EVENT_STARTED_BOOTED"))),
            ("LIFECYCLE", (dom, c("VIR_DOMAIN_EVENT_SUSPENDED"),
                           c("VIR_DOMAIN_EVENT_SUSPENDED_PAUSED"))),
            ("LIFECYCLE", (dom, c("VIR_DOMAIN_EVENT_STOPPED"),
                           c("VIR_DOMAIN_EVENT_STOPPED_DESTROYED"))),
        ])
        assert payloads(submit) == [(dom.uuid_string, "LIFECYCLE", "STOPPED_DESTROYED")]
        assert (monitor.events_seen, monitor.events_filtered, monitor.events_reported) \
            == (3, 2, 1)

    with_monitor(test)


def test_a_storm_larger_than_the_outbox_loses_nothing():
    doms = [Dom() for _ in range(50)]
    stopped = (c("VIR_DOMAIN_EVENT_STOPPED"), c("VIR_DOMAIN_EVENT_STOPPED_FAILED"))

    async def test(monitor, submit):
        await fire(monitor, [("LIFECYCLE", (d, *stopped)) for d in doms])
        assert [p[0] for p in payloads(submit)] == [d.uuid_string for d in doms]
        assert monitor.outbox.queued == 50 and monitor.events_reported == 50

    with_monitor(test)


def test_a_failing_callback_is_counted_seen_and_never_raises_into_libvirt():
    async def test(monitor, submit):
        await fire(monitor, [("LIFECYCLE", (Dom("broken"), c("VIR_DOMAIN_EVENT_STOPPED"),
                                            c("VIR_DOMAIN_EVENT_STOPPED_FAILED")))])
        assert submit.submitted == [] and monitor.events_seen == 1
        assert monitor._in_callback == 0

    with_monitor(test)


def test_an_event_after_the_outbox_closed_is_counted_lost():
    async def main():
        monitor = InstanceMonitor("test:///default", Outbox(Recorder(), hostname="h", size=2))
        await monitor.outbox.start()
        await monitor.outbox.stop()
        callback = monitor._callbacks()[c("VIR_DOMAIN_EVENT_ID_REBOOT")]
        await asyncio.to_thread(callback, None, Dom(), None)
        assert monitor.events_lost == 1 and monitor.events_reported == 0

    asyncio.run(main())

