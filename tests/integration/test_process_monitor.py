"""The process monitor against real processes this test starts.

Each test watches a sleeper with a distinctive argv (a token no other process has) and gives
the monitor commands that run ``helper.py`` below: they append their name to a journal file,
so the order in which the monitor ran them is read back from that file. Submissions go to a
fake submit that records them (the lab's end-to-end test goes through a real log).
"""
from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from hagent.config import loads_config
from hagent.monitors import process
from hagent.monitors.base import MonitorContext, Outbox
from hagent.monitors.process import REPORTED_FILE, ProcessMonitor
from hagent.monitors.process_list import ProcessListError, parse_process_list
from hagent.monitors.process_scan import command_lines
from hagent.monitors.runner import Monitors
from tests.fakes import FakeNode
from tests.unit.test_state_support import host_create, ok, segment_create

HELPER = r'''
import json, os, subprocess, sys, time

verb, journal, name = sys.argv[1:4]
rest = sys.argv[4:]
if verb == "argv":  # record the exact argv this command received
    with open(journal, "a") as f:
        f.write(json.dumps(rest) + "\n")
    sys.exit(0)
with open(journal, "a") as f:
    f.write(name + "\n")
if verb == "append":
    sys.exit(0)
if verb == "fail":
    sys.exit(1)
if verb == "hang":
    with open(journal + ".pid", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
if verb == "uid":
    with open(journal + ".uid", "w") as f:
        f.write(str(os.getuid()))
    sys.exit(0)
if verb == "spawn":  # start the sleeper detached, as a daemon's start script would
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", rest[0]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    sys.exit(0)
sys.exit(2)
'''


class Recorder:
    """A submit that records every notification and answers committed."""

    def __init__(self):
        self.submitted: list[dict] = []

    async def __call__(self, fields):
        self.submitted.append(fields)
        return {"ok": True, "committed": True, "result": dict(fields, status="new")}

    def events(self) -> list[tuple[str, str]]:
        return [(n["payload"]["process_name"], n["payload"]["event"]) for n in self.submitted]


