"""The netns lab's pure parts: fault rules, partition checks, the per-node address plan.
No namespaces, no nft: the fault test (tests/fault/test_netns_lab.py) runs them for real."""
from __future__ import annotations

from pathlib import Path

import pytest

from hagent.config import loads_config
from hagent.lab import configs
from hagent.lab.netns import Faults, NodeLink, check_partition, parse_groups, rules

LINKS = [NodeLink(name=f"node{i}", netns=f"hlabc123-node{i}", veth=f"hlabc123v{i - 1}",
                  address=f"198.18.7.{i + 1}") for i in range(1, 6)]
NAMES = [link.name for link in LINKS]


def test_no_faults_no_rules() -> None:
    assert rules(LINKS, Faults()) == []


def test_partition_drops_both_ways_between_groups_only() -> None:
    out = rules(LINKS, Faults(partition=[["node1", "node2"], ["node3", "node4", "node5"]]))
    assert out == [
        'iifname { "hlabc123v0", "hlabc123v1" } oifname { "hlabc123v2", "hlabc123v3", "hlabc123v4" } drop',
        'iifname { "hlabc123v2", "hlabc123v3", "hlabc123v4" } oifname { "hlabc123v0", "hlabc123v1" } drop',
    ]


def test_three_groups_give_every_ordered_pair() -> None:
    out = rules(LINKS, Faults(partition=[["node1"], ["node2"], ["node3"]]))
    assert len(out) == 6 and len(set(out)) == 6


def test_loss_is_random_both_ways_and_total_loss_is_a_plain_drop() -> None:
    out = rules(LINKS, Faults(loss={"node3": 30, "node1": 100}))
    assert out == ['iifname "hlabc123v0" drop', 'oifname "hlabc123v0" drop',
                   'iifname "hlabc123v2" numgen random mod 100 < 30 drop',
                   'oifname "hlabc123v2" numgen random mod 100 < 30 drop']


@pytest.mark.parametrize("groups, why", [
    ([["node1", "node2"]], "at least two groups"),
    ([["node1"], []], "at least two groups"),
    ([["node1"], ["node9"]], "no node 'node9'"),
    ([["node1", "node2"], ["node2"]], "node2 is in two groups"),
])
def test_bad_partitions_are_refused_with_the_reason(groups: list[list[str]], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_partition(groups, NAMES)


def test_parse_groups() -> None:
    assert parse_groups("node1,node2/node3, node4,node5") == [["node1", "node2"],
                                                                ["node3", "node4", "node5"]]
    assert parse_groups("node1/node2") == [["node1"], ["node2"]]


def test_netns_plan_binds_each_node_address_on_deployment_ports(tmp_path: Path) -> None:
    hosts = [link.address for link in LINKS]
    plans = configs.plan_netns_nodes(tmp_path, 5, 3, hosts)
    configs.write_node_files(plans, tmp_path / configs.SECRET_FILE)
    loaded = [loads_config(p.config.read_text(), base_dir=p.dir) for p in plans]
    voters = [f"{h}:{configs.DEPLOYMENT_PORTS['raft']}" for h in hosts[:3]]
    for plan, config, host in zip(plans, loaded, hosts):
        assert plan.host == host
        assert list(config.raft.voters) == voters
        assert config.status.bind == f"{host}:{configs.DEPLOYMENT_PORTS['status']}"
        assert list(config.forward.endpoints) == [f"{h}:{configs.DEPLOYMENT_PORTS['forward']}"
                                                  for h in hosts[:3]]
    # Every node may be promoted: each binds its own address on the deployment ports.
    assert [c.raft.bind for c in loaded] == [f"{h}:{configs.DEPLOYMENT_PORTS['raft']}"
                                             for h in hosts]
    with pytest.raises(ValueError, match="need 5 hosts"):
        configs.plan_nodes(tmp_path, 5, 3, [1, 2, 3, 17, 18], [4, 5, 6, 7, 8],
                           forward_ports=[9, 10, 11, 19, 20],
                           gossip_ports=[12, 13, 14, 15, 16], hosts=hosts[:4])


def test_loss_on_all_links_draws_each_frame_once() -> None:
    out = rules(LINKS, Faults(loss={"*": 10}))
    (rule,) = out
    assert rule.endswith(" numgen random mod 100 < 10 drop")
    for link in LINKS:  # only frames between this lab's own nodes
        assert rule.count(f'"{link.veth}"') == 2
