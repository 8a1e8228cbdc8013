"""The lab's files: agent configs the real loader accepts, socket paths that fit, port
claims that keep parallel labs apart, lab.json round trips. No processes, no sockets."""
from __future__ import annotations

import argparse
import json
import os
import random
import time
import tomllib
from pathlib import Path

import pytest

from hagent.config import loads_config
from hagent.lab import configs
from hagent.lab.cli import add_lab_parser
from hagent.lab.cluster import LAB_FILE, STOPPED, Lab, LabError, LabNode
from hagent.lab.ports import PortPicker, ephemeral_range


def plans(tmp_path: Path, nodes: int = 5, voters: int = 3, **kw) -> list[configs.NodePlan]:
    return configs.plan_nodes(tmp_path, nodes, voters, list(range(21000, 21000 + nodes)),
                              list(range(22000, 22000 + nodes)),
                              forward_ports=list(range(23000, 23000 + nodes)),
                              gossip_ports=list(range(24000, 24000 + nodes)), **kw)


def test_written_configs_load_as_voters_and_replicas(tmp_path: Path) -> None:
    secret = tmp_path / configs.SECRET_FILE
    ps = plans(tmp_path)
    configs.write_node_files(ps, secret, {"notifications": {"submit_timeout": 2.5},
                                          "logging": {"level": "DEBUG"}})
    loaded = [loads_config(p.config.read_text(), base_dir=p.dir) for p in ps]
    assert [c.node.name for c in loaded] == ["node1", "node2", "node3", "node4", "node5"]
    assert [c.is_voter for c in loaded] == [True, True, True, False, False]
    voters = ["127.0.0.1:21000", "127.0.0.1:21001", "127.0.0.1:21002"]
    from hagent.forward.keys import read_key_pair

    keys = [read_key_pair(p.key_file).public for p in ps]
    for c, p in zip(loaded, ps):
        assert list(c.raft.voters) == voters
        assert list(c.forward.endpoints) == ["127.0.0.1:23000", "127.0.0.1:23001", "127.0.0.1:23002"]
        assert list(c.security.voter_keys) == keys[:3]
        assert c.security.key_file == p.key_file and oct(p.key_file.stat().st_mode & 0o777) == "0o600"
        # Every node may be promoted: it holds the Raft secret and has its own Raft and
        # forward addresses. Every node admits every key (gossip is all-to-all) and seeds
        # from the voters' gossip sockets.
        assert c.raft.secret_file == secret and c.eligible
        n = int(p.name[4:]) - 1
        assert c.raft.bind == f"127.0.0.1:{21000 + n}"
        assert c.own_forward_endpoint == f"127.0.0.1:{23000 + n}"
        assert sorted(c.security.allowed_keys) == sorted(keys)
        assert c.gossip.bind == f"127.0.0.1:{24000 + int(p.name[4:]) - 1}"
        assert list(c.gossip.seeds) == ["127.0.0.1:24000", "127.0.0.1:24001", "127.0.0.1:24002"]
        assert list(c.gossip.seed_keys) == keys[:3]
        assert c.node.state_dir == tmp_path.resolve() / p.name / "state"
        assert c.node.run_dir == tmp_path.resolve() / p.name / "run"
        assert c.admin.socket == p.admin_socket
        assert c.status.bind == f"127.0.0.1:{22000 + int(p.name[4:]) - 1}"
        assert c.notifications.submit_timeout == 2.5 and c.logging.level == "DEBUG"
        assert p.state_dir.is_dir() and p.run_dir.is_dir()
    assert loaded[0].raft.bind == "127.0.0.1:21000" and loaded[4].raft.bind == "127.0.0.1:21004"


def test_plain_non_voters_hold_no_secret_and_failure_domains_are_written(tmp_path: Path) -> None:
    secret = tmp_path / configs.SECRET_FILE
    ps = plans(tmp_path, eligible=False, failure_domains={"node1": "rack-a", "node4": "rack-b"})
    configs.write_node_files(ps, secret)
    loaded = [loads_config(p.config.read_text(), base_dir=p.dir) for p in ps]
    assert [c.eligible for c in loaded] == [True, True, True, False, False]
    assert [c.raft.secret_file == secret for c in loaded] == [True, True, True, False, False]
    assert [c.voters.failure_domain for c in loaded] == ["rack-a", "", "", "rack-b", ""]
    with pytest.raises(ValueError, match="nodes the lab does not have: node9"):
        plans(tmp_path, failure_domains={"node9": "x"})


