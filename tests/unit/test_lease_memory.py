"""lease.json: what one run of the agent leaves the next (sequence number, armed deadline)."""
from __future__ import annotations

from pathlib import Path

from hagent.fencing import leasefile
from hagent.fencing.leasefile import LeaseMemory


def test_round_trip_and_atomic_replace(tmp_path: Path):
    path = tmp_path / "lease.json"
    assert leasefile.load(path) is None
    memory = LeaseMemory(boot_id="b1", seq=12, deadline=345.5, clean_stop=False)
    leasefile.save(path, memory)
    leasefile.save(path, memory)
    assert leasefile.load(path) == memory
    assert [p.name for p in tmp_path.iterdir()] == ["lease.json"]


def test_an_unreadable_file_is_ignored(tmp_path: Path, caplog):
    path = tmp_path / "lease.json"
    for text in ("{not json", '{"boot_id": "b", "seq": "x", "deadline": 1, "clean_stop": false}',
                 '{"boot_id": "b", "seq": -3, "deadline": 1, "clean_stop": false}', "[]"):
        path.write_text(text)
        assert leasefile.load(path) is None
    assert "ignoring" in caplog.text


def test_only_a_crash_on_the_same_boot_leaves_a_deadline_to_inherit():
    crashed = LeaseMemory(boot_id="b1", seq=3, deadline=50.0, clean_stop=False)
    assert crashed.inherited_deadline("b1") == 50.0
    assert crashed.inherited_deadline("b2") is None   # another boot: monotonic times differ
    stopped = LeaseMemory(boot_id="b1", seq=3, deadline=50.0, clean_stop=True)
    assert stopped.inherited_deadline("b1") is None   # the watchdog was disarmed
