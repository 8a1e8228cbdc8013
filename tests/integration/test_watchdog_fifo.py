"""The linux watchdog driver against a FIFO stand-in whose reader records every byte: the
timeout set at each arm, magic close on a clean stop and none on a self-fence; and the
lease service driving it (renewals, self-fence, restart after a crash)."""
from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import pytest

from hagent.fencing import leasefile
from hagent.fencing.service import LeaseService
from hagent.fencing.watchdog import LinuxWatchdog, linux_boot_id

from lease_helpers import FakeLog, FifoReader, agent_config, async_wait_for, wait_for


@pytest.fixture
def fifo(tmp_path: Path):
    reader = FifoReader(tmp_path / "watchdog")
    yield reader
    reader.close()


def opened(fifo: FifoReader, window: float = 10.0) -> LinuxWatchdog:
    driver = LinuxWatchdog(fifo.path, window=window)
    driver.open()
    return driver


def test_stand_in_is_announced_and_each_arm_sets_the_seconds_left(fifo, caplog):
    driver = opened(fifo)
    assert "FIFO" in caplog.text and "NOTHING will reset this host" in caplog.text
    deadline = time.monotonic() + 9.5
    fires = driver.arm(deadline)
    assert fires is not None and fires <= deadline + 0.01
    wait_for(lambda: fifo.timeouts() == [9], 5.0, "timeout=9")
    driver.close()
    assert fifo.eof.wait(5.0)
    assert fifo.data == b"timeout=9\nV"  # magic close: a clean stop does not reset the host


def test_self_fence_closes_without_the_magic_character(fifo):
    driver = opened(fifo)
    driver.arm(time.monotonic() + 5.5)
    driver.abandon()
    assert fifo.eof.wait(5.0)
    assert fifo.data == b"timeout=5\n"
    assert b"V" not in fifo.data


def test_under_a_second_left_keeps_an_arm_that_fires_in_time(fifo, caplog):
    driver = opened(fifo)
    driver.arm(time.monotonic() + 0.5)  # first arm, under a second left: 1 s, with a warning
    assert "fires up to" in caplog.text
    first_fires = driver.fires_at
    wait_for(lambda: time.monotonic() > first_fires - 0.9, 5.0, "0.1 s to pass")
    # Under a second left again, but the last arm fires before this deadline: keep it.
    assert driver.arm(first_fires + 0.05) == first_fires
    driver.close()
    assert fifo.eof.wait(5.0)
    assert fifo.data == b"timeout=1\nV"


# --- the lease service with the stand-in -------------------------------------------------------

TTL, MARGIN, INTERVAL = 3.0, 1.0, 0.5
WINDOW = TTL - MARGIN


def service_for(tmp_path: Path, fifo: FifoReader, log: FakeLog, **fencing) -> LeaseService:
    config = agent_config(tmp_path, lease_ttl=TTL, safety_margin=MARGIN, renew_interval=INTERVAL,
                          **fencing)
    return LeaseService(config, log, "cn1", watchdog=opened(fifo, WINDOW))


def test_renewals_keep_the_watchdog_armed_and_a_lost_log_fences_the_host(tmp_path, fifo, caplog):
    caplog.set_level(logging.INFO)
    log = FakeLog()

    async def main():
        service = service_for(tmp_path, fifo, log)
        await service.start()
        await async_wait_for(lambda: (service.keeper.committed_seq or 0) >= 3, 10.0, "3 commits")
        status = service.lease_status()
        assert status["seq"] >= 3 and 0 < status["deadline_in"] <= WINDOW
        log.commit = False
        await async_wait_for(lambda: service.self_fenced, 10.0, "the self-fence")
        fenced_at = time.monotonic()
        calls = len(log.calls)
        keeper = service.keeper
        await asyncio.sleep(3 * INTERVAL)  # the assertion: nothing is sent after a self-fence
        assert len(log.calls) == calls
        await service.stop()
        return keeper, fenced_at

    keeper, fenced_at = asyncio.run(main())
    # Fenced at the deadline: the sent time of the latest committed renewal + the window.
    assert keeper.deadline == pytest.approx(keeper.committed_sent_at + WINDOW)
    assert keeper.deadline <= fenced_at
    assert "self-fencing: no renewal committed for" in caplog.text
    assert fifo.eof.wait(5.0)
    assert b"V" not in fifo.data       # no magic close after a self-fence, not even at stop
    # Every arm's timeout ended by its deadline: the seconds left, rounded down.
    assert fifo.timeouts() and set(fifo.timeouts()) == {math.floor(WINDOW) - 1}
    assert not leasefile.load(tmp_path / "state" / "lease.json").clean_stop


def test_a_clean_stop_disarms_and_the_next_run_starts_fresh(tmp_path, fifo):
    log = FakeLog()

    async def main():
        service = service_for(tmp_path, fifo, log)
        await service.start()
        await async_wait_for(lambda: service.keeper.committed_seq, 10.0, "a commit")
        await service.stop()
        return service.keeper.highest_sent

    highest = asyncio.run(main())
    assert fifo.eof.wait(5.0)
    assert fifo.data.endswith(b"V")
    memory = leasefile.load(tmp_path / "state" / "lease.json")
    assert memory.clean_stop and memory.seq == highest


def test_a_restart_after_a_crash_does_not_extend_the_armed_deadline(tmp_path, fifo):
    """The previous run died with the watchdog armed until now + 1.5 s: the new run arms no
    later than that until one of its own renewals commits, and numbers on from its seq."""
    ttl, margin = 6.0, 1.0
    state = tmp_path / "state"
    state.mkdir()
    inherited = time.monotonic() + 1.5
    leasefile.save(state / "lease.json", leasefile.LeaseMemory(
        boot_id=linux_boot_id(), seq=41, deadline=inherited, clean_stop=False))
    log = FakeLog()
    log.commit = False

    async def main():
        config = agent_config(tmp_path, lease_ttl=ttl, safety_margin=margin, renew_interval=1.0)
        service = LeaseService(config, log, "cn1", watchdog=opened(fifo, ttl - margin))
        await service.start()
        assert service.keeper.deadline == inherited
        await async_wait_for(lambda: log.calls, 5.0, "the first renewal")
        first = log.calls[0][1]
        log.commit = True
        await async_wait_for(lambda: service.keeper.committed_seq, 5.0, "a commit")
        await service.stop()
        return first, service.keeper

    first, keeper = asyncio.run(main())
    assert first["hosts"] == {"cn1": 42}
    assert fifo.timeouts()[0] == 1                 # floor(1.5 s left), not the 5 s window
    assert keeper.deadline == pytest.approx(keeper.committed_sent_at + ttl - margin)
    assert max(fifo.timeouts()) >= 3               # after the commit: the full window again
