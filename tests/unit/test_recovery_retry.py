"""Nova failures: retryable errors retried inside a step (asking Nova before each retry),
lasting ones -> error -> retried with backoff -> finished, or failed with the reason after
max_retries; a bug never leaves a notification running; expiry; no log -> no action."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from recovery.nova import NovaError
from test_recovery_support import Cluster, FakeCloud, engine, settle, turns, until

HOSTS = ["cmp1", "cmp2"]


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recover(cluster: Cluster, cloud: FakeCloud, uuid: str, **changes) -> dict:
    eng, _, _ = engine(cluster, cloud, **changes)
    await eng.start()
    try:
        return await settle(cluster, uuid)
    finally:
        await eng.stop()


def crash(cluster: Cluster, cloud: FakeCloud) -> str:
    cloud.power_off("cmp1")
    return cluster.host_down("cmp1")


def statuses(cluster: Cluster, uuid: str) -> list[str]:
    return [c["status"] for c in cluster.applied
            if c["op"] == "notification.transition" and c["notification_uuid"] == uuid]


def err(status: int | None, text: str = "boom") -> NovaError:
    return NovaError(f"nova: {text}", status=status, retryable=status is None or status >= 500
                     or status == 409)


def test_transient_nova_errors_are_retried_inside_the_step():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    cloud.fail("evacuate", err(503), times=2)
    cloud.fail("server", err(500), times=3)
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished"
    assert cloud.evacuations[server] == 1
    assert statuses(cluster, uuid) == ["running", "finished"]


def test_a_timed_out_call_that_happened_is_not_repeated():
    """The evacuation is accepted but the answer is lost (timeout): before retrying, the
    step asks Nova, sees it rebuilding, and only confirms."""
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    cloud.fail("evacuate", err(None, "no answer within 30 s"), after=True)
    cloud.fail("force_down", err(None, "no answer within 30 s"), after=True)
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished"
    assert cloud.evacuate_calls[server] == 1
    assert [op for op, _ in cloud.calls].count("force_down") == 1


def test_lasting_failure_is_error_then_retried_then_finished():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    cloud.fail("force_down", err(503), times=4)  # the whole first attempt (1 + 3 retries)
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished"
    assert statuses(cluster, uuid) == ["running", "error", "running", "finished"]
    assert record["recovery_attempts"] == 2
    assert cloud.servers[server].host == "cmp2"
    force = [s for s in record["recovery_steps"] if s["step"] == "force_down"]
    assert [(s["attempt"], s["outcome"]) for s in force] == [(1, "failed"), (2, "done")]
    assert "HTTP" not in force[0]["outcome_detail"] and "boom" in force[0]["outcome_detail"]


def test_a_failure_that_lasts_ends_failed_with_the_reason_never_running():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    cloud.boot("cmp1")
    cloud.fail("force_down", err(503, "HTTP 503: nova-api down"), times=1000)
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid, max_retries=2))
    assert statuses(cluster, uuid) == ["running", "error", "running", "error", "running",
                                       "failed"]
    assert record["message"] == "failed after 3 attempt(s): nova: HTTP 503: nova-api down"
    errors = [c.get("message") for c in cluster.applied
              if c["op"] == "notification.transition" and c["status"] == "error"]
    assert errors[0] == "nova: HTTP 503: nova-api down (attempt 1; retried in 0.01 s)"
    assert cloud.calls == []


def test_a_refused_evacuation_fails_the_instance_and_the_retry_evacuates_it():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    fine = cloud.boot("cmp1")
    cloud.fail("evacuate", err(400, "HTTP 400: No valid host was found"))
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid, max_concurrent_evacuations=1))
    assert record["status"] == "finished"
    assert statuses(cluster, uuid) == ["running", "error", "running", "finished"]
    assert cloud.evacuations[server] == cloud.evacuations[fine] == 1
    history = [c["status"] for c in cluster.applied
               if c["op"] == "notification.vmove" and c["instance_uuid"] == server]
    assert history == ["pending", "ongoing", "failed", "pending", "ongoing", "succeeded"]


def test_an_unexpected_exception_ends_in_error_not_running():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    cloud.boot("cmp1")
    cloud.fail("servers_on_host", RuntimeError("bug"))  # not a NovaError: a bug somewhere
    uuid = crash(cluster, cloud)
    record = run(recover(cluster, cloud, uuid))
    assert record["status"] == "finished"
    errors = [c.get("message") for c in cluster.applied
              if c["op"] == "notification.transition" and c["status"] == "error"]
    assert errors and errors[0].startswith("internal error: RuntimeError: bug")


def test_expired_notifications_fail_without_recovery():
    cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
    server = cloud.boot("cmp1")
    old = (datetime.now(timezone.utc) - timedelta(seconds=120)).isoformat()
    uuid = cluster.submit("VM", "cmp1", {"event": "LIFECYCLE", "vir_domain_event":
                                         "STOPPED_FAILED", "instance_uuid": server}, old)
    record = run(recover(cluster, cloud, uuid, notification_expiry=60.0))
    assert record["status"] == "failed" and record["message"].startswith("expired: generated")
    assert cloud.calls == []


def test_without_a_quorum_nothing_is_done_and_the_recovery_resumes_later():
    """Proposals that do not commit (no quorum) are resent; no Nova call is made before
    the intent commits; once the log commits again, the recovery completes."""
    async def scenario():
        cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
        server = cloud.boot("cmp1")
        uuid = crash(cluster, cloud)
        eng, agent, _ = engine(cluster, cloud)
        quorum = asyncio.Event()
        real = agent.propose
        lost = []

        async def propose(command):
            if command["op"] == "recovery.intent" and not quorum.is_set():
                lost.append(command)
                return {"ok": False, "retryable": True, "error": "no quorum"}
            return await real(command)
        agent.propose = propose
        await eng.start()
        try:
            await until(lambda: len(lost) >= 3)
            assert cloud.calls == [] and cluster.notification(uuid)["status"] == "running"
            quorum.set()
            record = await settle(cluster, uuid)
        finally:
            await eng.stop()
        assert record["status"] == "finished" and cloud.evacuations[server] == 1
    run(scenario())


def test_a_follower_never_acts():
    async def scenario():
        cluster, cloud = Cluster(HOSTS), FakeCloud(HOSTS)
        cloud.boot("cmp1")
        uuid = crash(cluster, cloud)
        eng, _, _ = engine(cluster, cloud, name="b")  # cluster.leader is "a"
        await eng.start()
        try:
            await turns(eng)
        finally:
            await eng.stop()
        assert cluster.state.recovery_claim() is None
        assert cluster.notification(uuid)["status"] == "new" and cloud.calls == []
    run(scenario())
