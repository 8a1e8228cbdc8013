"""recovery/nova.py without a network: error classes, views, and the client's thread/timeout shell.

The client is driven here with a stand-in for openstacksdk's compute proxy (a plain object
with the proxy's method names); the real openstacksdk against the Nova simulator over HTTP
is tests/integration/test_nova_client_sim.py.
"""
from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import requests
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as os_exc
from openstack.compute.v2.migration import Migration
from openstack.compute.v2.server import Server
from openstack.compute.v2.service import Service

from recovery.nova import (COMPUTE_MICROVERSION, NovaClient, NovaConfigError, NovaError,
                           ServerView, ServiceView, connect, nova_error, server_view,
                           service_view, status_is_retryable)


def http_error(status: int, body: dict | None = None,
               request_id: str = "req-0f1e") -> os_exc.SDKException:
    """The exception openstacksdk raises for a Nova error answer (through its own mapping)."""
    response = requests.Response()
    response.status_code = status
    response.reason = "Reason"
    response.headers["content-type"] = "application/json"
    response.headers["x-openstack-request-id"] = request_id
    response._content = json.dumps(body or {"error": {"message": f"status {status}",
                                                      "code": status}}).encode()
    response.request = requests.Request("POST", "http://nova/v2.1/servers/1/action").prepare()
    try:
        os_exc.raise_from_response(response)
    except os_exc.SDKException as exc:
        return exc
    raise AssertionError("raise_from_response raised nothing")


# --- error mapping --------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 406, 412, 422])
def test_client_errors_are_not_retryable(status):
    error = nova_error(http_error(status), "evacuate server s1")
    assert (error.status, error.retryable) == (status, False)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retryable(status):
    error = nova_error(http_error(status), "evacuate server s1")
    assert (error.status, error.retryable) == (status, True)


def test_retryable_statuses_are_exactly_408_409_429_and_5xx():
    assert [s for s in range(400, 600) if status_is_retryable(s)] == [408, 409, 429, *range(500, 600)]


def test_message_names_the_call_novas_reason_and_the_request_id():
    exc = http_error(400, {"badRequest": {"message": "Compute service of cmp1 is still in use.",
                                          "code": 400}}, request_id="req-abc")
    error = nova_error(exc, "evacuate server s1")
    text = str(error)
    assert text.startswith("evacuate server s1: HTTP 400: ")
    assert "Compute service of cmp1 is still in use." in text
    assert "req-abc" in text


def test_forbidden_says_the_user_needs_admin():
    assert "admin role" in str(nova_error(http_error(403), "list servers on host cmp1"))


@pytest.mark.parametrize("exc", [
    ksa_exc.ConnectFailure("Unable to establish connection to http://nova"),
    ksa_exc.ConnectTimeout("Request to http://nova timed out"),
    ksa_exc.UnknownConnectionError("reset", OSError("connection reset")),
    ksa_exc.DiscoveryFailure("Could not find versioned identity endpoints"),
])
def test_no_answer_is_retryable_without_status(exc):
    error = nova_error(exc, "show server s1")
    assert (error.status, error.retryable) == (None, True)
    assert "no answer" in str(error)


def test_keystone_http_errors_keep_their_status():
    unauthorized = nova_error(ksa_exc.Unauthorized("The request you have made requires "
                                                   "authentication."), "show server s1")
    assert (unauthorized.status, unauthorized.retryable) == (401, False)
    assert "credentials in clouds.yaml" in str(unauthorized)
    unavailable = nova_error(ksa_exc.ServiceUnavailable("keystone down"), "show server s1")
    assert (unavailable.status, unavailable.retryable) == (503, True)


def test_tls_failure_is_not_retryable_and_names_the_fix():
    error = nova_error(ksa_exc.SSLError("certificate verify failed"), "show server s1")
    assert (error.status, error.retryable) == (None, False)
    assert "cacert" in str(error)


def test_unsupported_microversion_names_the_nova_release():
    exc = os_exc.ConfigException("A default microversion for service compute of 2.94 was "
                                 "requested, but the cloud only supports a maximum of 2.90")
    error = nova_error(exc, "show server s1")
    assert (error.status, error.retryable) == (None, False)
    assert "Zed" in str(error) and COMPUTE_MICROVERSION in str(error)


@pytest.mark.parametrize("exc", [
    os_exc.SDKException("Found multiple matches"),
    ksa_exc.EndpointNotFound("Could not find requested endpoint in Service Catalog."),
])
def test_other_library_errors_are_not_retryable(exc):
    error = nova_error(exc, "show server s1")
    assert (error.status, error.retryable) == (None, False)


def test_a_nova_error_passes_through_and_foreign_errors_are_refused():
    original = NovaError("x", status=409, retryable=True)
    assert nova_error(original, "y") is original
    with pytest.raises(TypeError):
        nova_error(ValueError("not ours"), "y")


