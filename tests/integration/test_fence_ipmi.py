"""The IPMI fence driver (ipmitool) against virtualbmc serving libvirt test-driver domains.

libvirt is the independent witness: after a confirmed fence the domain must be shut off
there, and after a failed one it must still run.
"""
import asyncio

import psutil
import pytest

from hagent.fencing.external import (BACKSTOP_GRACE, FenceAuthError, FenceConfigError,
                                     FenceTimeout, FenceUnreachable)
from hagent.fencing.factory import make_fence_driver
from tests.integration.fence_emulators import virtualbmc_lab, write_password

pytestmark = pytest.mark.xdist_group("lab")


@pytest.fixture(scope="module")
def ipmi_lab(tmp_path_factory):
    with virtualbmc_lab(tmp_path_factory.mktemp("ipmi-lab")) as lab:
        lab.add_host("compute-1")
        lab.add_host("compute-2", running=False)
        yield lab


@pytest.fixture
def lab(ipmi_lab):
    """The module's lab with compute-1 running and compute-2 off, both BMCs answering.

    Sharing one lab saves the ~1 s each vbmc add/start costs; libvirt resets power at once.
    """
    ipmi_lab.reset({"compute-1": "on", "compute-2": "off"})
    return ipmi_lab


def spec(lab, tmp_path, host="compute-1", **changes):
    bmc = lab.bmcs[host]
    base = {"driver": "ipmi", "address": "127.0.0.1", "port": bmc.port,
            "username": bmc.username,
            "password_file": str(write_password(tmp_path / f"{host}.pw", bmc.password)),
            "poll_interval": 0.25, "power_off_timeout": 10.0}
    base.update(changes)
    return base


def ipmitool_children():
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "ipmitool"]


def test_power_off_is_confirmed_and_the_domain_is_off(lab, tmp_path):
    driver = make_fence_driver(spec(lab, tmp_path), host="compute-1")
    assert lab.power_state("compute-1") == "on"
    result = asyncio.run(driver.power_off())
    assert result.confirmed and result.state == "off" and result.error is None, result
    assert lab.power_state("compute-1") == "off"
    assert result.elapsed < 10.0


def test_power_state_reports_on_and_off(lab, tmp_path):
    assert asyncio.run(make_fence_driver(spec(lab, tmp_path), host="compute-1")
                       .power_state()) == "on"
    assert asyncio.run(make_fence_driver(spec(lab, tmp_path, "compute-2"), host="compute-2")
                       .power_state()) == "off"


def test_a_host_already_off_is_confirmed_without_a_request(lab, tmp_path):
    driver = make_fence_driver(spec(lab, tmp_path, "compute-2"), host="compute-2")
    result = asyncio.run(driver.power_off())
    assert result.confirmed and "already off" in result.detail


def test_wrong_password_fails_at_once_with_the_reason(lab, tmp_path):
    bad = write_password(tmp_path / "wrong.pw", "not-it")
    driver = make_fence_driver(spec(lab, tmp_path, password_file=str(bad)), host="compute-1")
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and isinstance(result.error, FenceAuthError)
    assert "RAKP 2 HMAC is invalid" in result.detail and str(bad) in result.detail
    assert f"ipmi://127.0.0.1:{lab.bmcs['compute-1'].port}" in result.detail
    assert result.elapsed < 5.0  # credentials are not retried until the deadline
    assert lab.power_state("compute-1") == "on"


def test_a_bmc_that_stops_answering(lab, tmp_path):
    lab.stop_bmc("compute-1")
    # With the default 10 s timeout ipmitool gives up by itself (~6 s) and says why.
    with pytest.raises(FenceUnreachable, match="Unable to establish"):
        asyncio.run(make_fence_driver(spec(lab, tmp_path), host="compute-1").power_state())
    # With a shorter one the driver kills ipmitool at the timeout.
    driver = make_fence_driver(spec(lab, tmp_path, timeout=1.0, power_off_timeout=2.5),
                               host="compute-1")
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and result.state == "unknown"
    assert isinstance(result.error, FenceTimeout) and "killed it" in result.detail
    assert 2.5 <= result.elapsed < 2.5 + 1.0 + BACKSTOP_GRACE
    assert ipmitool_children() == []
    assert lab.power_state("compute-1") == "on"


def test_cancelling_a_call_kills_ipmitool(lab, tmp_path):
    lab.stop_bmc("compute-1")
    driver = make_fence_driver(spec(lab, tmp_path), host="compute-1")

    async def cancel_midway():
        task = asyncio.create_task(driver.power_off())
        while not ipmitool_children():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(cancel_midway(), 10))
    assert ipmitool_children() == []


def test_password_file_others_can_read_is_refused(lab, tmp_path):
    shared = write_password(tmp_path / "shared.pw", "ipmi-secret", mode=0o604)
    with pytest.raises(FenceConfigError, match="chmod 600") as caught:
        make_fence_driver(spec(lab, tmp_path, password_file=str(shared)), host="compute-1")
    assert str(shared) in str(caught.value) and "other users may read" in str(caught.value)
    driver = make_fence_driver(spec(lab, tmp_path), host="compute-1")
    (tmp_path / "compute-1.pw").chmod(0o640)
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and isinstance(result.error, FenceConfigError)
    assert lab.power_state("compute-1") == "on"
