"""Local health awareness (Lifeguard LHA, as memberlist's awareness.go).

A node that misses acks and nacks from healthy peers, or that hears itself suspected, is more
likely slow itself than surrounded by failures. Its score rises, and its probe timeout and
probe interval are multiplied by (score + 1): it waits longer before accusing anyone, so a
sick node does not flood the cluster with false suspicions. Successful probes lower it.
"""

from __future__ import annotations


class Awareness:
    """Health score in [0, max_multiplier - 1]; 0 is healthy."""

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        """Add ``delta`` (negative heals), clamped to the range."""
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, seconds: float) -> float:
        """``seconds`` stretched by the current health: seconds * (score + 1)."""
        return seconds * (self.score + 1)