# --- views (from Nova's documented JSON) ------------------------------------------------------

SERVER_JSON = {
    "id": "9168b536-cd40-4630-b43f-b259807c6e87",
    "name": "web-1",
    "status": "ACTIVE",
    "tenant_id": "6f70656e737461636b20342065766572",
    "metadata": {"HA_Enabled": "True"},
    "OS-EXT-SRV-ATTR:host": "cmp1",
    "OS-EXT-SRV-ATTR:hypervisor_hostname": "cmp1",
    "OS-EXT-STS:vm_state": "active",
    "OS-EXT-STS:task_state": None,
    "OS-EXT-STS:power_state": 1,
}


def test_server_view_reads_the_admin_attributes():
    assert server_view(Server(**SERVER_JSON)) == ServerView(
        id="9168b536-cd40-4630-b43f-b259807c6e87", name="web-1", status="ACTIVE",
        vm_state="active", task_state=None, power_state=1, host="cmp1",
        metadata={"HA_Enabled": "True"}, project_id="6f70656e737461636b20342065766572")


def test_server_view_of_a_rebuilding_server_without_metadata():
    body = {**SERVER_JSON, "status": "REBUILD", "OS-EXT-STS:task_state": "rebuilding",
            "OS-EXT-STS:power_state": 0, "metadata": None, "OS-EXT-SRV-ATTR:host": "cmp2"}
    view = server_view(Server(**body))
    assert (view.status, view.task_state, view.power_state, view.host, view.metadata) == (
        "REBUILD", "rebuilding", 0, "cmp2", {})


SERVICE_JSON = {  # GET /os-services at 2.53+: the id is a uuid
    "id": "e81d66a4-ddd3-4aba-8a84-171d1cb4d339", "binary": "nova-compute", "host": "cmp1",
    "state": "down", "status": "disabled", "forced_down": True, "zone": "nova",
    "disabled_reason": "hagent detected host failed.", "updated_at": "2026-11-25T10:00:00.000000",
}


def test_service_view():
    assert service_view(Service(**SERVICE_JSON)) == ServiceView(
        id="e81d66a4-ddd3-4aba-8a84-171d1cb4d339", host="cmp1", state="down",
        status="disabled", forced_down=True, disabled_reason="hagent detected host failed.")


def test_service_view_of_an_enabled_service_has_no_reason():
    body = {**SERVICE_JSON, "state": "up", "status": "enabled", "forced_down": False,
            "disabled_reason": None}
    view = service_view(Service(**body))
    assert (view.state, view.status, view.forced_down, view.disabled_reason) == (
        "up", "enabled", False, None)


# --- the client shell, with a stand-in compute proxy ------------------------------------------

class StandInCompute:
    """The few compute proxy methods the client calls, answering from lists."""

    def __init__(self, services=(), servers=(), migrations=()):
        self._services = list(services)
        self._servers = list(servers)
        self._migrations = list(migrations)
        self.updates: list[tuple[str, dict]] = []
        self.calls: list[tuple] = []
        self.raise_on: dict[str, BaseException] = {}
        self.block: threading.Event | None = None

    def _enter(self, name, *args):
        self.calls.append((name, *args))
        if self.block is not None:
            self.block.wait(5)
        if name in self.raise_on:
            raise self.raise_on[name]

    def services(self, **query):
        self._enter("services", query)
        return iter(self._services)

    def update_service(self, service, **attrs):
        self._enter("update_service", service.id, attrs)
        self.updates.append((service.id, attrs))
        return Service(**{**service.to_dict(computed=False), **attrs})

    def servers(self, **query):
        self._enter("servers", query)
        return iter(self._servers)

    def get_server(self, server_id):
        self._enter("get_server", server_id)
        for server in self._servers:
            if server.id == server_id:
                return server
        raise os_exc.NotFoundException("No Server found")

    def evacuate_server(self, server_id, host=None):
        self._enter("evacuate_server", server_id, host)

    def migrations(self, **query):
        self._enter("migrations", query)
        return iter(self._migrations)

    def reset_server_state(self, server_id, state):
        self._enter("reset_server_state", server_id, state)


class StandInConnection:
    def __init__(self, compute):
        self.compute = compute
        self.closed = False

    def close(self):
        self.closed = True


def run_client(compute, coro_fn, timeout=5.0):
    """Run ``coro_fn(client)`` on a fresh loop with a client over ``compute``."""
    connection = StandInConnection(compute)
    client = NovaClient(connection, timeout=timeout, max_workers=2)
    try:
        return asyncio.run(coro_fn(client))
    finally:
        client.close()
        assert connection.closed


