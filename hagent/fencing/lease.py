"""Leases, sans-IO: when this node renews, when it must fence itself, and, on the Raft
leader, when another host counts as fenced (ARCHITECTURE.md §3 rule 2, docs/fencing.md).

Both classes are fed the node's own monotonic time (``now``) and never read a clock, so
the unit tests drive them in virtual time. The shell is ``hagent.fencing.service``.

The one inequality everything here serves, per host: the host stops running VMs (its
watchdog fires) no later than ``S + lease_ttl - safety_margin``, where ``S`` is when it
*sent* its latest renewal that it knows committed; the leader treats it as fenced no
earlier than ``A + lease_ttl``, where ``A`` is when the leader *applied* that host's latest
renewal (or became leader, if later). A renewal is applied after it was sent, so
``S <= A``, and the host is gone ``safety_margin`` seconds before anyone may act on it.
"""
from __future__ import annotations

import threading
from typing import Any

#: Seconds after sending a renewal that has not committed yet before sending the next one
#: (a new sequence number). A leader election takes ~1-3.5 s here; retrying every second
#: lets the first renewal after it commit within about a second of the new leader, instead
#: of a whole ``renew_interval`` later. Never longer than ``renew_interval``.
RETRY_AFTER = 1.0
#: Renewals remembered while in flight (sent, no answer yet). Retries are RETRY_AFTER apart
#: and answers come within PROPOSE_TIMEOUT, so far fewer are ever outstanding; the bound
#: only keeps a log that never answers from growing this map.
MAX_IN_FLIGHT = 64

# What ``LeaseKeeper.answered`` learned from one answer.
COMMITTED = "committed"   # a renewal newer than any known committed: the deadline moved
OLDER = "older"           # committed, but a newer renewal was already known committed
STALE = "stale"           # the log holds a higher sequence number from an earlier run
FAILED = "failed"         # not committed (or outcome unknown): wait for the next renewal


def renewal_command(host: str, seq: int) -> dict[str, Any]:
    """The log command renewing ``host``'s lease with sequence number ``seq``."""
    return {"op": "lease.renew", "hosts": {host: seq}}


class LeaseKeeper:
    """This node's own lease: what to send, and the self-fence deadline.

    ``deadline`` is the monotonic time by which the node must be fenced: the sent time of
    the latest renewal known committed plus ``lease_ttl - safety_margin``. Before any
    renewal of this run commits it counts from ``now`` at construction, or is
    ``inherited_deadline`` if that is earlier (an earlier run of the agent on this boot
    armed the watchdog for it; a restart must not extend it without a commit).

    Sequence numbers start at ``first_seq`` and only grow. If the log answers with a
    higher number than this run ever sent (an earlier run's, its memory lost), the next
    renewal jumps above it.
    """

    def __init__(self, host: str, *, lease_ttl: float, safety_margin: float,
                 renew_interval: float, now: float, first_seq: int = 1,
                 inherited_deadline: float | None = None,
                 retry_after: float = RETRY_AFTER) -> None:
        if not 0 < safety_margin < lease_ttl:
            raise ValueError(f"safety_margin ({safety_margin}) must be in (0, lease_ttl = {lease_ttl})")
        if renew_interval <= 0 or first_seq < 0:
            raise ValueError("renew_interval must be > 0 and first_seq >= 0")
        self.host = host
        self.window = lease_ttl - safety_margin
        self.renew_interval = renew_interval
        self.retry_after = min(retry_after, renew_interval)
        self.started_at = now
        self.deadline = now + self.window
        if inherited_deadline is not None:
            self.deadline = min(self.deadline, inherited_deadline)
        self.next_seq = first_seq
        #: Latest renewal of this run known committed: its number, when it was sent and
        #: when its commit was learned (all None until the first).
        self.committed_seq: int | None = None
        self.committed_sent_at: float | None = None
        self.committed_at: float | None = None
        self._in_flight: dict[int, float] = {}  # seq -> monotonic time sent
        self._last_sent: tuple[int, float] | None = None
        self._next_send = now  # the first renewal goes out at once

    # --- sending --------------------------------------------------------------------------
    def poll(self, now: float) -> int | None:
        """The sequence number of a renewal to send now (recorded as sent at ``now``), or None."""
        if now < self._next_send:
            return None
        seq = self.next_seq
        self.next_seq += 1
        self._in_flight[seq] = now
        while len(self._in_flight) > MAX_IN_FLIGHT:
            del self._in_flight[min(self._in_flight)]
        self._last_sent = (seq, now)
        self._schedule()
        return seq

    def _schedule(self) -> None:
        """Next send: ``renew_interval`` after the latest renewal if it committed, else
        ``retry_after`` after it (it may be lost, or stuck behind an election)."""
        assert self._last_sent is not None
        seq, sent = self._last_sent
        committed = self.committed_seq is not None and self.committed_seq >= seq
        self._next_send = sent + (self.renew_interval if committed else self.retry_after)

    # --- answers --------------------------------------------------------------------------
    def answered(self, seq: int, answer: Any, now: float) -> str:
        """Learn from the log's answer to renewal ``seq``; returns COMMITTED, OLDER, STALE or
        FAILED. ``answer`` is what ``agent.propose`` returned (``ClusterState.apply``'s
        result for ``lease.renew``, or a failure). Only COMMITTED moves ``deadline``."""
        stored = _stored_seq(answer, self.host)
        if stored is None or stored < seq:
            self._in_flight.pop(seq, None)
            return FAILED
        # The log stores the highest number it saw; ours committed (or a newer one of ours
        # that was merged into the same entry). A number we never sent is an earlier run's.
        sent_at = self._in_flight.get(stored)
        if sent_at is None:
            self._in_flight.pop(seq, None)
            if self.committed_seq is not None and stored <= self.committed_seq:
                return OLDER
            self.next_seq = max(self.next_seq, stored + 1)
            return STALE
        for old in [s for s in self._in_flight if s <= stored]:
            del self._in_flight[old]
        if self.committed_seq is not None and stored <= self.committed_seq:
            return OLDER
        self.committed_seq, self.committed_sent_at, self.committed_at = stored, sent_at, now
        # Renewals are numbered in sending order, so a newer commit was sent later: the
        # deadline only moves forward (max() guards an inherited deadline, which is lower).
        self.deadline = max(self.deadline, sent_at + self.window)
        self._schedule()
        return COMMITTED

    # --- time -----------------------------------------------------------------------------
    def expired(self, now: float) -> bool:
        """True once ``deadline`` has passed: the node must be fenced by now."""
        return now >= self.deadline

    def next_wakeup(self, now: float) -> float:
        """When the shell must call ``poll``/``expired`` again (a past deadline is not one)."""
        return min(self._next_send, self.deadline) if self.deadline > now else self._next_send

    def silent_for(self, now: float) -> float:
        """Seconds since the latest committed renewal was sent (or since start-up)."""
        return now - (self.committed_sent_at if self.committed_sent_at is not None else self.started_at)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def highest_sent(self) -> int:
        """The highest sequence number used so far (``first_seq - 1`` before any)."""
        return self.next_seq - 1


