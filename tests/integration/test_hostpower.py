"""The lab's simulated host power switch (a real hostpower process): an armed deadline that
passes powers the host off (recorded with its CLOCK_MONOTONIC time, the registered agent
SIGKILLed, instances gone); disarm is the magic close; the lab powers hosts off and on; the
lab watchdog driver and the lease service drive it."""
from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from hagent.fencing.service import LeaseService
from hagent.fencing.watchdog import LabWatchdog
from hagent.lab import hostpower

from lease_helpers import FakeLog, PowerSwitch, agent_config, async_wait_for, start_child, wait_for

pytestmark = pytest.mark.xdist_group("lab")


@pytest.fixture
def switch(tmp_path: Path):
    power = PowerSwitch(tmp_path)
    yield power
    power.stop()


@pytest.fixture
def child():
    proc = start_child()
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5.0)


def state(switch: PowerSwitch) -> dict:
    return json.loads(switch.state_file.read_text())


def test_an_expired_deadline_powers_the_host_off_and_kills_the_agent(switch, child):
    switch.call({"cmd": "register", "pid": child.pid})
    switch.call({"cmd": "instances", "running": ["vm-1", "vm-2"]})
    deadline = time.monotonic() + 0.3
    switch.call({"cmd": "arm", "deadline": deadline})
    off = wait_for(lambda: (s := state(switch))["on"] is False and s, 10.0, "the power-off")
    assert off["reason"] == "watchdog"
    assert deadline <= off["off_at_monotonic"] < deadline + 1.0
    assert off["instances"] == [] and off["armed_deadline"] is None
    assert child.wait(5.0) == -signal.SIGKILL
    # A powered-off host runs nothing: no agent registers, nothing is armed, no VMs start.
    for request in ({"cmd": "register", "pid": child.pid}, {"cmd": "arm", "deadline": 1.0},
                    {"cmd": "instances", "running": ["vm-3"]}):
        with pytest.raises(hostpower.HostPowerError, match="powered off"):
            switch.call(request)
    boot_id = off["boot_id"]
    on = switch.call({"cmd": "power", "action": "on"})
    assert on["on"] is True and on["boot"] == 2 and on["boot_id"] != boot_id
    assert on["off_at_monotonic"] is None


def test_disarm_is_the_magic_close(switch, child):
    switch.call({"cmd": "register", "pid": child.pid})
    deadline = time.monotonic() + 0.3
    switch.call({"cmd": "arm", "deadline": deadline})
    switch.call({"cmd": "disarm"})
    # The assertion is that nothing happens: watch until well past the old deadline.
    while time.monotonic() < deadline + 0.5:
        assert switch.status()["on"] is True
        time.sleep(0.05)
    assert child.poll() is None
    assert state(switch)["armed_deadline"] is None


def test_the_lab_powers_a_host_off(switch, child):
    switch.call({"cmd": "register", "pid": child.pid})
    answer = switch.call({"cmd": "power", "action": "off"})
    assert answer["on"] is False and answer["reason"] == "lab"
    assert child.wait(5.0) == -signal.SIGKILL
    assert state(switch)["reason"] == "lab"


def test_bad_requests_are_refused_and_the_switch_keeps_serving(switch):
    for request in ({"cmd": "arm", "deadline": "soon"}, {"cmd": "register", "pid": -1},
                    {"cmd": "power", "action": "reboot"}, {"cmd": "jump"}):
        with pytest.raises(hostpower.HostPowerError, match="refused"):
            switch.call(request)
    assert switch.status()["on"] is True


def test_the_state_survives_a_restart_of_the_switch(tmp_path, switch, child):
    switch.call({"cmd": "register", "pid": child.pid})
    switch.call({"cmd": "power", "action": "off"})
    switch.stop()
    again = PowerSwitch(tmp_path)
    try:
        assert again.status()["on"] is False
    finally:
        again.stop()


def test_lab_driver_close_disarms_and_abandon_lets_the_deadline_fire(switch, child):
    driver = LabWatchdog(switch.socket, pid=child.pid)
    driver.open()
    assert driver.boot_id() == switch.status()["boot_id"]
    driver.arm(time.monotonic() + 60.0)
    driver.close()
    assert switch.status()["armed_deadline"] is None

    driver = LabWatchdog(switch.socket, pid=child.pid)
    driver.open()
    deadline = time.monotonic() + 0.3
    assert driver.arm(deadline) == deadline
    driver.abandon()
    off = wait_for(lambda: (s := state(switch))["on"] is False and s, 10.0, "the power-off")
    assert off["off_at_monotonic"] >= deadline
    assert child.wait(5.0) == -signal.SIGKILL


def test_lease_service_with_the_lab_driver_powers_off_a_host_cut_off_from_the_log(
        tmp_path, switch, child):
    """Renewals commit, then the log stops answering: the switch powers the host off no
    earlier than the deadline (sent time of the latest committed renewal + lease_ttl -
    safety_margin) and kills the 'agent'."""
    ttl, margin, interval = 3.0, 1.0, 0.5
    log = FakeLog()

    async def main():
        config = agent_config(tmp_path, lease_ttl=ttl, safety_margin=margin, renew_interval=interval,
                              watchdog_driver="lab", lab_power_socket=str(switch.socket))
        driver = LabWatchdog(switch.socket, pid=child.pid)
        driver.open()
        service = LeaseService(config, log, "cn1", watchdog=driver)
        await service.start()
        await async_wait_for(lambda: (service.keeper.committed_seq or 0) >= 2, 10.0, "2 commits")
        armed = switch.status()["armed_deadline"]
        assert armed == service.keeper.deadline
        log.commit = False
        await async_wait_for(lambda: service.self_fenced, 10.0, "the self-fence")
        await service.stop()
        return service.keeper

    keeper = asyncio.run(main())
    off = wait_for(lambda: (s := state(switch))["on"] is False and s, 10.0, "the power-off")
    assert keeper.deadline == pytest.approx(keeper.committed_sent_at + ttl - margin)
    assert keeper.deadline <= off["off_at_monotonic"] < keeper.deadline + 1.0
    assert off["reason"] == "watchdog"
    assert child.wait(5.0) == -signal.SIGKILL


def test_lease_service_clean_stop_leaves_the_host_running(tmp_path, switch, child):
    log = FakeLog()

    async def main():
        config = agent_config(tmp_path, lease_ttl=3.0, safety_margin=1.0, renew_interval=0.5,
                              watchdog_driver="lab", lab_power_socket=str(switch.socket))
        driver = LabWatchdog(switch.socket, pid=child.pid)
        driver.open()
        service = LeaseService(config, log, "cn1", watchdog=driver)
        await service.start()
        await async_wait_for(lambda: service.keeper.committed_seq, 10.0, "a commit")
        await service.stop()
        return service.keeper.deadline

    deadline = asyncio.run(main())
    assert switch.status()["armed_deadline"] is None
    while time.monotonic() < deadline + 0.3:  # nothing happens after the old deadline
        assert switch.status()["on"] is True
        time.sleep(0.05)
    assert child.poll() is None
