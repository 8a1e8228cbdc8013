"""FenceDriver.power_off's loop against a scripted driver: what counts as confirmed, when it
asks again, when it gives up, and that a driver overrunning its timeout cannot hold the caller."""
import asyncio

import pytest

from hagent.fencing import external
from hagent.fencing.external import (FenceAuthError, FenceDriver, FenceProtocolError,
                                     FenceTimeout, FenceUnreachable)


class Scripted(FenceDriver):
    """Answers reads and requests from lists; the last read repeats forever."""

    def __init__(self, reads, requests=(None,), power_off_timeout=0.5, timeout=0.2):
        super().__init__(host="compute-1", bmc="test://bmc", timeout=timeout,
                         power_off_timeout=power_off_timeout, poll_interval=0.001)
        self.reads, self.requests = list(reads), list(requests)
        self.read_count = self.request_count = 0

    async def _read_state(self, timeout):
        self.read_count += 1
        answer = self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _request_off(self, timeout):
        self.request_count += 1
        answer = self.requests.pop(0) if len(self.requests) > 1 else self.requests[0]
        if isinstance(answer, Exception):
            raise answer


def err(kind, problem="boom"):
    return kind("compute-1", "test://bmc", problem, "fix it")


def test_confirmed_only_when_a_read_says_off():
    driver = Scripted(["on", "on", "unknown", "off"])
    result = asyncio.run(driver.power_off())
    assert result.confirmed and result.state == "off" and result.error is None
    assert driver.request_count == 1 and driver.read_count == 4


def test_a_host_already_off_gets_no_request():
    driver = Scripted(["off"])
    result = asyncio.run(driver.power_off())
    assert result.confirmed and "already off" in result.detail and driver.request_count == 0


def test_still_on_at_the_deadline_is_not_confirmed():
    driver = Scripted(["on"], power_off_timeout=0.1)
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and result.state == "on" and result.error is None
    assert "power-off request accepted" in result.detail
    assert "BMC still reports the host on" in result.detail
    assert driver.request_count == 1  # an accepted request is not repeated


def test_unknown_never_counts_as_off():
    result = asyncio.run(Scripted(["unknown"], power_off_timeout=0.1).power_off())
    assert not result.confirmed and result.state == "unknown"


def test_a_request_that_may_pass_is_sent_again():
    driver = Scripted(["on", "on", "on", "off"],
                      requests=[err(FenceUnreachable), err(FenceProtocolError), None])
    result = asyncio.run(driver.power_off())
    assert result.confirmed and driver.request_count == 3


def test_credentials_errors_end_the_attempt_at_once():
    driver = Scripted(["on"], requests=[err(FenceAuthError, "HTTP 401")], power_off_timeout=30)
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and isinstance(result.error, FenceAuthError)
    assert result.elapsed < 1.0 and driver.request_count == 1 and driver.read_count == 1
    assert "power-off request not accepted" in result.detail and "HTTP 401" in result.detail


def test_read_errors_are_retried_until_the_deadline():
    driver = Scripted([err(FenceUnreachable, "connection refused")], power_off_timeout=0.1)
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and result.state == "unknown"
    assert isinstance(result.error, FenceUnreachable) and driver.read_count > 1
    assert result.elapsed >= 0.1


def test_a_read_error_then_off_is_confirmed():
    driver = Scripted(["on", err(FenceTimeout), "off"])
    result = asyncio.run(driver.power_off())
    assert result.confirmed and result.error is None


def test_a_driver_that_overruns_its_timeout_cannot_hold_the_caller(monkeypatch):
    monkeypatch.setattr(external, "BACKSTOP_GRACE", 0.05)

    class Hangs(Scripted):
        async def _read_state(self, timeout):
            await asyncio.Event().wait()

    driver = Hangs(["on"], timeout=0.05, power_off_timeout=0.3)
    with pytest.raises(FenceTimeout, match="no answer within 0.05 s"):
        asyncio.run(driver.power_state())
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and isinstance(result.error, FenceTimeout)
    assert result.elapsed < 0.3 + 0.05 + 0.2


def test_power_state_raises_what_the_driver_raises():
    with pytest.raises(FenceAuthError, match="fencing host compute-1 through BMC test://bmc"):
        asyncio.run(Scripted([err(FenceAuthError)]).power_state())


def test_a_driver_bug_leaves_the_fence_unconfirmed_instead_of_raising():
    driver = Scripted([KeyError("PowerState")], power_off_timeout=0.05)
    with pytest.raises(FenceProtocolError, match="the driver failed: KeyError"):
        asyncio.run(driver.power_state())
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and isinstance(result.error, FenceProtocolError)
