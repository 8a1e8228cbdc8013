"""The Nova simulator's small parts: the invariant checker's judgement over a history,
microversion negotiation, fault rules, Keystone tokens, and Nova's status mapping."""
from __future__ import annotations

import pytest

from hagent.lab.nova import identity, states, versions
from hagent.lab.nova.faults import FaultError, Faults
from hagent.lab.nova.invariants import InvariantChecker


def test_checker_finds_overlapping_runs_on_two_hosts():
    checker = InvariantChecker()
    checker.started("vm", "a", 1.0)
    checker.wanted("vm", True, 1.0, "booted")
    checker.started("vm", "b", 5.0)
    checker.stopped("vm", "a", 7.0)
    report = checker.report(10.0)
    assert report["double_runs"] == [{"instance": "vm", "hosts": ["a", "b"], "start": 5.0,
                                      "end": 7.0, "seconds": 2.0}]
    assert not report["ok"] and report["lost"] == [] and report["outages"] == []


def test_checker_outage_ends_when_the_instance_runs_again_and_lost_if_never():
    checker = InvariantChecker()
    for vm in ("x", "y"):
        checker.started(vm, "a", 0.0)
        checker.wanted(vm, True, 0.0, "booted")
    checker.host_lost("a", 2.0)
    checker.started("x", "b", 5.0)
    report = checker.report(9.0)
    assert report["double_runs"] == []
    assert {(o["instance"], o["start"], o["end"]) for o in report["outages"]} == \
        {("x", 2.0, 5.0), ("y", 2.0, None)}
    assert report["lost"] == ["y"] and not report["ok"]


def test_checker_deliberate_stop_is_no_outage_and_handover_at_one_instant_is_none():
    checker = InvariantChecker()
    checker.started("vm", "a", 0.0)
    checker.wanted("vm", True, 0.0, "booted")
    checker.stopped("vm", "a", 3.0)
    checker.started("vm", "b", 3.0)
    checker.wanted("vm", False, 4.0, "stopped through the API")
    checker.stopped("vm", "b", 5.0)
    report = checker.report(6.0)
    assert report["ok"] and report["outages"] == [] and report["double_runs"] == []


def test_checker_drops_a_run_that_started_after_its_host_lost_power():
    checker = InvariantChecker()
    checker.started("vm", "a", 0.0)
    checker.started("vm", "b", 4.0)   # the simulator did not know b was off since 3.0
    checker.host_lost("b", 3.0)
    assert checker.running_on("vm") == ["a"]
    assert checker.report(5.0)["double_runs"] == []


def test_checker_counts_accepted_and_all_evacuate_calls():
    checker = InvariantChecker()
    checker.evacuate_called("vm", 1.0, "req-1", 400)
    checker.evacuate_called("vm", 2.0, "req-2", 200)
    report = checker.report(3.0)
    assert report["evacuations"] == {"vm": 1}
    assert [c["request_id"] for c in report["evacuate_calls"]["vm"]] == ["req-1", "req-2"]


def test_microversion_headers():
    assert versions.requested({}) == (2, 1)
    assert versions.requested({"OpenStack-API-Version": "compute 2.53"}) == (2, 53)
    assert versions.requested({"openstack-api-version": "image 2.5, compute 2.94"}) == (2, 94)
    assert versions.requested({"X-OpenStack-Nova-API-Version": "2.11"}) == (2, 11)
    assert versions.requested({"OpenStack-API-Version": "compute latest"}) == \
        versions.MAX_VERSION
    with pytest.raises(versions.VersionError) as exc:
        versions.requested({"OpenStack-API-Version": "compute 2.200"})
    assert exc.value.status == 406 and "maximum is 2.104" in exc.value.message
    with pytest.raises(versions.VersionError) as exc:
        versions.requested({"OpenStack-API-Version": "compute 2.x"})
    assert exc.value.status == 400
    with pytest.raises(versions.VersionError):
        versions.requested({"OpenStack-API-Version": "compute 2.95"}, maximum=(2, 94))


def test_fault_rules_match_method_path_and_count():
    faults = Faults()
    faults.add(path=r"/servers/[^/]+/action", kind="error", method="post", count=2)
    faults.add(path="os-services", kind="delay", delay=0.5, count=None)
    assert faults.take("GET", "/compute/v2.1/servers/x/action") is None
    assert faults.take("POST", "/compute/v2.1/servers/x/action").kind == "error"
    assert faults.take("POST", "/compute/v2.1/servers/x/action").kind == "error"
    assert faults.take("POST", "/compute/v2.1/servers/x/action") is None
    for _ in range(3):
        assert faults.take("PUT", "/compute/v2.1/os-services/u").delay == 0.5
    assert faults.describe()[1]["hits"] == 3
    assert Faults().add(path="x", kind="timeout").delay == 30.0
    for bad in ({"path": "x", "kind": "explode"}, {"path": "(", "kind": "error"},
                {"path": "x", "kind": "error", "count": 0}, {"kind": "error"},
                {"path": "x", "kind": "error", "colour": "red"}):
        with pytest.raises(FaultError):
            faults.add(**bad)
    faults.clear()
    assert faults.describe() == []


def _password_body(user: str, password: str, project: str) -> dict:
    return {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "password": password, "domain": {"name": "Default"}}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}


def test_keystone_password_auth_and_token_validation():
    ks = identity.Identity(admin_password="secret", ttl=60)
    token, body = ks.authenticate(_password_body("admin", "secret", "admin"), catalog=[])
    assert body["token"]["project"]["name"] == "admin"
    assert {r["name"] for r in body["token"]["roles"]} >= {"admin"}
    ctx = ks.validate(token)
    assert ctx is not None and ctx.is_admin
    assert ks.validate("nonsense") is None
    for bad in (_password_body("admin", "wrong", "admin"),
                _password_body("admin", "secret", "demo"), {"auth": {}}):
        with pytest.raises(identity.AuthError):
            ks.authenticate(bad, catalog=[])
    demo = ks.user("demo")
    token, _ = ks.authenticate(_password_body("demo", demo.password, "demo"), catalog=[])
    assert not ks.validate(token).is_admin


@pytest.mark.parametrize("vm, task, status", [
    ("active", None, "ACTIVE"), ("active", "rebuilding", "REBUILD"),
    ("active", "rebuild_spawning", "REBUILD"), ("stopped", None, "SHUTOFF"),
    ("error", "rebuilding", "REBUILD"), ("error", None, "ERROR"),
    ("building", "scheduling", "BUILD"), ("active", "powering-off", "ACTIVE"),
    ("nonsense", None, "UNKNOWN")])
def test_status_from_states(vm, task, status):
    assert states.status(vm, task) == status
