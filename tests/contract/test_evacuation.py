"""Evacuation as the recovery engine drives it (docs/recovery-nova.md "Host failure"):
refused while Nova believes the source compute up, accepted at once after force_down,
the end state at the engine's microversion 2.94 and at openstacksdk's default (2.95+),
one ``evacuate`` instance action per accepted evacuation, and the way back for the host."""
from __future__ import annotations

import openstack.exceptions as osexc
import pytest

from tests.contract.backend import ENGINE_MICROVERSION, Backend

pytestmark = [pytest.mark.xdist_group("realnova"), pytest.mark.timeout(900)]

REASON = "hagent: host failed (contract test)"


def actions(nova: Backend, server_id: str) -> list[str]:
    """The server's instance actions, newest first."""
    return [a.action for a in nova.conn.compute.server_actions(server_id)]


def evacuated(nova: Backend, server_id: str, source: str):
    """Poll until the server was rebuilt away from ``source`` and no task runs; it. Every
    look on the way is checked: the server names its source host for as long as the
    rebuild runs (Nova moves it when the rebuild is finished, end state included)."""
    seen: list[tuple[str, str | None, str]] = []

    def done(server) -> bool:
        seen.append((server.status, server.task_state, server.compute_host))
        return server.compute_host != source and server.task_state is None
    server = nova.wait_server(server_id, done, nova.deadlines.transition,
                              f"evacuation away from {source}")
    assert all(host == source for _, task, host in seen if task is not None), seen
    return server


def events(nova: Backend, server_id: str, action) -> list[tuple[str, str, str]]:
    """(event, host, result) of an instance action, newest first as Nova lists them."""
    detail = nova.conn.compute.get_server_action(action.request_id, server_id)
    return [(e["event"], e["host"], e["result"]) for e in detail.events]


def conductor_host(nova: Backend) -> str:
    (conductor,) = nova.conn.compute.services(binary="nova-conductor")
    return conductor.host


def migrations_of(nova: Backend, server_id: str) -> list[tuple[str, str, str]]:
    return [(m.source_compute, m.dest_compute, m.status) for m in
            nova.conn.compute.migrations(server_id=server_id, migration_type="evacuation")]


def test_evacuation_refused_while_up_accepted_after_force_down_and_the_host_comes_back(nova):
    source, other, target = nova.hosts
    active = nova.boot_on(source)
    stopped = nova.boot_on(source)
    errored = nova.boot_on(source)
    nova.conn.compute.stop_server(stopped)
    nova.conn.compute.reset_server_state(errored, "error")
    nova.wait_status(stopped.id, "SHUTOFF")

    still_in_use = f"Compute service of {source} is still in use."
    with pytest.raises(osexc.BadRequestException, match=still_in_use):
        nova.conn.compute.evacuate_server(active)
    # nova-compute dies: Nova does not know yet and refuses the same way
    nova.stop_compute(source)
    with pytest.raises(osexc.BadRequestException, match=still_in_use):
        nova.conn.compute.evacuate_server(active)
    assert nova.service(source).state == "up"

    # force down first: then disabling does not wait on the dead compute over RPC
    service = nova.conn.compute.update_service_forced_down(nova.service(source), forced=True)
    assert (service.state, service.is_forced_down) == ("down", True)
    impatient = nova.connect(compute_api_version=ENGINE_MICROVERSION,
                             api_timeout=nova.deadlines.rpc_response_timeout / 2)
    service = impatient.compute.disable_service(service, disabled_reason=REASON)
    impatient.close()
    assert (service.status, service.disabled_reason) == ("disabled", REASON)

    # what Nova checks before the source's state
    with pytest.raises(osexc.NotFoundException, match="Compute host no-such-host not found."):
        nova.conn.compute.evacuate_server(active, host="no-such-host")
    with pytest.raises(osexc.BadRequestException,
                       match="The target host can't be the same one."):
        nova.conn.compute.evacuate_server(active, host=source)

    nova.conn.compute.evacuate_server(active)                 # 2.94: the scheduler picks
    nova.conn.compute.evacuate_server(stopped, host=target)   # 2.94, to a named host
    nova.conn.compute.evacuate_server(errored)
    active = evacuated(nova, active.id, source)
    stopped = evacuated(nova, stopped.id, source)
    errored = evacuated(nova, errored.id, source)
    # at 2.94 each comes back as it was, except an error one, rebuilt ACTIVE
    assert active.status == "ACTIVE" and active.compute_host in (other, target)
    assert (stopped.status, stopped.compute_host) == ("SHUTOFF", target)
    assert errored.status == "ACTIVE" and errored.compute_host in (other, target)
    # one action per accepted evacuation; the refused ones left none
    assert actions(nova, active.id) == ["evacuate", "create"]
    assert actions(nova, stopped.id) == ["evacuate", "stop", "create"]
    assert actions(nova, errored.id) == ["evacuate", "resetState", "create"]
    # the conductor's event, then the destination's rebuild (and its stop, for a server
    # that goes back to stopped), listed newest first
    conductor = conductor_host(nova)
    evacuation = next(iter(nova.conn.compute.server_actions(active.id)))
    assert events(nova, active.id, evacuation) == [
        ("compute_rebuild_instance", active.compute_host, "Success"),
        ("rebuild_server", conductor, "Success")]
    evacuation = next(iter(nova.conn.compute.server_actions(stopped.id)))
    assert events(nova, stopped.id, evacuation) == [
        ("compute_stop_instance", target, "Success"),
        ("compute_rebuild_instance", target, "Success"),
        ("rebuild_server", conductor, "Success")]
    nova.poll(lambda: migrations_of(nova, stopped.id) == [(source, target, "done")],
              nova.deadlines.transition, "the evacuation's migration done")

    # the host may not be forced up while its nova-compute has not cleaned up the
    # evacuated instances (migrations still done, not completed)
    with pytest.raises(osexc.BadRequestException, match=f"Unable to force up host {source}"):
        nova.conn.compute.update_service_forced_down(nova.service(source), forced=False)
    nova.start_compute(source)
    nova.poll(lambda: migrations_of(nova, stopped.id) == [(source, target, "completed")],
              nova.deadlines.compute_start, "the restarted compute to complete the migration")
    service = nova.unset_forced_down(source)
    assert service.is_forced_down is False
    service = nova.wait_service(source, "up")
    assert (service.status, service.disabled_reason) == ("disabled", REASON)
    # the evacuated servers stay where they went
    assert nova.conn.compute.get_server(active.id).compute_host == active.compute_host
    assert nova.conn.compute.get_server(stopped.id).compute_host == target


