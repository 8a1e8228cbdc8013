"""Which libvirt domain events become VM notifications, and what those say.

This is masakari-monitors' event filter (``masakarimonitors/instancemonitor/libvirt_handler/
eventfilter_table.py`` and ``eventfilter.py``) written as one flat table, so that Masakari's
engine receives from hagent exactly the VM notifications it received from
masakari-instancemonitor:

- ``event`` is the event ID's name (``LIFECYCLE``, ``REBOOT``, ``WATCHDOG``, ``IO_ERROR``,
  ``IO_ERROR_REASON``, ``CONTROL_ERROR``);
- ``vir_domain_event`` is the name Masakari gives the (type, detail) pair
  (``STOPPED_FAILED``, ``WATCHDOG_RESET``, ...; ``UNKNOWN`` for events without one);
- ``instance_uuid`` is the domain's UUID, which Nova sets to the instance's.

A libvirt callback does not always pass a type and a detail; masakari-instancemonitor's
callbacks fill the gaps with -1 (``NONE`` here) and hagent's do the same, so the table
matches the same events:

| event ID | type | detail |
| --- | --- | --- |
| LIFECYCLE | the lifecycle event (STOPPED, ...) | its detail (FAILED, ...) |
| REBOOT, IO_ERROR_REASON, CONTROL_ERROR | -1 | -1 |
| WATCHDOG, IO_ERROR | the action | -1 |

Everything else (STARTED, RESUMED, DEFINED, SUSPENDED_PAUSED, ...) is filtered out, as in
Masakari: such an event is counted, not reported.
"""
from __future__ import annotations

from typing import NamedTuple

import libvirt

#: The type or detail a callback passes when the event has none (Masakari's ``DUMMY``).
NONE = -1

#: Event IDs the instance monitor subscribes to, with the name a notification's ``event`` has.
EVENT_NAMES: dict[int, str] = {
    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE: "LIFECYCLE",
    libvirt.VIR_DOMAIN_EVENT_ID_REBOOT: "REBOOT",
    libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG: "WATCHDOG",
    libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR: "IO_ERROR",
    libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON: "IO_ERROR_REASON",
    libvirt.VIR_DOMAIN_EVENT_ID_CONTROL_ERROR: "CONTROL_ERROR",
}

_LIFECYCLE = libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE
_WATCHDOG = libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG
_IO_ERROR = libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR

#: (event ID, type, detail) -> ``vir_domain_event``: every event that is reported.
TABLE: dict[tuple[int, int, int], str] = {
    # A guest paused by the hypervisor because it cannot go on.
    (_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
     libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR): "SUSPENDED_IOERROR",
    (_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
     libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG): "SUSPENDED_WATCHDOG",
    (_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
     libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR): "SUSPENDED_API_ERROR",
    # A guest that is gone: shut down from inside, destroyed, or its emulator died.
    (_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_STOPPED,
     libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN): "STOPPED_SHUTDOWN",
    (_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_STOPPED,
     libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): "STOPPED_DESTROYED",
    (_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_STOPPED,
     libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED): "STOPPED_FAILED",
    (_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
     libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED): "SHUTDOWN_FINISHED",
    (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, NONE, NONE): "UNKNOWN",
    (_WATCHDOG, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE, NONE): "WATCHDOG_NONE",
    (_WATCHDOG, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_PAUSE, NONE): "WATCHDOG_PAUSE",
    (_WATCHDOG, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_RESET, NONE): "WATCHDOG_RESET",
    (_WATCHDOG, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF, NONE): "WATCHDOG_POWEROFF",
    (_WATCHDOG, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_SHUTDOWN, NONE): "WATCHDOG_SHUTDOWN",
    (_WATCHDOG, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_DEBUG, NONE): "WATCHDOG_DEBUG",
    (_IO_ERROR, libvirt.VIR_DOMAIN_EVENT_IO_ERROR_NONE, NONE): "IO_ERROR_NONE",
    (_IO_ERROR, libvirt.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE, NONE): "IO_ERROR_PAUSE",
    (_IO_ERROR, libvirt.VIR_DOMAIN_EVENT_IO_ERROR_REPORT, NONE): "IO_ERROR_REPORT",
    (libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, NONE, NONE): "UNKNOWN",
    (libvirt.VIR_DOMAIN_EVENT_ID_CONTROL_ERROR, NONE, NONE): "UNKNOWN",
}


class Reported(NamedTuple):
    """What a reported event says: a VM notification's ``event`` and ``vir_domain_event``."""

    event: str
    vir_domain_event: str


def classify(event_id: int, event_type: int, detail: int) -> Reported | None:
    """The notification fields of this event, or None when the table filters it out."""
    name = TABLE.get((event_id, event_type, detail))
    if name is None:
        return None
    return Reported(EVENT_NAMES[event_id], name)


def vm_payload(instance_uuid: str, reported: Reported) -> dict[str, str]:
    """The VM notification payload Masakari's schema accepts (consensus/payload.py)."""
    return {"instance_uuid": instance_uuid, "vir_domain_event": reported.vir_domain_event,
            "event": reported.event}
