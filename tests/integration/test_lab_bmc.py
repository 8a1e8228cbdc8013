"""The lab's BMC stand-in (hagent/fencing/lab_bmc.py) against a real hostpower switch: a
confirmed power-off kills the host's agent and is what the switch records; an off host is
confirmed without a request; a switch that is gone or refuses never confirms; the factory,
the BMC inventory the lab writes and the detection service's method mapping know it."""
from __future__ import annotations

import asyncio
import signal
import socket
import threading
from pathlib import Path

import pytest

from hagent.detection.service import fence_method
from hagent.fencing.external import FenceConfigError, FenceProtocolError, FenceUnreachable
from hagent.fencing.factory import make_fence_driver
from hagent.fencing.inventory import load_fence_inventory
from hagent.fencing.lab_bmc import LabBmcFenceDriver
from hagent.lab import configs

from lease_helpers import PowerSwitch, start_child

pytestmark = pytest.mark.xdist_group("lab")


@pytest.fixture
def switch(tmp_path: Path):
    power = PowerSwitch(tmp_path)
    yield power
    power.stop()


def driver(socket_path: Path, **changes) -> LabBmcFenceDriver:
    spec = {"driver": "lab", "socket": str(socket_path), "power_off_timeout": 2.0,
            "poll_interval": 0.1, "timeout": 1.0, **changes}
    made = make_fence_driver(spec, host="cn1")
    assert isinstance(made, LabBmcFenceDriver)
    return made


def test_power_off_is_confirmed_and_kills_the_hosts_agent(switch):
    agent = start_child()
    try:
        switch.call({"cmd": "register", "pid": agent.pid})
        switch.call({"cmd": "instances", "running": ["vm-1"]})
        bmc = driver(switch.socket)
        assert asyncio.run(bmc.power_state()) == "on"
        result = asyncio.run(bmc.power_off())
        assert result.confirmed and result.state == "off" and result.error is None
        assert result.detail == "BMC reports the host off"
        assert agent.wait(5.0) == -signal.SIGKILL
        record = switch.status()
        assert record["on"] is False and record["instances"] == []
        assert asyncio.run(bmc.power_state()) == "off"
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait(5.0)


def test_a_host_already_off_is_confirmed_without_a_request(switch):
    switch.call({"cmd": "power", "action": "off"})
    off_at = switch.status()["off_at_monotonic"]
    result = asyncio.run(driver(switch.socket).power_off())
    assert result.confirmed and "already off" in result.detail
    assert switch.status()["off_at_monotonic"] == off_at


def test_a_missing_switch_never_confirms(tmp_path):
    bmc = driver(tmp_path / "gone.sock", power_off_timeout=0.5)
    with pytest.raises(FenceUnreachable, match="fencing host cn1 through BMC lab power switch"):
        asyncio.run(bmc.power_state())
    result = asyncio.run(bmc.power_off())
    assert not result.confirmed and isinstance(result.error, FenceUnreachable)
    assert "not confirmed off" in result.detail


def test_a_refusal_is_a_protocol_error_not_a_fence(tmp_path):
    path = tmp_path / "refuses.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def refuse() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b'{"ok": false, "error": "no such command"}\n')

    threading.Thread(target=refuse, daemon=True).start()
    try:
        with pytest.raises(FenceProtocolError, match="status refused: 'no such command'"):
            asyncio.run(driver(path).power_state())
        result = asyncio.run(driver(path, power_off_timeout=0.3).power_off())
        assert not result.confirmed and isinstance(result.error, FenceProtocolError)
    finally:
        server.close()


def test_the_spec_takes_a_socket_and_no_bmc_credentials(tmp_path):
    with pytest.raises(FenceConfigError, match="'socket': missing"):
        make_fence_driver({"driver": "lab"}, host="cn1")
    with pytest.raises(FenceConfigError, match="'address': only the ipmi and redfish driver"):
        make_fence_driver({"driver": "lab", "socket": "/x.sock", "address": "10.0.0.1"},
                          host="cn1")
    with pytest.raises(FenceConfigError, match="'socket': only the lab driver takes it"):
        make_fence_driver({"driver": "ipmi", "address": "10.0.0.1", "socket": "/x.sock"},
                          host="cn1")
    assert fence_method(driver(tmp_path / "p.sock")) == "lab"


def test_the_inventory_the_lab_writes_loads(tmp_path):
    plans = configs.plan_nodes(tmp_path, 2, 1, [7001, 7007], [7002, 7003],
                               forward_ports=[7004, 7008],
                               gossip_ports=[7005, 7006])
    path = configs.write_bmc_inventory(tmp_path, plans)
    drivers = load_fence_inventory(path)
    assert sorted(drivers) == ["node1", "node2"]
    assert drivers["node2"].socket == configs.power_socket_path(tmp_path, "node2")
