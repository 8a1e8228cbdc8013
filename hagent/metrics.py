"""Prometheus metrics of one agent, on that agent's own ``CollectorRegistry``.

Two kinds:

- **read at scrape time** (``StatusCollector``): Raft term, commit/applied index,
  leadership, log size, readiness, notifications by status, spool depth and
  submissions. They are read from ``node.status()`` when Prometheus scrapes, so no
  part of the agent has to remember to push a value and a scrape never shows a
  number older than the scrape itself.
- **counted as things happen** (``AgentMetrics`` counters): admin requests by verb
  and result, malformed admin requests, refused admin peers. Only the admin server
  sees those events.

``register_agent_metrics(node)`` (alias ``metrics_for``) returns the one
``AgentMetrics`` of a node's registry, creating it on first use, so the daemon, the
admin server and the status endpoint may each call it, in any order, without
registering the same metric twice.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "hagent"

# Status keys outside the AgentNode contract that feed optional metrics when the
# daemon provides them (the submitter owns these numbers).
SPOOL_DEPTH_KEY = "spool_depth"          # int: notifications spooled, not yet committed
SUBMISSIONS_KEY = "submissions_total"    # int: notifications this node has submitted

NOTIFICATION_STATUSES = ("new", "running", "error", "failed", "ignored", "finished")


class StatusCollector(Collector):
    """Turns one ``node.status()`` document into gauges at each scrape.

    It holds the node (whose registry holds this collector, so the two live and die
    together) and calls ``status()`` afresh on every scrape."""

    def __init__(self, node: Any) -> None:
        self._node_ref = node
        self._node = node.name

    def describe(self) -> list[Metric]:
        # Describing nothing keeps registration from calling status() (the node may
        # not be ready yet); names are still checked for clashes at scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            st = self._node_ref.status()
        except Exception:  # a scrape must not fail because one read did
            log.exception("status() failed during a metrics scrape")
            st = None
        info = GaugeMetricFamily(f"{PREFIX}_node_info",
                                 "Always 1; carries this agent's node name (join on it)", labels=["node"])
        info.add_metric([self._node], 1.0)
        yield info
        yield GaugeMetricFamily(f"{PREFIX}_status_up", "1 if this scrape could read the agent's status",
                                value=0.0 if st is None else 1.0)
        if st is None:
            return
        yield from self._gauges(st)

    def _gauges(self, st: dict[str, Any]) -> Iterator[Metric]:
        simple = [
            ("raft_term", "Current Raft term known to this node", st.get("term")),
            ("raft_commit_index", "Raft commit index known to this node", st.get("commit_index")),
            ("raft_applied_index", "Last log index applied to this node's state", st.get("applied_index")),
            ("raft_log_size", "Entries in this node's Raft log (since the last snapshot)", st.get("log_size")),
            ("raft_is_leader", "1 if this node is the Raft leader", st.get("role") == "leader"),
            ("raft_is_voter", "1 if this node is a Raft voter", st.get("voter")),
            ("ready", "1 once this node has joined the log and caught up", st.get("ready")),
        ]
        for name, doc, value in simple:
            if value is None:
                continue
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))
        counts = st.get("notifications") or {}
        g = GaugeMetricFamily(f"{PREFIX}_notifications", "Notifications in the replicated log by status",
                              labels=["status"])
        for status in sorted(set(NOTIFICATION_STATUSES) | set(counts)):
            g.add_metric([status], float(counts.get(status, 0)))
        yield g
        voters = st.get("voters") or []
        if voters:
            yield GaugeMetricFamily(f"{PREFIX}_raft_voters_reachable",
                                    "Raft voters this node can reach (itself included)",
                                    value=float(sum(1 for v in voters if v.get("reachable"))))
        if st.get(SPOOL_DEPTH_KEY) is not None:
            yield GaugeMetricFamily(f"{PREFIX}_spool_depth",
                                    "Notifications spooled on disk, not yet confirmed by the log",
                                    value=float(st[SPOOL_DEPTH_KEY]))
        if st.get(SUBMISSIONS_KEY) is not None:
            yield CounterMetricFamily(f"{PREFIX}_notification_submissions",
                                      "Notifications this node has submitted to the log",
                                      value=float(st[SUBMISSIONS_KEY]))


class AgentMetrics:
    """The agent's metrics on one registry. Build it with ``register_agent_metrics(node)``."""

    def __init__(self, registry: CollectorRegistry, node: Any) -> None:
        self.registry = registry
        registry.register(StatusCollector(node))
        self.admin_requests = Counter(
            f"{PREFIX}_admin_requests", "Admin socket requests by verb and result (ok|error)",
            ["verb", "result"], registry=registry)
        self.admin_malformed = Counter(
            f"{PREFIX}_admin_malformed_requests",
            "Admin socket lines that were not a valid request (bad JSON, too long, unknown verb)",
            registry=registry)
        self.admin_refused_peers = Counter(
            f"{PREFIX}_admin_refused_peers",
            "Admin socket connections refused by the peer credential check", registry=registry)


_lock = threading.Lock()
# Kept on the registry itself: the metrics hold the node, which holds the registry, so a
# side table keyed by registry would keep every registry (and node) alive for ever.
_ATTR = "_hagent_agent_metrics"


def metrics_for(node: Any) -> AgentMetrics:
    """The node's ``AgentMetrics``, registered on ``node.registry`` on first call."""
    with _lock:
        m = getattr(node.registry, _ATTR, None)
        if m is None:
            m = AgentMetrics(node.registry, node)
            setattr(node.registry, _ATTR, m)
        return m


register_agent_metrics = metrics_for
