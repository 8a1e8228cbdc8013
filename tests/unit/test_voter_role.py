"""When a node switches role (hagent.voters.role) and the voter set it starts from
(hagent.voters.localfile): promotion seen by a non-voter, removal and an aborted promotion
seen by a voter only once it has caught up, the saved set winning over the config."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hagent.config import loads_config
from hagent.voters import localfile
from consensus import voterfile
from consensus.voterfile import VoterFileError
from hagent.voters.localfile import LocalVoters
from hagent.voters.role import NON_VOTER, VOTER, Me, as_non_voter, as_voter, promoting_me

ME = Me("node4", "10.0.0.4:7170", "10.0.0.4:7171", "key4")


def record(i: int) -> dict:
    return {"node": f"node{i}", "raft_address": f"10.0.0.{i}:7170",
            "forward_address": f"10.0.0.{i}:7171", "public_key": f"key{i}",
            "failure_domain": ""}


def voter_set(*voters: int, change=None, last=None, bootstrapped=True) -> dict:
    return {"voters": [record(i) for i in voters], "change": change, "last_change": last,
            "bootstrapped": bootstrapped}


ADD_ME = {"op": "add", "node": "node4", "address": "10.0.0.4:7170", "phase": "catching_up",
          "term": 3}


def test_a_non_voter_starts_catching_up_when_its_add_is_in_flight():
    assert as_non_voter(ME, voter_set(1, 2, 3)) is None
    switch = as_non_voter(ME, voter_set(1, 2, 3, change=ADD_ME))
    assert switch.to == VOTER and switch.pending
    # It starts from the committed set, without itself: not a member until the leader adds it.
    assert [v["node"] for v in switch.voters] == ["node1", "node2", "node3"]
    other = {**ADD_ME, "node": "node5", "address": "10.0.0.5:7170"}
    assert as_non_voter(ME, voter_set(1, 2, 3, change=other)) is None
    assert as_non_voter(ME, voter_set(1, 2, 3, change={**ADD_ME, "op": "remove"})) is None


def test_a_non_voter_already_in_the_set_starts_as_a_voter_and_a_plain_one_never_does():
    switch = as_non_voter(ME, voter_set(1, 2, 4))
    assert switch.to == VOTER and not switch.pending
    plain = Me("node4", "", "", "key4")
    assert as_non_voter(plain, voter_set(1, 2, 4, change=ADD_ME)) is None
    assert as_non_voter(ME, voter_set(bootstrapped=False)) is None
    assert as_non_voter(ME, None) is None


def test_a_voter_goes_back_to_non_voter_only_once_caught_up():
    removed = voter_set(1, 2, 3, last={"op": "remove", "node": "node4", "result": "committed",
                                       "term": 5})
    assert as_voter(ME, removed, caught_up=False, pending=False) is None
    switch = as_voter(ME, removed, caught_up=True, pending=False)
    assert switch.to == NON_VOTER and not switch.pending
    assert switch.reason == "removed from the voter set (term 5)"
    assert [v["node"] for v in switch.voters] == ["node1", "node2", "node3"]
    assert as_voter(ME, voter_set(1, 2, 4), caught_up=True, pending=False) is None


def test_a_candidate_waits_while_its_add_is_in_flight_and_leaves_when_aborted():
    catching = voter_set(1, 2, 3, change=ADD_ME)
    assert promoting_me(ME, catching)
    assert as_voter(ME, catching, caught_up=True, pending=True) is None
    assert as_voter(ME, voter_set(1, 2, 3, 4), caught_up=True, pending=True) is None  # promoted
    aborted = voter_set(1, 2, 3, last={"op": "add", "node": "node4", "result": "aborted",
                                       "reason": "did not catch up within 60 s", "term": 3,
                                       "address": "10.0.0.4:7170"})
    switch = as_voter(ME, aborted, caught_up=True, pending=True)
    assert switch.to == NON_VOTER
    assert switch.reason == "promotion aborted: did not catch up within 60 s"


KEYS = ['6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1<', 'NkIz@ym?%?57[]mjkC-LpcX)Kw.9fk(t-9kn#&mT',
        '9zIE&8ZG4B.Q41A].]iPLrm5WLAjM}u=GwFLMNai']


def config(tmp_path: Path, bind: str = "10.0.0.4:7170"):
    return loads_config(f'''
[node]
name = "node4"
state_dir = "{tmp_path}"
[raft]
voters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]
bind = "{bind}"
[forward]
endpoints = ["10.0.0.1:7171", "10.0.0.2:7171", "10.0.0.3:7171"]
bind = "10.0.0.4:7171"
[security]
voter_keys = {KEYS!r}
'''.replace("'", '"'))


def test_without_a_saved_set_the_config_bootstraps(tmp_path: Path):
    local = localfile.effective(config(tmp_path))
    assert local.source == "config" and not local.pending and local.index == 0
    assert local.addresses == ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]
    assert [v["public_key"] for v in local.voters] == KEYS
    run = localfile.run_config(config(tmp_path), local)
    assert not run.is_voter and run.forward.endpoints == ["10.0.0.1:7171", "10.0.0.2:7171",
                                                          "10.0.0.3:7171"]


def test_the_saved_set_wins_over_the_config_with_its_records(tmp_path: Path, caplog):
    saved = (record(1), record(2), record(5))
    localfile.save(tmp_path, saved)
    with caplog.at_level(logging.WARNING):
        local = localfile.effective(config(tmp_path))
    assert local.source == str(localfile.path_in(tmp_path))
    assert local.addresses == [r["raft_address"] for r in saved]
    assert "differs from raft.voters in the config" in caplog.text
    run = localfile.run_config(config(tmp_path), local)
    assert run.forward.endpoints == ["10.0.0.1:7171", "10.0.0.2:7171", "10.0.0.5:7171"]
    assert run.security.voter_keys == ["key1", "key2", "key5"]
    assert local.same_set([record(5), record(2), record(1)])


def test_records_survive_the_raft_sides_updates_and_fill_in_from_the_config(tmp_path: Path):
    """A voter's RaftNode rewrites the addresses; the agent's records stay. A voter without
    a record (none saved, not in the config) is known by its address only."""
    localfile.save(tmp_path, (record(1), record(2), record(3)))
    voterfile.update(localfile.path_in(tmp_path), voters=["10.0.0.1:7170", "10.0.0.2:7170",
                                                          "10.0.0.9:7170"], index=40)
    local = localfile.effective(config(tmp_path))
    assert local.index == 40
    assert [v["public_key"] for v in local.voters] == ["key1", "key2", None]
    assert [v["raft_address"] for v in localfile.forwardable(local)] == ["10.0.0.1:7170",
                                                                        "10.0.0.2:7170"]
    localfile.save_records(tmp_path, (record(1), record(2), {**record(9), "node": "node9"}))
    assert localfile.effective(config(tmp_path)).voters[2]["node"] == "node9"


def test_a_pending_candidate_runs_as_a_voter_whose_raft_partners_exclude_it(tmp_path: Path):
    localfile.save(tmp_path, (record(1), record(2), record(3)), pending=True,
                   self_address="10.0.0.4:7170")
    assert voterfile.load(localfile.path_in(tmp_path)).voters[-1] == "10.0.0.4:7170"
    local = localfile.effective(config(tmp_path))
    assert local.pending and "10.0.0.4:7170" not in local.addresses
    run = localfile.run_config(config(tmp_path), local)
    assert run.is_voter and run.forward_bind == "10.0.0.4:7171"


def test_an_unreadable_saved_set_stops_start_up_with_the_fix(tmp_path: Path):
    localfile.path_in(tmp_path).write_text("{not json")
    with pytest.raises(VoterFileError, match="remove it to start from raft.voters"):
        localfile.effective(config(tmp_path))
    assert LocalVoters((record(1),)).addresses == ["10.0.0.1:7170"]


def test_a_non_voter_without_records_forwards_to_the_bootstrap_voters(tmp_path: Path, caplog):
    voterfile.save(localfile.path_in(tmp_path), ["10.0.0.7:7170", "10.0.0.8:7170"])
    local = localfile.effective(config(tmp_path))
    assert localfile.forwardable(local) == []
    with caplog.at_level(logging.WARNING):
        targets = localfile.forward_targets(config(tmp_path), local)
    assert [t["forward_address"] for t in targets] == ["10.0.0.1:7171", "10.0.0.2:7171",
                                                       "10.0.0.3:7171"]
    assert "forwarding to the config's bootstrap voters" in caplog.text
    bare = loads_config(f'[node]\nname = "v"\nstate_dir = "{tmp_path}"\n[raft]\n'
                        'voters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]\n'
                        'bind = "10.0.0.1:7170"\n')
    with pytest.raises(VoterFileError, match="no voter in it has a known forward endpoint"):
        localfile.forward_targets(bare, local)


def test_an_eligible_node_needs_a_readable_secret_to_register_and_check_config_says_so(
        tmp_path: Path, caplog, capsys):
    from hagent.config import check_config_main
    from hagent.daemon import Agent
    from hagent.secretfile import write_secret

    secret = tmp_path / "cluster.secret"
    write_secret(secret)
    text = (f'[node]\nname = "node4"\nstate_dir = "{tmp_path}"\n[raft]\n'
            f'voters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]\n'
            f'bind = "10.0.0.4:7170"\nsecret_file = "{secret}"\n[forward]\n'
            f'endpoints = ["10.0.0.1:7171", "10.0.0.2:7171", "10.0.0.3:7171"]\n'
            f'bind = "10.0.0.4:7171"\n[security]\nvoter_keys = {KEYS!r}\n'
            f'key_file = "{tmp_path / "node.key"}"\n').replace("'", '"')
    from hagent.forward.keys import write_key_pair

    write_key_pair(tmp_path / "node.key")
    path = tmp_path / "hagent.toml"
    path.write_text(text)
    assert Agent._may_vote(loads_config(text)) and check_config_main(str(path)) == 0
    secret.chmod(0o644)  # others may read it: a voter would refuse to start with it
    with caplog.at_level(logging.ERROR):
        assert not Agent._may_vote(loads_config(text))
    assert "not registering as eligible for the voter set" in caplog.text
    assert check_config_main(str(path)) == 1
    assert "raft.secret_file" in capsys.readouterr().err


def test_a_candidate_that_cannot_start_as_a_voter_starts_as_a_non_voter_next_time(
        tmp_path: Path):
    from hagent.daemon import _give_up_candidacy

    localfile.save(tmp_path, (record(1), record(2), record(3)), pending=True,
                   self_address="10.0.0.4:7170")
    assert localfile.effective(config(tmp_path)).pending
    _give_up_candidacy(config(tmp_path))
    local = localfile.effective(config(tmp_path))
    assert not local.pending and local.addresses == ["10.0.0.1:7170", "10.0.0.2:7170",
                                                     "10.0.0.3:7170"]
    assert localfile.run_config(config(tmp_path), local).is_voter is False
