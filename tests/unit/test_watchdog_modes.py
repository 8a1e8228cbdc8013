"""Watchdog drivers without a device: Patroni's modes, refusals, the ioctl numbers and the
timeout arithmetic that keeps the device from firing after the self-fence deadline."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from hagent.config import FencingConfig
from hagent.fencing import watchdog as wd
from hagent.fencing.watchdog import (
    LabWatchdog, LinuxWatchdog, Watchdog, WatchdogError, WatchdogRequired, open_watchdog,
    settable_timeout,
)


def fencing(**kw) -> FencingConfig:
    return dataclasses.replace(FencingConfig(), **kw)


def test_ioctl_numbers_match_linux_watchdog_h():
    # Values from <linux/watchdog.h> on x86-64 (as `printf("%x", WDIOC_...)` prints them).
    assert wd.WDIOC_GETSUPPORT == 0x80285700
    assert wd.WDIOC_SETTIMEOUT == 0xC0045706
    assert wd.WDIOC_GETTIMEOUT == 0x80045707


@pytest.mark.parametrize("left, timeout", [(9.999, 9), (10.0, 10), (1.0, 1), (0.99, 0), (-3.0, 0),
                                           (1e9, 65535)])
def test_the_timeout_never_outlasts_the_deadline(left, timeout):
    assert settable_timeout(100.0 + left, 100.0) == timeout
    assert timeout <= max(left, 0)


def test_required_refuses_to_start_without_the_device(tmp_path: Path):
    with pytest.raises(WatchdogRequired, match="refuses to run without a working watchdog"):
        open_watchdog(fencing(watchdog_device=tmp_path / "missing"))


def test_automatic_runs_without_and_says_so(tmp_path: Path, caplog):
    driver = open_watchdog(fencing(watchdog_mode="automatic", watchdog_device=tmp_path / "missing"))
    assert type(driver) is Watchdog and not driver.active
    assert "running WITHOUT self-fencing" in caplog.text
    assert driver.arm(123.0) is None
    assert "cannot fence itself" in driver.describe()


def test_off_and_none_are_unsafe_and_none_needs_the_flag(caplog):
    off = open_watchdog(fencing(watchdog_mode="off", unsafe_no_fencing=True))
    assert not off.active
    none = open_watchdog(fencing(watchdog_driver="none", unsafe_no_fencing=True))
    assert not none.active
    assert caplog.text.count("UNSAFE") == 2
    with pytest.raises(WatchdogError, match="unsafe_no_fencing"):
        open_watchdog(fencing(watchdog_driver="none"))


def test_a_character_device_that_is_not_a_watchdog_is_refused():
    driver = LinuxWatchdog(Path("/dev/null"), window=10.0)
    with pytest.raises(WatchdogError, match="not a watchdog device"):
        driver.open()


def test_a_regular_file_is_refused(tmp_path: Path):
    path = tmp_path / "watchdog"
    path.write_text("")
    with pytest.raises(WatchdogError, match="not a character device"):
        LinuxWatchdog(path, window=10.0).open()


def test_a_fifo_without_a_reader_is_refused(tmp_path: Path):
    path = tmp_path / "watchdog"
    os.mkfifo(path)
    with pytest.raises(WatchdogError, match="no reader"):
        LinuxWatchdog(path, window=10.0).open()


def test_lab_driver_needs_a_socket_and_a_listening_switch(tmp_path: Path):
    with pytest.raises(WatchdogError, match="lab_power_socket"):
        LabWatchdog("").open()
    with pytest.raises(WatchdogRequired, match="hostpower process running"):
        open_watchdog(fencing(watchdog_driver="lab", lab_power_socket=str(tmp_path / "p.sock")))