def test_a_dead_compute_turns_down_by_itself_and_the_sdk_default_evacuation_ends_shutoff(nova):
    source = nova.hosts[1]
    server = nova.boot_on(source)
    nova.stop_compute(source)
    service = nova.wait_service(source, "down")
    assert service.is_forced_down is False
    # openstacksdk's own choice (the highest common microversion, 2.95+) stops the server
    default = nova.connect()
    assert default.compute.get_endpoint_data().max_microversion >= (2, 95)
    default.compute.evacuate_server(server)
    default.close()
    server = evacuated(nova, server.id, source)
    assert server.status == "SHUTOFF"
    assert actions(nova, server.id) == ["evacuate", "create"]
    nova.start_compute(source)
    nova.wait_service(source, "up")
    assert nova.conn.compute.get_server(server.id).compute_host == server.compute_host


def test_a_second_evacuate_during_the_first_is_accepted_and_one_of_them_fails(nova):
    """Nova checks no task state before an evacuation, so a repeated call is accepted
    while the first runs. The two then race where Nova does check: each rebuild step on a
    destination saves with an expected task state (and the conductors' Placement claims
    for one consumer may collide), so they cannot both get through; which one fails, and
    whether the other still succeeds, depends on timing (real Nova 34 showed both). This
    is why the engine never repeats an evacuation without reading Nova first."""
    source = nova.hosts[0]
    server = nova.boot_on(source)
    nova.stop_compute(source)
    nova.conn.compute.update_service_forced_down(nova.service(source), forced=True)
    for _ in range(2):
        response = nova.conn.compute.post(f"/servers/{server.id}/action",
                                          json={"evacuate": {}},
                                          microversion=ENGINE_MICROVERSION)
        assert response.status_code == 200, response.text
    assert actions(nova, server.id) == ["evacuate", "evacuate", "create"]

    def evacuations() -> list[list[tuple[str, str, str]]] | None:
        """Each evacuation's events once both have ended: failed in the conductor, or
        the destination's rebuild finished either way."""
        found = [events(nova, server.id, a) for a in nova.conn.compute.server_actions(server.id)
                 if a.action == "evacuate"]
        ended = [e for e in found if any(
            result == "Error" or (name == "compute_rebuild_instance" and result is not None)
            for name, _, result in e)]
        return found if len(ended) == 2 else None
    outcome = nova.poll(evacuations, nova.deadlines.transition, "both evacuations to end")
    failed = [e for e in outcome if any(result == "Error" for _, _, result in e)]
    assert failed, outcome
    if len(failed) == 2:  # neither got through: the server is in error, not rebuilt
        assert nova.conn.compute.get_server(server.id).vm_state == "error"


def test_an_evacuation_nowhere_to_go_is_accepted_then_errors(nova):
    """No valid host: Nova accepts the evacuation (200) and the conductor fails it: the
    server in ERROR on its source with the scheduler's fault, the action in error."""
    source, *others = nova.hosts
    server = nova.boot_on(source)
    nova.conn.compute.update_service_forced_down(nova.service(source), forced=True)
    for host in others:
        nova.conn.compute.disable_service(nova.service(host), disabled_reason=REASON)
    nova.conn.compute.evacuate_server(server)
    server = nova.wait_server(server.id, lambda s: s.status == "ERROR",
                              nova.deadlines.transition, "the evacuation to fail")
    assert (server.compute_host, server.task_state) == (source, None)
    assert server.fault["message"] == \
        "No valid host was found. There are not enough hosts available."
    (evacuation, _) = nova.conn.compute.server_actions(server)
    assert (evacuation.action, evacuation.message) == ("evacuate", "Error")
    detail = nova.conn.compute.get_server_action(evacuation.request_id, server.id)
    assert [(e["event"], e["host"], e["result"], e["details"]) for e in detail.events] == [
        ("rebuild_server", conductor_host(nova), "Error",
         "No valid host was found. There are not enough hosts available.")]
    assert migrations_of(nova, server.id) == [(source, None, "error")]
