"""The suspicion timer alone (Lifeguard, as memberlist's suspicion.go).

A suspicion starts with the maximum timeout and shrinks towards the minimum as independent
members confirm it: timeout(C) = max(min, max - (max - min) * log(C + 1) / log(k + 1)), C the
number of distinct confirmers (the first accuser not counted), k the number wanted. The timer
is measured from when *this* member started suspecting. It holds no clock: callers ask for the
deadline and compare it with their ``now``.
"""

from __future__ import annotations

import math


def suspicion_timeout(confirmations: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """Timeout after ``confirmations`` independent confirmations out of ``k`` wanted."""
    if k < 1:
        return min_timeout
    frac = math.log(min(confirmations, k) + 1) / math.log(k + 1)
    return max(min_timeout, max_timeout - (max_timeout - min_timeout) * frac)


class Suspicion:
    """One member's suspicion: who accused it, who confirmed, and when it expires.

    ``witnessed`` records whether our own probe of the suspect failed. The timer is the same
    for everyone; what the caller does when it expires differs: a member that only heard the
    accusation probes the suspect itself first (swim.py), so no member declares another dead
    on hearsay alone.
    """

    __slots__ = ("incarnation", "start", "k", "min_timeout", "max_timeout", "accusers",
                 "confirmations", "witnessed", "not_before", "deadline", "heard_since")

    def __init__(self, source: str, incarnation: int, start: float, k: int,
                 min_timeout: float, max_timeout: float, witnessed: bool) -> None:
        self.incarnation = incarnation
        self.start = start
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max(max_timeout, min_timeout)
        self.accusers = {source}
        self.confirmations = 0
        self.witnessed = witnessed
        self.not_before = start
        self.deadline = start
        #: The caller's bookmark: hearing from the suspect after this time defers the verdict.
        self.heard_since = start
        self._update()

    def confirm(self, source: str) -> bool:
        """Count ``source`` as an independent confirmation; True if it was new and counted
        (then the caller re-gossips it, so confirmations keep flowing), False for a repeat or
        once k confirmations are in (the deadline cannot shrink further)."""
        if self.confirmations >= self.k or source in self.accusers:
            return False
        self.accusers.add(source)
        self.confirmations += 1
        self._update()
        return True

    def witness(self) -> None:
        """Our own probe of the suspect failed too."""
        self.witnessed = True

    def postpone(self, not_before: float) -> None:
        """Never expire before ``not_before`` (this member was stalled, or heard from the
        suspect)."""
        self.not_before = max(self.not_before, not_before)
        self._update()

    def _update(self) -> None:
        timeout = suspicion_timeout(self.confirmations, self.k, self.min_timeout,
                                    self.max_timeout)
        self.deadline = max(self.start + timeout, self.not_before)
