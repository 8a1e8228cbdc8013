"""The Nova simulator through openstacksdk over HTTP, as the recovery engine will use it:
Keystone login and catalog, servers by host across projects, pinned boot, services disabled
with a reason and forced down, evacuation refused then accepted and its REBUILD -> ACTIVE /
SHUTOFF ends by microversion, no room -> ERROR, stop/start, reset-state, metadata,
aggregates, instance actions, 406 above the maximum microversion, injected faults."""
from __future__ import annotations

import time
from pathlib import Path

import keystoneauth1.exceptions
import keystoneauth1.exceptions.http
import openstack.exceptions as osexc
import pytest

from hagent.lab.nova import HostSpec, NovaSim, Timings

pytestmark = pytest.mark.xdist_group("lab")

#: Real-Nova-like durations / 10: evacuation ~0.3 s, service_down_time 1 s.
FAST = Timings().scaled(0.1)
HOSTS = ["node1", "node2", "node3"]


@pytest.fixture
def sim(tmp_path: Path):
    nova = NovaSim.start(tmp_path, HOSTS, timings=FAST)
    yield nova
    nova.stop()


@pytest.fixture
def conn(sim: NovaSim):
    connection = sim.connect()
    yield connection
    connection.close()


def wait_status(conn, server_id: str, status: str, timeout: float = 10.0, seen=None,
                moved_from: str | None = None):
    """Poll GET /servers/{id} until ``status`` (and, with ``moved_from``, a host other than
    that one: an evacuated server shows its end state on the source before Nova moves it);
    every status seen goes into ``seen``."""
    deadline = time.monotonic() + timeout
    while True:
        server = conn.compute.get_server(server_id)
        if seen is not None:
            seen.append(server.status)
        if server.status == status and server.compute_host != moved_from:
            return server
        if time.monotonic() > deadline:
            raise AssertionError(f"{server_id} still {server.status}, wanted {status}")
        time.sleep(0.02)


def service_of(conn, host: str):
    (service,) = list(conn.compute.services(binary="nova-compute", host=host))
    return service


def fence(sim: NovaSim, conn, host: str):
    """What the engine does for a dead host: power off (the fence), force down, disable."""
    sim.power(host, "off")
    service = service_of(conn, host)
    conn.compute.update_service_forced_down(service, forced=True)
    conn.compute.disable_service(service, disabled_reason="hagent: host down")
    return service


def test_password_login_gives_a_token_and_a_compute_endpoint(sim, conn):
    assert conn.authorize()
    assert conn.compute.get_endpoint() == f"{sim.url}/compute/v2.1"
    assert conn.compute.get_endpoint_data().max_microversion == (2, 104)
    assert [f.name for f in conn.compute.flavors()][0] == "lab.tiny"
    assert sorted(h.name for h in conn.compute.hypervisors(details=True)) == HOSTS
    bad = sim.connect(auth={"password": "wrong"})
    with pytest.raises(keystoneauth1.exceptions.http.Unauthorized):
        list(bad.compute.servers())


def test_servers_by_host_across_projects(sim, conn):
    mine = sim.boot(n_ha=2, hosts=["node1"])["ha"]
    theirs = sim.boot(n_non_ha=1, hosts=["node1"], project="demo")["non_ha"]
    sim.boot(n_non_ha=1, hosts=["node2"])
    on_node1 = list(conn.compute.servers(details=True, all_projects=True,
                                         compute_host="node1"))
    assert sorted(s.id for s in on_node1) == sorted(mine + theirs)
    assert {s.id for s in conn.compute.servers(details=True, compute_host="node1")} == set(mine)
    ha = [s for s in on_node1 if s.metadata.get("HA_Enabled") == "True"]
    assert sorted(s.id for s in ha) == sorted(mine)
    demo = sim.connect(demo=True)
    assert [s.id for s in demo.compute.servers()] == theirs
    with pytest.raises(osexc.ForbiddenException):
        list(demo.compute.servers(all_projects=True))


