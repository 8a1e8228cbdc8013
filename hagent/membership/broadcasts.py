"""Piggyback queue: the updates this member still has to spread (memberlist's queue.go).

Each update is sent at most ``limit`` times by this member, limit = retransmit_mult *
ceil(log10(n + 1)), which is what an epidemic needs to reach all n members with high
probability. The least-sent updates go first (newest first among equals), so fresh news
overtakes old. A newer update about a member replaces the queued one about the same member:
spreading superseded state is wasted bandwidth. Cost: O(updates taken), never O(queue).
"""

from __future__ import annotations

from .messages import Alive, Update, estimate_size

#: Room left in a message budget below which no further update can fit.
_MIN_ROOM = 24
#: Updates too big for the room left that take() skips before it stops looking (bounds the
#: scan of a long queue, e.g. while a thousand members join).
_MAX_SKIPS = 8


class BroadcastQueue:
    """Updates waiting to be piggybacked, bucketed by how often they were sent."""

    __slots__ = ("_buckets", "_where", "_next_id")

    def __init__(self) -> None:
        # _buckets[t]: id -> (name, update, size) of updates sent t times, in queue order.
        self._buckets: list[dict[int, tuple[str, Update, int]]] = []
        self._where: dict[str, tuple[int, int]] = {}   # member name -> (transmits, id)
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._where)

    def queue(self, update: Update) -> None:
        """Queue ``update``, replacing any queued update about the same member."""
        self.invalidate(update.name)
        self._put(0, update.name, update, estimate_size(update))

    def invalidate(self, name: str) -> None:
        """Forget the queued update about ``name`` (if any)."""
        where = self._where.pop(name, None)
        if where is not None:
            del self._buckets[where[0]][where[1]]

    def take(self, budget: int, limit: int, dest: str | None = None) -> tuple[Update, ...]:
        """Updates fitting in ``budget`` bytes for one message, least-sent first; each taken
        update counts one transmission and leaves the queue after ``limit`` of them. An Alive
        about ``dest`` (the receiver) is not sent: it would waste a transmission telling a
        member that it lives (a refutation's budget would drain into the refuter)."""
        if not self._where:
            return ()
        picked: list[tuple[int, int, str, Update, int]] = []
        room = budget
        skips = 0
        for t, bucket in enumerate(self._buckets):
            if room < _MIN_ROOM or skips >= _MAX_SKIPS:
                break
            for uid in reversed(bucket):
                name, update, size = bucket[uid]
                if name == dest and type(update) is Alive:
                    continue
                if size <= room:
                    picked.append((t, uid, name, update, size))
                    room -= size
                    if room < _MIN_ROOM:
                        break
                else:
                    skips += 1
                    if skips >= _MAX_SKIPS:
                        break
        for t, uid, name, update, size in picked:
            del self._buckets[t][uid]
            del self._where[name]
            if t + 1 < limit:
                self._put(t + 1, name, update, size)
        return tuple(p[3] for p in picked)

    def _put(self, transmits: int, name: str, update: Update, size: int) -> None:
        while len(self._buckets) <= transmits:
            self._buckets.append({})
        uid = self._next_id
        self._next_id += 1
        self._buckets[transmits][uid] = (name, update, size)
        self._where[name] = (transmits, uid)
