"""The link between the lab hosts' power and their real nova-compute processes.

A lab host is powered through its switch (``hagent.lab.hostpower``, listed in
``LAB_DIR/power.json`` by ``hagent/lab/power.py``), or, for a host without one, by the lab
alone (``RealNova.power``). A powered-off host runs nothing: its nova-compute is SIGKILLed at
once (Nova learns it only from missing heartbeats, as when a real host loses power). When
the host is powered on again its nova-compute is started, unless the lab stopped it on
purpose (``stop_compute``): a host's compute runs while it is powered *and* wanted.

The link looks at every switch each ``period`` seconds and acts only on changes, so a
nova-compute that dies on its own is not restarted behind the test's back.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from hagent.lab.hostpower import HostPowerError, call
from hagent.lab.power import SwitchSockets

log = logging.getLogger(__name__)

PERIOD = 0.1


class PowerLink:
    """Polls the switches in ``lab_dir/power.json`` for ``hosts``; calls ``on_change(host,
    powered)`` when a switch is seen to change (and once for a switch seen off at first)."""

    def __init__(self, hosts: list[str], lab_dir: Path | None,
                 on_change: Callable[[str, bool], None], period: float = PERIOD) -> None:
        self.hosts = list(hosts)
        self.lab_dir = Path(lab_dir) if lab_dir else None
        self.on_change = on_change
        self.period = period
        #: host -> switch socket, for the lab hosts that have one
        self.sockets = SwitchSockets(self.lab_dir, self.hosts)
        self._seen: dict[str, bool] = {}
        self._lock = threading.Lock()  # the poller thread and power() both look

    def power(self, host: str, action: str) -> dict:
        """Switch a host that has a switch on or off (the change is then applied at once);
        KeyError if it has none."""
        socket_path = self.sockets().get(host)
        if socket_path is None:
            raise KeyError(f"{host} has no lab power switch")
        status = call(socket_path, {"cmd": "power", "action": action})
        self.poll_once()
        return status

    def poll_once(self) -> None:
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        for host, socket_path in self.sockets().items():
            try:
                status = call(socket_path, {"cmd": "status"}, timeout=1.0)
            except HostPowerError as exc:
                log.debug("%s: %s", host, exc)
                continue
            on = bool(status["on"])
            if self._seen.get(host, True) != on:
                log.info("%s: power %s", host, "on" if on else "off")
                self.on_change(host, on)
            self._seen[host] = on

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.period):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the link must outlive one bad look
                log.exception("power link: poll failed")
