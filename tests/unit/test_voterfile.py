"""consensus.voterfile: voters.json written atomically, read back strictly, and the voter set
a node starts with (file over config, with a warning naming both)."""
from __future__ import annotations

import json
import logging

import pytest

from consensus import voterfile
from consensus.voterfile import VoterFile, VoterFileError

A, B, C, D = (f"10.0.0.{i}:7170" for i in range(1, 5))


def test_save_load_round_trip_and_update_keeps_other_fields(tmp_path):
    path = tmp_path / "voters.json"
    assert voterfile.load(path) is None
    voterfile.save(path, [A, B, C], index=7, endpoints={"n1": "10.0.0.1:7171"})
    assert voterfile.load(path) == VoterFile((A, B, C), 7, False,
                                             {"endpoints": {"n1": "10.0.0.1:7171"}})
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    new = voterfile.update(path, voters=[A, B, C, D], index=9)
    assert new == VoterFile((A, B, C, D), 9, False, {"endpoints": {"n1": "10.0.0.1:7171"}})
    assert voterfile.update(path, pending=True).voters == (A, B, C, D)
    assert json.loads(path.read_text())["format"] == 1
    assert not (tmp_path / "voters.json.tmp").exists()
    with pytest.raises(VoterFileError, match="no file to update"):
        voterfile.update(tmp_path / "other.json", index=3)
    assert voterfile.update(tmp_path / "other.json", voters=[A]).voters == (A,)


@pytest.mark.parametrize("content,fragment", [
    ("{", "not JSON"),
    ('{"voters": ["10.0.0.1:7170"]}', "no integer 'format'"),
    ('{"format": 2, "voters": ["10.0.0.1:7170"]}', "newer than this hagent"),
    ('{"format": 1, "voters": []}', "malformed"),
    ('{"format": 1, "voters": ["nonsense"]}', "malformed"),
    ('{"format": 1, "voters": ["10.0.0.1:7170"], "index": -1}', "malformed"),
    ('{"format": 1, "voters": ["10.0.0.1:7170"], "pending": "yes"}', "malformed"),
])
def test_unusable_files_are_refused_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "voters.json"
    path.write_text(content)
    with pytest.raises(VoterFileError, match=fragment) as err:
        voterfile.load(path)
    assert str(path) in str(err.value)


def test_choose_file_over_config_with_a_warning_naming_both(tmp_path, caplog):
    path = tmp_path / "voters.json"
    start = voterfile.choose([A, B, C], path, A)
    assert (start.voters, start.index, start.source, start.joining) == ([A, B, C], 0, "config",
                                                                        False)
    voterfile.save(path, [A, C, D], index=12)
    with caplog.at_level(logging.WARNING, logger="consensus.voterfile"):
        start = voterfile.choose([A, B, C], path, B)
    assert (start.voters, start.index, start.joining) == ([A, C, D], 12, False)
    assert not start.is_voter(B) and start.is_voter(D) and not start.is_voter(None)
    [record] = caplog.records
    assert A in record.getMessage() and D in record.getMessage()  # the file's set
    assert f"raft.voters in the config ({A}, {B}, {C})" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="consensus.voterfile"):
        voterfile.choose([C, A, D], path, A)  # same set, another order: no warning
    assert caplog.records == []


def test_a_pending_add_starts_the_node_as_a_joining_voter(tmp_path):
    path = tmp_path / "voters.json"
    voterfile.save(path, [A, B, C, D], index=20, pending=True)
    start = voterfile.choose([A, B, C], path, D)
    assert start.voters == [A, B, C] and start.joining and start.is_voter(D)
    # a pending file that does not list the node reading it (a mistake) is just a set
    assert not voterfile.choose([A, B, C], path, "10.0.0.9:7170").joining
