"""The leader's host event policy: gossip verdicts and fencing evidence in, host incident
proposals out (docs/detection.md).

Sans-IO: `HostEventPolicy` is fed gossip states, leadership, the replicated incidents, and the
answers to what it asked for, each with ``now`` (monotonic seconds); `tick(now)` returns the
actions due. It reads no clock but the wall clock it is given for ``generated_time``, draws
uuids only from the factory it is given, and does no I/O, so tests run it in virtual time.

What it guarantees, with the replicated ops it proposes (consensus/state.py):

- exactly one STOPPED per failure: it proposes ``host.down`` only for a host dead in gossip
  with no open incident in a view of the log read since it became leader, one proposal per
  host at a time; a resend carries the same uuid, and the log itself returns the open
  incident to any other ``host.down``, so duplicates from resends or from two leaders do
  not add notifications;
- no storm from a flapping host: an open incident absorbs every later death; ``host.up`` is
  proposed only once the host has been alive in gossip continuously for ``up_damping``
  seconds (and its lease is not expired);
- evidence stays with its failure: ``host.fenced`` and ``host.up`` name the incident they are
  about, ``host.down`` names the incident it follows, so a stale leader's late proposal
  changes nothing;
- it acts only while leader; a minority leader's proposals never commit.
"""
from __future__ import annotations

import math
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from consensus.model import FENCE_DETAIL_MAX
from consensus.validate import iso_from_epoch

GOSSIP_STATES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True)
class PolicyKnobs:
    """Timings of the policy; every default says why."""

    up_damping: float = 30.0
    """Seconds a host with an open incident must stay alive in gossip before its STARTED
    (config ``detection.up_damping``): a flapping host yields one STOPPED and one STARTED."""
    retry_initial: float = 1.0
    """First resend delay (s) of a proposal the log did not commit: about one election."""
    retry_max: float = 30.0
    """Cap (s) of the doubling resend delay: a log without quorum is asked twice a minute."""
    refused_retry: float = 60.0
    """Seconds before a refused decision (an unregistered host, say) is made afresh: the
    refusal is logged once, and registering the host later still gets its failure reported."""
    fence_retry_initial: float = 5.0
    """First delay (s) before a fence driver that did not confirm power off is run again."""
    fence_retry_max: float = 60.0
    """Cap (s) of the doubling fence driver delay: BMCs that are down are not hammered."""


@dataclass(frozen=True, eq=False)
class Propose:
    """Commit ``command`` (an op and its arguments; ``at`` is the proposer's to add)."""

    host: str
    command: dict[str, Any]
    reason: str

    @property
    def op(self) -> str:
        return self.command["op"]


@dataclass(frozen=True, eq=False)
class Fence:
    """Run the host's fence driver ``driver`` (its method name) for ``incident``."""

    host: str
    driver: str
    incident: str
    reason: str


@dataclass(frozen=True)
class Notice:
    """Something the policy decided or learnt, for the log (``warning``: needs a look)."""

    host: str
    text: str
    warning: bool = False


Action = Propose | Fence | Notice


@dataclass
class _Host:
    gossip: str | None = None            # alive | suspect | dead | left | None (not known)
    alive_since: float | None = None     # when gossip last saw it become alive
    incident: dict[str, Any] | None = None  # its open incident as last read from the log
    last_closed: str | None = None       # STOPPED uuid of its last closed incident
    seen_at: float = -math.inf           # when the view of this host was last known current
    stale: bool = False                  # a proposal changed nothing: wait for a fresh view
    inflight: Propose | None = None
    pending: Propose | None = None       # not committed: resend at retry_at
    retry_at: float = 0.0
    failures: int = 0
    refused_until: float = 0.0
    refusal: str | None = None           # the last refusal logged
    fencing: bool = False                # a fence driver call is running
    fence_at: float = 0.0                # earliest next fence driver call
    fence_failures: int = 0
    fence_proof: tuple[str, str, str | None] | None = None  # (incident, method, detail)


