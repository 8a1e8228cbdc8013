"""The monitors' counters as Prometheus metrics, read from ``status()`` at scrape time.

``monitor_metrics(status["monitors"])`` yields one family per known key, labelled by
monitor, so ``hagent.metrics.StatusCollector`` needs one line to export them and a new
monitor only adds its keys to ``COUNTERS`` or ``GAUGES``. Keys a monitor does not report are
left out of its family; keys not listed here are not exported.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "hagent_monitor"

# status key -> help text; exported as hagent_monitor_<key>_total{monitor=...}.
COUNTERS = {
    "events_seen": "Events a monitor saw (a process found down or back, a libvirt event)",
    "notifications_queued": "Notifications a monitor put into its outbox",
    "notifications_sent": "Notifications the submit path accepted (spooled; committed or pending)",
    "notifications_committed": "Notifications committed by the time the submit path answered",
    "notifications_failed": "Notifications the submit path did not accept (refused, spool error)",
    "queue_full_waits": "Times a monitor found its outbox full and waited for room",
    "checks": "Looks at the process table",
    "check_errors": "Looks at the process table that failed",
    "restarts": "Start or restart attempts of watched processes",
    "restart_failures": "Attempts after which the process was still not running",
    "command_failures": "Start, restart, pre or post commands that failed or timed out",
    "stopped_reported": "Processes reported STOPPED (could not be restarted)",
    "started_reported": "Processes reported STARTED (running again after STOPPED)",
    "events_filtered": "libvirt events the event filter table does not report",
    "events_reported": "libvirt events queued as VM notifications",
    "events_lost": "libvirt events seen after the outbox closed at stop (not reported)",
    "disconnects": "Times the libvirt connection was lost",
    "reconnects": "Times the libvirt connection was made again after a gap",
    "connect_failures": "Failed attempts to connect to libvirt",
    "disconnected_seconds": "Seconds without a libvirt connection (events in them not seen)",
    "rounds": "Rounds of guest agent pings",
    "list_errors": "Rounds in which the running guests could not be listed",
    "pings": "guest-ping commands sent",
    "ping_failures": "guest-ping commands that failed or timed out",
    "slot_waits_expired": "Pings skipped for want of a free slot within a round",
    "guests_reported": "Guests reported QEMU_GUEST_AGENT_ERROR",
}
# status key -> help text; exported as hagent_monitor_<key>{monitor=...}.
GAUGES = {
    "running": "1 while the monitor runs",
    "queue_depth": "Notifications waiting in the outbox for the submit path",
    "queue_max_depth": "Most notifications the outbox has held at once",
    "queue_size": "Capacity of the outbox",
    "notifications_in_flight": "Submits that have not answered yet",
    "connected": "1 while the libvirt connection is up",
    "guests_watched": "Running guests with a guest agent channel",
    "pings_hung": "Pings whose thread has not returned after the timeout (each holds a slot)",
}


def monitor_metrics(monitors: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """Metric families for ``{monitor name: status}`` (``Monitors.status()``)."""
    for kinds, family in ((COUNTERS, CounterMetricFamily), (GAUGES, GaugeMetricFamily)):
        for key, doc in kinds.items():
            metric = family(f"{PREFIX}_{key}", doc, labels=["monitor"])
            for name, status in sorted(monitors.items()):
                if key in status:
                    metric.add_metric([name], float(status[key]))
            if metric.samples:
                yield metric
    processes = GaugeMetricFamily(
        f"{PREFIX}_process_running", "1 while a watched process runs, 0 while it is down "
        "(being restarted, or reported STOPPED)", labels=["process"])
    for name, state in sorted(monitors.get("process", {}).get("processes", {}).items()):
        processes.add_metric([name], 1.0 if state == "running" else 0.0)
    if processes.samples:
        yield processes
    guests = GaugeMetricFamily(
        f"{PREFIX}_guests", "Guests the introspective monitor watches, by state (discovery: "
        "no ping answered yet; healthy; failing; reported)", labels=["state"])
    for state, count in sorted(monitors.get("introspective", {}).get("guests", {}).items()):
        guests.add_metric([state], float(count))
    if guests.samples:
        yield guests
