"""The simulated Nova's rules and transitions, on a clock the test moves (no sockets, no
sleeps): service liveness from heartbeats, evacuate's checks in Nova's order, the end state
by microversion, scheduling failures, stop/start/reset-state, the disable-before-force-down
trap, migrations completed by a returning compute, and what the invariant checker sees."""
from __future__ import annotations

import pytest

from hagent.lab.nova import states as st
from hagent.lab.nova.model import Context, HostSpec, NovaError, NovaModel, Timings

ADMIN = Context("u-admin", "p-admin", True)
DEMO = Context("u-demo", "p-demo", False)
T = Timings()  # real-Nova-like defaults: evacuation ~3 s, service_down_time 10 s
#: POST evacuate -> ACTIVE on the destination (`host` moved) when it ends running, alone
#: on its destination: scheduled, claimed and spawned, moved (under the resource lock)
EVACUATED = T.evacuate_schedule + T.evacuate_spawn + T.resource_lock
#: ... and when it ends stopped (spawned, powered off, then moved)
EVACUATED_STOPPED = EVACUATED + T.evacuate_power_off


class Clock:
    def __init__(self, model: NovaModel, now: float) -> None:
        self.model, self.now = model, now

    def run(self, seconds: float) -> float:
        self.now += seconds
        self.model.advance(self.now + 1e-9)  # steps due exactly now run, whatever rounding
        return self.now


@pytest.fixture
def cloud():
    model = NovaModel(["n1", "n2", "n3"], now=100.0, wall_offset=1.7e9)
    return model, Clock(model, 100.0)


def boot(model: NovaModel, clock: Clock, host: str, ctx: Context = ADMIN, **kw) -> str:
    server = model.boot(ctx, clock.now, name="vm", flavor_ref="10", image_ref="img",
                        request_id="req-boot", availability_zone=f"nova:{host}", **kw)
    clock.run(T.boot)
    assert model.servers[server.id].status == "ACTIVE"
    return server.id


def evacuate(model: NovaModel, clock: Clock, sid: str, mv=(2, 94), **kw) -> None:
    model.evacuate(ADMIN, sid, clock.now, request_id=f"req-ev-{clock.now}", microversion=mv,
                   **kw)