def _stored_seq(answer: Any, host: str) -> int | None:
    """The sequence number the log stores for ``host`` after a ``lease.renew``, or None if
    ``answer`` is a failure or malformed."""
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        return None
    result = answer.get("result")
    record = result.get(host) if isinstance(result, dict) else None
    seq = record.get("seq") if isinstance(record, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class LeaseJudge:
    """The leader's view of every host's lease (ARCHITECTURE.md §3 rule 2).

    ``renewal_applied`` is fed on every voter, leader or not, with the local monotonic
    time this node applied each renewal, so a voter that becomes leader already knows the
    hosts. A host counts as fenced only while this node is leader and ``lease_ttl`` has
    passed since both its latest applied renewal and this node became leader: renewals
    committed by an earlier leader but not yet applied here were sent before this node
    became leader, so counting from then covers them. A host never seen is judged from
    becoming leader alone: it may be running VMs whose renewals this node never applied.

    The lease service calls ``renewal_applied`` in the Raft thread as each entry is applied
    (so the judge has seen every renewal before any later entry, such as a recovery intent,
    is applied), and everything else from the event loop; a lock keeps the two consistent.
    """

    def __init__(self, lease_ttl: float) -> None:
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be > 0, got {lease_ttl}")
        self.lease_ttl = lease_ttl
        self.leader_since: float | None = None
        self._applied: dict[str, tuple[int, float]] = {}  # host -> (highest seq, applied at)
        self._lock = threading.Lock()

    def renewal_applied(self, host: str, seq: int, now: float) -> None:
        """This node applied a committed renewal of ``host`` at ``now``. Any renewal counts,
        even one with a lower number than seen before: counting it only makes the leader
        wait longer, never shorter."""
        with self._lock:
            old = self._applied.get(host)
            if old is None:
                self._applied[host] = (seq, now)
            else:
                self._applied[host] = (max(seq, old[0]), max(now, old[1]))

    def became_leader(self, now: float) -> None:
        """This node became leader (of a new term) at ``now``; a later ``now`` is safe."""
        with self._lock:
            self.leader_since = now

    def lost_leadership(self) -> None:
        with self._lock:
            self.leader_since = None

    @property
    def is_leader(self) -> bool:
        return self.leader_since is not None

    def _since(self, host: str) -> float | None:
        with self._lock:
            if self.leader_since is None:
                return None
            applied = self._applied.get(host)
            return self.leader_since if applied is None else max(applied[1], self.leader_since)

    def fenced(self, host: str, now: float) -> bool:
        """True only if this node is leader and ``host``'s lease ran out by ``now``."""
        since = self._since(host)
        return since is not None and now - since >= self.lease_ttl

    def expires_in(self, host: str, now: float) -> float | None:
        """Seconds until ``host`` counts as fenced (<= 0: it does); None when not leader."""
        since = self._since(host)
        return None if since is None else self.lease_ttl - (now - since)

    def hosts(self) -> list[str]:
        """Every host whose renewal this node applied, in first-seen order."""
        with self._lock:
            return list(self._applied)

    def last_seq(self, host: str) -> int | None:
        with self._lock:
            applied = self._applied.get(host)
        return None if applied is None else applied[0]