class HostEventPolicy:
    """Turns gossip verdicts and fencing evidence into host.down/fenced/up proposals.

    ``fenced(host, now)`` is the LeaseJudge's verdict (True only on the leader, lease_ttl
    after both the host's latest applied renewal and the start of leadership).
    ``fence_drivers`` maps a host to its fence method name ("ipmi"/"redfish"); the policy
    only names the driver in a `Fence` action and is told the outcome.
    """

    def __init__(self, node_name: str, fenced: Callable[[str, float], bool],
                 knobs: PolicyKnobs = PolicyKnobs(),
                 fence_drivers: Mapping[str, str] | None = None,
                 uuid_factory: Callable[[], uuidlib.UUID | str] = uuidlib.uuid4,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.node_name = node_name
        self.knobs = knobs
        self._fenced = fenced
        self._drivers = dict(fence_drivers or {})
        self._new_uuid = uuid_factory
        self._wall_clock = wall_clock
        self._hosts: dict[str, _Host] = {}
        self._notices: list[Notice] = []
        self.is_leader = False
        self._leader_since = math.inf
        self._view_valid = False

    # --- inputs ------------------------------------------------------------------------
    def gossip(self, name: str, state: str | None, now: float) -> None:
        """The host's gossip state changed (MemberAlive/Suspect/Dead events: "alive",
        "suspect", "dead"; "left" for a graceful leave; None once gossip forgot it)."""
        if state is not None and state not in GOSSIP_STATES:
            raise ValueError(f"gossip state must be one of {', '.join(GOSSIP_STATES)} or None "
                             f"(got {state!r})")
        host = self._host(name)
        if state == host.gossip:
            return
        host.gossip = state
        if state == "alive":
            host.alive_since = now
            host.refusal = None  # a new failure gets its refusal logged again
            if self.is_leader and host.incident is not None:
                self._note(name, f"alive again; STARTED after {self.knobs.up_damping:g} s "
                                 f"alive unless it fails again")
        else:
            host.alive_since = None

    def reconcile(self, states: Mapping[str, str], now: float) -> None:
        """Align with the membership's full view (events missed; members gossip forgot)."""
        for name, state in states.items():
            self.gossip(name, state, now)
        for name, host in self._hosts.items():
            if name not in states and host.gossip is not None:
                self.gossip(name, None, now)

    def leadership(self, is_leader: bool, now: float) -> None:
        """This node became leader, or stopped being it. A new leader acts only on a view
        of the incidents read after this call; a former one drops what it meant to resend
        (the new leader decides afresh)."""
        if is_leader == self.is_leader:
            return
        self.is_leader = is_leader
        self._view_valid = False
        if is_leader:
            self._leader_since = now
            return
        self._leader_since = math.inf
        for host in self._hosts.values():
            host.pending = None
            host.fence_proof = None

    def incidents_refreshed(self, records: Iterable[Mapping[str, Any]], asked_at: float) -> None:
        """The log's incidents (query ``incidents``) as read from ``asked_at`` on. A host
        whose proposal was answered after ``asked_at`` keeps that newer answer."""
        if not self.is_leader:
            return
        open_by_host: dict[str, Mapping[str, Any]] = {}
        closed_by_host: dict[str, str] = {}
        for record in records:
            if record["status"] == "open":
                open_by_host[record["hostname"]] = record
            else:
                closed_by_host[record["hostname"]] = record["notification_uuid"]
        for name in {*self._hosts, *open_by_host, *closed_by_host}:
            host = self._host(name)
            if host.seen_at > asked_at:
                continue
            self._set_incident(host, open_by_host.get(name))
            host.last_closed = closed_by_host.get(name)
            host.stale = False
            host.seen_at = asked_at
        if asked_at >= self._leader_since:
            self._view_valid = True

    def proposal_result(self, action: Propose, answer: Mapping[str, Any], now: float) -> None:
        """The answer of ``agent.propose(action.command)``: ClusterState.apply's
        ``{"ok", "result"|"error"}``, or a failure of the log (``retryable``; a timeout)."""
        host = self._host(action.host)
        if host.inflight is action:
            host.inflight = None
        name, op = action.host, action.op
        if answer.get("ok") is True:
            host.failures = 0
            host.refusal = None
            self._learn(name, host, action, answer.get("result"), now)
            return
        error = str(answer.get("error"))
        # ClusterState refusals read "<op>: why"; anything else is the log's failure.
        if not answer.get("retryable") and error.startswith(f"{op}:"):
            host.refused_until = now + self.knobs.refused_retry
            if error != host.refusal:
                host.refusal = error
                self._note(name, f"{op} refused: {error}; deciding again in "
                                 f"{self.knobs.refused_retry:g} s", warning=True)
            return
        host.failures += 1
        delay = min(self.knobs.retry_max, self.knobs.retry_initial * 2 ** (host.failures - 1))
        if self.is_leader:
            host.pending, host.retry_at = action, now + delay
            self._note(name, f"{op} not committed ({error}); resending in {delay:g} s",
                       warning=True)

    def fence_result(self, action: Fence, confirmed: bool, detail: str | None,
                     now: float) -> None:
        """The outcome of running a fence driver: power off confirmed, or not (``detail``
        says why)."""
        host = self._host(action.host)
        host.fencing = False
        if confirmed:
            host.fence_failures = 0
            host.fence_proof = (action.incident, action.driver, _bounded(detail))
            self._note(action.host, f"{action.driver} fence driver confirmed power off: {detail}")
            return
        host.fence_failures += 1
        delay = min(self.knobs.fence_retry_max,
                    self.knobs.fence_retry_initial * 2 ** (host.fence_failures - 1))
        host.fence_at = now + delay
        self._note(action.host, f"{action.driver} fence driver did not confirm power off "
                                f"({detail}); trying again in {delay:g} s", warning=True)

    # --- output ------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """Notices gathered since the last tick, then the actions due now (leader only)."""
        actions: list[Action] = list(self._notices)
        self._notices.clear()
        if not (self.is_leader and self._view_valid):
            return actions
        for name in sorted(self._hosts):
            host = self._hosts[name]
            action = self._decide(name, host, now)
            if isinstance(action, Propose):
                host.inflight = action
            elif isinstance(action, Fence):
                host.fencing = True
            if action is not None:
                actions.append(action)
        return actions

    # --- rules -------------------------------------------------------------------------
    def _decide(self, name: str, host: _Host, now: float) -> Propose | Fence | None:
        if host.inflight is not None:
            return None
        if host.pending is not None:
            if now < host.retry_at:
                return None
            action, host.pending = host.pending, None
            return Propose(name, action.command, f"resending ({action.reason})")
        if host.stale or now < host.refused_until:
            return None
        incident = host.incident
        if incident is None:
            if host.gossip == "dead":
                return self._propose_down(name, host)
            return None
        stopped = incident["notification_uuid"]
        if not incident["fenced"]:
            if self._fenced(name, now):
                return Propose(name, {
                    "op": "host.fenced", "hostname": name, "method": "lease",
                    "detail": f"no lease renewal applied on leader {self.node_name} within "
                              f"the lease TTL", "incident": stopped},
                    "its lease ran out: the host has fenced itself")
            proof = host.fence_proof
            if proof is not None and proof[0] == stopped:
                return Propose(name, {
                    "op": "host.fenced", "hostname": name, "method": proof[1],
                    "detail": proof[2], "incident": stopped},
                    f"its {proof[1]} fence driver confirmed power off")
        if (host.gossip == "alive" and host.alive_since is not None
                and now - host.alive_since >= self.knobs.up_damping):
            if self._fenced(name, now):
                return None  # alive in gossip but not renewing its lease: not up yet
            return Propose(name, {
                "op": "host.up", "hostname": name, "notification_uuid": self._uuid(),
                "generated_time": iso_from_epoch(self._wall_clock()),
                "source_node": self.node_name, "incident": stopped},
                f"alive for {now - host.alive_since:.1f} s (damping "
                f"{self.knobs.up_damping:g} s)")
        driver = self._drivers.get(name)
        if (driver is not None and not incident["fenced"] and host.gossip == "dead"
                and not host.fencing and now >= host.fence_at and host.fence_proof is None
                and incident.get("notification_status") != "ignored"):
            return Fence(name, driver, stopped,
                         f"dead with an open incident not yet fenced; powering off via {driver}")
        return None

    def _propose_down(self, name: str, host: _Host) -> Propose:
        return Propose(name, {
            "op": "host.down", "hostname": name, "notification_uuid": self._uuid(),
            "generated_time": iso_from_epoch(self._wall_clock()),
            "source_node": self.node_name, "previous": host.last_closed},
            "dead in gossip and no open incident")

    def _learn(self, name: str, host: _Host, action: Propose, result: Any, now: float) -> None:
        """Take a committed answer as the host's current view."""
        op = action.op
        if result is None:
            host.stale = True
            self._note(name, f"{op} changed nothing (it was about another incident, or "
                             f"none is open); waiting for a fresh view of the log")
            return
        host.seen_at, host.stale = now, False
        if result["status"] == "open":
            self._set_incident(host, result)
        else:
            self._set_incident(host, None)
            host.last_closed = result["notification_uuid"]
        stopped = result["notification_uuid"]
        if op == "host.down":
            if stopped == action.command["notification_uuid"]:
                self._note(name, f"incident opened: STOPPED notification {stopped} "
                                 f"({result['notification_status']})")
            else:
                self._note(name, f"host.down committed; the incident of STOPPED notification "
                                 f"{stopped} stands ({result['status']})")
        elif op == "host.fenced":
            self._note(name, f"incident {stopped} fenced by {result['fence_method']}: "
                             f"host_status NORMAL")
        else:
            self._note(name, f"incident {stopped} closed: STARTED notification "
                             f"{result['up_notification_uuid']}")

    def _set_incident(self, host: _Host, record: Mapping[str, Any] | None) -> None:
        before = host.incident["notification_uuid"] if host.incident else None
        host.incident = dict(record) if record is not None else None
        if (record["notification_uuid"] if record else None) != before:
            host.fence_failures, host.fence_at = 0, 0.0
        if host.fence_proof is not None and (record is None or record["fenced"]):
            host.fence_proof = None

    def _host(self, name: str) -> _Host:
        host = self._hosts.get(name)
        if host is None:
            host = self._hosts[name] = _Host()
        return host

    def _uuid(self) -> str:
        return str(self._new_uuid())

    def _note(self, host: str, text: str, warning: bool = False) -> None:
        self._notices.append(Notice(host, text, warning))


def _bounded(detail: str | None) -> str | None:
    """A driver's detail as host.fenced accepts it (at most FENCE_DETAIL_MAX characters)."""
    if detail is None or len(detail) <= FENCE_DETAIL_MAX:
        return detail
    return detail[:FENCE_DETAIL_MAX - 3] + "..."
