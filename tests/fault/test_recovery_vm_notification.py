"""A VM notification (instance failure) recovered in the lab through openstacksdk against the
Nova simulator: Masakari's instance workflow, stop > start > confirm ACTIVE, for an HA
instance; a non-HA instance's notification is ``ignored`` (``process_all_instances`` off).

The notifications are submitted as a host's instance monitor submits them: through that
host's agent (node4, a non-voter, so through the forward path), in masakari-monitors'
form (LIFECYCLE / STOPPED_FAILED). Nova's instance actions, read through openstacksdk,
are the witness of the calls the leader made.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from recovery_helpers import follow, nova_lab, steps_of

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

HOST = "node4"


def submit_vm_failure(lab, instance: str) -> str:
    answer = lab.admin(HOST, "notification.create", {
        "type": "VM", "hostname": HOST,
        "generated_time": datetime.now(timezone.utc).isoformat(),
        "payload": {"event": "LIFECYCLE", "instance_uuid": instance,
                    "vir_domain_event": "STOPPED_FAILED"}})
    assert answer["committed"], answer
    return answer["notification"]["notification_uuid"]


def test_an_instance_failure_is_recovered_by_stop_then_start(tmp_path):
    with nova_lab(tmp_path / "lab") as lab:
        ids = lab.nova.boot(n_ha=1, n_non_ha=1, hosts=[HOST])
        ha, non_ha = ids["ha"][0], ids["non_ha"][0]

        record, seen = follow(lab, submit_vm_failure(lab, ha))
        assert record["status"] == "finished", record["message"]
        assert seen[-1] == "finished" and "error" not in seen, seen
        for step in ("stop_instance", "start_instance", "confirm_active"):
            assert [s["outcome"] for s in steps_of(record, step, ha)] == ["done"], step

        conn = lab.nova.connect()
        actions = [a.action for a in conn.compute.server_actions(ha)]
        assert actions == ["start", "stop", "create"], actions  # newest first
        server = conn.compute.get_server(ha)
        assert server.status == "ACTIVE" and server.compute_host == HOST

        record, _ = follow(lab, submit_vm_failure(lab, non_ha))
        assert record["status"] == "ignored", record
        assert "is not HA" in record["message"], record["message"]
        assert [a.action for a in conn.compute.server_actions(non_ha)] == ["create"]
        assert lab.nova.report()["double_runs"] == []
