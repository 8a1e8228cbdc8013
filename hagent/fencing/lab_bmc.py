"""The lab's BMC stand-in: a fence driver that powers a lab host off through its power switch.

A lab host is a set of processes whose power is its ``hagent.lab.hostpower`` switch (the
process that also plays the host's watchdog; docs/fencing.md). This driver asks that switch
what the IPMI and Redfish drivers ask a BMC: the power state, and a hard power-off. With it
(``driver = "lab"`` in a BMC inventory, written by ``Lab.up(..., bmc=True)``) the fence-driver
path runs end to end in a lab: a host dead in gossip is powered off by the leader, confirmed
off, recorded ``host.fenced`` with method ``lab``, and recovered without waiting for its lease.

It keeps the FenceDriver contract (``external.py``): ``confirmed`` only after the switch
reported the host off; every call bounded by ``timeout`` and cancellable (the request is an
asyncio Unix-socket exchange, dropped with its task). A switch that does not answer is
``FenceUnreachable``/``FenceTimeout``; a request it refuses, or an answer it should not have
sent, ``FenceProtocolError``. The switch speaks one JSON line each way (protocol in
``hagent/lab/hostpower.py``); each call opens a fresh connection, so a restarted switch needs
nothing special.

Labs only: nothing outside the lab powers a host through a hostpower switch.
"""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from hagent.fencing.external import (FenceDriver, FenceProtocolError, FenceTimeout,
                                     FenceUnreachable)

#: What ``host.fenced`` records for a confirmation by this driver (consensus FENCE_METHODS).
METHOD = "lab"
#: Longest answer line read from a switch (a status carries the host's instance list).
MAX_ANSWER = 1 << 20


class LabBmcFenceDriver(FenceDriver):
    """Powers lab host ``host`` off through the power switch at ``socket``."""

    method = METHOD

    def __init__(self, *, host: str, socket: str | Path, timeout: float,
                 power_off_timeout: float, poll_interval: float) -> None:
        super().__init__(host=host, bmc=f"lab power switch {socket}", timeout=timeout,
                         power_off_timeout=power_off_timeout, poll_interval=poll_interval)
        self.socket = Path(socket)

    async def _read_state(self, timeout: float) -> str:
        answer = await self._ask({"cmd": "status"}, timeout)
        on = answer.get("on")
        return "on" if on is True else "off" if on is False else "unknown"

    async def _request_off(self, timeout: float) -> None:
        await self._ask({"cmd": "power", "action": "off"}, timeout)

    async def _ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One request to the switch and its answer (``ok`` true), within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(os.fspath(self.socket),
                                                                    limit=MAX_ANSWER)
                try:
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
        except TimeoutError:
            raise self.error(FenceTimeout, f"{request['cmd']}: no answer within {timeout:.3g} s",
                             "check that the lab's hostpower process for this host runs") \
                from None
        except (OSError, ValueError) as exc:
            raise self.error(FenceUnreachable, f"{request['cmd']}: {exc}",
                             "check that the lab is up (its hostpower process for this host "
                             "runs and owns the socket)") from None
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self.error(FenceProtocolError, f"{request['cmd']}: not a JSON answer: "
                             f"{line[:200]!r}", "check that the socket is a lab power switch")
        if answer.get("ok") is not True:
            raise self.error(FenceProtocolError,
                             f"{request['cmd']} refused: {answer.get('error', answer)!r}",
                             "see the switch's log (DIR/<host>/power.log)")
        return answer
