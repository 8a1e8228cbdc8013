"""make_fence_driver: defaults, and every mistake named by its key with a fix. Also the
credentials file checks and the ipmitool command line (no password on it)."""
from pathlib import Path

import pytest

from hagent.fencing.external import FenceConfigError
from hagent.fencing.factory import SPEC_KEYS, make_fence_driver
from hagent.fencing.ipmi import IpmiFenceDriver
from hagent.fencing.redfish import RedfishFenceDriver


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "bmc.pw"
    path.write_text("s3cret-pw\n")
    path.chmod(0o600)
    return path


def ipmi(password_file, **changes):
    spec = {"driver": "ipmi", "address": "10.0.0.21", "username": "fence",
            "password_file": str(password_file)}
    spec.update(changes)
    return spec


def refused(spec, *fragments):
    with pytest.raises(FenceConfigError) as caught:
        make_fence_driver(spec, host="compute-1")
    message = str(caught.value)
    assert "fencing host compute-1" in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_defaults(password_file):
    driver = make_fence_driver(ipmi(password_file), host="compute-1")
    assert isinstance(driver, IpmiFenceDriver)
    assert (driver.port, driver.timeout, driver.power_off_timeout, driver.poll_interval) == \
        (623, 10.0, 30.0, 1.0)
    assert driver.bmc == "ipmi://10.0.0.21:623"
    redfish = make_fence_driver(ipmi(password_file, driver="redfish"), host="compute-1")
    assert isinstance(redfish, RedfishFenceDriver) and redfish.bmc == "https://10.0.0.21:443"


def test_ipv6_addresses_are_bracketed_in_names(password_file):
    driver = make_fence_driver(ipmi(password_file, address="fd00::21", port=6230), host="c")
    assert driver.bmc == "ipmi://[fd00::21]:6230"


def test_every_key_is_documented():
    assert all(key.doc for key in SPEC_KEYS.values())


@pytest.mark.parametrize("changes, fragments", [
    ({"driver": None}, ["'driver': missing", "ipmi, redfish"]),
    ({"driver": "ilo"}, ["'driver': 'ilo' is not one of ipmi, redfish"]),
    ({"adress": "x"}, ["'adress': unknown key (did you mean 'address'?)"]),
    ({"system_id": "1"}, ["'system_id': only the redfish driver takes it, not ipmi"]),
    ({"username": None}, ["'username': missing"]),
    ({"port": "623"}, ["'port': must be an integer from 1 to 65535, got '623'"]),
    ({"port": True}, ["'port': must be an integer"]),
    ({"port": 70000}, ["'port'"]),
    ({"address": "10.0.0.21:623"}, ["'address': has a ':' but is not an IPv6 address"]),
    ({"address": "https://bmc"}, ["'address': must be a bare host name"]),
    ({"timeout": 0}, ["'timeout': must be a number of seconds above 0"]),
    ({"power_off_timeout": float("nan")}, ["'power_off_timeout'"]),
    ({"poll_interval": 30.0}, ["'poll_interval': 30 s is not below power_off_timeout (30 s)"]),
])
def test_mistakes_name_the_key(password_file, changes, fragments):
    spec = ipmi(password_file, **changes)
    for key, value in changes.items():
        if value is None:
            del spec[key]
    refused(spec, *fragments)


def test_redfish_only_keys(password_file):
    refused(ipmi(password_file, driver="redfish", verify_tls="no"),
            "'verify_tls': must be true or false")
    refused(ipmi(password_file, driver="redfish", ca_file="/nonexistent/ca.pem"),
            "cannot load ca_file /nonexistent/ca.pem")


def test_password_file_checks(tmp_path, password_file):
    missing = tmp_path / "missing.pw"
    refused(ipmi(missing), str(missing), "does not exist", "umask 077")
    password_file.chmod(0o640)
    refused(ipmi(password_file), "mode 0640, so its group may read", "chmod 600")
    password_file.chmod(0o600)
    password_file.write_text("one\ntwo\n")
    refused(ipmi(password_file), "more than one line")
    password_file.write_text("x" * 21)
    refused(ipmi(password_file), "longer than 20 bytes")
    # Redfish has no such limit.
    make_fence_driver(ipmi(password_file, driver="redfish"), host="compute-1")
    password_file.write_text("tab\there")
    refused(ipmi(password_file), "has a tab")


def test_missing_ipmitool_is_named(password_file):
    with pytest.raises(FenceConfigError, match="no-such-ipmitool is not installed"):
        IpmiFenceDriver(host="compute-1", address="10.0.0.21", port=623, username="fence",
                        password_file=password_file, timeout=10, power_off_timeout=30,
                        poll_interval=1, ipmitool="no-such-ipmitool")


def test_ipmitool_gets_the_password_file_not_the_password(password_file):
    driver = make_fence_driver(ipmi(password_file), host="compute-1")
    argv = driver.argv("chassis", "power", "off")
    assert "s3cret-pw" not in " ".join(argv)
    assert argv[argv.index("-f") + 1] == str(password_file) and "-P" not in argv
    assert argv[-3:] == ["chassis", "power", "off"]
    assert Path(argv[0]).name == "ipmitool"
