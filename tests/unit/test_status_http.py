"""Status endpoint pieces that need no socket: bind parsing and the scrape-time metrics."""
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hagent.metrics import metrics_for, register_agent_metrics
from hagent.status_http import BindError, parse_bind
from tests.fakes import FakeNode


@pytest.mark.parametrize("bind, addr", [
    ("127.0.0.1:7180", ("127.0.0.1", 7180)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:7180", ("::1", 7180)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_bind(bind, addr):
    assert parse_bind(bind) == addr


@pytest.mark.parametrize("bind", ["7180", ":7180", "host:", "host:http", "host:70000"])
def test_parse_bind_refuses(bind):
    with pytest.raises(BindError, match="not host:port"):
        parse_bind(bind)


def scrape(node):
    samples = {}
    for family in text_string_to_metric_families(generate_latest(node.registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_read_status_at_scrape_time():
    node = FakeNode()
    register_agent_metrics(node)
    before = scrape(node)
    assert before[("hagent_raft_term", ())] == 4
    assert before[("hagent_raft_is_leader", ())] == 1
    assert before[("hagent_raft_commit_index", ())] == 0
    assert before[("hagent_notifications", (("status", "new"),))] == 0
    assert before[("hagent_node_info", (("node", "node-1"),))] == 1
    assert before[("hagent_raft_voters_reachable", ())] == 2
    assert before[("hagent_spool_depth", ())] == 0
    node.leader = False
    node._applied = 7
    after = scrape(node)
    assert after[("hagent_raft_is_leader", ())] == 0
    assert after[("hagent_raft_applied_index", ())] == 7


def test_metrics_registered_once_per_registry():
    node = FakeNode()
    assert register_agent_metrics(node) is metrics_for(node)
    assert metrics_for(FakeNode()) is not metrics_for(node)


def test_admin_counters_are_exposed():
    node = FakeNode()
    m = register_agent_metrics(node)
    m.admin_requests.labels("status", "ok").inc()
    m.admin_malformed.inc()
    m.admin_refused_peers.inc()
    s = scrape(node)
    assert s[("hagent_admin_requests_total", (("result", "ok"), ("verb", "status")))] == 1
    assert s[("hagent_admin_malformed_requests_total", ())] == 1
    assert s[("hagent_admin_refused_peers_total", ())] == 1


def test_scrape_survives_a_failing_status(monkeypatch):
    node = FakeNode()
    register_agent_metrics(node)
    monkeypatch.setattr(node, "status", lambda: 1 / 0)
    s = scrape(node)
    assert s[("hagent_status_up", ())] == 0
    assert ("hagent_raft_term", ()) not in s


def test_lease_detection_and_monitor_figures_are_exposed():
    node = FakeNode()
    register_agent_metrics(node)
    status = node.status

    def with_figures():
        st = status()
        st["lease"] = {"deadline_in": 7.5, "seq": 12, "self_fenced": False,
                       "leader": {"leader_for": 30.0, "hosts": {"c2": {"seq": 4, "expires_in": -1.5}}}}
        st["detection"] = {"proposals": 3, "proposal_failures": 1, "fence_calls": 2,
                           "fence_failures": 0}
        st["monitors"] = {"process": {"events_seen": 5}}
        return st

    node.status = with_figures
    samples = scrape(node)
    assert samples[("hagent_lease_self_fence_in_seconds", ())] == 7.5
    assert samples[("hagent_lease_committed_seq", ())] == 12
    assert samples[("hagent_lease_self_fenced", ())] == 0
    assert samples[("hagent_lease_expires_in_seconds", (("host", "c2"),))] == -1.5
    assert samples[("hagent_detection_fence_calls_total", ())] == 2
    assert samples[("hagent_detection_proposal_failures_total", ())] == 1
    assert any(name.startswith("hagent_monitor_") for name, _ in samples)


def test_recovery_figures_are_exposed_on_a_voter():
    node = FakeNode()
    register_agent_metrics(node)
    status = node.status
    engine = {"leading_term": 7, "in_progress": ["u1", "u2"], "turns": 40, "claims": 1,
              "runs": 9, "finished": 5, "ignored": 1, "errors": 2, "failed": 1, "expired": 1,
              "evacuations_succeeded": 30, "evacuations_failed": 3, "nova_calls": 80,
              "nova_errors": 4}
    node.status = lambda: {**status(), "recovery": engine}
    # The engine's recent durations by type, in the order they ended.
    node.recovery = type("Engine", (), {"durations": {
        "COMPUTE_HOST": [30.0, 10.0, 20.0, 40.0], "VM": [], "PROCESS": [2.5]}})()
    s = scrape(node)
    assert s[("hagent_recovery_leading", ())] == 1
    assert s[("hagent_recovery_in_progress", ())] == 2
    assert s[("hagent_recovery_runs_total", ())] == 9
    assert s[("hagent_recovery_claims_total", ())] == 1
    assert s[("hagent_recovery_expired_total", ())] == 1
    assert s[("hagent_recovery_nova_calls_total", ())] == 80
    assert s[("hagent_recovery_nova_errors_total", ())] == 4
    assert {status: s[("hagent_recovery_ended_total", (("status", status),))]
            for status in ("finished", "ignored", "error", "failed")} == \
        {"finished": 5, "ignored": 1, "error": 2, "failed": 1}
    assert s[("hagent_recovery_evacuations_total", (("result", "succeeded"),))] == 30
    assert s[("hagent_recovery_evacuations_total", (("result", "failed"),))] == 3
    def quantile(kind, q):
        return s[("hagent_recovery_duration_seconds", (("quantile", q), ("type", kind)))]

    assert [quantile("COMPUTE_HOST", q) for q in ("0.5", "0.9", "1")] == [20.0, 40.0, 40.0]
    assert s[("hagent_recovery_last_duration_seconds", (("type", "COMPUTE_HOST"),))] == 40.0
    assert s[("hagent_recovery_duration_window", (("type", "COMPUTE_HOST"),))] == 4
    assert quantile("PROCESS", "0.5") == 2.5
    assert not any(name.startswith("hagent_recovery_") and dict(labels).get("type") == "VM"
                   for name, labels in s)  # no recovery of that type yet: no sample
    # Not leading (a follower voter): the counters stay, leading drops to 0.
    engine["leading_term"], engine["in_progress"] = None, []
    s = scrape(node)
    assert s[("hagent_recovery_leading", ())] == 0 and s[("hagent_recovery_in_progress", ())] == 0
    assert s[("hagent_recovery_runs_total", ())] == 9


def test_no_recovery_figures_without_an_engine():
    node = FakeNode()  # a non-voter, or a voter with recovery.enabled = false
    register_agent_metrics(node)
    assert not any(name.startswith("hagent_recovery_") for name, _ in scrape(node))
