"""The monitors one agent runs: built from ``[monitors]``, started and stopped together.

``BUILDERS`` lists one function per kind of monitor, ``build(config.monitors, context)``,
returning the monitor or None when the config leaves it off. A new kind of monitor adds its
builder here and nothing else changes in the daemon.

Order matters at stop: the daemon stops the monitors *before* the submitter, so what they
still hold is handed to the spool while it accepts notifications.
"""
from __future__ import annotations

import logging
from typing import Any

from hagent.config import Config
from hagent.monitors import instance, introspective, process
from hagent.monitors.base import Monitor, MonitorContext, Submit

log = logging.getLogger(__name__)

BUILDERS = (process.build, instance.build, introspective.build)


class Monitors:
    """The enabled monitors of one agent."""

    def __init__(self, monitors: list[Monitor]) -> None:
        self.monitors = monitors
        self._started: list[Monitor] = []

    @classmethod
    def from_config(cls, config: Config, submit: Submit) -> "Monitors":
        """Build every enabled monitor; raises (naming the problem) when one cannot be built,
        e.g. ProcessListError for a bad process list, so start-up stops before anything runs.
        """
        context = MonitorContext(hostname=config.node.name, submit=submit,
                                 state_dir=config.node.state_dir / "monitors")
        built = (build(config.monitors, context) for build in BUILDERS)
        return cls([monitor for monitor in built if monitor is not None])

    async def start(self) -> None:
        """Start each monitor; if one fails to start, stop those started and re-raise."""
        for monitor in self.monitors:
            try:
                await monitor.start()
            except BaseException:
                await self.stop()
                raise
            self._started.append(monitor)

    async def stop(self) -> None:
        """Stop the started monitors, last started first; a failure is logged, not raised."""
        while self._started:
            monitor = self._started.pop()
            try:
                await monitor.stop()
            except Exception:  # noqa: BLE001 - the others must still stop
                log.exception("stopping the %s monitor failed", monitor.name)

    def status(self) -> dict[str, dict[str, Any]]:
        """``{monitor name: its status()}`` for each enabled monitor."""
        return {monitor.name: monitor.status() for monitor in self.monitors}
