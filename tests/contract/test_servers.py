"""Servers as recovery reads and changes them: listed by host across projects, metadata
(the HA_Enabled key), stop/start, reset-state, and the instance actions they record."""
from __future__ import annotations

import openstack.exceptions as osexc
import pytest

from tests.contract.backend import HA_KEY

pytestmark = [pytest.mark.xdist_group("realnova"), pytest.mark.timeout(900)]


def test_servers_listed_by_host_across_projects(nova):
    theirs = nova.boot(conn=nova.demo, ha=False)   # a member may not pin a host
    host = nova.conn.compute.get_server(theirs.id).compute_host
    elsewhere = next(h for h in nova.hosts if h != host)
    mine = nova.boot_on(host)
    other = nova.boot_on(elsewhere)

    on_host = {s.id: s for s in nova.conn.compute.servers(details=True, all_projects=True,
                                                           compute_host=host)}
    assert {theirs.id, mine.id} <= set(on_host) and other.id not in on_host
    assert {s.compute_host for s in on_host.values()} == {host}
    assert on_host[mine.id].metadata == {HA_KEY: "True"}
    assert on_host[theirs.id].project_id == theirs.project_id != mine.project_id
    # one server a page: openstacksdk follows Nova's servers_links to the end
    paged = [s.id for s in nova.conn.compute.servers(details=True, all_projects=True,
                                                     compute_host=host, limit=1)]
    assert sorted(paged) == sorted(on_host)
    # without all_projects an admin sees its own project's servers only
    own = {s.id for s in nova.conn.compute.servers(details=True, compute_host=host)}
    assert mine.id in own and theirs.id not in own
    # the member sees its own server without the host, and nobody else's
    listed = {s.id: s for s in nova.demo.compute.servers(details=True)}
    assert theirs.id in listed and mine.id not in listed
    assert listed[theirs.id].compute_host is None
    with pytest.raises(osexc.ForbiddenException):
        list(nova.demo.compute.servers(details=True, all_projects=True))
    with pytest.raises(osexc.NotFoundException):
        nova.demo.compute.get_server(mine.id)


def test_metadata_set_get_and_delete(nova):
    server = nova.boot_on(nova.hosts[0], ha=False)
    assert nova.conn.compute.fetch_server_metadata(server).metadata == {}
    nova.conn.compute.set_server_metadata(server, **{HA_KEY: "True", "role": "db"})
    assert nova.conn.compute.fetch_server_metadata(server).metadata == \
        {HA_KEY: "True", "role": "db"}
    response = nova.conn.compute.post(f"/servers/{server.id}/metadata",  # merges, says all
                                      json={"metadata": {"role": "web"}})
    assert response.json() == {"metadata": {HA_KEY: "True", "role": "web"}}
    nova.conn.compute.delete_server_metadata(server, ["role"])
    assert nova.conn.compute.fetch_server_metadata(server).metadata == {HA_KEY: "True"}
    assert nova.conn.compute.get_server(server.id).metadata == {HA_KEY: "True"}
    response = nova.conn.compute.delete(f"/servers/{server.id}/metadata/role")
    assert response.status_code == 404
    assert response.json()["itemNotFound"]["message"] == "Metadata item was not found"


def test_stop_and_start(nova):
    server = nova.boot_on(nova.hosts[2], ha=False)
    assert server.power_state == 1
    with pytest.raises(osexc.ConflictException,
                       match=f"Cannot 'start' instance {server.id} while it is in vm_state "
                             f"active"):
        nova.conn.compute.start_server(server)
    nova.conn.compute.stop_server(server)
    stopped = nova.wait_status(server.id, "SHUTOFF")
    assert (stopped.vm_state, stopped.power_state) == ("stopped", 4)
    with pytest.raises(osexc.ConflictException,
                       match=f"Cannot 'stop' instance {server.id} while it is in vm_state "
                             f"stopped"):
        nova.conn.compute.stop_server(server)
    nova.conn.compute.start_server(server)
    started = nova.wait_status(server.id, "ACTIVE")
    assert (started.vm_state, started.power_state, started.compute_host) == \
        ("active", 1, nova.hosts[2])
    assert [a.action for a in nova.conn.compute.server_actions(server)] == \
        ["start", "stop", "create"]


def test_reset_state_to_error_and_back(nova):
    server = nova.boot_on(nova.hosts[0], ha=False)
    nova.conn.compute.reset_server_state(server, "error")
    errored = nova.conn.compute.get_server(server.id)
    assert (errored.status, errored.vm_state, errored.task_state) == ("ERROR", "error", None)
    assert errored.power_state == 1  # the hypervisor is not touched
    nova.conn.compute.reset_server_state(server, "active")
    assert nova.conn.compute.get_server(server.id).status == "ACTIVE"
    assert [a.action for a in nova.conn.compute.server_actions(server)] == \
        ["resetState", "resetState", "create"]
    with pytest.raises(osexc.BadRequestException, match="Invalid input for field/attribute"):
        nova.conn.compute.reset_server_state(server, "stopped")
    theirs = nova.boot(conn=nova.demo, ha=False)
    with pytest.raises(osexc.ForbiddenException):
        nova.demo.compute.reset_server_state(theirs, "error")
    assert nova.conn.compute.get_server(theirs.id).status == "ACTIVE"
