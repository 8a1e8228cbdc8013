"""A node whose set-up is wrong refuses to start with one line naming the file and the fix,
not a traceback, and exits 1 (systemd then shows why in its status)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hagent.forward.keys import write_key_pair
from hagent.lab.ports import PortPicker
from hagent.secretfile import write_secret

ROOT = Path(__file__).resolve().parents[2]


def test_a_voter_without_its_clouds_yaml_refuses_in_one_line(tmp_path: Path) -> None:
    picker = PortPicker(tmp_path)
    raft = picker.pick(3)
    status = picker.pick(1)[0]
    try:
        write_secret(tmp_path / "secret")
        write_key_pair(tmp_path / "node.key")
        (tmp_path / "hagent.toml").write_text(f"""
[node]
name = "c1"
state_dir = "state"
run_dir = "run"
[raft]
voters = {[f"127.0.0.1:{p}" for p in raft]!r}
bind = "127.0.0.1:{raft[0]}"
secret_file = "secret"
[admin]
socket = "run/hagent.sock"
[status]
bind = "127.0.0.1:{status}"
[fencing]
watchdog_mode = "off"
unsafe_no_fencing = true
[recovery]
clouds_yaml = "missing/clouds.yaml"
""".replace("'", '"'))
        proc = subprocess.run([sys.executable, "-m", "hagent", "run", "--config",
                               str(tmp_path / "hagent.toml")], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
    finally:
        picker.release(raft + [status])
    assert proc.returncode == 1
    refusal = [line for line in proc.stderr.splitlines() if "CRITICAL" in line]
    assert len(refusal) == 1, proc.stderr
    assert "agent refused to start: clouds.yaml" in refusal[0]
    assert "missing/clouds.yaml does not exist" in refusal[0]
    assert "recovery.clouds_yaml" in refusal[0]
    assert "Traceback" not in proc.stderr
