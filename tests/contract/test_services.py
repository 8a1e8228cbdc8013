"""Compute services as recovery uses them (docs/recovery-nova.md): listed per host with
state and status, disabled with a reason and enabled, forced down and back through the
2.53+ ``PUT /os-services/{uuid}``, and what Nova refuses there."""
from __future__ import annotations

import uuid

import openstack.exceptions as osexc
import pytest

from tests.contract.backend import ENGINE_MICROVERSION, Backend

pytestmark = [pytest.mark.xdist_group("realnova"), pytest.mark.timeout(900)]

REASON = "hagent: host cmp1 failed (contract test)"


def put_service(nova: Backend, service_id: str, body: object, conn=None):
    """A raw ``PUT /os-services/{id}`` at the engine's microversion: the response."""
    conn = conn or nova.conn
    return conn.compute.put(f"/os-services/{service_id}", json=body,
                            microversion=ENGINE_MICROVERSION)


def error_of(response) -> tuple[int, str]:
    """Status and Nova's message from an error reply."""
    (fault,) = response.json().values()
    return response.status_code, fault["message"]


def test_services_list_each_compute_with_host_binary_state_and_status(nova):
    services = list(nova.conn.compute.services())
    computes = sorted((s for s in services if s.binary == "nova-compute"), key=lambda s: s.host)
    assert [s.host for s in computes] == sorted(nova.hosts)
    for service in computes:
        assert (service.state, service.status, service.is_forced_down,
                service.disabled_reason, service.availability_zone) == \
            ("up", "enabled", False, None, "nova"), service
        uuid.UUID(service.id)  # 2.53+: the id the PUT form takes is the service's uuid
    assert {"nova-scheduler", "nova-conductor"} <= {s.binary for s in services}
    (only,) = nova.conn.compute.services(host=nova.hosts[1], binary="nova-compute")
    assert (only.host, only.id) == (nova.hosts[1], computes[1].id)
    assert list(nova.conn.compute.services(host="no-such-host")) == []


def test_disable_with_a_reason_then_enable(nova):
    host = nova.hosts[0]
    service = nova.conn.compute.disable_service(nova.service(host), disabled_reason=REASON)
    assert (service.status, service.disabled_reason, service.state) == \
        ("disabled", REASON, "up")
    listed = nova.service(host)
    assert (listed.status, listed.disabled_reason, listed.is_forced_down) == \
        ("disabled", REASON, False)
    service = nova.conn.compute.enable_service(listed)
    assert (service.status, service.disabled_reason) == ("enabled", None)
    assert (nova.service(host).status, nova.service(host).disabled_reason) == ("enabled", None)
    # disabling without a reason leaves none; enabling with one is refused
    assert put_service(nova, listed.id, {"status": "disabled"}).json()["service"][
        "disabled_reason"] is None
    assert error_of(put_service(nova, listed.id, {"status": "enabled",
                                                  "disabled_reason": "x"})) == \
        (400, "Specifying 'disabled_reason' with status 'enabled' is invalid.")


def test_the_scheduler_places_nothing_on_disabled_hosts(nova):
    *disabled, free = nova.hosts
    for host in disabled:
        nova.conn.compute.disable_service(nova.service(host), disabled_reason=REASON)
    server = nova.boot(ha=False)
    assert server.compute_host == free


def test_force_down_and_back_up(nova):
    host = nova.hosts[0]
    service = nova.conn.compute.update_service_forced_down(nova.service(host), forced=True)
    assert (service.is_forced_down, service.state, service.status) == (True, "down", "enabled")
    listed = nova.service(host)
    assert (listed.is_forced_down, listed.state) == (True, "down")
    assert all(nova.service(h).state == "up" for h in nova.hosts if h != host)
    # its nova-compute kept reporting meanwhile: up again as soon as the flag is gone
    service = nova.conn.compute.update_service_forced_down(listed, forced=False)
    assert (service.is_forced_down, service.state) == (False, "up")
    assert (nova.service(host).is_forced_down, nova.service(host).state) == (False, "up")


def test_service_updates_nova_refuses(nova):
    compute = nova.service(nova.hosts[0])
    scheduler = next(s for s in nova.conn.compute.services() if s.binary == "nova-scheduler")
    unknown = str(uuid.uuid4())
    assert error_of(put_service(nova, unknown, {"forced_down": True})) == \
        (404, f"Service {unknown} could not be found.")
    assert error_of(put_service(nova, "force-down", {"forced_down": True})) == \
        (400, "Invalid uuid force-down")
    assert error_of(put_service(nova, compute.id, {})) == \
        (400, "No updates were requested. Fields 'status' or 'forced_down' should be "
              "specified.")
    assert error_of(put_service(nova, scheduler.id, {"forced_down": True})) == \
        (400, "Updating a nova-scheduler service is not supported. Only nova-compute "
              "services can be updated.")
    status, message = error_of(put_service(nova, compute.id, {"forced_down": "maybe"}))
    assert status == 400 and message.startswith(
        "Invalid input for field/attribute forced_down. Value: maybe. 'maybe' is not one of "
        "[True, 'True', 'TRUE', 'true', '1', 'ON', 'On', 'on', 'YES', 'Yes', 'yes', False,"), \
        message
    status, message = error_of(put_service(nova, compute.id, {"forced_down": True,
                                                              "host": compute.host}))
    assert (status, message) == \
        (400, "Additional properties are not allowed ('host' was unexpected)")
    status, message = error_of(put_service(nova, compute.id, {"status": "maintenance"}))
    assert (status, message) == \
        (400, "Invalid input for field/attribute status. Value: maintenance. 'maintenance' "
              "is not one of ['enabled', 'disabled']")
    # a member of another project may neither list nor change services
    assert put_service(nova, compute.id, {"forced_down": True}, conn=nova.demo).status_code \
        == 403
    with pytest.raises(osexc.ForbiddenException):
        list(nova.demo.compute.services())
    # nothing above changed the service
    after = nova.service(nova.hosts[0])
    assert (after.is_forced_down, after.status, after.state) == (False, "enabled", "up")
