"""The introspective monitor: per-guest ping verdicts, the threshold, recovery, a hung agent.

``GuestPings`` is tested directly. ``IntrospectiveMonitor`` is driven one round at a time
(``check_round``) against a fake ``GuestSource`` whose pings answer, fail, or block until
the test lets them go; the recorded submit stands in for the spool.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from consensus.payload import check_payload
from hagent.config import loads_config
from hagent.monitors import introspective
from hagent.monitors.base import MonitorContext, Outbox
from hagent.monitors.guest_ping import GuestPings, GuestState
from hagent.monitors.instance import InstanceMonitor
from hagent.monitors.introspective import (AGENT_CHANNEL, Guest, IntrospectiveMonitor,
                                           has_agent_channel)
from hagent.monitors.metrics import monitor_metrics

A, B, C, D = (str(uuid.UUID(int=i + 1)) for i in range(4))


# ---- GuestPings --------------------------------------------------------------------------

def healthy(pings: GuestPings, *uuids: str) -> None:
    pings.present({u: 1 for u in uuids})
    for u in uuids:
        pings.answered(u)


def test_failures_before_the_first_answer_are_not_counted():
    pings = GuestPings(3)
    pings.present({A: 1})
    assert [pings.failed(A) for _ in range(10)] == [False] * 10
    assert pings.state(A) is GuestState.DISCOVERY and pings.failures(A) == 0


def test_the_threshold_th_failure_in_a_row_reports_once():
    pings = GuestPings(3)
    healthy(pings, A)
    assert [pings.failed(A) for _ in range(6)] == [False, False, True, False, False, False]
    assert pings.state(A) is GuestState.REPORTED


def test_failures_are_counted_per_guest():
    pings = GuestPings(2)
    healthy(pings, A, B)
    assert pings.failed(A) is False
    assert pings.failed(B) is False
    assert (pings.failures(A), pings.failures(B)) == (1, 1)
    assert pings.failed(A) is True
    assert pings.state(B) is GuestState.FAILING


def test_an_answer_resets_the_count_and_a_new_run_is_reported_again():
    pings = GuestPings(3)
    healthy(pings, A)
    pings.failed(A), pings.failed(A)
    pings.answered(A)
    assert pings.failures(A) == 0 and pings.state(A) is GuestState.HEALTHY
    assert [pings.failed(A) for _ in range(3)] == [False, False, True]
    pings.answered(A)
    assert [pings.failed(A) for _ in range(3)] == [False, False, True]


def test_a_restarted_domain_starts_over_and_a_gone_one_is_forgotten():
    pings = GuestPings(1)
    healthy(pings, A, B)
    pings.present({A: 2, B: 1})  # A was started again: a new domain ID
    assert pings.state(A) is GuestState.DISCOVERY and pings.failed(A) is False
    assert pings.failed(B) is True
    pings.present({B: 1})
    assert pings.state(A) is None and pings.failed(A) is False
    assert pings.counts() == {"discovery": 0, "healthy": 0, "failing": 0, "reported": 1}


# ---- the channel -------------------------------------------------------------------------

def test_a_guest_agent_channel_is_found_by_its_target_name():
    agent = (f"<domain><devices><channel type='unix'><source mode='bind' path='/x.sock'/>"
             f"<target type='virtio' name='{AGENT_CHANNEL}' state='connected'/></channel>"
             f"</devices></domain>")
    other = ("<domain><devices><channel type='spicevmc'><target type='virtio' "
             "name='com.redhat.spice.0'/></channel><serial type='pty'/></devices></domain>")
    assert has_agent_channel(agent) is True
    assert has_agent_channel(other) is False
    assert has_agent_channel("<domain><devices/></domain>") is False


# ---- the monitor -------------------------------------------------------------------------

class FakeSource:
    """Guests and pings as the test sets them: ``answers[uuid]`` is True (answers), an
    exception (raised) or a threading.Event (the ping blocks until it is set)."""

    def __init__(self, *uuids: str):
        self.listed = [Guest(u, 1) for u in uuids]
        self.answers: dict[str, object] = {u: True for u in uuids}
        self.calls: list[tuple[str, float]] = []   # (uuid, monotonic time the ping ended)
        self.list_error: Exception | None = None
        self.closed = False
        self._lock = threading.Lock()

    def guests(self):
        if self.list_error is not None:
            raise self.list_error
        return list(self.listed)

    def ping(self, guest, timeout):
        answer = self.answers[guest.uuid]
        try:
            if isinstance(answer, threading.Event):
                answer.wait(30)
            elif isinstance(answer, Exception):
                raise answer
        finally:
            with self._lock:
                self.calls.append((guest.uuid, time.monotonic()))

    def close(self):
        self.closed = True


class Recorder:
    def __init__(self):
        self.submitted: list[dict] = []

    async def __call__(self, fields):
        self.submitted.append(fields)
        return {"ok": True, "committed": True}


def run(test, source: FakeSource, **kw):
    async def main():
        submit = Recorder()
        monitor = IntrospectiveMonitor(source, Outbox(submit, hostname="compute-1", size=16),
                                       **{"interval": 10.0, "timeout": 2.0, **kw})
        await monitor.start()
        monitor._loop_task.cancel()  # the test drives the rounds
        try:
            await test(monitor, submit)
        finally:
            await monitor.stop()
    asyncio.run(main())


async def rounds(monitor: IntrospectiveMonitor, n: int) -> None:
    for _ in range(n):
        await monitor.check_round()
    while monitor.outbox.depth or monitor.outbox.in_flight:
        await asyncio.sleep(0)


def test_three_failures_in_a_row_send_one_masakari_notification():
    source = FakeSource(A, B)

    async def test(monitor, submit):
        await rounds(monitor, 1)  # both answer: healthy
        source.answers[A] = RuntimeError("guest agent is not responding")
        await rounds(monitor, 2)
        assert submit.submitted == [] and monitor.pings.failures(A) == 2
        await rounds(monitor, 3)
        assert len(submit.submitted) == 1
        note = submit.submitted[0]
        assert note["type"] == "VM" and note["hostname"] == "compute-1"
        assert note["payload"] == {"instance_uuid": A, "vir_domain_event": "STOPPED_FAILED",
                                   "event": "QEMU_GUEST_AGENT_ERROR"}
        assert check_payload("VM", note["payload"]) == note["payload"]
        assert monitor.pings.state(B) is GuestState.HEALTHY
        assert monitor.ping_failures == 5 and monitor.guests_reported == 1
        status = monitor.status()
        assert status["guests"] == {"discovery": 0, "healthy": 1, "failing": 0, "reported": 1}
        assert status["pings"] == 12 and status["notifications_committed"] == 1

    run(test, source, failures=3)


def test_an_answer_resets_the_count_so_failures_must_be_in_a_row():
    source = FakeSource(A)

    async def test(monitor, submit):
        await rounds(monitor, 1)
        for _ in range(5):
            source.answers[A] = RuntimeError("timeout")
            await rounds(monitor, 2)
            source.answers[A] = True
            await rounds(monitor, 1)
        assert submit.submitted == [] and monitor.ping_failures == 10
        assert monitor.pings.failures(A) == 0

    run(test, source, failures=3)


def test_a_guest_that_never_answered_is_not_reported():
    source = FakeSource(A)
    source.answers[A] = RuntimeError("agent not installed")

    async def test(monitor, submit):
        await rounds(monitor, 6)
        assert submit.submitted == [] and monitor.pings.state(A) is GuestState.DISCOVERY

    run(test, source, failures=3)


def test_a_hung_agent_does_not_delay_the_other_guests():
    source = FakeSource(A, B, C, D)
    release = threading.Event()
    timeout = 0.3

    async def test(monitor, submit):
        await rounds(monitor, 1)
        source.answers[A] = release  # A's agent hangs: its ping blocks until released
        source.calls.clear()
        started = time.monotonic()
        await rounds(monitor, 1)
        took = time.monotonic() - started
        ended = {u: t - started for u, t in source.calls}
        # B, C and D were pinged (2 slots: one held by A) and answered long before A's
        # ping was judged at the timeout; the round ended at A's timeout, not later.
        assert set(ended) == {B, C, D}
        assert max(ended.values()) < timeout
        assert took >= timeout
        assert monitor.pings.failures(A) == 1 and monitor.status()["pings_hung"] == 1
        # Next rounds: A is not pinged again while its call hangs, but counts as failing;
        # the others go on with the one slot left.
        source.calls.clear()
        await rounds(monitor, 2)
        assert sorted(u for u, _ in source.calls) == sorted([B, C, D] * 2)
        assert len(submit.submitted) == 1 and submit.submitted[0]["payload"]["instance_uuid"] == A
        release.set()
        while monitor.status()["pings_hung"]:
            await asyncio.sleep(0.01)
        source.answers[A] = True
        await rounds(monitor, 1)
        assert monitor.pings.state(A) is GuestState.HEALTHY

    try:
        run(test, source, failures=3, timeout=timeout, concurrency=2)
    finally:
        release.set()


def test_a_failed_listing_judges_no_guest():
    source = FakeSource(A)

    async def test(monitor, submit):
        await rounds(monitor, 1)
        source.list_error = RuntimeError("libvirtd is not running")
        await rounds(monitor, 5)
        assert monitor.list_errors == 5 and monitor.ping_failures == 0
        assert monitor.pings.state(A) is GuestState.HEALTHY
        source.list_error = None
        await rounds(monitor, 1)
        assert monitor.pings_sent == 2

    run(test, source)


def test_stop_closes_the_source():
    source = FakeSource(A)
    run(lambda monitor, submit: rounds(monitor, 1), source)
    assert source.closed


@pytest.mark.parametrize("enabled", [True, False])
def test_build_follows_the_config(tmp_path, enabled):
    config = loads_config(
        f'[node]\nname = "compute-1"\nstate_dir = "{tmp_path}"\n'
        f'[raft]\nvoters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]\n'
        f'bind = "10.0.0.1:7170"\n'
        f'[monitors]\nintrospective_enabled = {str(enabled).lower()}\n'
        f'libvirt_uri = "test:///default"\nintrospective_interval = 5.0\n'
        f'introspective_timeout = 1.0\nintrospective_failures = 4\n'
        f'introspective_concurrency = 3\n')
    context = MonitorContext("compute-1", Recorder(), tmp_path)
    monitor = introspective.build(config.monitors, context)
    if not enabled:
        assert monitor is None
        return
    assert (monitor.interval, monitor.timeout, monitor.pings.threshold, monitor.concurrency) \
        == (5.0, 1.0, 4, 3)
    assert monitor.source.uri == "test:///default"


def test_both_libvirt_monitors_status_is_exported_as_metrics():
    source = FakeSource(A, B)
    statuses = {}

    async def test(monitor, submit):
        await rounds(monitor, 1)
        statuses["introspective"] = monitor.status()

    run(test, source)
    statuses["instance"] = InstanceMonitor(
        "test:///default", Outbox(Recorder(), hostname="h", size=2)).status()
    families = {f.name: f for f in monitor_metrics(statuses)}
    guests = {s.labels["state"]: s.value for s in families["hagent_monitor_guests"].samples}
    assert guests == {"discovery": 0.0, "failing": 0.0, "healthy": 2.0, "reported": 0.0}
    assert [(s.labels["monitor"], s.value) for s in families["hagent_monitor_pings"].samples
            if s.name.endswith("_total")] == [("introspective", 2.0)]
    assert [(s.labels["monitor"], s.value)
            for s in families["hagent_monitor_connected"].samples] == [("instance", 0.0)]
    assert "hagent_monitor_disconnected_seconds" in families
