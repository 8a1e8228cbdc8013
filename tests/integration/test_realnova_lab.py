"""The real Nova lab (hagent.lab.realnova): Keystone, Placement and Nova 34 with one
fake-driver nova-compute per host, started once for the module (~35 s; a first run on a
machine also installs MariaDB, RabbitMQ and the virtualenv, ~40 s more).

Host cmp3 has a lab power switch (a hostpower process, as in `hagent lab up`); cmp1 and cmp2
have none, so the lab powers them itself. Everything goes through openstacksdk and the
RealNova handle, as the contract suite and the end-to-end tests do.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from hagent.lab import configs, power
from hagent.lab.hostpower import call
from hagent.lab.nova.records import DEFAULT_FLAVORS
from hagent.lab.realnova import RealNova, RealNovaError

from lease_helpers import REPO, wait_for

pytestmark = pytest.mark.xdist_group("realnova")

HOSTS = ["cmp1", "cmp2", "cmp3"]
SWITCHED = "cmp3"
#: service_down_time (10 s) + one report_interval (2 s) + the poll and API's slack.
DOWN_WITHIN = 16.0
#: A nova-compute process starting (imports, RPC, first report) on a loaded 2-core machine.
UP_WITHIN = 60.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    lab_dir = tmp_path_factory.mktemp("realnova")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    (lab_dir / SWITCHED).mkdir()
    power.start_switches(lab_dir, {SWITCHED: configs.power_socket_path(lab_dir, SWITCHED)}, env)
    nova = RealNova.start(lab_dir, HOSTS, lab_dir=lab_dir)
    yield lab_dir, nova
    nova.stop()
    power.stop_switches(lab_dir)


@pytest.fixture(scope="module")
def conn(lab):
    _, nova = lab
    connection = nova.connect(compute_api_version="2.94")
    yield connection
    connection.close()


def compute_state(conn, host: str) -> str:
    (service,) = conn.compute.services(host=host, binary="nova-compute")
    return service.state


def test_ready_means_every_compute_up_and_the_simulators_clouds_and_flavors(lab, conn):
    lab_dir, nova = lab
    assert nova.clouds_yaml == lab_dir / "clouds.yaml"
    assert nova.clouds_yaml.stat().st_mode & 0o777 == 0o600
    assert {s.host: s.state for s in conn.compute.services(binary="nova-compute")} == \
        {h: "up" for h in HOSTS}
    flavors = {f.id: f.name for f in conn.compute.flavors()}
    assert flavors == {f.id: f.name for f in DEFAULT_FLAVORS}
    attached = RealNova.attach(lab_dir)
    assert attached.hosts == HOSTS and attached.auth_url == nova.auth_url
    assert attached.status()[SWITCHED]["switch"] and not attached.status()["cmp1"]["switch"]


def test_boot_pins_servers_to_a_host_with_ha_metadata_in_the_chosen_project(lab, conn):
    _, nova = lab
    ids = nova.boot(n_ha=2, n_non_ha=1, hosts=["cmp2"])
    demo_ids = nova.boot(n_ha=1, hosts=["cmp1"], project="demo")["ha"]
    for server_id in ids["ha"] + ids["non_ha"]:
        server = conn.compute.get_server(server_id)
        assert (server.status, server.compute_host) == ("ACTIVE", "cmp2")
        assert server.metadata.get("HA_Enabled") == ("True" if server_id in ids["ha"] else None)
    demo = nova.connect(demo=True)
    try:
        assert [s.id for s in demo.compute.servers()] == demo_ids
    finally:
        demo.close()
    log = (nova.dir / "realnova" / "logs" / "supervisor.log").read_text()
    assert "unanswered" not in log, "Nova asked a stand-in something it does not answer"


def test_stop_compute_then_evacuate_counts_one_then_start_compute(lab, conn):
    _, nova = lab
    server_id = nova.boot(n_ha=1, hosts=["cmp1"])["ha"][0]
    killed_at = time.monotonic()
    pid = nova.status()["cmp1"]["compute_pid"]
    assert not nova.stop_compute("cmp1")["compute_running"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    wait_for(lambda: compute_state(conn, "cmp1") == "down", DOWN_WITHIN, "cmp1 reported down")
    assert time.monotonic() - killed_at >= 5.0, "down before service_down_time could pass"
    assert conn.compute.get_server(server_id).status == "ACTIVE"  # Nova cannot know

    (service,) = conn.compute.services(host="cmp1", binary="nova-compute")
    conn.compute.update_service_forced_down(service, forced=True)
    conn.compute.get_server(server_id)._action(conn.compute, {"evacuate": {}},
                                               microversion="2.94")
    wait_for(lambda: (s := conn.compute.get_server(server_id)).status == "ACTIVE"
             and s.compute_host != "cmp1", 60.0, "the evacuated server ACTIVE elsewhere",
             period=0.2)
    assert nova.evacuate_count(server_id) == 1
    assert [a["action"] for a in nova.instance_actions(server_id)] == ["evacuate", "create"]

    assert nova.start_compute("cmp1")["compute_running"]

    def forced_up() -> bool:  # refused until the restarted compute cleaned the evacuation
        try:
            conn.compute.update_service_forced_down(service, forced=False)
            return True
        except Exception as exc:  # noqa: BLE001 - openstacksdk's BadRequestException
            assert "Unable to force up host" in str(exc), exc
            return False
    wait_for(forced_up, UP_WITHIN, "forced_down unset on cmp1", period=0.5)
    wait_for(lambda: compute_state(conn, "cmp1") == "up", UP_WITHIN, "cmp1 reported up",
             period=0.5)


def test_power_off_kills_the_compute_power_on_starts_it_with_and_without_a_switch(lab, conn):
    lab_dir, nova = lab
    socket = configs.power_socket_path(lab_dir, SWITCHED)
    call(socket, {"cmd": "power", "action": "off"})   # as `lab kill-host` does
    nova.power("cmp2", "off")                          # no switch: the lab alone
    nova.stop_compute("cmp1")
    nova.power("cmp1", "off")
    wait_for(lambda: not nova.status()[SWITCHED]["compute_running"], 2.0,
             "the power link to kill cmp3's nova-compute")
    status = nova.status()
    assert not status["cmp2"]["compute_running"] and not status["cmp2"]["powered"]
    wait_for(lambda: all(compute_state(conn, h) == "down" for h in HOSTS), DOWN_WITHIN,
             "all three reported down", period=0.2)

    call(socket, {"cmd": "power", "action": "on"})
    nova.power("cmp2", "on")
    nova.power("cmp1", "on")   # powered, but its compute was stopped on purpose: stays so
    wait_for(lambda: nova.status()[SWITCHED]["compute_running"], 2.0,
             "the power link to start cmp3's nova-compute")
    wait_for(lambda: all(compute_state(conn, h) == "up" for h in ("cmp2", SWITCHED)),
             UP_WITHIN, "cmp2 and cmp3 reported up", period=0.5)
    assert not nova.status()["cmp1"]["compute_running"]
    assert compute_state(conn, "cmp1") == "down"
    nova.start_compute("cmp1")
    wait_for(lambda: compute_state(conn, "cmp1") == "up", UP_WITHIN, "cmp1 reported up",
             period=0.5)


def test_stop_ends_every_process_and_removes_the_data(lab):
    lab_dir, nova = lab
    procs = nova.processes()
    assert len(procs) >= 12, procs  # supervisor, mariadb, epmd, rabbitmq, 3 APIs, 5 Novas
    nova.stop()
    gone, alive = psutil.wait_procs(procs, timeout=5.0)
    assert not alive, alive
    assert not (lab_dir / "realnova").exists()
    assert not (lab_dir / "realnova.json").exists()
    assert not (lab_dir / "clouds.yaml").exists()
    assert not Path(nova.record["control_socket"]).exists()


def test_a_failed_start_keeps_its_logs_and_says_which_step_failed(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the APIs cannot bind it.
    with pytest.raises(RealNovaError) as raised:
        RealNova.start(tmp_path, ["cmp1"], bind="192.0.2.1", timeout=120.0)
    message = str(raised.value)
    (kept,) = tmp_path.glob("realnova-failed-*")
    assert f"(logs kept in {kept})" in message
    assert "failed step: configure\nerror: OSError: [Errno 99]" in message
    assert (kept / "failure.txt").read_text().startswith("failed step: configure\n")
    assert "Traceback" in (kept / "supervisor.log").read_text()
    assert not (tmp_path / "realnova").exists()
    assert not (tmp_path / "realnova.json").exists()
