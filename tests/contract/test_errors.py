"""The error replies recovery maps to its NovaError classes (docs/recovery-nova.md
"Errors"): 404 for what does not exist, 400 for a malformed request, 401 without a valid
token, 403 for a member on admin APIs, 406 for a microversion Nova does not offer; and the
microversions themselves."""
from __future__ import annotations

import uuid

import keystoneauth1.exceptions.http
import openstack.exceptions as osexc
import pytest
import requests

from tests.contract.backend import ENGINE_MICROVERSION

pytestmark = [pytest.mark.xdist_group("realnova"), pytest.mark.timeout(900)]


def test_microversions_offered_and_the_pinned_one_sent(nova):
    data = nova.connect().compute.get_endpoint_data()
    assert data.min_microversion == (2, 1) and data.max_microversion >= (2, 95)
    response = nova.conn.compute.get("/servers")
    assert response.headers["OpenStack-API-Version"] == f"compute {ENGINE_MICROVERSION}"
    too_new = nova.conn.compute.get("/servers", microversion="2.999")
    assert too_new.status_code == 406
    assert too_new.json()["computeFault"]["message"].startswith(
        "Version 2.999 is not supported by the API. Minimum is 2.1 and maximum is 2.")


def test_unknown_things_are_404(nova):
    missing = str(uuid.uuid4())
    with pytest.raises(osexc.NotFoundException, match=f"Instance {missing} could not be found."):
        nova.conn.compute.get_server(missing)
    with pytest.raises(osexc.NotFoundException, match=f"Instance {missing} could not be found."):
        nova.conn.compute.evacuate_server(missing)
    with pytest.raises(osexc.NotFoundException):
        nova.conn.compute.stop_server(missing)
    with pytest.raises(osexc.NotFoundException):
        nova.conn.compute.reset_server_state(missing, "error")
    with pytest.raises(osexc.NotFoundException):
        nova.conn.compute.get_aggregate("999999")


def test_malformed_action_is_400(nova):
    server = nova.boot_on(nova.hosts[0], ha=False)
    response = nova.conn.compute.post(f"/servers/{server.id}/action",
                                      json={"os-frobnicate": None})
    assert response.status_code == 400
    response = nova.conn.compute.post(f"/servers/{server.id}/action",
                                      json={"evacuate": {"onSharedStorage": True}},
                                      microversion=ENGINE_MICROVERSION)
    assert response.status_code == 400
    assert "Additional properties are not allowed ('onSharedStorage' was unexpected)" in \
        response.json()["badRequest"]["message"]


def test_no_valid_token_is_401(nova):
    endpoint = nova.conn.compute.get_endpoint()
    for headers in ({}, {"X-Auth-Token": "gAAAAnot-a-token"}):
        response = requests.get(f"{endpoint}/servers", headers=headers, timeout=30)
        assert response.status_code == 401, (headers, response.text)
    with pytest.raises(keystoneauth1.exceptions.http.Unauthorized):
        nova.connect(auth={"password": "wrong"}).compute.get_endpoint()


def test_a_member_gets_403_on_admin_apis(nova):
    theirs = nova.boot(conn=nova.demo, ha=False)
    with pytest.raises(osexc.ForbiddenException):
        nova.demo.compute.evacuate_server(theirs)
    with pytest.raises(osexc.ForbiddenException):
        list(nova.demo.compute.hypervisors())
    with pytest.raises(osexc.ForbiddenException):
        list(nova.demo.compute.migrations())
    with pytest.raises(osexc.ForbiddenException):
        nova.demo.compute.create_aggregate(name=f"contract-{uuid.uuid4().hex[:8]}")
    with pytest.raises(osexc.ForbiddenException,
                       match="Only volume-backed servers are allowed for flavors with zero disk."):
        nova.demo.compute.create_server(name="zero-disk", flavor_id=nova.flavor.id,
                                        image_id=nova.image, networks="none")
    # its own server is its own: reading it is allowed
    assert nova.demo.compute.get_server(theirs.id).status == "ACTIVE"