def test_boot_pinned_runs_on_its_host_and_is_wanted(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n2")
    server = model.servers[sid]
    assert (server.host, server.vm_state, server.task_state, server.power_state) == \
        ("n2", st.ACTIVE, None, st.RUNNING)
    assert model.running()["n2"] == [sid]
    assert [a.action for a in model.actions[sid]] == ["create"]
    assert model.checker.report(clock.now)["ok"]


def test_service_goes_down_within_service_down_time_of_the_power_off(cloud):
    model, clock = cloud
    host = model.hosts["n1"]
    clock.run(5.0)
    model.power_off("n1", clock.now)
    # last heartbeat at most report_interval before the power-off
    assert model.service_is_up(host, clock.now)
    clock.run(T.service_down_time - T.report_interval - 0.01)
    assert model.service_is_up(host, clock.now)
    clock.run(T.report_interval + 0.02)
    assert not model.service_is_up(host, clock.now)
    model.power_on("n1", clock.now)
    assert model.service_is_up(host, clock.now)


def test_evacuate_refused_while_source_up_accepted_after_force_down(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.power_off("n1", clock.now)
    with pytest.raises(NovaError) as exc:
        evacuate(model, clock, sid)
    assert (exc.value.status, exc.value.message) == (400, "Compute service of n1 is still in use.")
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid)
    server = model.servers[sid]
    assert (server.status, server.task_state) == ("REBUILD", st.REBUILDING)
    # the destination claimed it and starts: nothing on its hypervisor yet, the server's
    # host stays the source until the rebuild is finished (as real Nova 34 shows)
    clock.run(T.evacuate_schedule)
    dest = model.migrations[-1].dest
    assert dest in ("n2", "n3") and model.usage(dest)["instances"] == 1  # Placement's
    assert model.usage(dest, tracked=True)["instances"] == 0  # not claimed yet
    clock.run(T.evacuate_spawn * 0.1)
    assert (server.host, server.task_state, server.power_state) == \
        ("n1", st.REBUILDING, st.NOSTATE)
    assert (model.migrations[-1].status, model.usage(dest, tracked=True)["instances"]) == \
        ("pre-migrating", 1)
    clock.run(T.evacuate_spawn * 0.1)
    assert server.task_state == st.REBUILD_BLOCK_DEVICE_MAPPING
    clock.run(T.evacuate_spawn * 0.2)
    assert server.task_state == st.REBUILD_SPAWNING and server.status == "REBUILD"
    clock.run(T.evacuate_spawn * 0.6)
    assert (server.status, server.task_state, server.power_state, server.host) == \
        ("ACTIVE", None, st.RUNNING, "n1")
    assert model.running()[dest] == [sid]
    clock.run(T.resource_lock)
    assert (server.host, model.migrations[-1].status) == (dest, "done")
    assert model.usage(dest)["instances"] == 1
    assert [a.action for a in model.server_actions(ADMIN, sid)] == ["evacuate", "create"]
    report = model.checker.report(clock.now)
    assert report["ok"] and report["evacuations"] == {sid: 1}
    assert [c["status"] for c in report["evacuate_calls"][sid]] == [400, 200]
    (outage,) = report["outages"]
    assert outage["seconds"] == pytest.approx(T.evacuate_schedule + T.evacuate_spawn)


def test_evacuate_accepted_once_the_service_is_reported_down(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.power_off("n1", clock.now)
    clock.run(T.service_down_time + 0.01)
    evacuate(model, clock, sid)
    assert model.servers[sid].task_state == st.REBUILDING


@pytest.mark.parametrize("mv, end", [((2, 94), "ACTIVE"), ((2, 95), "SHUTOFF")])
def test_end_state_depends_on_the_microversion(cloud, mv, end):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.power_off("n1", clock.now)
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid, mv=mv)
    clock.run(EVACUATED_STOPPED + 0.01)
    server = model.servers[sid]
    assert server.status == end and server.host != "n1"
    assert model.running()[server.host] == ([sid] if end == "ACTIVE" else [])
    # 2.95 stopping it is Nova's doing, asked for by the caller: not "lost"
    assert model.checker.report(clock.now)["lost"] == []


def test_a_stopped_server_stays_stopped_after_evacuation_at_2_94(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.stop(ADMIN, sid, clock.now, "req-stop")
    clock.run(T.stop)
    assert model.servers[sid].status == "SHUTOFF"
    model.power_off("n1", clock.now)
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid)
    clock.run(T.evacuate_schedule + T.evacuate_spawn)
    # Nova spawns it (ACTIVE, still on the source), then powers it off again, and only
    # then moves it: SHUTOFF on the source for a moment (as real Nova 34 shows)
    server = model.servers[sid]
    assert (server.status, server.task_state, server.host) == ("ACTIVE", None, "n1")
    clock.run(T.evacuate_power_off * 0.2)
    assert server.task_state == st.POWERING_OFF
    clock.run(T.evacuate_power_off * 0.8)
    assert (server.status, server.task_state, server.host) == ("SHUTOFF", None, "n1")
    clock.run(T.resource_lock)
    assert (server.status, server.host in ("n2", "n3")) == ("SHUTOFF", True)
    assert model.running() == {"n1": [], "n2": [], "n3": []}
    (evacuation, _, _) = model.server_actions(ADMIN, sid)
    assert [e.event for e in evacuation.events] == \
        ["rebuild_server", "compute_rebuild_instance", "compute_stop_instance"]


def test_evacuate_checks_in_novas_order(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")

    def refused(**kw) -> tuple[int, str]:
        with pytest.raises(NovaError) as exc:
            evacuate(model, clock, sid, **kw)
        return exc.value.status, exc.value.message

    assert refused(force=True)[0] == 400
    assert refused(host="nowhere") == (404, "Compute host nowhere not found.")
    assert refused(host="n1") == (400, "The target host can't be the same one.")
    assert refused(host="n2") == (400, "Compute service of n1 is still in use.")
    with pytest.raises(NovaError) as exc:
        model.evacuate(DEMO, sid, clock.now, request_id="r", microversion=(2, 94))
    assert exc.value.status == 404  # another project's server is not visible
    # a server that is building (never launched) cannot be evacuated: 409
    other = model.boot(ADMIN, clock.now, name="b", flavor_ref="10", image_ref="i",
                       request_id="r", availability_zone="nova:n1")
    clock.run(T.boot * 0.5)  # scheduled on n1, still spawning
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    with pytest.raises(NovaError) as exc:
        evacuate(model, clock, other.id)
    assert exc.value.status == 409 and "vm_state building" in exc.value.message


def test_no_valid_host_turns_the_server_to_error_after_accepting(cloud):
    model = NovaModel({"n1": HostSpec(), "n2": HostSpec(vcpus=1, cpu_allocation_ratio=1.0)},
                      now=0.0)
    clock = Clock(model, 0.0)
    busy = boot(model, clock, "n2")
    sid = boot(model, clock, "n1")
    model.power_off("n1", clock.now)
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid, host="n2")  # explicit host, no room: 200, then ERROR
    clock.run(T.evacuate_schedule)
    server = model.servers[sid]
    assert (server.status, server.host, server.task_state) == ("ERROR", "n1", None)
    assert server.fault["message"].startswith("No valid host was found.")
    (act, _) = model.server_actions(ADMIN, sid)
    assert act.action == "evacuate" and act.message == "Error"
    assert model.migrations[-1].status == "error"
    assert model.checker.report(clock.now)["lost"] == [sid]
    assert busy in model.running()["n2"]


def test_disabled_and_down_targets_are_not_scheduled(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    for host in ("n1", "n3"):
        model.power_off(host, clock.now)
        model.update_service(model.hosts[host].service_uuid, clock.now, forced_down=True)
    model.update_service(model.hosts["n2"].service_uuid, clock.now, status="disabled",
                         disabled_reason="maintenance")
    evacuate(model, clock, sid)
    clock.run(T.evacuate_schedule)
    assert model.servers[sid].status == "ERROR"
    # ERROR servers may be evacuated again, and end ACTIVE (Nova ignores 2.95's target then)
    model.update_service(model.hosts["n2"].service_uuid, clock.now, status="enabled")
    evacuate(model, clock, sid, mv=(2, 95))
    clock.run(EVACUATED)
    assert (model.servers[sid].status, model.servers[sid].host) == ("ACTIVE", "n2")


def test_a_second_evacuate_during_the_first_is_accepted_but_only_one_rebuild_spawns(cloud):
    """Nova checks no task_state for evacuate: both are accepted and both destinations
    start a rebuild, but each rebuild step saves with an expected task_state, so the one
    that comes second fails there (vm_state error, its migration failed) and spawns
    nothing; the other finishes. No double run (real Nova 34 showed the same)."""
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.power_off("n1", clock.now)
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid, host="n2")
    evacuate(model, clock, sid, host="n3")
    assert model.evacuation_count(sid) == 2
    clock.run(EVACUATED + 0.01)
    server = model.servers[sid]
    assert (server.status, server.host) == ("ACTIVE", "n2")
    assert model.running() == {"n1": [], "n2": [sid], "n3": []}
    assert [m.status for m in model.migrations] == ["done", "failed"]
    second, first, _ = model.server_actions(ADMIN, sid)
    assert (first.message, second.message) == (None, "Error")
    assert "Conflict updating instance" in second.events[-1].details
    report = model.checker.report(clock.now)
    assert report["ok"] and report["double_runs"] == []
    # the server is on an up host now: a third call is refused
    with pytest.raises(NovaError) as exc:
        evacuate(model, clock, sid)
    assert exc.value.status == 400


def test_a_second_evacuate_after_the_first_spawned_runs_the_server_twice(cloud):
    """Between the first rebuild's end state and the resource tracker moving ``host`` to
    the destination, the server looks untouched on its (down) source with no task: an
    evacuate then is accepted and, nothing racing it, spawns a second copy. A caller that
    re-evacuates on "host is still the source" has to wait for the task to clear AND the
    host to move, or read the migration."""
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.power_off("n1", clock.now)
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid, host="n2")
    clock.run(T.evacuate_schedule + T.evacuate_spawn)
    server = model.servers[sid]
    assert (server.status, server.task_state, server.host) == ("ACTIVE", None, "n1")
    evacuate(model, clock, sid, host="n3")
    clock.run(EVACUATED)
    assert (server.status, server.host) == ("ACTIVE", "n3")
    assert model.running() == {"n1": [], "n2": [sid], "n3": [sid]}
    assert [m.status for m in model.migrations] == ["done", "done"]
    (double,) = model.checker.report(clock.now)["double_runs"]
    assert double["hosts"] == ["n2", "n3"]