def test_boot_pinned_to_a_host(sim, conn):
    flavor = conn.compute.find_flavor("lab.tiny")
    server = conn.compute.create_server(name="pinned", flavor_id=flavor.id, image_id="cirros",
                                        networks="none", availability_zone="nova:node2")
    seen: list[str] = []
    server = wait_status(conn, server.id, "ACTIVE", seen=seen)
    assert server.compute_host == "node2" and seen[0] == "BUILD"
    assert sim.state()["running"]["node2"] == [server.id]
    with pytest.raises(osexc.BadRequestException, match="networks"):
        conn.compute.create_server(name="x", flavor_id=flavor.id, image_id="cirros")


def test_disable_with_reason_and_force_down(sim, conn):
    service = service_of(conn, "node1")
    assert (service.status, service.state, service.is_forced_down) == ("enabled", "up", False)
    conn.compute.disable_service(service, disabled_reason="hagent: maintenance")
    conn.compute.update_service_forced_down(service, forced=True)
    service = service_of(conn, "node1")
    assert (service.status, service.disabled_reason) == ("disabled", "hagent: maintenance")
    assert (service.is_forced_down, service.state) == (True, "down")
    conn.compute.update_service_forced_down(service, forced=False)
    conn.compute.enable_service(service)
    service = service_of(conn, "node1")
    assert (service.status, service.state, service.disabled_reason) == ("enabled", "up", None)


def test_evacuation_refused_while_up_then_rebuilds_to_active_on_another_host(sim, conn):
    (sid,) = sim.boot(n_ha=1, hosts=["node1"])["ha"]
    with pytest.raises(osexc.BadRequestException,
                       match="Compute service of node1 is still in use."):
        conn.compute.evacuate_server(sid)
    fence(sim, conn, "node1")
    server = conn.compute.get_server(sid)
    assert server.status == "ACTIVE" and server.compute_host == "node1"  # Nova's DB lags
    start = time.monotonic()
    server._action(conn.compute, {"evacuate": {}}, microversion="2.94")
    seen: list[str] = []
    server = wait_status(conn, sid, "ACTIVE", seen=seen, moved_from="node1")
    took = time.monotonic() - start
    assert "REBUILD" in seen and server.compute_host in ("node2", "node3")
    assert FAST.evacuate_schedule + FAST.evacuate_spawn <= took < 5.0
    state = sim.state()
    assert state["running"][server.compute_host] == [sid] and state["running"]["node1"] == []
    report = sim.report()
    assert report["ok"] and report["evacuations"] == {sid: 1}


def test_evacuation_at_2_95_and_above_ends_shutoff(sim, conn):
    (sid,) = sim.boot(n_ha=1, hosts=["node1"])["ha"]
    fence(sim, conn, "node1")
    conn.compute.evacuate_server(sid)  # openstacksdk picks the highest version: SHUTOFF
    server = wait_status(conn, sid, "SHUTOFF", moved_from="node1")
    assert server.compute_host != "node1"
    assert sim.state()["running"][server.compute_host] == []


def test_a_stopped_server_stays_stopped_after_evacuation_at_2_94(sim, tmp_path):
    conn = sim.connect(compute_api_version="2.94")
    (sid,) = sim.boot(n_ha=1, hosts=["node1"])["ha"]
    conn.compute.stop_server(sid)
    wait_status(conn, sid, "SHUTOFF")
    fence(sim, conn, "node1")
    conn.compute.evacuate_server(sid)  # pinned at 2.94 by the connection
    seen: list[str] = []
    wait_status(conn, sid, "REBUILD", seen=seen)
    server = wait_status(conn, sid, "SHUTOFF", seen=seen, moved_from="node1")
    assert server.compute_host != "node1"
    assert sim.report()["lost"] == []


