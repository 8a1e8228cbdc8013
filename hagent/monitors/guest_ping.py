"""Per-guest verdicts of the introspective monitor: pings in, "report this guest" out.

Pure bookkeeping (no libvirt, no clock), so every rule is tested directly. Each guest (a
running domain with a QEMU guest agent channel, keyed by its UUID) is in one state:

- ``discovery``: no ping has answered since the domain started. Failures are not counted:
  the agent inside may not run yet (the guest is booting) or not be installed at all, and
  neither is a failure of the guest. masakari-introspectiveinstancemonitor has the same
  state.
- ``healthy``: the last ping answered.
- ``failing``: pings fail since a healthy one; ``failures`` counts them in a row.
- ``reported``: ``threshold`` pings in a row failed and the guest was reported (a VM
  notification QEMU_GUEST_AGENT_ERROR). It is not reported again while pings keep failing.

A successful ping always returns the guest to ``healthy`` with the count at 0, so a later
run of failures is a new failure and is reported again. A domain that restarted (its
domain ID changed, as after the recovery's stop/start) starts over in ``discovery``.

Differences from Masakari, on purpose: Masakari counts a failure only once the guest is
already in its error state and reports when the count *exceeds* the threshold, i.e. on the
(threshold + 2)-th failure in a row (the 5th with its default 3); hagent reports on the
``threshold``-th, as ``introspective_failures`` is documented. Masakari sends no second
report until the domain restarts, even when the agent answered in between; hagent reports
each run of failures once (the log's duplicate detection still drops a repeat within
``duplicate_interval`` of the first).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class GuestState(str, enum.Enum):
    DISCOVERY = "discovery"
    HEALTHY = "healthy"
    FAILING = "failing"
    REPORTED = "reported"


@dataclass
class _Guest:
    generation: int
    state: GuestState = GuestState.DISCOVERY
    failures: int = 0


class GuestPings:
    """The state of every watched guest; see the module docstring."""

    def __init__(self, threshold: int = 3) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self._guests: dict[str, _Guest] = {}

    def present(self, guests: dict[str, int]) -> None:
        """The guests found running now (uuid -> domain ID): new ones and restarted ones
        (another domain ID) start in ``discovery``; those no longer running are forgotten."""
        for uuid in list(self._guests):
            if uuid not in guests:
                del self._guests[uuid]
        for uuid, generation in guests.items():
            known = self._guests.get(uuid)
            if known is None or known.generation != generation:
                self._guests[uuid] = _Guest(generation)

    def answered(self, uuid: str) -> None:
        """A ping of ``uuid`` answered: healthy, count back to 0."""
        guest = self._guests.get(uuid)
        if guest is not None:
            guest.state, guest.failures = GuestState.HEALTHY, 0

    def failed(self, uuid: str) -> bool:
        """A ping of ``uuid`` failed or timed out; True when the guest is to be reported now
        (exactly once per run of failures)."""
        guest = self._guests.get(uuid)
        if guest is None or guest.state in (GuestState.DISCOVERY, GuestState.REPORTED):
            return False
        guest.failures += 1
        if guest.failures < self.threshold:
            guest.state = GuestState.FAILING
            return False
        guest.state = GuestState.REPORTED
        return True

    def state(self, uuid: str) -> GuestState | None:
        guest = self._guests.get(uuid)
        return guest.state if guest is not None else None

    def failures(self, uuid: str) -> int:
        guest = self._guests.get(uuid)
        return guest.failures if guest is not None else 0

    def counts(self) -> dict[str, int]:
        """Guests per state (every state present, 0 when none)."""
        out = {s.value: 0 for s in GuestState}
        for guest in self._guests.values():
            out[guest.state.value] += 1
        return out
