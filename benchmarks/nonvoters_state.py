"""The replicated state and pysyncobj settings shared by every process of the non-voter benchmark.

The state is a stand-in for hagent's notification log: a dict of notification records keyed by
the sender-chosen id, where a duplicate id is a no-op (submissions are idempotent). Each record
pickles to about 300 bytes, the size of a Masakari notification with a small payload.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable

from pysyncobj import SyncObj, SyncObjConf, replicated

#: Both options use the same Raft settings so the figures compare like with like.
#: appendEntriesUseBatch=False sends append-entries at once instead of on the 100 ms tick:
#: commit latency drops from ~100-200 ms to a few ms; the benchmark measured both (docs/nonvoters.md).
LEADER_FALLBACK_TIMEOUT = 2.5
PASSWORD = "bench-cluster-secret"  # encryption on, as in production

#: Only records whose id starts with this prefix get their apply time recorded (read freshness).
TRACE_PREFIX = "s-"


def make_conf(*, use_batch: bool, journal: str | None = None, dump: str | None = None) -> SyncObjConf:
    """pysyncobj settings for a voter (journal/dump set) or a read-only replica (in memory)."""
    return SyncObjConf(
        password=PASSWORD,
        leaderFallbackTimeout=LEADER_FALLBACK_TIMEOUT,
        appendEntriesUseBatch=use_batch,
        bindAddress=None,
        journalFile=journal,
        fullDumpFile=dump,
        dynamicMembershipChange=False,
        # pysyncobj's default (compact past 5000 entries); overridable to diagnose snapshot effects.
        logCompactionMinEntries=int(os.environ.get("NONVOTERS_COMPACT_MIN", "5000")),
    )


class NotificationLog(SyncObj):
    """Replicated dict of notifications. `submit` returns "ok" or "dup" (idempotent)."""

    def __init__(self, self_addr: str | None, others: list[str], conf: SyncObjConf) -> None:
        # Attributes set before SyncObj.__init__ are excluded from snapshots: bench bookkeeping.
        self.applied_at: dict[str, float] = {}
        self.on_apply: Callable[[str], None] | None = None
        super().__init__(self_addr, others, conf)
        self.notes: dict[str, dict[str, Any]] = {}

    @replicated
    def submit(self, rec: dict[str, Any]) -> str:
        nid = rec["notification_uuid"]
        if nid in self.notes:
            return "dup"
        self.notes[nid] = rec
        if nid.startswith(TRACE_PREFIX):
            self.applied_at[nid] = time.monotonic()  # instrumentation only, not state
        return "ok"


def make_record(nid: str, host: str) -> dict[str, Any]:
    """A VM-down notification as a compute node would send it (~300 bytes pickled)."""
    return {
        "notification_uuid": nid,
        "type": "VM",
        "hostname": host,
        "generated_time": "2025-01-01T12:00:00.000000",
        "status": "new",
        "source": host,
        "payload": {
            "event": "LIFECYCLE",
            "instance_uuid": str(uuid.UUID(int=hash(nid) & ((1 << 128) - 1))),
            "vir_domain_event": "STOPPED_FAILED",
        },
    }