def service(host="cmp1", **extra):
    return Service(**{**SERVICE_JSON, "host": host, "state": "up", "status": "enabled",
                      "forced_down": False, "disabled_reason": None, **extra})


def test_force_down_puts_forced_down_on_the_hosts_compute_service():
    compute = StandInCompute(services=[service("cmp1", id="svc-1"), service("cmp2", id="svc-2")])
    view = run_client(compute, lambda c: c.force_down("cmp2"))
    assert compute.updates == [("svc-2", {"forced_down": True})]
    assert (view.id, view.host, view.forced_down) == ("svc-2", "cmp2", True)
    assert compute.calls[0] == ("services", {"host": "cmp2", "binary": "nova-compute"})


def test_disable_sends_the_reason_and_enable_only_the_status():
    compute = StandInCompute(services=[service("cmp1", id="svc-1")])
    run_client(compute, lambda c: c.disable("cmp1", "hagent detected host failed."))
    run_client(compute, lambda c: c.enable("cmp1"))
    assert compute.updates == [
        ("svc-1", {"status": "disabled", "disabled_reason": "hagent detected host failed."}),
        ("svc-1", {"status": "enabled"})]


def test_unknown_host_has_no_service_and_cannot_be_forced_down():
    compute = StandInCompute(services=[service("cmp1")])
    assert run_client(compute, lambda c: c.compute_service("cmp9")) is None
    with pytest.raises(NovaError) as caught:
        run_client(compute, lambda c: c.force_down("cmp9"))
    assert (caught.value.status, caught.value.retryable) == (404, False)
    assert "cmp9" in str(caught.value)
    assert compute.updates == []


def test_two_compute_services_on_one_host_are_refused_not_guessed():
    compute = StandInCompute(services=[service("cmp1", id="a"), service("cmp1", id="b")])
    with pytest.raises(NovaError) as caught:
        run_client(compute, lambda c: c.disable("cmp1", "r"))
    assert caught.value.retryable is False
    assert "a, b" in str(caught.value)
    assert compute.updates == []


def test_servers_on_host_asks_all_projects_on_that_host_and_drops_other_hosts():
    on_host = Server(**SERVER_JSON)
    elsewhere = Server(**{**SERVER_JSON, "id": "other", "OS-EXT-SRV-ATTR:host": "cmp2"})
    compute = StandInCompute(servers=[on_host, elsewhere])
    views = run_client(compute, lambda c: c.servers_on_host("cmp1"))
    assert [v.id for v in views] == [on_host.id]
    assert compute.calls == [("servers", {"details": True, "all_projects": True,
                                          "compute_host": "cmp1"})]


def migration(ident, status, **extra):
    """An os-migrations entry as Nova 34 lists it at microversion 2.94."""
    body = {"id": ident, "uuid": f"m-{ident}", "instance_uuid": SERVER_JSON["id"],
            "source_compute": "cmp1", "source_node": "cmp1", "dest_compute": "cmp2",
            "dest_node": "cmp2", "dest_host": "10.0.0.2", "status": status,
            "migration_type": "evacuation", "created_at": "2026-11-25T17:00:00.000000",
            "updated_at": None, "old_instance_type_id": 1, "new_instance_type_id": 1,
            **extra}
    return Migration.existing(**body)


def test_evacuations_ask_for_the_servers_evacuations_from_the_host_newest_first():
    """Nova's integer id orders them (the sdk would otherwise name a migration by its
    uuid); entries of another server, host or type are dropped even if Nova sent them."""
    compute = StandInCompute(migrations=[
        migration(7, "done"), migration(12, "pre-migrating"), migration(9, "error"),
        migration(13, "accepted", instance_uuid="other"),
        migration(14, "accepted", source_compute="cmp3"),
        migration(15, "finished", migration_type="resize")])
    views = run_client(compute, lambda c: c.evacuations(SERVER_JSON["id"], "cmp1"))
    assert [(v.id, v.status, v.source, v.dest) for v in views] == [
        (12, "pre-migrating", "cmp1", "cmp2"), (9, "error", "cmp1", "cmp2"),
        (7, "done", "cmp1", "cmp2")]
    assert views[0].uuid == "m-12" and views[0].instance == SERVER_JSON["id"]
    assert compute.calls == [("migrations", {"server_id": SERVER_JSON["id"],
                                             "source_compute": "cmp1",
                                             "migration_type": "evacuation"})]


def test_server_is_none_when_nova_does_not_know_it():
    compute = StandInCompute(servers=[Server(**SERVER_JSON)])
    assert run_client(compute, lambda c: c.server("gone")) is None
    assert run_client(compute, lambda c: c.server(SERVER_JSON["id"])).host == "cmp1"


