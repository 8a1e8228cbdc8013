"""Prometheus metrics of forwarding, read at scrape time from the server's or the client's
counters (as ``hagent.metrics.StatusCollector`` does for the status), so the receive loops
only bump plain counters.

Voter: ``hagent_forward_requests{kind}``, ``hagent_forward_dropped_requests{reason}`` (malformed,
version, too_large: dropped, never answered), ``hagent_forward_failures{code}``,
``hagent_forward_refused_keys`` (CURVE handshakes ZAP refused), ``hagent_forward_in_flight``.
Non-voter: ``hagent_forward_client_requests{kind}``, ``hagent_forward_failovers``,
``hagent_forward_timeouts``, ``hagent_forward_late_replies``,
``hagent_forward_dropped_replies{reason}``, ``hagent_forward_voter_answer_age_seconds``.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hagent.forward.protocol import DROP_REASONS, KINDS
from hagent.metrics import PREFIX

_ATTR = "_hagent_forward_metrics"


def _labelled(family: Any, counts: dict[str, int], labels: tuple[str, ...]) -> Any:
    for label in sorted(set(labels) | set(counts)):
        family.add_metric([label], float(counts.get(label, 0)))
    return family


class ForwardCollector(Collector):
    def __init__(self, agent: Any) -> None:
        self._agent = agent

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        backend = getattr(self._agent, "backend", None)
        server = getattr(backend, "forward", None)
        client = getattr(backend, "client", None)
        p = f"{PREFIX}_forward"
        if server is not None:
            yield _labelled(CounterMetricFamily(f"{p}_requests", "Forward requests received from "
                                                "non-voters, by kind", labels=["kind"]),
                            server.requests, KINDS)
            yield _labelled(CounterMetricFamily(f"{p}_dropped_requests", "Forward messages dropped "
                                                "unanswered: malformed, other protocol version, "
                                                "too large", labels=["reason"]),
                            server.dropped, DROP_REASONS)
            yield _labelled(CounterMetricFamily(f"{p}_failures", "Forward requests answered with "
                                                "a failure, by code", labels=["code"]),
                            server.failures, ())
            yield CounterMetricFamily(f"{p}_refused_keys", "CURVE handshakes refused: the key is "
                                      "not in security.allowed_keys", value=float(server.refused_keys))
            yield GaugeMetricFamily(f"{p}_in_flight", "Forward requests being worked on",
                                    value=float(server.in_flight))
        if client is not None:
            yield _labelled(CounterMetricFamily(f"{p}_client_requests", "Requests this non-voter "
                                                "sent to the voters, by kind", labels=["kind"]),
                            client.requests, KINDS)
            yield CounterMetricFamily(f"{p}_failovers", "Attempts moved on to another voter",
                                      value=float(client.failovers))
            yield CounterMetricFamily(f"{p}_timeouts", "Attempts a voter did not answer in time",
                                      value=float(client.timeouts))
            yield CounterMetricFamily(f"{p}_late_replies", "Replies that came after their "
                                      "request timed out", value=float(client.late_replies))
            yield _labelled(CounterMetricFamily(f"{p}_dropped_replies", "Replies dropped as "
                                                "malformed, other version or too large",
                                                labels=["reason"]),
                            client.dropped, DROP_REASONS)
            age = backend.status().get("voter_answer_age")
            if age is not None:
                yield GaugeMetricFamily(f"{p}_voter_answer_age_seconds", "Seconds since a voter "
                                        "last answered this non-voter's status request", value=age)


def register_forward_metrics(agent: Any) -> None:
    """Register the collector on ``agent.registry`` once."""
    if getattr(agent.registry, _ATTR, None) is None:
        agent.registry.register(ForwardCollector(agent))
        setattr(agent.registry, _ATTR, True)
