"""The link between the simulated Nova and the lab's host power switches.

Each lab host has a ``hagent.lab.hostpower`` process (``hagent/lab/power.py`` records their
sockets in ``LAB_DIR/power.json``). The link, every ``period`` seconds, asks each switch for
its status and tells the model (``observe_power``: a power-off is dated by the switch's own
``off_at_monotonic``, the CLOCK_MONOTONIC every process here shares), then writes the host's
running instances into the switch (``instances``) when they differ from the model's, so a
power-off empties them where the lab and the watchdog can see it. A write the switch refuses
(the host went off meanwhile) is settled by the next status.

Hosts with no switch (no lab, or a lab started without one for that host) are powered by the
model alone (``NovaModel.power_off/power_on``).

Known limit: a host switched off *and* on again between two looks (50 ms by default) is dated
off at the last moment it was seen on.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hagent.lab.hostpower import HostPowerError, call
from hagent.lab.nova.model import NovaModel
from hagent.lab.power import SwitchSockets

log = logging.getLogger(__name__)


class PowerLink:
    """Polls the switches listed in ``lab_dir/power.json`` (re-read as it changes)."""

    def __init__(self, model: NovaModel, lab_dir: Path | None, period: float = 0.05) -> None:
        self.model = model
        self.lab_dir = Path(lab_dir) if lab_dir else None
        self.period = period
        #: host -> switch socket, for the model's hosts that have one
        self.sockets = SwitchSockets(self.lab_dir, model.hosts)
        self.errors = 0

    def has_switch(self, host: str) -> bool:
        return host in self.sockets()

    def poll_once(self) -> None:
        """One look at every switch, and the running lists written where they differ."""
        for host, socket_path in self.sockets().items():
            try:
                status = call(socket_path, {"cmd": "status"}, timeout=1.0)
            except HostPowerError as exc:
                self.errors += 1
                log.debug("%s: %s", host, exc)
                continue
            self.model.observe_power(host, bool(status["on"]), int(status["boot"]),
                                     status.get("off_at_monotonic"),
                                     float(status.get("now") or time.monotonic()))
            want = self.model.running().get(host, [])
            if status["on"] and sorted(status.get("instances", [])) != want:
                try:
                    call(socket_path, {"cmd": "instances", "running": want}, timeout=1.0)
                except HostPowerError as exc:
                    log.info("%s: running list not written (%s); next look settles it",
                             host, exc)

    def power(self, host: str, action: str) -> dict:
        """Switch a host that has a switch on or off; its record."""
        socket_path = self.sockets().get(host)
        if socket_path is None:
            raise KeyError(f"{host} has no lab power switch")
        record = call(socket_path, {"cmd": "power", "action": action})
        self.poll_once()
        return record

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.period):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the link must outlive one bad look
                log.exception("power link: poll failed")
