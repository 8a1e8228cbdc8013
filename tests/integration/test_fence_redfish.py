"""The Redfish fence driver against sushy-emulator (fake driver, HTTPS, basic auth).

The emulator applies a power change 0-11 s after the request, so a confirmed power-off
takes that long and the driver must poll for it; the others take at most a few seconds.
"""
import asyncio

import pytest

from hagent.fencing.external import (BACKSTOP_GRACE, FenceAuthError, FenceConfigError,
                                     FenceTimeout, FenceUnreachable)
from hagent.fencing.factory import make_fence_driver
from tests.integration.fence_emulators import free_port, sushy_emulator, write_password

pytestmark = pytest.mark.xdist_group("lab")


@pytest.fixture(scope="module")
def bmc(tmp_path_factory):
    """One emulator (fresh state) for the module: compute-1 stays on, compute-2 off, and
    compute-3 is the one system a test powers off."""
    systems = {"compute-1": "On", "compute-2": "Off", "compute-3": "On"}
    with sushy_emulator(tmp_path_factory.mktemp("sushy"), systems) as sushy:
        yield sushy


def spec(bmc, tmp_path, **changes):
    base = {"driver": "redfish", "address": "127.0.0.1", "port": bmc.port,
            "username": bmc.username,
            "password_file": str(write_password(tmp_path / "bmc.pw", bmc.password)),
            "ca_file": str(bmc.ca_file), "system_id": next(iter(bmc.systems.values())),
            "poll_interval": 0.25, "power_off_timeout": 20.0}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def test_power_off_is_confirmed_once_the_bmc_reads_off(bmc, tmp_path):
    driver = make_fence_driver(spec(bmc, tmp_path, system_id=bmc.systems["compute-3"]),
                               host="compute-3")
    assert bmc.power_state("compute-3") == "On"
    result = asyncio.run(driver.power_off())
    assert result.confirmed and result.state == "off" and result.error is None, result
    assert result.detail == "BMC reports the host off"
    # Confirmed only once the emulator itself has the host off, and within the deadline.
    assert bmc.power_state("compute-3") == "Off"
    assert result.elapsed < 20.0
    assert bmc.power_state("compute-1") == "On"  # the other systems were not touched


def test_power_state_reports_on_and_off(bmc, tmp_path):
    on = make_fence_driver(spec(bmc, tmp_path), host="compute-1")
    # By name: sushy redirects to the uuid path, which the driver follows (same origin).
    off = make_fence_driver(spec(bmc, tmp_path, system_id="compute-2"), host="compute-2")
    assert asyncio.run(on.power_state()) == "on"
    assert asyncio.run(off.power_state()) == "off"


def test_a_host_already_off_is_confirmed_without_a_request(bmc, tmp_path):
    driver = make_fence_driver(spec(bmc, tmp_path, system_id=bmc.systems["compute-2"]),
                               host="compute-2")
    result = asyncio.run(driver.power_off())
    assert result.confirmed and "already off" in result.detail
    assert result.elapsed < 5.0


def test_system_id_defaults_to_the_only_system(tmp_path):
    with sushy_emulator(tmp_path / "one", {"compute-9": "On"}) as one:
        driver = make_fence_driver(spec(one, tmp_path, system_id=None), host="compute-9")
        assert asyncio.run(driver.power_state()) == "on"


def test_several_systems_need_a_system_id(bmc, tmp_path):
    driver = make_fence_driver(spec(bmc, tmp_path, system_id=None), host="compute-1")
    with pytest.raises(FenceConfigError, match="lists 3 systems") as caught:
        asyncio.run(driver.power_state())
    assert bmc.systems["compute-1"] in str(caught.value) and "set system_id" in str(caught.value)


def test_wrong_password_fails_at_once_with_the_reason(bmc, tmp_path):
    bad = write_password(tmp_path / "wrong.pw", "not-the-password")
    driver = make_fence_driver(spec(bmc, tmp_path, password_file=str(bad)), host="compute-1")
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and isinstance(result.error, FenceAuthError)
    assert "HTTP 401" in result.detail and "Incorrect username or password" in result.detail
    assert "compute-1" in result.detail and f"127.0.0.1:{bmc.port}" in result.detail
    assert result.elapsed < 5.0  # credentials are not retried until the 20 s deadline
    assert bmc.power_state("compute-1") == "On"


def test_closed_port_is_unreachable_until_the_deadline(bmc, tmp_path):
    driver = make_fence_driver(spec(bmc, tmp_path, port=free_port(), power_off_timeout=2.0),
                               host="compute-1")
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and result.state == "unknown"
    assert isinstance(result.error, FenceUnreachable) and "connection refused" in result.detail
    assert 2.0 <= result.elapsed < 2.0 + 1.0


def test_a_bmc_that_stops_answering_times_out(bmc, tmp_path):
    driver = make_fence_driver(spec(bmc, tmp_path, timeout=1.0, power_off_timeout=2.5),
                               host="compute-1")
    bmc.pause()
    try:
        with pytest.raises(FenceTimeout, match="no complete answer"):
            asyncio.run(driver.power_state())
        result = asyncio.run(driver.power_off())
    finally:
        bmc.resume()
    assert not result.confirmed and isinstance(result.error, FenceTimeout)
    assert result.elapsed < 2.5 + 1.0 + BACKSTOP_GRACE
    assert bmc.power_state("compute-1") == "On"


def test_tls_certificate_is_verified_unless_turned_off(bmc, tmp_path):
    untrusted = make_fence_driver(spec(bmc, tmp_path, ca_file=None), host="compute-1")
    with pytest.raises(FenceAuthError, match="TLS certificate is not trusted"):
        asyncio.run(untrusted.power_state())
    unchecked = make_fence_driver(spec(bmc, tmp_path, ca_file=None, verify_tls=False),
                                  host="compute-1")
    assert asyncio.run(unchecked.power_state()) == "on"
    with pytest.raises(FenceConfigError, match="ca_file is set but verify_tls is false"):
        make_fence_driver(spec(bmc, tmp_path, verify_tls=False), host="compute-1")


def test_password_file_others_can_read_is_refused(bmc, tmp_path):
    shared = write_password(tmp_path / "shared.pw", bmc.password, mode=0o644)
    with pytest.raises(FenceConfigError, match="chmod 600") as caught:
        make_fence_driver(spec(bmc, tmp_path, password_file=str(shared)), host="compute-1")
    assert str(shared) in str(caught.value) and "compute-1" in str(caught.value)
    # A file made readable after start-up is refused at the next call, before any request.
    driver = make_fence_driver(spec(bmc, tmp_path), host="compute-1")
    (tmp_path / "bmc.pw").chmod(0o640)
    result = asyncio.run(driver.power_off())
    assert not result.confirmed and isinstance(result.error, FenceConfigError)
    assert "its group may read" in result.detail and result.elapsed < 1.0
    assert bmc.power_state("compute-1") == "On"