def test_evacuating_an_unfenced_host_is_a_double_run(cloud):
    """Forcing down a host whose guests still run (only nova-compute died) lets Nova
    evacuate them: the checker records both copies."""
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.stop_compute("n1", clock.now)
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid)
    clock.run(EVACUATED)
    (double,) = model.checker.report(clock.now + 0.5)["double_runs"]
    assert double["hosts"][0] == "n1" and double["end"] is None
    # nova-compute coming back destroys the evacuated copy and completes the migration
    model.start_compute("n1", clock.now + 1.0)
    assert sid not in model.running()["n1"]
    assert model.migrations[-1].status == "completed"
    assert model.checker.report(clock.now + 2.0)["double_runs"][0]["end"] == clock.now + 1.0


def test_forced_down_cannot_be_unset_until_the_compute_restarted(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    uuid1 = model.hosts["n1"].service_uuid
    model.power_off("n1", clock.now)
    model.update_service(uuid1, clock.now, forced_down=True)
    evacuate(model, clock, sid)
    clock.run(EVACUATED)
    with pytest.raises(NovaError) as exc:
        model.update_service(uuid1, clock.now, forced_down=False)
    assert exc.value.status == 400 and "`done` evacuation" in exc.value.message
    model.power_on("n1", clock.now)
    model.update_service(uuid1, clock.now, forced_down=False)
    assert model.service_is_up(model.hosts["n1"], clock.now)


def test_disabling_a_just_killed_host_before_force_down_blocks_in_rpc(cloud):
    model, clock = cloud
    uuid1 = model.hosts["n1"].service_uuid
    model.power_off("n1", clock.now)
    _, wait = model.update_service(uuid1, clock.now, status="disabled",
                                   disabled_reason="down")
    assert wait == T.rpc_response_timeout
    assert model.hosts["n1"].disabled  # saved before the RPC call, as Nova does
    model.update_service(uuid1, clock.now, forced_down=True)
    _, wait = model.update_service(uuid1, clock.now, status="enabled")
    assert wait == 0.0  # forced down: nova-api skips the RPC


def test_updating_a_non_compute_service_is_refused(cloud):
    model, _ = cloud
    scheduler = next(s for s in model.services() if s["binary"] == "nova-scheduler")
    with pytest.raises(NovaError) as exc:
        model.update_service(scheduler["uuid"], 0.0, status="disabled")
    assert exc.value.status == 400
    with pytest.raises(NovaError) as exc:
        model.update_service(model.hosts["n1"].service_uuid, 0.0, status="enabled",
                             disabled_reason="x")
    assert exc.value.status == 400


def test_stop_and_start_check_state_and_wait_for_a_live_compute(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    with pytest.raises(NovaError) as exc:
        model.start(ADMIN, sid, clock.now, "r")
    assert exc.value.status == 409 and "vm_state active" in exc.value.message
    model.stop(ADMIN, sid, clock.now, "r1")
    with pytest.raises(NovaError) as exc:
        model.stop(ADMIN, sid, clock.now, "r2")
    assert exc.value.status == 409 and "task_state powering-off" in exc.value.message
    model.stop_compute("n1", clock.now)
    clock.run(T.stop * 3)
    assert model.servers[sid].status == "ACTIVE"  # the stop waits for nova-compute
    model.start_compute("n1", clock.now)
    clock.run(T.retry + 0.01)
    assert model.servers[sid].status == "SHUTOFF" and model.running()["n1"] == []
    model.start(ADMIN, sid, clock.now, "r3")
    clock.run(T.start)
    assert model.servers[sid].status == "ACTIVE" and model.running()["n1"] == [sid]
    assert [a.action for a in model.server_actions(ADMIN, sid)] == ["start", "stop", "create"]


def test_reset_state_clears_the_task_and_the_pending_step_gives_up(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    model.stop(ADMIN, sid, clock.now, "r1")
    model.reset_state(ADMIN, sid, "error", clock.now, "r2")
    assert (model.servers[sid].status, model.servers[sid].task_state) == ("ERROR", None)
    clock.run(T.stop)
    assert model.servers[sid].status == "ERROR" and model.running()["n1"] == [sid]
    model.reset_state(ADMIN, sid, "active", clock.now, "r3")
    assert model.servers[sid].status == "ACTIVE"
    with pytest.raises(NovaError):
        model.reset_state(DEMO, sid, "active", clock.now, "r4")


def test_metadata_rules(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1", metadata={"HA_Enabled": "True"})
    assert model.set_metadata(ADMIN, sid, {"a": "1"}, clock.now, replace_all=False) == \
        {"HA_Enabled": "True", "a": "1"}
    assert model.set_metadata(ADMIN, sid, {"b": "2"}, clock.now, replace_all=True) == {"b": "2"}
    with pytest.raises(NovaError) as exc:
        model.delete_metadata_item(ADMIN, sid, "nope", clock.now)
    assert exc.value.status == 404
    model.reset_state(ADMIN, sid, "error", clock.now, "r")
    with pytest.raises(NovaError) as exc:
        model.set_metadata(ADMIN, sid, {"c": "3"}, clock.now, replace_all=False)
    assert exc.value.status == 409 and "update metadata" in exc.value.message


def test_aggregates_and_availability_zones_steer_the_scheduler(cloud):
    model, clock = cloud
    agg = model.create_aggregate(ADMIN, "ha-az", "az1", clock.now)
    model.aggregate_add_host(ADMIN, str(agg.id), "n1", clock.now)
    model.aggregate_add_host(ADMIN, str(agg.id), "n2", clock.now)
    with pytest.raises(NovaError) as exc:
        model.aggregate_add_host(ADMIN, str(agg.id), "n2", clock.now)
    assert exc.value.status == 409
    other = model.create_aggregate(ADMIN, "other", "az2", clock.now)
    with pytest.raises(NovaError) as exc:
        model.aggregate_add_host(ADMIN, str(other.id), "n1", clock.now)
    assert exc.value.status == 400 and "availability zone" in exc.value.message
    sid = model.boot(ADMIN, clock.now, name="vm", flavor_ref="10", image_ref="i",
                     request_id="r", availability_zone="az1").id
    clock.run(T.boot)
    source = model.servers[sid].host
    assert source in ("n1", "n2")
    model.power_off(source, clock.now)
    model.update_service(model.hosts[source].service_uuid, clock.now, forced_down=True)
    evacuate(model, clock, sid)
    clock.run(EVACUATED)
    assert model.servers[sid].host == ({"n1", "n2"} - {source}).pop()  # stays in az1
    model.aggregate_set_metadata(ADMIN, str(agg.id), {"availability_zone": None, "k": "v"},
                                 clock.now)
    assert (agg.availability_zone, agg.metadata) == (None, {"k": "v"})
    with pytest.raises(NovaError) as exc:
        model.aggregate_remove_host(ADMIN, str(agg.id), "n3", clock.now)
    assert exc.value.status == 404


def test_an_outdated_power_observation_cuts_runs_at_the_switchs_time(cloud):
    model, clock = cloud
    sid = boot(model, clock, "n1")
    off_at = clock.now + 0.5
    # the model still believes n2 is on and starts something there after the real power-off
    late = boot(model, clock, "n2")
    model.observe_power("n2", on=False, boot=1, off_at=off_at - T.boot, at=clock.now)
    assert late not in model.running()["n2"]
    runs = model.checker.report(clock.now)
    assert runs["lost"] == [late]  # it never ran: the checker dropped the run
    assert model.running()["n1"] == [sid]
    model.observe_power("n2", on=True, boot=2, off_at=None, at=clock.now + 1)
    assert model.hosts["n2"].power_on and model.hosts["n2"].boot == 2


def test_a_build_interrupted_by_a_compute_restart_shows_error_then_completes(cloud):
    """A restarting nova-compute errors out the builds placed on it that it has not
    claimed (real Nova 34 showed the ERROR); the build request still queued for it then
    builds the server after all."""
    model, clock = cloud
    sid = model.boot(ADMIN, clock.now, name="vm", flavor_ref="10", image_ref="img",
                     request_id="req-boot", availability_zone="nova:n1").id
    model.stop_compute("n1", clock.now)
    clock.run(T.boot)
    assert (model.servers[sid].vm_state, model.servers[sid].host) == (st.BUILDING, "n1")
    model.start_compute("n1", clock.now)
    server = model.servers[sid]
    assert (server.status, server.task_state, server.fault) == ("ERROR", None, None)
    clock.run(T.retry)
    assert (server.status, server.host) == ("ACTIVE", "n1")
    assert model.running()["n1"] == [sid]


def test_evacuations_sent_together_herd_onto_one_host_and_queue_there(cloud):
    """The RAM weigher reads the compute node records, which count an evacuation only once
    its destination claimed it: evacuations scheduled together all pick the same host (as
    real Nova 34 did). Their rebuilds end together and finish_evacuation takes that host's
    resource lock one at a time, so the last one shows ACTIVE on its dead source for
    n x resource_lock: the window in which "ACTIVE, no task, on the source" does not mean
    "not evacuated"."""
    model, clock = cloud
    ids = [boot(model, clock, "n1") for _ in range(5)]
    model.power_off("n1", clock.now)
    model.update_service(model.hosts["n1"].service_uuid, clock.now, forced_down=True)
    for sid in ids:
        evacuate(model, clock, sid)
    clock.run(T.evacuate_schedule)
    assert {m.dest for m in model.migrations} == {"n2"}
    clock.run(T.evacuate_spawn)
    servers = [model.servers[sid] for sid in ids]
    assert all((s.status, s.task_state, s.host) == ("ACTIVE", None, "n1") for s in servers)
    for moved in range(1, 6):
        clock.run(T.resource_lock)
        assert sum(s.host == "n2" for s in servers) == moved
    assert model.running()["n2"] == sorted(ids) and model.checker.report(clock.now)["ok"]