def test_a_target_without_capacity_leaves_the_server_in_error(tmp_path):
    specs = {"node1": HostSpec(), "node2": HostSpec(memory_mb=64)}
    sim = NovaSim.start(tmp_path, ["node1", "node2"], timings=FAST, host_specs=specs)
    try:
        conn = sim.connect()
        sim.boot(n_non_ha=1, hosts=["node2"])  # node2 is now full (64 MB)
        (sid,) = sim.boot(n_ha=1, hosts=["node1"])["ha"]
        fence(sim, conn, "node1")
        conn.compute.evacuate_server(sid, host="node2")  # accepted: 200, as Nova
        server = wait_status(conn, sid, "ERROR")
        assert server.compute_host == "node1"
        assert server.fault["message"].startswith("No valid host was found.")
        (evacuate, _) = list(conn.compute.server_actions(sid))
        assert (evacuate.action, evacuate.message) == ("evacuate", "Error")
        with pytest.raises(osexc.NotFoundException, match="Compute host node9 not found"):
            conn.compute.evacuate_server(sid, host="node9")
    finally:
        sim.stop()


def test_stop_start_and_wrong_state_conflicts(sim, conn):
    (sid,) = sim.boot(n_non_ha=1, hosts=["node3"])["non_ha"]
    with pytest.raises(osexc.ConflictException, match="vm_state active"):
        conn.compute.start_server(sid)
    conn.compute.stop_server(sid)
    with pytest.raises(osexc.ConflictException, match="task_state powering-off"):
        conn.compute.stop_server(sid)
    wait_status(conn, sid, "SHUTOFF")
    assert sim.state()["running"]["node3"] == []
    conn.compute.start_server(sid)
    wait_status(conn, sid, "ACTIVE")
    assert sim.state()["running"]["node3"] == [sid]
    assert [a.action for a in conn.compute.server_actions(sid)] == ["start", "stop", "create"]


def test_reset_state(sim, conn):
    (sid,) = sim.boot(n_non_ha=1)["non_ha"]
    conn.compute.reset_server_state(sid, "error")
    server = conn.compute.get_server(sid)
    assert (server.status, server.vm_state, server.task_state) == ("ERROR", "error", None)
    conn.compute.reset_server_state(sid, "active")
    assert conn.compute.get_server(sid).status == "ACTIVE"
    assert list(conn.compute.server_actions(sid))[0].action == "resetState"


def test_server_metadata(sim, conn):
    (sid,) = sim.boot(n_ha=1)["ha"]
    assert conn.compute.get_server_metadata(sid).metadata == {"HA_Enabled": "True"}
    conn.compute.set_server_metadata(sid, note="x", HA_Enabled="False")
    assert conn.compute.get_server_metadata(sid).metadata == {"HA_Enabled": "False",
                                                              "note": "x"}
    conn.compute.delete_server_metadata(sid, ["note"])
    assert conn.compute.get_server(sid).metadata == {"HA_Enabled": "False"}
    conn.compute.reset_server_state(sid, "error")
    with pytest.raises(osexc.ConflictException, match="update metadata"):
        conn.compute.set_server_metadata(sid, note="y")


def test_aggregates(sim, conn):
    aggregate = conn.compute.create_aggregate(name="ha-segment", availability_zone="az1")
    conn.compute.add_host_to_aggregate(aggregate, "node1")
    conn.compute.add_host_to_aggregate(aggregate, "node3")
    conn.compute.set_aggregate_metadata(aggregate, reserved="node3")
    with pytest.raises(osexc.ConflictException, match="already has host node1"):
        conn.compute.add_host_to_aggregate(aggregate, "node1")
    conn.compute.remove_host_from_aggregate(aggregate, "node3")
    got = conn.compute.get_aggregate(aggregate.id)
    assert (got.hosts, got.metadata, got.availability_zone) == \
        (["node1"], {"availability_zone": "az1", "reserved": "node3"}, "az1")
    assert [a.name for a in conn.compute.aggregates()] == ["ha-segment"]
    assert sim.state()["hosts"]["node1"]["az"] == "az1"


