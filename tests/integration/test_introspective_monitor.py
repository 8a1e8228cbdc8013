"""The introspective monitor's libvirt side against the test driver (in-process).

The test driver keeps a domain's guest agent channel in its XML but has no guest agent, so
``LibvirtGuests`` is given a stand-in ping; what is real here is finding the guests (running
domains with the channel, a new domain ID after a restart) and the whole path from a ping
verdict to a committed VM notification. The real ``qemu_agent_ping`` is checked to fail
cleanly against a driver without agent support.
"""
from __future__ import annotations

import asyncio
import threading
import uuid

import libvirt
import pytest

from hagent.monitors.base import Outbox
from hagent.monitors.introspective import (AGENT_CHANNEL, IntrospectiveMonitor, LibvirtGuests,
                                           qemu_agent_ping)
from tests.integration.test_instance_monitor import HOST, registered_node, vm_notifications

URI = "test:///default"


def define(conn: libvirt.virConnect, agent: bool) -> libvirt.virDomain:
    dom_uuid = str(uuid.uuid4())
    channel = (f"<channel type='unix'><source mode='bind' path='/tmp/{dom_uuid}.sock'/>"
               f"<target type='virtio' name='{AGENT_CHANNEL}'/></channel>") if agent else ""
    return conn.defineXML(
        f"<domain type='test'><name>ga-{dom_uuid[:8]}</name><uuid>{dom_uuid}</uuid>"
        f"<memory>8192</memory><os><type>hvm</type></os><devices>{channel}</devices></domain>")


class Domains:
    """Test-driver domains this test defines, destroyed and undefined at the end."""

    def __init__(self) -> None:
        self.conn = libvirt.open(URI)
        self.defined: list[libvirt.virDomain] = []

    def define(self, agent: bool) -> libvirt.virDomain:
        self.defined.append(define(self.conn, agent))
        return self.defined[-1]

    def close(self) -> None:
        for dom in self.defined:
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass
        self.conn.close()


@pytest.fixture
def domains():
    made = Domains()
    try:
        yield made
    finally:
        made.close()


def ours(guests, *doms) -> list[tuple[str, int]]:
    wanted = {d.UUIDString() for d in doms}
    return sorted((g.uuid, g.generation) for g in guests if g.uuid in wanted)


def test_guests_are_the_running_domains_with_an_agent_channel(domains):
    with_agent, without, paused, stopped = (domains.define(a) for a in (True, False, True, True))
    for dom in (with_agent, without, paused):
        dom.create()
    paused.suspend()
    source = LibvirtGuests(URI, ping=lambda dom, timeout: None)
    try:
        assert ours(source.guests(), with_agent, without, paused, stopped) == [
            (with_agent.UUIDString(), with_agent.ID())]
        first_id = with_agent.ID()
        with_agent.destroy()
        with_agent.create()  # started again: a new domain ID, a new generation
        paused.resume()
        guests = ours(source.guests(), with_agent, paused)
        assert sorted(guests) == sorted([(with_agent.UUIDString(), with_agent.ID()),
                                         (paused.UUIDString(), paused.ID())])
        assert with_agent.ID() != first_id
    finally:
        source.close()


def test_the_real_agent_ping_fails_cleanly_without_an_agent(domains):
    dom = domains.define(True)
    dom.create()
    with pytest.raises(libvirt.libvirtError, match="not supported"):
        qemu_agent_ping(dom, 1.0)


def test_a_guest_whose_agent_stops_answering_is_reported_through_the_log(domains):
    node = registered_node()
    sick, well = domains.define(True), domains.define(True)
    sick.create()
    well.create()
    sick_uuid = sick.UUIDString()
    failing = threading.Event()

    def ping(dom, timeout):
        if failing.is_set() and dom.UUIDString() == sick_uuid:
            raise libvirt.libvirtError("Guest agent is not responding")

    async def main():
        monitor = IntrospectiveMonitor(
            LibvirtGuests(URI, ping=ping),
            Outbox(node.submit_notification, hostname=HOST, size=8, name="introspective"),
            interval=10.0, timeout=1.0, failures=3)
        await monitor.start()
        monitor._loop_task.cancel()  # the test drives the rounds
        try:
            await monitor.check_round()
            failing.set()
            for _ in range(4):
                await monitor.check_round()
            while monitor.outbox.depth or monitor.outbox.in_flight:
                await asyncio.sleep(0.01)
            return monitor.status()
        finally:
            await monitor.stop()

    status = asyncio.run(main())
    assert vm_notifications(node) == [(sick_uuid, "QEMU_GUEST_AGENT_ERROR", "STOPPED_FAILED",
                                       "new")]
    assert status["guests_reported"] == 1 and status["notifications_committed"] == 1
    assert status["ping_failures"] == 4
