"""hagent/lab/timeline.py without a lab: the checks a recovery must pass (each violation
named), the survivor log lines found after the kill only, ISO times from the log."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from hagent.lab.cluster import Lab, LabNode
from hagent.lab.timeline import Kill, Timeline, first_log_line, iso_epoch

KILL = Kill("cn3", "crash", monotonic=1000.0, wall=1_800_000_000.0)


def item(name: str, **changes) -> dict:
    base = {"id": name, "name": name, "ha": True, "accepted": 12.0, "active": 15.0,
            "evacuations": 1, "status": "ACTIVE", "host": "cn1"}
    return {**base, **changes}


def timeline(*items: dict, report: dict | None = None, off: float | None = 8.0) -> Timeline:
    return Timeline(KILL, instances=list(items), marks={"powered_off": off},
                    report=report or {"double_runs": [], "lost": []})


def test_a_clean_recovery_has_no_violation():
    assert timeline(item("a"), item("b")).violations() == []


def test_each_violation_is_named():
    report = {"double_runs": [{"instance": "a", "hosts": ["cn1", "cn3"], "seconds": 2.5}],
              "lost": ["b"]}
    problems = timeline(item("a", evacuations=2), item("b", status="ERROR"),
                        item("c", accepted=7.0), item("d", host="cn3"),
                        report=report).violations()
    assert problems == [
        "double run: a on cn1, cn3 for 2.50 s",
        "lost: b runs nowhere",
        "a: 2 accepted evacuations",
        "b: ERROR on cn1",
        "c: evacuation accepted at +7.0 s, before its host was powered off",
        "d: ACTIVE on cn3",
    ]


def test_an_evacuation_of_a_host_never_powered_off_is_a_violation():
    assert timeline(item("a"), off=None).violations() == [
        "a: evacuation accepted at +12.0 s, before its host was powered off"]


def stamp(seconds_after_kill: float) -> str:
    t = dt.datetime.fromtimestamp(KILL.wall + seconds_after_kill)
    return t.strftime("%Y-%m-%d %H:%M:%S,") + f"{t.microsecond // 1000:03d}"


def test_the_first_survivor_line_after_the_kill(tmp_path: Path):
    nodes = []
    for name, lines in {
        "cn1": [f"{stamp(-5)} INFO node=cn1 x: member cn3 suspect (confirmations 0)",
                f"{stamp(2.5)} INFO node=cn1 x: member cn3 suspect (confirmations 0)"],
        "cn2": [f"{stamp(1.25)} INFO node=cn2 x: member cn3 suspect (confirmations 1)"],
        "cn3": [f"{stamp(0.5)} INFO node=cn3 x: member cn3 suspect (its own log)"],
    }.items():
        log = tmp_path / f"{name}.log"
        log.write_text("\n".join(["garbage line", *lines]) + "\n")
        nodes.append(LabNode(name=name, pid=None, admin_socket="", status_url="", voter=True,
                             config="", log=str(log)))
    lab = Lab(tmp_path, nodes)
    assert first_log_line(lab, KILL, "member cn3 suspect") == (1.25, "cn2")
    assert first_log_line(lab, KILL, "member cn3 dead") is None


def test_iso_times_from_the_log():
    assert iso_epoch(None) is None
    assert iso_epoch("2027-01-15T08:00:00.250000+00:00") == 1800000000.25
