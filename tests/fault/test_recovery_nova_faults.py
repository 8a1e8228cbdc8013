"""Issue 5, Must show: Nova 5xx and timeouts are retried and the recovery finishes; a
permanent failure ends ``failed`` with the reason, never stuck in ``running``.

A 5-agent lab with the Nova simulator (real Nova timings); the simulator injects the faults
on the very requests the leader's openstacksdk client sends over HTTP:

- transient: 500s on forcing the compute service down (more than one step's own retries,
  so the notification goes to ``error`` and is retried), a 502 on listing the host's
  instances, a 503, an unanswered request and a lost reply (applied, no answer) on the
  evacuations: the notification ends ``finished``, each instance evacuated exactly once
  (the lost reply's evacuation is found in Nova, not repeated), no double run;
- permanent: every other host's compute service disabled, so Nova's scheduler finds no
  valid host and each evacuated instance goes to ERROR: after its retries the
  notification ends ``failed`` with the reason, naming the instances.

Recovery settings shortened for runtime: ``nova_timeout`` 2 s (an unanswered request
fails after 2 s, not 30), ``retry_interval`` 1 s (first retry of an ``error``
notification), ``max_retries`` 1 for the permanent failure.
"""
from __future__ import annotations

import pytest

from recovery_helpers import crash_and_follow, keep_off, nova_lab, steps_of

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

VICTIM = "node5"
FAST_RETRIES = {"recovery": {"nova_timeout": 2.0, "retry_interval": 1.0,
                             "retry_interval_max": 2.0}}
ACTIONS = r"/servers/[^/]+/action$"


def test_nova_5xx_and_timeouts_are_retried_then_the_recovery_finishes(tmp_path):
    with nova_lab(tmp_path / "lab", config_extra=FAST_RETRIES) as lab:
        nova = lab.nova
        ids = nova.boot(n_ha=3, hosts=[VICTIM])["ha"]
        # One attempt plus 3 retries inside the step: 4 failures fail the step, and the
        # notification goes to error, to be retried as a whole.
        nova.inject(r"/os-services/[^/]+$", "error", method="PUT", status=500, count=4)
        nova.inject(r"/servers/detail$", "error", method="GET", status=502, count=1)
        nova.inject(ACTIONS, "error", method="POST", status=503, count=1)
        nova.inject(ACTIONS, "timeout", method="POST", delay=5.0, count=1)
        nova.inject(ACTIONS, "timeout", method="POST", delay=5.0, apply=True, count=1)

        record, timeline = crash_and_follow(lab, VICTIM)
        print(f"\ntransient faults: {timeline}")
        assert record["status"] == "finished", record["message"]
        assert "error" in timeline.marks and record["recovery_attempts"] == 2, \
            (timeline.marks, record["recovery_attempts"])
        hits = [(f["path"], f["kind"], f["hits"], f["count"]) for f in nova.faults()]
        assert all(h == c for _, _, h, c in hits), hits  # every fault was met

        force = steps_of(record, "force_down")
        assert [s["outcome"] for s in force] == ["failed", "done"], force
        assert "500" in force[0]["outcome_detail"]

        report = nova.report()
        assert report["double_runs"] == [] and report["lost"] == []
        assert {i: report["evacuations"].get(i) for i in ids} == {i: 1 for i in ids}
        calls = [c["status"] for i in ids for c in report["evacuate_calls"][i]]
        assert sorted(calls) == [200, 200, 200], calls  # refused/unanswered ones never reached Nova
        servers = nova.state()["servers"]
        assert all(servers[i]["status"] == "ACTIVE" and servers[i]["host"] != VICTIM
                   for i in ids)


def test_no_valid_host_anywhere_ends_failed_with_the_reason(tmp_path):
    extra = {"recovery": {**FAST_RETRIES["recovery"], "max_retries": 1}}
    with nova_lab(tmp_path / "lab", config_extra=extra) as lab:
        ids = lab.nova.boot(n_ha=2, hosts=[VICTIM])["ha"]
        keep_off(lab, [n for n in lab.names if n != VICTIM])  # no valid host for anything

        record, timeline = crash_and_follow(lab, VICTIM)
        print(f"\nno valid host: {timeline}")
        assert record["status"] == "failed", record
        assert record["message"].startswith("failed after 2 attempt(s)"), record["message"]
        assert all(i in record["message"] for i in ids), record["message"]
        assert record["recovery_attempts"] == 2
        assert "error" in timeline.marks
        vmoves = {v["instance_uuid"]: v for v in record["vmoves"]}
        assert all(vmoves[i]["status"] == "failed" and vmoves[i]["message"] for i in ids), vmoves
        servers = lab.nova.state()["servers"]
        for i in ids:
            assert servers[i]["status"] == "ERROR" and "No valid host" in (
                servers[i].get("fault") or {}).get("message", ""), servers[i]
        assert lab.nova.report()["double_runs"] == []
