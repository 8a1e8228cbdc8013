"""What operators see of membership: `hagentctl members` (table and JSON, with replicated
leases), the members in `hagentctl status`, and the gossip figures on /metrics."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from hagent.admin import protocol
from hagent.admin.server import AdminServer
from hagent.config import AdminConfig
from hagent.ctl.main import main
from hagent.membership.service import Snapshot
from hagent.metrics import register_gossip_metrics
from tests.fakes import FakeNode

ROWS = [
    {"name": "node1", "address": "10.0.0.1:7172", "state": "alive", "incarnation": 0,
     "last_heard_ago": None, "confirmations": 0, "suspect_deadline_in": None,
     "raft_address": "10.0.0.1:7170", "voter": True},
    {"name": "node2", "address": "10.0.0.2:7172", "state": "suspect", "incarnation": 3,
     "last_heard_ago": 2.25, "confirmations": 2, "suspect_deadline_in": 1.5,
     "raft_address": None, "voter": False},
    {"name": "node3", "address": "10.0.0.3:7172", "state": "dead", "incarnation": 1,
     "last_heard_ago": 40.0, "confirmations": 0, "suspect_deadline_in": None,
     "raft_address": None, "voter": False},
]


class GossipNode(FakeNode):
    """A FakeNode whose members come from gossip and whose leases expire predictably."""

    def members(self) -> list[dict[str, Any]]:
        return [dict(r) for r in ROWS]

    def lease_expires_in(self, host: str, lease: dict[str, Any] | None) -> float | None:
        return None if lease is None else {"node1": 12.0, "node3": -3.5}[host]


def ctl(node, tmp_path, capsys, *argv):
    server = AdminServer(node, AdminConfig(socket=tmp_path / "hagent.sock"))

    def call(verb, args):
        return protocol.decode_reply(protocol.encode(
            asyncio.run(server.answer(protocol.encode_request(verb, args)))))

    code = main(list(argv), call=call)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def table(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def with_leases(node: GossipNode) -> GossipNode:
    asyncio.run(node.propose({"op": "lease.renew", "hosts": {"node1": 7, "node3": 2}}))
    return node


def test_members_table_shows_state_suspicion_lease_and_voter(tmp_path, capsys):
    rows = table(ctl(with_leases(GossipNode()), tmp_path, capsys, "members"))
    assert rows[0] == ["name", "address", "state", "incarnation", "last heard", "suspicion",
                       "lease expires", "voter"]
    assert rows[1] == ["node1", "10.0.0.1:7172", "alive", "0", "self", "-", "in 12.0s", "True"]
    assert rows[2] == ["node2", "10.0.0.2:7172", "suspect", "3", "2.2s ago",
                       "2 confirmations, dead in 1.5s", "-", "False"]
    assert rows[3] == ["node3", "10.0.0.3:7172", "dead", "1", "40.0s ago", "-",
                       "expired 3.5s ago", "False"]


def test_members_json_is_the_rows_with_lease_fields(tmp_path, capsys):
    doc = json.loads(ctl(with_leases(GossipNode()), tmp_path, capsys, "members", "-f", "json"))
    assert [r["name"] for r in doc] == ["node1", "node2", "node3"]
    assert doc[0]["lease_seq"] == 7 and doc[0]["lease_expires_in"] == 12.0
    assert doc[1]["lease_seq"] is None and doc[1]["lease_expires_in"] is None
    assert doc[1]["confirmations"] == 2 and doc[1]["suspect_deadline_in"] == 1.5
    assert doc[2]["lease_expires_in"] == -3.5 and doc[0]["voter"] is True


def test_members_still_shown_when_the_log_cannot_be_read(tmp_path, capsys):
    node = with_leases(GossipNode())
    node.unavailable = "no voter answered"
    rows = table(ctl(node, tmp_path, capsys, "members"))
    assert [r[0] for r in rows[1:]] == ["node1", "node2", "node3"]
    assert [r[6] for r in rows[1:]] == ["-", "-", "-"]


def test_status_table_lists_members_one_per_line(tmp_path, capsys):
    class StatusNode(GossipNode):
        def status(self):
            return {**super().status(),
                    "members": [{"name": "node1", "state": "alive", "incarnation": 0},
                                {"name": "node2", "state": "suspect", "incarnation": 3}],
                    "membership": {"address": "10.0.0.1:7172", "health_score": 0,
                                   "members_by_state": {"alive": 1, "suspect": 1}}}

    out = ctl(StatusNode(), tmp_path, capsys, "status")
    assert "node1 alive (incarnation 0)" in out and "node2 suspect (incarnation 3)" in out
    raft = json.loads(ctl(StatusNode(), tmp_path, capsys, "raft", "-f", "json"))
    assert "members" not in raft and "membership" not in raft


# --- /metrics -----------------------------------------------------------------------------
def scrape(snapshot: Snapshot | None) -> str:
    membership = None if snapshot is None else SimpleNamespace(snapshot=lambda: snapshot)
    agent = SimpleNamespace(registry=CollectorRegistry(), membership=membership)
    register_gossip_metrics(agent)
    register_gossip_metrics(agent)  # idempotent
    return generate_latest(agent.registry).decode()


def test_metrics_expose_gossip_counters_drops_awareness_and_members():
    snap = Snapshot(
        taken_at=1.0, members=ROWS, health_score=2,
        counters={"probes_sent": 40, "indirect_probes_sent": 6, "suspicions_raised": 2,
                  "refutations": 1, "false_suspicions": 1, "deaths_declared": 1,
                  "messages_in": 90, "messages_out": 95, "pauses_detected": 0},
        wire={"received": 93, "sent": 94, "dropped_in": {"malformed": 2, "version": 1},
              "dropped_out": {"no_key": 1}, "refused_keys": 4, "peer_sockets": 2})
    text = scrape(snap)
    for line in [
        "hagent_gossip_probes_total 40.0",
        "hagent_gossip_indirect_probes_total 6.0",
        "hagent_gossip_suspicions_total 2.0",
        "hagent_gossip_refutations_total 1.0",
        "hagent_gossip_false_suspicions_total 1.0",
        "hagent_gossip_deaths_declared_total 1.0",
        "hagent_gossip_pauses_detected_total 0.0",
        "hagent_gossip_messages_received_total 93.0",
        "hagent_gossip_messages_sent_total 94.0",
        'hagent_gossip_dropped_messages_total{direction="in",kind="malformed"} 2.0',
        'hagent_gossip_dropped_messages_total{direction="in",kind="oversized"} 0.0',
        'hagent_gossip_dropped_messages_total{direction="out",kind="no_key"} 1.0',
        "hagent_gossip_refused_keys_total 4.0",
        "hagent_gossip_awareness_score 2.0",
        'hagent_gossip_members{state="alive"} 1.0',
        'hagent_gossip_members{state="suspect"} 1.0',
        'hagent_gossip_members{state="dead"} 1.0',
        'hagent_gossip_members{state="left"} 0.0',
    ]:
        assert line in text, line


def test_metrics_without_gossip_show_no_gossip_family():
    assert "hagent_gossip" not in scrape(None)
