"""Monitors in the lab, end to end: a real event on one simulated host becomes one notification
from that host's agent, committed in the log and visible on every node.

- instance monitor: ``Lab.up(..., libvirt=True)`` gives each host a test-driver libvirtd of its
  own; a domain destroyed on node2's gives one VM notification from node2, and nothing on the
  other hosts; ``down`` leaves no libvirtd, socket or record behind.
- process monitor: a sleeper this test starts, killed with a restart command that fails, is
  reported STOPPED; started again, STARTED. The lab's hosts share this machine's process
  table, so each of the three agents watches the same sleeper and reports it as its host's.

Every wait polls with a deadline.
"""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import libvirt
import psutil
import pytest

from hagent.config import load_config
from hagent.lab import libvirtd
from hagent.lab.cluster import Lab, LabError

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

DEADLINE = 30.0


def until(what: str, cond: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll ``cond`` until it returns something true (a LabError counts as "not yet")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except LabError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def records(lab: Lab, name: str, ntype: str) -> list[dict[str, Any]]:
    return lab.admin(name, "notification.list", {"filters": {"type": ntype}}, timeout=5)


def domain_xml(name: str, dom_uuid: str) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{dom_uuid}</uuid>"
            "<memory>1024</memory><os><type>hvm</type></os></domain>")


def test_a_domain_destroyed_on_node2_is_one_vm_notification_from_node2(tmp_path: Path) -> None:
    lab = Lab.up(tmp_path / "lab", nodes=3, libvirt=True)
    daemons = libvirtd.pids(lab.dir)
    sockets = [Path(n.libvirt_uri.split("socket=", 1)[1]) for n in lab.nodes]
    try:
        assert sorted(daemons) == ["node1", "node2", "node3"]
        assert len(set(daemons.values())) == 3 and len({n.libvirt_uri for n in lab.nodes}) == 3
        for node in lab.nodes:
            config = load_config(Path(node.config))
            assert config.monitors.instance_enabled
            assert config.monitors.libvirt_uri == node.libvirt_uri
        until("every instance monitor connected",
              lambda: all(lab.status(n)["monitors"]["instance"]["connected"] for n in lab.names))

        dom_uuid = str(uuid.uuid4())
        conn = libvirt.open(lab.node("node2").libvirt_uri)
        try:
            conn.createXML(domain_xml("vm-1", dom_uuid)).destroy()  # STARTED, then DESTROYED
            until("the VM notification on every node",
                  lambda: all(records(lab, n, "VM") for n in lab.names))
        finally:
            conn.close()
        held = {n: records(lab, n, "VM") for n in lab.names}
        (only,) = held["node1"]
        assert only["hostname"] == "node2"
        assert only["payload"] == {"instance_uuid": dom_uuid,
                                   "vir_domain_event": "STOPPED_DESTROYED", "event": "LIFECYCLE"}
        assert all(held[n] == [only] for n in lab.names)
        seen = {n: lab.status(n)["monitors"]["instance"] for n in lab.names}
        assert (seen["node2"]["events_seen"], seen["node2"]["events_reported"]) == (2, 1)
        assert seen["node1"]["events_seen"] == seen["node3"]["events_seen"] == 0
    finally:
        lab.down()
    assert libvirtd.pids(lab.dir) == {}
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in daemons.values())
    assert not (lab.dir / libvirtd.RECORD_FILE).exists()
    assert not any(s.exists() for s in sockets)


def test_a_process_that_cannot_be_restarted_is_stopped_then_started(tmp_path: Path) -> None:
    token = f"hagent-lab-sleeper-{uuid.uuid4().hex}"

    def sleeper() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", token])

    process_list = (f"- process_name: {token}\n  start_command: /bin/false\n"
                    "  restart_command: /bin/false\n  run_as_root: True\n")
    proc = sleeper()
    lab = None
    try:
        lab = Lab.up(tmp_path / "lab", nodes=3, config_extra={"monitors": {
            "process_enabled": True, "process_list_inline": process_list,
            "process_check_interval": 0.2, "process_restart_retries": 1,
            "process_restart_interval": 0.3}})
        until("the sleeper seen running by every agent",
              lambda: all(lab.status(n)["monitors"]["process"]["processes"].get(token)
                          == "running" for n in lab.names))
        proc.kill()
        proc.wait()

        def reported(count: int) -> list[tuple[str, str, str]] | None:
            held = {n: records(lab, n, "PROCESS") for n in lab.names}
            if any(len(r) < count for r in held.values()):
                return None
            assert all(r == held["node1"] for r in held.values()), "nodes disagree"
            return sorted((r["hostname"], r["payload"]["process_name"], r["payload"]["event"])
                          for r in held["node1"])

        assert until("PROCESS STOPPED committed", lambda: reported(3)) == [
            (n, token, "STOPPED") for n in lab.names]
        for name in lab.names:
            assert lab.status(name)["monitors"]["process"]["restarts"] == 2  # 1 + 1 retry

        proc = sleeper()
        assert until("PROCESS STARTED committed", lambda: reported(6)) == sorted(
            (n, token, event) for n in lab.names for event in ("STARTED", "STOPPED"))
    finally:
        proc.kill()
        proc.wait()
        if lab is not None:
            lab.down()
