"""Prometheus metrics of one agent, on that agent's own ``CollectorRegistry``.

Three kinds:

- **read at scrape time** (``StatusCollector``): Raft term, commit/applied index,
  leadership, log size, readiness, notifications by status, spool depth and
  submissions, leases, detection, monitors and, on voters, the recovery engine
  (``status()["recovery"]``: runs, their ends, evacuations, Nova calls; and the
  engine's recent recovery durations). They are read from ``node.status()`` when
  Prometheus scrapes, so no part of the agent has to remember to push a value and a
  scrape never shows a number older than the scrape itself.
- **counted as things happen** (``AgentMetrics`` counters): admin requests by verb
  and result, malformed admin requests, refused admin peers. Only the admin server
  sees those events.
- **gossip** (``GossipCollector``, when the agent runs a MembershipService): the membership
  core's counters (probes, indirect probes, suspicions, refutations, false suspicions,
  deaths declared, ...), the wire's messages in/out and drops by direction and kind, refused
  CURVE keys, the awareness score and members by state, all read from one snapshot at scrape
  time (docs/gossip-wire.md).

``register_agent_metrics(node)`` (alias ``metrics_for``) returns the one
``AgentMetrics`` of a node's registry, creating it on first use, so the daemon, the
admin server and the status endpoint may each call it, in any order, without
registering the same metric twice.
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hagent.monitors.metrics import monitor_metrics

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
        yield from _lease_metrics(st.get("lease") or {})
        detection = st.get("detection") or {}
        for key, doc in DETECTION_COUNTERS.items():
            if key in detection:
                yield CounterMetricFamily(f"{PREFIX}_detection_{key}", doc,
                                          value=float(detection[key]))
        yield from monitor_metrics(st.get("monitors") or {})
        if isinstance(st.get("recovery"), dict):
            engine = getattr(self._node_ref, "recovery", None)
            yield from recovery_metrics(st["recovery"], getattr(engine, "durations", None) or {})


#: The leader's detection counters (hagent.detection.service) shown in /metrics.
DETECTION_COUNTERS = {
    "proposals": "host.down/fenced/up proposals this node made as leader",
    "proposal_failures": "Of those, proposals the log did not commit (retried)",
    "fence_calls": "Fence driver (IPMI/Redfish) power-off calls this node made as leader",
    "fence_failures": "Of those, calls that did not confirm power-off",
}


#: The recovery engine's counters (recovery/engine.py) shown in /metrics: counter name ->
#: (metric name, help). They count what this voter's engine did while it led, since it
#: started; sum them over the voters for the cluster's figures.
RECOVERY_COUNTERS = {
    "claims": ("claims", "Terms this node claimed recovery in (it became the recovering leader)"),
    "runs": ("runs", "Recoveries started: a notification moved to running (first run or retry)"),
    "expired": ("expired", "Notifications failed as older than notification_expiry"),
    "nova_calls": ("nova_calls", "Calls to Nova that change something (force down, disable, "
                                 "evacuate, stop, start, ...)"),
    "nova_errors": ("nova_errors", "Of those, calls Nova failed (each retry counted)"),
}
#: Engine counters of how recoveries ended, as the ``status`` label of one counter.
RECOVERY_ENDS = {"finished": "finished", "ignored": "ignored", "errors": "error",
                 "failed": "failed"}
#: Quantiles of the recent recovery durations shown (1 is the longest).
DURATION_QUANTILES = (0.5, 0.9, 1.0)


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def recovery_metrics(engine: dict[str, Any], durations: dict[str, list[float]]) -> Iterator[Metric]:
    """A voter's recovery engine: ``engine`` is its ``status()`` (counters, ``leading_term``,
    ``in_progress``), ``durations`` its recent recovery durations by notification type
    (seconds from generated_time to finished/failed; the engine keeps the last 100 of each).

    The durations are a sliding window, not a running total, so they are shown as gauges
    (quantiles, the latest, the window's size) rather than as a histogram whose counts
    Prometheus expects never to drop."""
    p = f"{PREFIX}_recovery"
    yield GaugeMetricFamily(f"{p}_leading", "1 while this node's engine holds the recovery "
                            "claim of the current term (it is the one recovering)",
                            value=0.0 if engine.get("leading_term") is None else 1.0)
    yield GaugeMetricFamily(f"{p}_in_progress", "Notifications this node is recovering now",
                            value=float(len(engine.get("in_progress") or ())))
    for key, (name, doc) in RECOVERY_COUNTERS.items():
        if key in engine:
            yield CounterMetricFamily(f"{p}_{name}", doc, value=float(engine[key]))
    ends = CounterMetricFamily(f"{p}_ended", "Recoveries this node ended, by the status they "
                               "ended in (error: to be retried; failed: for good)",
                               labels=["status"])
    for key, status in RECOVERY_ENDS.items():
        ends.add_metric([status], float(engine.get(key, 0)))
    yield ends
    evacuations = CounterMetricFamily(f"{p}_evacuations", "Instance evacuations this node "
                                      "finished, by result", labels=["result"])
    for result in ("succeeded", "failed"):
        evacuations.add_metric([result], float(engine.get(f"evacuations_{result}", 0)))
    yield evacuations
    quantiles = GaugeMetricFamily(f"{p}_duration_seconds", "Recent recoveries this node ended "
                                  "(finished or failed): seconds from the notification's "
                                  "generated_time, by quantile over the window",
                                  labels=["type", "quantile"])
    latest = GaugeMetricFamily(f"{p}_last_duration_seconds", "The latest recovery this node "
                               "ended: seconds from the notification's generated_time",
                               labels=["type"])
    window = GaugeMetricFamily(f"{p}_duration_window", "Recoveries the duration quantiles "
                               "cover (the engine keeps the latest of each type)",
                               labels=["type"])
    for kind, values in sorted(durations.items()):
        values = list(values)  # the engine appends on its own thread meanwhile
        if not values:
            continue
        ordered = sorted(values)
        for q in DURATION_QUANTILES:
            quantiles.add_metric([kind, f"{q:g}"], _quantile(ordered, q))
        latest.add_metric([kind], values[-1])
        window.add_metric([kind], float(len(values)))
    yield from (quantiles, latest, window)


def _lease_metrics(lease: dict[str, Any]) -> Iterator[Metric]:
    """This node's own lease, and on the leader every host's time to fenced."""
    if "deadline_in" in lease:
        yield GaugeMetricFamily(f"{PREFIX}_lease_self_fence_in_seconds",
                                "Seconds until this node's watchdog fires unless a renewal commits",
                                value=float(lease["deadline_in"]))
    if lease.get("seq") is not None:
        yield GaugeMetricFamily(f"{PREFIX}_lease_committed_seq",
                                "Sequence number of this node's latest committed lease renewal",
                                value=float(lease["seq"]))
    yield GaugeMetricFamily(f"{PREFIX}_lease_self_fenced", "1 once this node fenced itself",
                            value=1.0 if lease.get("self_fenced") else 0.0)
    hosts = (lease.get("leader") or {}).get("hosts") or {}
    if hosts:
        g = GaugeMetricFamily(f"{PREFIX}_lease_expires_in_seconds",
                              "Leader only: seconds until each host counts as fenced by its lease "
                              "(<= 0: it does)", labels=["host"])
        for host, row in sorted(hosts.items()):
            g.add_metric([host], float(row["expires_in"]))
        yield g


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


# --- gossip (failure detection) -----------------------------------------------------------
#: The membership core's counters, by the name the core gives them, as metric names and help.
GOSSIP_COUNTERS = {
    "probes_sent": ("probes", "Direct probes (pings) this node sent"),
    "indirect_probes_sent": ("indirect_probes", "Indirect probe requests (ping-req) this node sent"),
    "acks_received": ("acks", "Acks this node received"),
    "nacks_received": ("nacks", "Nacks this node received (a relay could not reach the target)"),
    "probe_failures": ("probe_failures", "Probes that got no ack, direct or indirect"),
    "suspicions_raised": ("suspicions", "Times this node began to suspect a member"),
    "suspicions_received": ("suspicions_received", "Suspicions of other members this node heard"),
    "refutations": ("refutations", "Suspicions of this node it refuted (incarnation bumped)"),
    "false_suspicions": ("false_suspicions", "Suspected members that proved alive again"),
    "deaths_declared": ("deaths_declared", "Members this node declared dead"),
    "push_pulls": ("push_pulls", "Full state exchanges (push-pull) this node took part in"),
    "messages_in": ("protocol_messages_in", "Valid messages the protocol core processed"),
    "messages_out": ("protocol_messages_out", "Messages the protocol core asked to send"),
}


class GossipCollector(Collector):
    """Gossip figures of ``agent.membership`` (a MembershipService), read at scrape time from
    one snapshot, so the receive loop only bumps plain counters."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        service = getattr(self._agent, "membership", None)
        if service is None:
            return
        from hagent.membership.service import STATES
        from hagent.membership.shell import DROP_IN_KINDS, DROP_OUT_KINDS

        snap = service.snapshot()
        p = f"{PREFIX}_gossip"
        for key, value in sorted(snap.counters.items()):
            name, doc = GOSSIP_COUNTERS.get(key, (key, f"Membership core counter {key}"))
            yield CounterMetricFamily(f"{p}_{name}", doc, value=float(value))
        wire = snap.wire
        yield CounterMetricFamily(f"{p}_messages_received", "Gossip messages that arrived on this "
                                  "node's socket, valid or not", value=float(wire.get("received", 0)))
        yield CounterMetricFamily(f"{p}_messages_sent", "Gossip messages handed to a live "
                                  "connection", value=float(wire.get("sent", 0)))
        dropped = CounterMetricFamily(f"{p}_dropped_messages", "Gossip messages dropped: in "
                                      "(malformed, version, oversized, internal) or out (no_key, "
                                      "stalled, backlog, oversized, error)",
                                      labels=["direction", "kind"])
        for direction, kinds, counts in (("in", DROP_IN_KINDS, wire.get("dropped_in", {})),
                                         ("out", DROP_OUT_KINDS, wire.get("dropped_out", {}))):
            for kind in sorted(set(kinds) | set(counts)):
                dropped.add_metric([direction, kind], float(counts.get(kind, 0)))
        yield dropped
        yield CounterMetricFamily(f"{p}_refused_keys", "CURVE handshakes on the gossip socket "
                                  "refused: the key is not in security.allowed_keys",
                                  value=float(wire.get("refused_keys", 0)))
        yield GaugeMetricFamily(f"{p}_awareness_score", "Local health score (Lifeguard): 0 is "
                                "healthy; probes are stretched by score + 1",
                                value=float(snap.health_score))
        yield GaugeMetricFamily(f"{p}_peer_sockets", "Outbound gossip sockets open",
                                value=float(wire.get("peer_sockets", 0)))
        members = GaugeMetricFamily(f"{p}_members", "Known members (this node included) by state",
                                    labels=["state"])
        counts = snap.by_state()
        for state in sorted(set(STATES) | set(counts)):
            members.add_metric([state], float(counts.get(state, 0)))
        yield members


_GOSSIP_ATTR = "_hagent_gossip_metrics"


def register_gossip_metrics(agent: Any) -> None:
    """Register the gossip collector on ``agent.registry`` once (it shows nothing while
    ``agent.membership`` is None)."""
    with _lock:
        if getattr(agent.registry, _GOSSIP_ATTR, None) is None:
            agent.registry.register(GossipCollector(agent))
            setattr(agent.registry, _GOSSIP_ATTR, True)