def test_render_toml_round_trips_and_escapes(tmp_path: Path) -> None:
    doc = {"a": {"s": 'quote " and \\ back', "i": 3, "f": 0.25, "b": False, "l": ["x", "y"],
                 "p": tmp_path}}
    assert tomllib.loads(configs.render_toml(doc)) == {
        "a": {"s": 'quote " and \\ back', "i": 3, "f": 0.25, "b": False, "l": ["x", "y"],
              "p": str(tmp_path)}}
    with pytest.raises(ValueError, match="a.d"):
        configs.render_toml({"a": {"d": {"nested": 1}}})


def test_admin_socket_falls_back_to_a_short_stable_path(tmp_path: Path) -> None:
    short = configs.admin_socket_path(tmp_path, "node1")
    assert short == tmp_path / "node1" / "run" / "hagent.sock"
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    long = configs.admin_socket_path(deep, "node12")
    assert len(os.fsencode(str(long))) <= 107
    assert long == configs.admin_socket_path(deep, "node12")  # stable across load/restart
    assert long != configs.admin_socket_path(deep, "node1")
    assert long.parent != configs.admin_socket_path(tmp_path / ("f" * 120), "node12").parent


def test_sizes_are_checked() -> None:
    for nodes, voters in ((0, 0), (3, 0), (3, 4)):
        with pytest.raises(ValueError):
            configs.check_sizes(nodes, voters)
    assert configs.default_voters(1) == 1 and configs.default_voters(7) == 3


def picker(owner: Path, claims: Path, seed: int, taken: set[int] = frozenset()) -> PortPicker:
    return PortPicker(owner, claim_dir=claims, rng=random.Random(seed),
                      bindable=lambda port, host: port not in taken)


def test_ports_are_distinct_claimed_and_below_the_ephemeral_range(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    a = picker(tmp_path / "labA", claims, 1).pick(50)
    assert len(set(a)) == 50
    assert all(20000 <= p < ephemeral_range()[0] for p in a)
    assert {int(f.name) for f in claims.iterdir()} == set(a)


def test_two_labs_never_get_the_same_port(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    (tmp_path / "labA").mkdir()
    (tmp_path / "labA" / LAB_FILE).write_text("[]")
    a = picker(tmp_path / "labA", claims, 7).pick(200)
    b = picker(tmp_path / "labB", claims, 7).pick(200)  # same random sequence on purpose
    assert not set(a) & set(b)


def test_busy_ports_are_skipped(tmp_path: Path) -> None:
    low = 20000
    taken = set(range(low, ephemeral_range()[0] - 5))
    got = picker(tmp_path / "lab", tmp_path / "claims", 3, taken).pick(3)
    assert not set(got) & taken


def test_stale_claims_are_taken_over_and_release_is_own_only(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    gone = tmp_path / "gone-lab"
    old = claims / "25000"
    old.write_text(str(gone) + "\n")
    past = time.time() - 3600
    os.utime(old, (past, past))
    fresh = claims / "25001"
    fresh.write_text(str(gone) + "\n")
    p = PortPicker(tmp_path / "lab", claim_dir=claims, bindable=lambda port, host: True)
    assert p._claim(25000) and not p._claim(25001)
    p.release([25000, 25001])
    assert not old.exists() and fresh.exists()


def test_lab_json_round_trip_and_recycled_pids(tmp_path: Path) -> None:
    ps = plans(tmp_path, 3, 3)
    lab = Lab(tmp_path, [LabNode.from_plan(p) for p in ps])
    lab.nodes[0].pid = os.getpid()  # alive, but not an agent with that config: not ours
    lab.nodes[1].pid = 2 ** 22 + 1  # no such process
    lab._save()
    raw = json.loads((tmp_path / LAB_FILE).read_text())
    assert [set(e) >= {"name", "pid", "admin_socket", "status_url", "voter", "config"} for e in raw] == [True] * 3
    loaded = Lab.load(tmp_path)
    assert loaded.names == ["node1", "node2", "node3"]
    assert loaded.nodes[0].status_url == ps[0].status_url == "http://127.0.0.1:22000"
    assert [loaded.state(n) for n in loaded.names] == [STOPPED] * 3
    with pytest.raises(LabError, match="not running"):
        loaded.crash("node1")  # never signals a pid that is not this node's agent
    with pytest.raises(LabError, match="no node"):
        loaded.node("node9")


def test_load_without_a_lab_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="hagent lab up"):
        Lab.load(tmp_path)


def test_cli_parser() -> None:
    parser = argparse.ArgumentParser()
    add_lab_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lab", "up", "--nodes", "5", "--voters", "3", "--dir", "/x"])
    assert (args.lab_command, args.nodes, args.voters, args.dir) == ("up", 5, 3, "/x")
    args = parser.parse_args(["lab", "crash", "--dir", "/x", "node2"])
    assert (args.lab_command, args.name) == ("crash", "node2")
    assert parser.parse_args(["lab", "down", "--dir", "/x", "--purge"]).purge
