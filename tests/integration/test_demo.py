"""`make demo` end to end (hagent/lab/demo.py): a crashed host's instances run again
elsewhere, the timeline has every step in order, the invariant check passes, and the lab is
down afterwards."""
from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from hagent.lab import demo

pytestmark = pytest.mark.xdist_group("lab")


def test_the_demo_recovers_a_crashed_host_and_passes_its_check(tmp_path: Path, capsys):
    assert demo.main(["--dir", str(tmp_path / "lab"), "--instances", "20"]) == 0
    out = capsys.readouterr().out
    assert "PASS: all 4 instances of node5 run again on other hosts" in out
    steps = ["killed", "suspected", "dead", "STOPPED committed", "powered off", "fenced",
             "forced down", "disabled", "first evacuation accepted", "all ACTIVE elsewhere",
             "notification finished"]
    timeline = out.split("timeline (seconds after the kill of node5):", 1)[1]
    positions = [timeline.index(f" {step} ") for step in steps]
    assert positions == sorted(positions), timeline
    assert "0 double runs, 0 lost, 4 accepted evacuations for 4 instances" in out
    lab_dir = str(tmp_path / "lab")
    assert not [p for p in psutil.process_iter(["cmdline"])
                if any(lab_dir in part for part in (p.info["cmdline"] or []))]
