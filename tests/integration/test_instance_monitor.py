"""The instance monitor against libvirt's test driver: in-process and through a real libvirtd.

Each test acts on domains through its own read-write connection (define, start, suspend,
resume, destroy, shut down, undefine) and checks what the monitor, on its own read-only
connection, reported. Notifications go through ``tests/fakes.FakeNode``'s submit, i.e. the
real state machine: a payload Masakari's schema refuses would fail the test. The test
driver produces the lifecycle events STOPPED_DESTROYED and STOPPED_SHUTDOWN of the table
(and the filtered DEFINED, STARTED, SUSPENDED_PAUSED, RESUMED, STOPPED_SAVED, UNDEFINED);
the others are covered by tests/unit/test_monitor_eventfilter.py and, for STOPPED_FAILED
and REBOOT, by test_instance_monitor_qemu.py.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import textwrap
import time
import uuid

import libvirt
import pytest

from hagent.config import loads_config
from hagent.monitors import instance
from hagent.monitors.base import Outbox
from hagent.monitors.instance import InstanceMonitor
from hagent.monitors.runner import Monitors
from tests.fakes import FakeNode
from tests.integration.libvirt_daemons import TestDriverLibvirtd
from tests.unit.test_state_support import host_create, ok, segment_create

HOST = "compute-01"


def registered_node() -> FakeNode:
    node = FakeNode(HOST)
    node.read(lambda state: ok(state, segment_create()))
    node.read(lambda state: ok(state, host_create(HOST)))
    return node


def vm_notifications(node: FakeNode) -> list[tuple[str, str, str, str]]:
    stored = node.read(lambda state: state.list_notifications())
    return [(n["payload"]["instance_uuid"], n["payload"]["event"],
             n["payload"]["vir_domain_event"], n["status"])
            for n in sorted(stored, key=lambda n: n["generated_time"]) if n["type"] == "VM"]


def domain_xml(name: str, dom_uuid: str) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{dom_uuid}</uuid>"
            f"<memory>8192</memory><os><type>hvm</type></os></domain>")


def new_domain(conn: libvirt.virConnect) -> libvirt.virDomain:
    dom_uuid = str(uuid.uuid4())
    return conn.defineXML(domain_xml(f"im-{dom_uuid[:8]}", dom_uuid))


async def until(predicate, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.01)


def monitor_for(uri: str, submit, **kw) -> InstanceMonitor:
    return InstanceMonitor(uri, Outbox(submit, hostname=HOST, size=64, name="instance"),
                           **{"reconnect_min": 0.1, "reconnect_max": 0.4, **kw})


def answered(monitor: InstanceMonitor) -> int:
    return monitor.outbox.submitted + monitor.outbox.failed


# ---- in-process test:///default ----------------------------------------------------------

def test_test_driver_events_give_the_tables_payloads_committed_by_the_log():
    node = registered_node()

    async def main():
        monitor = monitor_for("test:///default", node.submit_notification)
        await monitor.start()
        try:
            def act():
                conn = libvirt.open("test:///default")
                try:
                    dom = new_domain(conn)                 # DEFINED (filtered)
                    dom.create()                           # STARTED_BOOTED (filtered)
                    dom.suspend()                          # SUSPENDED_PAUSED (filtered)
                    dom.resume()                           # RESUMED (filtered)
                    dom.destroy()                          # STOPPED_DESTROYED
                    dom.create()                           # STARTED_BOOTED (filtered)
                    dom.shutdown()                         # STOPPED_SHUTDOWN
                    dom.create()                           # STARTED_BOOTED (filtered)
                    dom.managedSave(0)                     # STOPPED_SAVED (filtered)
                    dom.managedSaveRemove(0)
                    dom.undefine()                         # UNDEFINED (filtered)
                    return dom.UUIDString()
                finally:
                    conn.close()

            dom_uuid = await asyncio.to_thread(act)
            await until(lambda: monitor.events_seen == 10, "10 events seen")
            await until(lambda: answered(monitor) == 2, "2 notifications answered")
            status = monitor.status()
        finally:
            await monitor.stop()
        return dom_uuid, status

    dom_uuid, status = asyncio.run(main())
    assert vm_notifications(node) == [
        (dom_uuid, "LIFECYCLE", "STOPPED_DESTROYED", "new"),
        (dom_uuid, "LIFECYCLE", "STOPPED_SHUTDOWN", "new")]
    assert (status["events_seen"], status["events_filtered"], status["events_reported"]) \
        == (10, 8, 2)
    assert status["notifications_committed"] == 2 and status["connected"] is True
    assert status["disconnects"] == 0 and status["disconnected_seconds"] == 0


def test_monitors_from_config_run_the_instance_monitor(tmp_path):
    config = loads_config(textwrap.dedent(f"""
        [node]
        name = "{HOST}"
        state_dir = "{tmp_path}"
        [raft]
        voters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]
        bind = "10.0.0.1:7170"
        [monitors]
        instance_enabled = true
        libvirt_uri = "test:///default"
        instance_queue_size = 5
        """))
    node = registered_node()

    async def main():
        monitors = Monitors.from_config(config, node.submit_notification)
        assert [m.name for m in monitors.monitors] == ["instance"]
        await monitors.start()
        try:
            def act():
                conn = libvirt.open("test:///default")
                try:
                    dom = new_domain(conn)
                    dom.create()
                    dom.destroy()
                    dom.undefine()
                finally:
                    conn.close()

            await asyncio.to_thread(act)
            await until(lambda: monitors.status()["instance"]["notifications_committed"] == 1,
                        "the destroy committed")
            return monitors.status()["instance"]
        finally:
            await monitors.stop()

    status = asyncio.run(main())
    assert status["queue_size"] == 5 and status["uri"] == "test:///default"
    assert [n[2] for n in vm_notifications(node)] == ["STOPPED_DESTROYED"]


# ---- a libvirtd the test starts ----------------------------------------------------------

@pytest.fixture
def libvirtd():
    daemon = TestDriverLibvirtd()
    try:
        yield daemon
    finally:
        daemon.cleanup()


def destroy_one(uri: str) -> str:
    """Define, start and destroy a domain through libvirtd; its uuid."""
    conn = libvirt.open(uri)
    try:
        dom = new_domain(conn)
        dom.create()
        dom.destroy()
        dom.undefine()
        return dom.UUIDString()
    finally:
        conn.close()


@pytest.mark.xdist_group("lab")
def test_a_killed_libvirtd_is_reconnected_and_the_gap_reported(libvirtd, caplog):
    node = registered_node()
    caplog.set_level(logging.INFO, logger="hagent.monitors.instance")

    async def main():
        libvirtd.start()
        monitor = monitor_for(libvirtd.uri, node.submit_notification)
        await monitor.start()
        try:
            before = await asyncio.to_thread(destroy_one, libvirtd.uri)
            await until(lambda: answered(monitor) == 1, "the first destroy reported")

            killed = time.monotonic()
            await asyncio.to_thread(libvirtd.kill)
            await until(lambda: not monitor.status()["connected"], "the loss noticed")
            down = monitor.status()
            assert down["disconnects"] == 1 and down["disconnected_since"] is not None
            assert down["running"] is True
            await until(lambda: monitor.connect_failures >= 2, "reconnection attempts")

            await asyncio.to_thread(libvirtd.start)
            await until(lambda: monitor.status()["connected"], "reconnected")
            back_after = time.monotonic() - killed
            after = await asyncio.to_thread(destroy_one, libvirtd.uri)
            await until(lambda: answered(monitor) == 2, "the destroy after the restart")
            return before, after, down, monitor.status(), back_after
        finally:
            await monitor.stop()

    before, after, down, status, back_after = asyncio.run(main())
    assert vm_notifications(node) == [(before, "LIFECYCLE", "STOPPED_DESTROYED", "new"),
                                      (after, "LIFECYCLE", "STOPPED_DESTROYED", "new")]
    assert status["reconnects"] == 1 and status["disconnects"] == 1
    assert status["disconnected_since"] is None
    assert 0 < status["disconnected_seconds"] <= back_after
    messages = [r.getMessage() for r in caplog.records]
    assert any("lost (end of file" in m for m in messages)
    assert any("back after" in m and down["disconnected_since"] in m for m in messages)


@pytest.mark.xdist_group("lab")
def test_a_monitor_started_before_libvirtd_connects_once_it_runs(libvirtd):
    node = registered_node()

    async def main():
        monitor = monitor_for(libvirtd.uri, node.submit_notification)
        await monitor.start()  # nothing listens yet: start must not fail
        try:
            status = monitor.status()
            assert status["connected"] is False and status["disconnected_since"] is not None
            assert status["connect_failures"] == 1 and status["running"] is True
            await asyncio.to_thread(libvirtd.start)
            await until(lambda: monitor.status()["connected"], "connected once libvirtd runs")
            dom_uuid = await asyncio.to_thread(destroy_one, libvirtd.uri)
            await until(lambda: answered(monitor) == 1, "the destroy reported")
            return dom_uuid, monitor.status()
        finally:
            await monitor.stop()

    dom_uuid, status = asyncio.run(main())
    assert vm_notifications(node) == [(dom_uuid, "LIFECYCLE", "STOPPED_DESTROYED", "new")]
    assert status["reconnects"] == 1 and status["disconnects"] == 0
    assert status["disconnected_seconds"] > 0


@pytest.mark.xdist_group("lab")
def test_a_hung_libvirtd_is_noticed_by_keepalive_and_reconnected(libvirtd, caplog,
                                                                 monkeypatch):
    # Keepalive every 1 s, dead after 1 unanswered probe: the same path as the shipped
    # 5 s x 3, in a few seconds.
    monkeypatch.setattr(instance, "KEEPALIVE_INTERVAL", 1)
    monkeypatch.setattr(instance, "KEEPALIVE_COUNT", 1)
    node = registered_node()
    caplog.set_level(logging.INFO, logger="hagent.monitors.instance")

    async def main():
        libvirtd.start()
        monitor = monitor_for(libvirtd.uri, node.submit_notification)
        await monitor.start()
        try:
            await asyncio.to_thread(destroy_one, libvirtd.uri)
            await until(lambda: answered(monitor) == 1, "the first destroy reported")
            os.kill(libvirtd.proc.pid, signal.SIGSTOP)
            try:
                await until(lambda: not monitor.status()["connected"], "keepalive timeout")
            finally:
                os.kill(libvirtd.proc.pid, signal.SIGCONT)
            await until(lambda: monitor.status()["connected"], "reconnected")
            await asyncio.to_thread(destroy_one, libvirtd.uri)
            await until(lambda: answered(monitor) == 2, "the destroy after the pause")
            return monitor.status()
        finally:
            await monitor.stop()

    status = asyncio.run(main())
    assert [n[2] for n in vm_notifications(node)] == ["STOPPED_DESTROYED"] * 2
    assert status["disconnects"] == 1 and status["reconnects"] == 1
    assert any("lost (keepalive timeout" in r.getMessage() for r in caplog.records)


def test_reconnection_attempts_back_off_up_to_the_maximum():
    attempts: list[float] = []

    def refuse(uri):
        attempts.append(time.monotonic())
        raise libvirt.libvirtError(f"Failed to connect socket to {uri}: Connection refused")

    async def main():
        monitor = InstanceMonitor("test+unix:///default?socket=/nonexistent",
                                  Outbox(FakeNode(HOST).submit_notification, hostname=HOST,
                                         size=4),
                                  reconnect_min=0.05, reconnect_max=0.2, open_connection=refuse)
        await monitor.start()
        try:
            await until(lambda: len(attempts) >= 6, "6 attempts")
        finally:
            await monitor.stop()
        return monitor.status()

    status = asyncio.run(main())
    waits = [b - a for a, b in zip(attempts, attempts[1:])][:5]
    for wait, expected in zip(waits, (0.05, 0.1, 0.2, 0.2, 0.2)):
        assert wait >= expected
    assert status["connect_failures"] >= 6 and status["connected"] is False