def test_instance_actions_count_each_evacuation_with_its_request_id(sim, conn):
    (sid,) = sim.boot(n_ha=1, hosts=["node1"])["ha"]
    fence(sim, conn, "node1")
    conn.compute.evacuate_server(sid, host="node2")
    wait_status(conn, sid, "SHUTOFF", moved_from="node1")
    fence(sim, conn, "node2")
    conn.compute.evacuate_server(sid)
    server = wait_status(conn, sid, "SHUTOFF", moved_from="node2")
    assert server.compute_host == "node3"
    actions = list(conn.compute.server_actions(sid))
    assert [a.action for a in actions] == ["evacuate", "evacuate", "create"]
    detail = conn.compute.get_server_action(actions[0].request_id, sid)
    # newest first, as Nova lists them; it ends stopped (2.95+): the stop is part of it
    assert [e["event"] for e in detail.events] == ["compute_stop_instance",
                                                   "compute_rebuild_instance", "rebuild_server"]
    assert all(e["result"] == "Success" for e in detail.events)
    assert sim.report()["evacuate_actions"] == {sid: 2}


def test_microversion_above_the_maximum_is_406(sim, conn):
    resp = conn.compute.get("/servers", microversion="2.200", raise_exc=False)
    assert resp.status_code == 406
    assert "maximum is 2.104" in resp.json()["computeFault"]["message"]
    resp = conn.compute.get("/os-services", microversion="2.53")
    assert resp.headers["OpenStack-API-Version"] == "compute 2.53"
    assert "forced_down" in resp.json()["services"][0]
    old = conn.compute.get("/os-services", microversion="2.10").json()["services"][0]
    assert "forced_down" not in old and isinstance(old["id"], int)


def test_injected_errors_delays_timeouts_and_races(sim, conn):
    (sid,) = sim.boot(n_non_ha=1)["non_ha"]
    sim.inject(r"/servers/[^/]+/action", "error", count=2)
    for _ in range(2):
        with pytest.raises(osexc.HttpException) as exc:
            conn.compute.stop_server(sid)
        assert exc.value.status_code == 500
    assert sim.state()["servers"][sid]["task_state"] is None  # the 500s did nothing
    sim.inject("/os-services", "delay", delay=0.4)
    start = time.monotonic()
    list(conn.compute.services())
    assert time.monotonic() - start >= 0.4
    sim.inject(r"/action", "conflict")
    with pytest.raises(osexc.ConflictException):
        conn.compute.stop_server(sid)
    # the call takes effect, its reply never comes
    sim.inject(r"/action", "timeout", delay=2.0, apply=True)
    hasty = sim.connect(api_timeout=0.5)
    with pytest.raises(keystoneauth1.exceptions.ClientException, match="timed out"):
        hasty.compute.stop_server(sid)
    wait_status(conn, sid, "SHUTOFF")
    assert [f["hits"] for f in sim.faults()] == [2, 1, 1, 1]
    sim.clear_faults()
    conn.compute.start_server(sid)
    wait_status(conn, sid, "ACTIVE")


def test_disabling_a_just_killed_host_before_forcing_it_down_blocks(tmp_path):
    sim = NovaSim.start(tmp_path, HOSTS, timings=Timings(rpc_response_timeout=0.6))
    try:
        conn = sim.connect()
        service = service_of(conn, "node1")
        sim.power("node1", "off")
        start = time.monotonic()
        conn.compute.disable_service(service, disabled_reason="down")
        assert time.monotonic() - start >= 0.6
        conn.compute.update_service_forced_down(service, forced=True)
        start = time.monotonic()
        conn.compute.enable_service(service)
        assert time.monotonic() - start < 0.5
    finally:
        sim.stop()


def test_the_module_runs_as_a_process_with_a_clouds_yaml(tmp_path):
    sim = NovaSim.start(tmp_path, ["a", "b"], in_process=False, timings=FAST)
    try:
        assert (tmp_path / "clouds.yaml").stat().st_mode & 0o777 == 0o600
        conn = NovaSim.attach(tmp_path).connect()
        assert sorted(s.host for s in conn.compute.services(binary="nova-compute")) == ["a", "b"]
        assert sim.boot(n_ha=1)["ha"]
        NovaSim.attach(tmp_path).stop()  # by its recorded pid, as another process would
        assert not (tmp_path / "nova.json").exists()  # removed on its clean exit
    finally:
        sim.stop()