def test_errors_raised_in_the_thread_come_back_as_nova_errors():
    compute = StandInCompute()
    compute.raise_on["evacuate_server"] = http_error(
        400, {"badRequest": {"message": "Compute service of cmp1 is still in use.", "code": 400}})
    with pytest.raises(NovaError) as caught:
        run_client(compute, lambda c: c.evacuate("s1", "cmp2"))
    assert (caught.value.status, caught.value.retryable) == (400, False)
    assert str(caught.value).startswith("evacuate server s1: HTTP 400")
    assert compute.calls == [("evacuate_server", "s1", "cmp2")]


def test_a_call_without_answer_times_out_as_retryable():
    compute = StandInCompute(services=[service("cmp1")])
    compute.block = threading.Event()
    try:
        with pytest.raises(NovaError) as caught:
            run_client(compute, lambda c: c.compute_service("cmp1"), timeout=0.05)
    finally:
        compute.block.set()
    assert (caught.value.status, caught.value.retryable) == (None, True)
    assert "nova_timeout" in str(caught.value)


def test_reset_state_refuses_other_states_before_calling_nova():
    compute = StandInCompute()
    with pytest.raises(ValueError):
        run_client(compute, lambda c: c.reset_state("s1", "stopped"))
    run_client(compute, lambda c: c.reset_state("s1", "error"))
    assert compute.calls == [("reset_server_state", "s1", "error")]


def test_world_changing_calls_are_logged_with_their_subject(caplog):
    compute = StandInCompute(services=[service("cmp1", id="svc-1")])
    caplog.set_level("INFO", logger="recovery.nova")
    run_client(compute, lambda c: c.force_down("cmp1"))
    run_client(compute, lambda c: c.evacuate("s1"))
    text = caplog.text
    assert "force down nova-compute on host cmp1 (service svc-1)" in text
    assert "evacuate server s1" in text


# --- connection from clouds.yaml ----------------------------------------------------------------

CLOUDS_YAML = """\
clouds:
  hagent:
    auth:
      auth_url: http://127.0.0.1:9/v3
      username: admin
      password: secret
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
"""


def test_connect_pins_the_compute_microversion_and_the_timeout(tmp_path: Path, monkeypatch):
    path = tmp_path / "clouds.yaml"
    path.write_text(CLOUDS_YAML)
    path.chmod(0o600)
    monkeypatch.setenv("OS_CLOUD", "elsewhere")  # ignored: only the file counts
    conn = connect(path, "hagent", timeout=7.0)
    try:
        request = conn.config._get_version_request("compute", None)
        assert request.default_microversion == COMPUTE_MICROVERSION == "2.94"
        assert conn.session.timeout == 7.0
        assert conn.config.name == "hagent"
    finally:
        conn.close()


def test_connect_refuses_a_missing_file_and_an_unknown_cloud(tmp_path: Path):
    with pytest.raises(NovaConfigError, match="does not exist"):
        connect(tmp_path / "absent.yaml", "hagent", timeout=1.0)
    path = tmp_path / "clouds.yaml"
    path.write_text(CLOUDS_YAML)
    path.chmod(0o600)
    with pytest.raises(NovaConfigError, match="'other'") as caught:
        connect(path, "other", timeout=1.0)
    assert caught.value.retryable is False


def test_connect_warns_about_a_file_others_can_read(tmp_path: Path, caplog):
    path = tmp_path / "clouds.yaml"
    path.write_text(CLOUDS_YAML)
    path.chmod(0o644)
    connect(path, "hagent", timeout=1.0).close()
    assert "chmod 600" in caplog.text


def test_from_config_uses_the_recovery_section(tmp_path: Path):
    from hagent.config import RecoveryConfig

    path = tmp_path / "clouds.yaml"
    path.write_text(CLOUDS_YAML)
    path.chmod(0o600)
    client = NovaClient.from_config(RecoveryConfig(clouds_yaml=path, nova_timeout=4.0,
                                                   max_concurrent_evacuations=3))
    try:
        assert client.timeout == 4.0
        assert client._pool._max_workers == 7
    finally:
        client.close()


def test_stand_in_matches_openstacksdk_signatures():
    """The stand-in above must keep calling openstacksdk's real method names."""
    from openstack.compute.v2._proxy import Proxy

    for name in ("services", "update_service", "servers", "get_server", "evacuate_server",
                 "reset_server_state", "stop_server", "start_server", "server_actions",
                 "aggregates", "add_host_to_aggregate", "migrations"):
        assert callable(getattr(Proxy, name, None)), name
    # the query names the client passes are ones the sdk maps to os-migrations filters
    from openstack.compute.v2.migration import Migration as SdkMigration
    mapped = SdkMigration._query_mapping._mapping
    assert mapped["server_id"] == "instance_uuid"
    assert {"source_compute", "migration_type"} <= set(mapped)
