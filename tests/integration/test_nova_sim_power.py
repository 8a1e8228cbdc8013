"""The Nova simulator with real lab power switches (hostpower processes): each host's running
instances live in its switch; a power-off (the lab's, or the watchdog's) stops them at the
switch's own moment while Nova's database still says ACTIVE; evacuating after the fence
brings them back with no double run; evacuating a host that was only forced down (nova-compute
dead, guests alive) is caught by the invariant checker as a double run."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hagent.lab import configs, hostpower, power
from hagent.lab.nova import NovaSim, Timings

from lease_helpers import REPO, wait_for

pytestmark = pytest.mark.xdist_group("lab")

FAST = Timings().scaled(0.1)
HOSTS = ["node1", "node2", "node3"]


@pytest.fixture
def lab(tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    power.start_switches(tmp_path, {h: configs.power_socket_path(tmp_path, h) for h in HOSTS},
                         env)
    sim = NovaSim.start(tmp_path / "nova", HOSTS, lab_dir=tmp_path, timings=FAST)
    yield tmp_path, sim
    sim.stop()
    power.stop_switches(tmp_path)


def switch_instances(lab_dir: Path, host: str) -> list[str]:
    return sorted(power.power_state(lab_dir, host)["instances"])


def test_running_instances_live_in_the_switch_and_a_power_off_stops_them(lab):
    lab_dir, sim = lab
    booted = sim.boot(n_ha=2, n_non_ha=1, hosts=["node1"])
    on_node1 = sorted(booted["ha"] + booted["non_ha"])
    assert sim.state()["hosts"]["node1"]["switch"]
    wait_for(lambda: switch_instances(lab_dir, "node1") == on_node1, 5.0,
             "node1's switch to list its instances")

    record = power.power(lab_dir, "node1", "off")  # as `hagent lab kill-host node1`
    state = wait_for(lambda: (s := sim.state())["running"]["node1"] == [] and s, 5.0,
                     "the simulator to see node1 off")
    host = state["hosts"]["node1"]
    assert host["power_on"] is False and host["off_at"] == record["off_at_monotonic"]
    # Nova's database has not noticed: still ACTIVE on node1, service still up for now
    assert {state["servers"][i]["status"] for i in on_node1} == {"ACTIVE"}
    assert {state["servers"][i]["host"] for i in on_node1} == {"node1"}
    report = sim.report()
    assert sorted(report["lost"]) == on_node1
    assert {o["start"] for o in report["outages"]} == {record["off_at_monotonic"]}
    wait_for(lambda: not sim.state()["hosts"]["node1"]["service_up"],
             FAST.service_down_time + 2.0, "node1's service to be reported down")

    # the fenced host's HA instances come back elsewhere: nothing lost, no double run
    conn = sim.connect(compute_api_version="2.94")
    (service,) = conn.compute.services(binary="nova-compute", host="node1")
    conn.compute.update_service_forced_down(service, forced=True)
    for sid in on_node1:
        conn.compute.evacuate_server(sid)
    state = wait_for(lambda: (s := sim.state()) and all(
        s["servers"][i]["status"] == "ACTIVE" and s["servers"][i]["host"] != "node1"
        for i in on_node1) and s, 10.0, "the evacuations")
    for sid in on_node1:
        dest = state["servers"][sid]["host"]
        wait_for(lambda: sid in switch_instances(lab_dir, dest), 5.0, f"{dest}'s switch")
    report = sim.report()
    assert report["ok"] and report["double_runs"] == [] and report["lost"] == []
    assert report["evacuations"] == {sid: 1 for sid in on_node1}

    # power back on: nova-compute restarts, its evacuation records complete, force-up works
    power.power(lab_dir, "node1", "on")
    wait_for(lambda: sim.state()["hosts"]["node1"]["power_on"], 5.0, "node1 back on")
    assert {m["status"] for m in sim.state()["migrations"]} == {"completed"}
    conn.compute.update_service_forced_down(service, forced=False)
    assert sim.state()["hosts"]["node1"]["service_up"]


def test_a_watchdog_power_off_is_dated_by_the_switch(lab):
    lab_dir, sim = lab
    (sid,) = sim.boot(n_ha=1, hosts=["node2"])["ha"]
    wait_for(lambda: switch_instances(lab_dir, "node2") == [sid], 5.0, "node2's switch")
    deadline = time.monotonic() + 0.3
    hostpower.call(power.socket_of(lab_dir, "node2"), {"cmd": "arm", "deadline": deadline})
    state = wait_for(lambda: (s := sim.state())["running"]["node2"] == [] and s, 5.0,
                     "the watchdog power-off")
    off_at = state["hosts"]["node2"]["off_at"]
    assert deadline <= off_at < deadline + 1.0
    assert power.power_state(lab_dir, "node2")["reason"] == "watchdog"
    (outage,) = sim.report()["outages"]
    assert outage["start"] == off_at and outage["end"] is None


def test_evacuating_a_host_that_still_runs_its_guests_is_caught_as_a_double_run(lab):
    """Negative test: force_down without fencing. node3's nova-compute dies but the host
    (and its guests) stay powered; the operator forces it down and evacuates anyway."""
    lab_dir, sim = lab
    (sid,) = sim.boot(n_ha=1, hosts=["node3"])["ha"]
    wait_for(lambda: switch_instances(lab_dir, "node3") == [sid], 5.0, "node3's switch")
    sim.stop_compute("node3")
    conn = sim.connect(compute_api_version="2.94")
    (service,) = conn.compute.services(binary="nova-compute", host="node3")
    conn.compute.update_service_forced_down(service, forced=True)
    conn.compute.evacuate_server(sid)
    state = wait_for(lambda: (s := sim.state())["servers"][sid]["status"] == "ACTIVE"
                     and s["servers"][sid]["host"] != "node3" and s, 10.0, "the evacuation")
    dest = state["servers"][sid]["host"]
    wait_for(lambda: sid in switch_instances(lab_dir, dest), 5.0, f"{dest}'s switch")
    assert switch_instances(lab_dir, "node3") == [sid]  # the old copy still runs
    report = wait_for(lambda: (r := sim.report())["double_runs"] and r, 5.0,
                      "the checker to see the double run")
    (double,) = report["double_runs"]
    assert double["instance"] == sid and double["hosts"] == sorted(["node3", dest])
    assert double["end"] is None and not report["ok"]