class Lab:
    """A token, a journal file, the helper, and ways to start, find and kill the sleeper."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.token = f"hagent-test-sleeper-{uuid.uuid4().hex}"
        self.journal = tmp_path / "journal"
        self.helper = tmp_path / "helper.py"
        self.helper.write_text(HELPER)
        self.spawned: list[int] = []

    def command(self, verb: str, name: str, *extra: str) -> str:
        return " ".join([sys.executable, str(self.helper), verb, str(self.journal), name, *extra])

    def entry_yaml(self, **overrides: str) -> str:
        fields = {
            "process_name": f"/opt/test/bin/{self.token}",
            "start_command": self.command("spawn", "start", f"/opt/test/bin/{self.token}"),
            "restart_command": self.command("spawn", "restart", f"/opt/test/bin/{self.token}"),
            "run_as_root": "true",
        }
        fields.update(overrides)
        lines = [f"  {k}: {v}" if k != "process_name" else f"- {k}: {v}" for k, v in fields.items()]
        return "\n".join(lines) + "\n"

    def start_sleeper(self) -> None:
        subprocess.run(self.command("spawn", "by-test", f"/opt/test/bin/{self.token}").split(),
                       check=True)

    def sleepers(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and \
                    any(self.token in arg for arg in proc.info["cmdline"] or ()) and \
                    "spawn" not in (proc.info["cmdline"] or ()):
                found.append(proc)
        return found

    def kill_sleepers(self) -> None:
        for proc in self.sleepers():
            proc.kill()

    def journal_lines(self) -> list[str]:
        return self.journal.read_text().splitlines() if self.journal.exists() else []


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    yield lab
    lab.kill_sleepers()


def make_monitor(lab: Lab, submit: Recorder, entry_yaml: str, **knobs) -> ProcessMonitor:
    """Build through the real config path: [monitors] in hagent.toml, inline list."""
    options = {"process_check_interval": 0.1, "process_restart_retries": 2,
               "process_restart_interval": 0.5, "process_command_timeout": 10.0, **knobs}
    text = textwrap.dedent(f"""
        [node]
        name = "compute-01"
        state_dir = "{lab.dir / 'state'}"
        [raft]
        voters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]
        bind = "10.0.0.1:7170"
        [monitors]
        process_enabled = true
        """) + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items())
    text += "process_list_inline = '''\n" + entry_yaml + "'''\n"
    config = loads_config(text)
    context = MonitorContext(hostname=config.node.name, submit=submit,
                             state_dir=config.node.state_dir / "monitors")
    monitor = process.build(config.monitors, context)
    assert monitor is not None
    return monitor


async def until(predicate, what: str, timeout: float = 15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_killed_process_is_restarted_with_pre_and_post_commands_in_order(lab):
    entry = lab.entry_yaml(pre_restart_command=lab.command("append", "pre_restart"),
                           post_restart_command=lab.command("append", "post_restart"))
    submit = Recorder()

    async def main():
        lab.start_sleeper()
        await until(lambda: len(lab.sleepers()) == 1, "the sleeper")
        monitor = make_monitor(lab, submit, entry)
        await monitor.start()
        try:
            await until(lambda: monitor.status()["checks"] >= 2, "two looks")
            assert monitor.status()["processes"] == {f"/opt/test/bin/{lab.token}": "running"}
            first = lab.sleepers()[0].pid
            lab.kill_sleepers()
            name = f"/opt/test/bin/{lab.token}"
            await until(lambda: any(p.pid != first for p in lab.sleepers())
                        and monitor.status()["processes"][name] == "running",
                        "the restarted sleeper")
            status = monitor.status()
        finally:
            await monitor.stop()
        assert lab.journal_lines() == ["by-test", "pre_restart", "restart", "post_restart"]
        assert status["events_seen"] == 1 and status["restarts"] == 1
        assert status["restart_failures"] == 0 and status["notifications_sent"] == 0
        assert submit.submitted == []

    asyncio.run(main())


def test_a_process_down_when_the_monitor_starts_is_started_with_the_start_commands(lab):
    entry = lab.entry_yaml(pre_start_command=lab.command("append", "pre_start"),
                           post_start_command=lab.command("append", "post_start"))

    async def main():
        monitor = make_monitor(lab, Recorder(), entry)
        await monitor.start()
        try:
            await until(lambda: len(lab.sleepers()) == 1 and
                        monitor.status()["processes"][f"/opt/test/bin/{lab.token}"] == "running",
                        "the started sleeper")
        finally:
            await monitor.stop()
        assert lab.journal_lines() == ["pre_start", "start", "post_start"]

    asyncio.run(main())


def test_restart_that_keeps_failing_reports_stopped_then_started_when_back(lab):
    entry = lab.entry_yaml(restart_command=lab.command("fail", "restart"),
                           post_restart_command=lab.command("append", "post_restart"))
    submit = Recorder()
    name = f"/opt/test/bin/{lab.token}"

    async def main():
        lab.start_sleeper()
        await until(lambda: len(lab.sleepers()) == 1, "the sleeper")
        monitor = make_monitor(lab, submit, entry, process_restart_retries=2)
        await monitor.start()
        try:
            await until(lambda: monitor.status()["processes"][name] == "running", "first look")
            lab.kill_sleepers()
            await until(lambda: submit.submitted, "the STOPPED notification")
            (stopped,) = submit.submitted
            assert stopped["type"] == "PROCESS" and stopped["hostname"] == "compute-01"
            assert stopped["payload"] == {"process_name": lab.token, "event": "STOPPED"}
            # 1 + restart_retries attempts; the post command never ran after a failed restart.
            assert lab.journal_lines() == ["by-test", "restart", "restart", "restart"]
            reported = json.loads((lab.dir / "state" / "monitors" / REPORTED_FILE).read_text())
            assert reported == {"stopped": [name]}
            # Down and reported: no more restarts, no more reports.
            checks = monitor.status()["checks"]
            await until(lambda: monitor.status()["checks"] >= checks + 3, "three more looks")
            assert len(submit.submitted) == 1 and lab.journal_lines().count("restart") == 3
            lab.start_sleeper()
            await until(lambda: len(submit.submitted) == 2, "the STARTED notification")
            assert submit.events()[1] == (lab.token, "STARTED")
            await until(lambda: json.loads((lab.dir / "state" / "monitors" / REPORTED_FILE)
                                           .read_text()) == {"stopped": []}, "STARTED recorded")
            status = monitor.status()
        finally:
            await monitor.stop()
        assert status["restarts"] == 3 and status["restart_failures"] == 3
        assert status["command_failures"] == 3
        assert status["stopped_reported"] == 1 and status["started_reported"] == 1
        assert status["events_seen"] == 2 and status["notifications_sent"] == 2
        assert submit.submitted[0]["generated_time"] < submit.submitted[1]["generated_time"]

    asyncio.run(main())


def test_a_restart_command_that_succeeds_without_the_process_still_fails(lab):
    entry = lab.entry_yaml(restart_command=lab.command("append", "restart"))
    submit = Recorder()

    async def main():
        lab.start_sleeper()
        await until(lambda: len(lab.sleepers()) == 1, "the sleeper")
        monitor = make_monitor(lab, submit, entry, process_restart_retries=1)
        await monitor.start()
        try:
            await until(lambda: monitor.status()["checks"] >= 1, "first look")
            lab.kill_sleepers()
            await until(lambda: submit.submitted, "the STOPPED notification")
        finally:
            await monitor.stop()
        assert submit.events() == [(lab.token, "STOPPED")]
        assert lab.journal_lines() == ["by-test", "restart", "restart"]

    asyncio.run(main())


def test_stopped_reported_by_an_earlier_run_is_followed_by_started_after_an_agent_restart(lab):
    entry = lab.entry_yaml(start_command=lab.command("fail", "start"),
                           restart_command=lab.command("fail", "restart"))

    async def main():
        first = Recorder()
        monitor = make_monitor(lab, first, entry, process_restart_retries=0)
        await monitor.start()
        try:
            await until(lambda: first.submitted, "the STOPPED notification")
        finally:
            await monitor.stop()
        assert first.events() == [(lab.token, "STOPPED")]
        # The operator fixes it while the agent is down; the next run reports STARTED.
        lab.start_sleeper()
        await until(lambda: len(lab.sleepers()) == 1, "the sleeper")
        second = Recorder()
        monitor = make_monitor(lab, second, entry, process_restart_retries=0)
        await monitor.start()
        try:
            await until(lambda: second.submitted, "the STARTED notification")
        finally:
            await monitor.stop()
        assert second.events() == [(lab.token, "STARTED")]

    asyncio.run(main())


def test_shell_metacharacters_reach_the_program_as_plain_arguments(lab):
    marker = lab.dir / "pwned"
    weird = ["a;", "touch", str(marker), f"$(touch {marker}2)", f"`touch {marker}3`", ">",
             str(marker) + "4", "|", "&&", "*"]
    quoted = " ".join(f"'{w}'" if any(c in w for c in " $`") else w for w in weird)
    entry = lab.entry_yaml(start_command=lab.command("argv", "start", quoted))

    async def main():
        monitor = make_monitor(lab, Recorder(), entry, process_restart_retries=0,
                               process_restart_interval=0.2)
        await monitor.start()
        try:
            await until(lambda: lab.journal_lines(), "the start command")
        finally:
            await monitor.stop()

    asyncio.run(main())
    assert json.loads(lab.journal_lines()[0]) == weird
    assert sorted(p.name for p in lab.dir.iterdir()) == ["helper.py", "journal", "state"]


def test_a_hung_command_is_killed_after_the_timeout(lab):
    entry = lab.entry_yaml(start_command=lab.command("hang", "start"))
    submit = Recorder()

    async def main():
        monitor = make_monitor(lab, submit, entry, process_restart_retries=0,
                               process_command_timeout=0.5, process_restart_interval=0.2)
        await monitor.start()
        try:
            await until(lambda: submit.submitted, "the STOPPED notification")
        finally:
            await monitor.stop()
        assert submit.events() == [(lab.token, "STOPPED")]
        assert monitor.status()["command_failures"] == 1

    asyncio.run(main())
    pid = int(Path(str(lab.journal) + ".pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_entries_without_run_as_root_run_as_the_configured_user(lab):
    # /tmp (not pytest's 0700 tmp_path) so that an unprivileged command can write there.
    shared = Path(tempfile.mkdtemp(prefix="hagent-test-"))
    shared.chmod(0o777)
    entry = lab.entry_yaml(start_command=f"/usr/bin/touch {shared}/made", run_as_root="false")

    async def main():
        monitor = make_monitor(lab, Recorder(), entry, process_restart_retries=0,
                               process_restart_interval=0.2)
        await monitor.start()
        try:
            await until(lambda: (shared / "made").exists(), "the file the command makes")
        finally:
            await monitor.stop()

    try:
        asyncio.run(main())
        expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert (shared / "made").stat().st_uid == expected
    finally:
        shutil.rmtree(shared)


def test_a_failed_look_is_counted_and_the_monitor_keeps_looking(tmp_path):
    (entry,) = parse_process_list("- {process_name: /usr/sbin/x, start_command: a, "
                                  "restart_command: b, run_as_root: true}\n")
    looks = []

    def scan():
        looks.append(1)
        if len(looks) == 1:
            raise OSError("/proc went away")
        return ["/usr/sbin/x --flag"]

    async def main():
        monitor = ProcessMonitor((entry,), Outbox(Recorder(), hostname="h", size=4),
                                 state_dir=tmp_path, check_interval=0.05, scan=scan)
        await monitor.start()
        try:
            await until(lambda: monitor.status()["checks"] >= 2, "two good looks")
        finally:
            await monitor.stop()
        status = monitor.status()
        assert status["check_errors"] == 1 and status["processes"] == {"/usr/sbin/x": "running"}
        assert status["running"] is False  # stopped

    asyncio.run(main())


def test_the_state_machine_accepts_what_the_monitor_reports_and_refusals_are_counted(tmp_path):
    """Through the real ClusterState (tests/fakes.py): the payloads pass Masakari's schema."""
    node = FakeNode("node1")
    node.read(lambda state: ok(state, segment_create()))
    node.read(lambda state: ok(state, host_create("node1")))
    (entry,) = parse_process_list("- {process_name: /usr/sbin/libvirtd, start_command: /bin/false, "
                                  "restart_command: /bin/false, run_as_root: true}\n")
    lines: list[str] = []

    async def main(hostname):
        monitor = ProcessMonitor((entry,), Outbox(node.submit_notification, hostname=hostname,
                                                  size=4),
                                 state_dir=tmp_path / hostname, check_interval=0.05,
                                 restart_retries=0, restart_interval=0.05, scan=lambda: lines)
        await monitor.start()
        try:
            await until(lambda: monitor.status()["stopped_reported"] == 1, "STOPPED")
            lines.append("/usr/sbin/libvirtd --listen")
            await until(lambda: monitor.status()["notifications_sent"]
                        + monitor.status()["notifications_failed"] == 2, "STARTED answered")
        finally:
            await monitor.stop()
            lines.clear()
        return monitor.status()

    status = asyncio.run(main("node1"))
    assert status["notifications_sent"] == 2 and status["notifications_committed"] == 2
    stored = node.read(lambda state: state.list_notifications())
    assert sorted((n["type"], n["hostname"], n["payload"]["process_name"], n["payload"]["event"],
                   n["status"]) for n in stored) == [
        ("PROCESS", "node1", "libvirtd", "STARTED", "new"),
        ("PROCESS", "node1", "libvirtd", "STOPPED", "new")]
    status = asyncio.run(main("not-registered"))
    assert status["notifications_failed"] == 2 and status["notifications_sent"] == 0


def test_command_lines_show_live_processes_as_ps_does_but_not_zombies():
    token = f"hagent-scan-{uuid.uuid4().hex}"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token, "b c"])
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token + "-z"])
    try:
        dead.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(dead.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        lines = [line for line in command_lines() if token in line]
        assert lines == [f"{sys.executable} -c import time; time.sleep(60) {token} b c"]
    finally:
        live.kill()
        live.wait()
        dead.wait()


def test_monitors_from_config_builds_only_what_is_enabled(tmp_path):
    base = textwrap.dedent(f"""
        [node]
        name = "compute-01"
        state_dir = "{tmp_path}"
        [raft]
        voters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]
        bind = "10.0.0.1:7170"
        """)
    assert Monitors.from_config(loads_config(base), Recorder()).monitors == []
    (tmp_path / "pl.yaml").write_text("- process_name: x\n")
    config = loads_config(base + '[monitors]\nprocess_enabled = true\nprocess_list = "pl.yaml"\n',
                          base_dir=tmp_path)
    with pytest.raises(ProcessListError, match=r"entry \[0\] .*start_command: required"):
        Monitors.from_config(config, Recorder())
