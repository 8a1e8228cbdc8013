"""The corosync baseline's pure parts: log timestamps and events, hagent's member states, and
the kill-and-watch measurement against a scripted cluster (no daemons, no namespaces)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from benchmarks import corosync_detect as cd

LOG = """\
Nov 25 13:10:01.207 [6447] vm corosync notice  [QUORUM] Members[5]: 1 2 3 4 5
Nov 25 13:10:45.059 [6447] vm corosync notice  [TOTEM ] Token has not been received in 3712 ms
Nov 25 13:10:46.295 [6447] vm corosync notice  [TOTEM ] A processor failed, forming new configuration: token timed out (4950ms), waiting 5940ms for consensus.
Nov 25 13:10:52.239 [6447] vm corosync notice  [QUORUM] Sync members[4]: 1 2 3 4
Nov 25 13:10:52.239 [6447] vm corosync notice  [TOTEM ] A new membership (1.11) was formed. Members left: 5
Nov 25 13:10:52.243 [6447] vm corosync notice  [QUORUM] Members[4]: 1 2 3 4
"""


def stamp(text: str) -> float:
    return dt.datetime.strptime(f"2026 {text}", "%Y %b %d %H:%M:%S.%f").timestamp()


def test_log_time_reads_hires_local_stamps_and_last_year() -> None:
    now = stamp("Nov 25 13:11:00.000")
    assert cd.log_time(LOG.splitlines()[1], now) == pytest.approx(stamp("Nov 25 13:10:45.059"))
    assert cd.log_time("no stamp here", now) is None
    january = stamp("Jan 01 00:00:05.000") + 365 * 86400  # 2027-01-01
    assert dt.datetime.fromtimestamp(cd.log_time("Dec 31 23:59:59.500 x", january)).year == 2026


def test_log_times_are_the_first_events_after_the_kill_naming_the_victim(tmp_path: Path) -> None:
    cluster = cd.CorosyncCluster.__new__(cd.CorosyncCluster)  # no namespaces: the log only
    cluster.dir = tmp_path
    cluster.nodeid = {f"node{i}": i for i in range(1, 6)}
    (tmp_path / "node1").mkdir()
    cluster.log("node1").write_text(LOG)
    kill = stamp("Nov 25 13:10:41.682")
    assert cluster.log_times("node1", "node5", kill) == {
        "token_not_received": 3.377, "processor_failed": 4.613, "new_membership": 10.557,
        "quorum_members": 10.561}
    assert "new_membership" not in cluster.log_times("node1", "node4", kill)


def test_hagent_member_states_takes_rows_or_a_mapping() -> None:
    rows = {"members": [{"name": "node1", "state": "alive"}, {"name": "node2", "state": "suspect"},
                        {"name": "node3", "state": "dead"}, {"name": "node4", "state": "left"}]}
    assert cd.hagent_member_states(rows) == {"node1": "alive", "node2": "suspect",
                                             "node3": "dead", "node4": "dead"}
    assert cd.hagent_member_states({"members": {"node1": "alive"}}) == {"node1": "alive"}
    with pytest.raises(KeyError):
        cd.hagent_member_states({"role": "leader"})


class Scripted:
    """A cluster whose survivors see the victim suspect on their first look after the kill
    and dead on their second."""

    system = "scripted"

    def __init__(self) -> None:
        self.names = ["a", "b", "c"]
        self.dead: str | None = None
        self.looks: dict[str, int] = {}

    def kill(self, name: str) -> None:
        self.dead = name

    def restart(self, name: str) -> None:
        self.dead = None
        self.looks.clear()

    def states(self, observer: str) -> dict[str, str]:
        if self.dead is None or observer == self.dead:
            return {n: cd.ALIVE for n in self.names}
        self.looks[observer] = self.looks.get(observer, 0) + 1
        return {**{n: cd.ALIVE for n in self.names},
                self.dead: cd.SUSPECT if self.looks[observer] == 1 else cd.DEAD}

    def log_times(self, observer: str, victim: str, since: float) -> dict[str, float]:
        return {"new_membership": 1.5 if observer == "b" else 2.5}


def test_measure_kills_each_node_in_turn_and_waits_until_every_survivor_dropped_it() -> None:
    doc = cd.measure(Scripted(), runs=4)
    assert [r["victim"] for r in doc["per_run"]] == ["a", "b", "c", "a"]
    for r in doc["per_run"]:
        assert r["ok"] and sorted(r["poll_removed_by_survivor_s"]) == sorted(
            set("abc") - {r["victim"]})
        assert r["poll_first_suspect_s"] <= r["poll_removed_first_s"] <= r["poll_removed_all_s"]
    assert doc["failed_runs"] == 0 and doc["poll_removed_all_s"]["n"] == 4
    # The slowest survivor's log time per run: 2.5 s unless "b" and the victim are the others.
    assert doc["log_new_membership_s"]["max"] == 2.5
    # The first survivor's: 1.5 s in the three runs "b" survives.
    assert doc["log_new_membership_first_s"]["p50"] == 1.5
