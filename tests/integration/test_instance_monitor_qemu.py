"""The instance monitor against real QEMU: kill -9 of a guest's emulator is reported.

A session libvirtd with the QEMU driver, private to this test (``SessionQemuLibvirtd``:
run as ``nobody`` with its directories in a fresh temp dir), starts a 32 MiB guest under
TCG with no disk (it sits in the BIOS; nothing needs to boot). The monitor, on its own
read-only connection, must turn:

- a reset of the guest into ``REBOOT`` / ``UNKNOWN``;
- SIGKILL of the guest's QEMU process into ``LIFECYCLE`` / ``STOPPED_FAILED``, the event
  Masakari's engine recovers an instance for (often preceded by ``CONTROL_ERROR`` /
  ``UNKNOWN``: libvirt lost its QEMU monitor socket);

and both must be committed by the (in-process) state machine. A second test sends the
introspective monitor's ``guest-ping`` to a real guest without an agent. Needs the Debian
packages libvirt-daemon, libvirt-daemon-driver-qemu and qemu-system-x86; about 8 s.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import libvirt
import pytest

from hagent.monitors.introspective import AGENT_CHANNEL, LibvirtGuests
from tests.integration.libvirt_daemons import SessionQemuLibvirtd
from tests.integration.test_instance_monitor import (answered, monitor_for, registered_node,
                                                     until, vm_notifications)


def guest_xml(name: str, dom_uuid: str, agent: bool = False) -> str:
    channel = (f"<channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/>"
               "</channel>") if agent else ""
    return (f"<domain type='qemu'><name>{name}</name><uuid>{dom_uuid}</uuid>"
            "<memory unit='MiB'>32</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"{channel}</devices></domain>")


@pytest.fixture
def qemu_libvirtd():
    daemon = SessionQemuLibvirtd()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.mark.xdist_group("lab")
def test_kill_9_of_qemu_is_reported_stopped_failed_and_committed(qemu_libvirtd):
    node = registered_node()
    name = f"hq-{uuid.uuid4().hex[:8]}"
    dom_uuid = str(uuid.uuid4())

    async def main():
        monitor = monitor_for(qemu_libvirtd.uri, node.submit_notification)
        await monitor.start()
        conn = await asyncio.to_thread(libvirt.open, qemu_libvirtd.uri)
        try:
            try:
                dom = await asyncio.to_thread(conn.createXML, guest_xml(name, dom_uuid), 0)
            except libvirt.libvirtError as exc:
                raise AssertionError(f"QEMU guest did not start: {exc}\n"
                                     f"{qemu_libvirtd.domain_log(name)}") from exc
            await until(lambda: monitor.events_seen >= 2, "the start events")  # filtered
            assert answered(monitor) == 0

            await asyncio.to_thread(dom.reset, 0)
            await until(lambda: answered(monitor) >= 1, "the reset reported")

            reported = answered(monitor)
            pid = qemu_libvirtd.qemu_pid(name)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            await until(lambda: any(n[2] == "STOPPED_FAILED" for n in vm_notifications(node)),
                        "STOPPED_FAILED committed", timeout=60)
            took = time.monotonic() - killed
            await until(lambda: monitor.outbox.in_flight == 0, "the submits answered")
            return reported, took, monitor.status()
        finally:
            await asyncio.to_thread(conn.close)
            await monitor.stop()

    reported, took, status = asyncio.run(main())
    stored = vm_notifications(node)
    reboots = [n for n in stored if n[1] == "REBOOT"]
    assert len(reboots) == reported >= 1  # QEMU may report the BIOS's own reset too
    assert reboots[0] == (dom_uuid, "REBOOT", "UNKNOWN", "new")
    # libvirt may first report the lost QEMU monitor socket (CONTROL_ERROR), which the
    # table reports too; then the guest stopped, failed.
    after_kill = stored[reported:]
    assert after_kill[-1] == (dom_uuid, "LIFECYCLE", "STOPPED_FAILED", "new")
    assert set(after_kill[:-1]) <= {(dom_uuid, "CONTROL_ERROR", "UNKNOWN", "new")}
    assert status["notifications_failed"] == 0 and status["disconnects"] == 0
    print(f"kill -9 -> STOPPED_FAILED committed in {took:.2f} s")


@pytest.mark.xdist_group("lab")
def test_the_guest_agent_ping_reaches_qemu_and_fails_without_an_agent(qemu_libvirtd):
    """The introspective monitor's libvirt path on real QEMU: the guest with a channel is
    found, ``guest-ping`` goes through qemuAgentCommand on a read-write connection and,
    with no agent inside the guest, fails within the timeout (a failed ping, not a hang)."""
    conn = libvirt.open(qemu_libvirtd.uri)
    source = LibvirtGuests(qemu_libvirtd.uri)
    try:
        with_agent = conn.createXML(guest_xml(f"ha-{uuid.uuid4().hex[:8]}",
                                              str(uuid.uuid4()), agent=True), 0)
        without = conn.createXML(guest_xml(f"hn-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())), 0)
        guests = source.guests()
        assert [(g.uuid, g.generation) for g in guests] == [
            (with_agent.UUIDString(), with_agent.ID())]
        started = time.monotonic()
        with pytest.raises(libvirt.libvirtError, match="[Gg]uest agent"):
            source.ping(guests[0], 1.0)
        assert time.monotonic() - started < 5.0
        without.destroy()
        with_agent.destroy()
    finally:
        source.close()
        conn.close()
