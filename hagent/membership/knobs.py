"""Every tunable of the SWIM + Lifeguard membership core, each with its default and its reason.

The defaults obey one safety rule first: a process paused for 3 s (SIGSTOP, a long GC, a VM
stall) must not be declared dead, in a cluster of any size. Death is declared at the earliest
one probe deadline (a ping sent just before the pause goes unanswered) plus the minimum
suspicion timeout after the pause starts, and the minimum suspicion timeout grows with log10(n) because the paused node's refutation needs a few
more gossip rounds to reach everyone in a bigger cluster. ``docs/membership.md`` has the
arithmetic; within that rule the defaults detect a silent death as fast as they can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class KnobError(ValueError):
    """A MembershipKnobs value is out of range; the message names the knob and the fix."""


@dataclass(frozen=True, slots=True)
class MembershipKnobs:
    # --- failure detection -------------------------------------------------------------------
    #: Seconds between two probe rounds (one member probed per round, shuffled round robin).
    #: Each member is probed about once per probe_interval by *someone* (a Poisson-like
    #: stream), so this sets how soon a silent death is first noticed: the wait for the
    #: first probe is ~0.35 s median, ~2.3 s p99 at 0.5 s. 0.5 s costs 2 pings + 2 acks per
    #: second per node. It does not touch the safety arithmetic (that uses probe_deadline()),
    #: so halving it is a pure speed-for-traffic trade (see docs/membership.md).
    probe_interval: float = 0.5
    #: Seconds to wait for the direct ack before asking ``indirect_checks`` peers to try.
    #: LAN and loopback round trips are far below 1 ms; 0.2 s leaves room for a busy Python
    #: loop on the target, and awareness stretches it on a node that is itself slow.
    probe_timeout: float = 0.2
    #: Further seconds for the indirect probes (relay ping, relay timeout, forwarded ack or
    #: nack) before the probe fails. probe_timeout + indirect_timeout = 0.5 s is the probe
    #: deadline: no member is suspected sooner after it stops answering.
    indirect_timeout: float = 0.3
    #: Peers asked to probe the target for us (ping-req) when the direct ack is late, so one
    #: lossy link between us and the target raises no suspicion. SWIM and memberlist use 3.
    indirect_checks: int = 3

    # --- suspicion (Lifeguard) ---------------------------------------------------------------
    #: Minimum suspicion timeout, in probe deadlines (0.5 s), before the size term below:
    #: min(n) = probe_deadline * (suspicion_mult + suspicion_decade_mult * log10(max(n, 10))).
    #: 5 gives min(10) = 3.0 s: with the earliest suspicion one probe deadline (0.5 s) after a
    #: pause starts, the earliest possible dead verdict is 3.5 s, after a 3 s pause has ended
    #: and its refutation has had 0.5 s to arrive (it arrives in milliseconds: the paused node
    #: answers the probes queued while it slept, and those carry the suspicion).
    suspicion_mult: float = 5.0
    #: Extra probe deadlines of minimum suspicion timeout per decade of cluster size: a
    #: refutation reaches every member in ~log(n) gossip rounds, so bigger clusters need a
    #: little more time between "suspect" and "dead" to stay safe (min(1000) = 4.0 s).
    suspicion_decade_mult: float = 1.0
    #: The suspicion timeout with no independent confirmation is this many times the minimum
    #: (memberlist's SuspicionMaxTimeoutMult). Confirmations from other members shrink it
    #: towards the minimum with memberlist's log formula. A lone accuser (perhaps it is the
    #: one with a bad link) thus waits 4 x min: plenty of time for the suspect to refute.
    suspicion_max_timeout_mult: float = 4.0
    #: Independent confirmations wanted to reach the minimum timeout (memberlist's k). 3
    #: distinct accusers besides the first make a verdict robust against one bad link.
    suspicion_confirmations: int = 3
    #: Expected number of members that probe a suspect at once when they first hear of the
    #: suspicion (each with probability suspicion_probers / (n - 2)), so the k confirmations
    #: arrive within about one probe interval instead of waiting for the round robin.
    #: 8 (> 2k) leaves ~1 % of suspicions of a dead node short of k quick confirmations.
    suspicion_probers: int = 8

    # --- local health awareness (Lifeguard) ---------------------------------------------------
    #: Probe timeout and probe interval are multiplied by (score + 1), the score in
    #: [0, awareness_max_multiplier - 1]: a node that misses nacks or has to refute suspicions
    #: is probably slow itself, so it probes more patiently and accuses less. memberlist: 8.
    awareness_max_multiplier: int = 8
    #: A tick() or receive() arriving this many seconds after next_deadline() means this
    #: process was stalled (paused, swapped, starved). It then refutes at once (incarnation
    #: bump) because others may be suspecting it, voids its own in-flight probes and pushes
    #: its suspicion timers out, since none of them measured anything while it slept.
    pause_threshold: float = 1.0

    # --- dissemination --------------------------------------------------------------------------
    #: Seconds between gossip rounds; a round only happens while updates are queued. 0.2 s
    #: spreads an update to 1,000 members in ~1.5 s, which the suspicion timeout budgets for.
    gossip_interval: float = 0.2
    #: Members sent the queued updates each gossip round (memberlist: 3).
    gossip_nodes: int = 3
    #: Each update is sent at most retransmit_mult * ceil(log10(n + 1)) times by each member
    #: (memberlist: 4), enough for an epidemic to reach everyone with high probability.
    retransmit_mult: int = 4
    #: Budget, in encoded bytes (estimated), of the updates piggybacked on one message.
    max_piggyback_bytes: int = 4096

    # --- anti-entropy ---------------------------------------------------------------------------
    #: Seconds between full state exchanges (push-pull) with one random member, for clusters
    #: up to 32 members; above that it is stretched by ceil(log2(n / 32)) + 1 like memberlist,
    #: so the cluster-wide push-pull traffic stays roughly flat. Repairs anything gossip lost.
    push_pull_interval: float = 30.0
    #: A member that just joined syncs once more with a random member between join_resync and
    #: 2 x join_resync seconds later, and gossips its Alive once more: its seed could not tell
    #: it about members that joined while it did, an epidemic misses a member now and then
    #: (~2 pairs when 1,000 members start together), and the periodic push-pull is minutes
    #: away in a big cluster.
    join_resync: float = 5.0
    #: Seconds a dead or left member stays listed (so operators and the agent see it) before it
    #: is forgotten. Until then it comes back only with a higher incarnation; a restarted node
    #: gets one by refuting the "dead" it learns on join.
    dead_reclaim_time: float = 3600.0
    #: Seconds after a member is declared dead or leaves during which gossip rounds also go
    #: to it, with our verdict (memberlist's GossipToTheDeadTime, same default). A restarted
    #: agent (a role re-exec, systemctl restart: back within seconds, at incarnation 0) learns
    #: from them that it must refute, even when its seeds are down and it reaches no one
    #: itself. Later returns are found by the periodic push-pull, which includes one dead or
    #: left member. 0 turns it off.
    gossip_to_the_dead_time: float = 30.0

    # --- wire ---------------------------------------------------------------------------------
    #: Largest message accepted by decode(); a push-pull of ~20,000 members fits.
    max_message_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        positive = ("probe_interval", "probe_timeout", "indirect_timeout", "gossip_interval",
                    "push_pull_interval",
                    "join_resync",
                    "suspicion_mult", "suspicion_max_timeout_mult", "pause_threshold")
        for field in positive:
            if not getattr(self, field) > 0:
                raise KnobError(f"membership knob {field} must be > 0, got {getattr(self, field)}")
        if self.suspicion_max_timeout_mult < 1:
            raise KnobError("membership knob suspicion_max_timeout_mult must be >= 1")
        for field in ("indirect_checks", "suspicion_confirmations", "suspicion_probers",
                      "gossip_nodes", "retransmit_mult", "suspicion_decade_mult",
                      "dead_reclaim_time", "gossip_to_the_dead_time"):
            if getattr(self, field) < 0:
                raise KnobError(f"membership knob {field} must be >= 0, got {getattr(self, field)}")
        if self.awareness_max_multiplier < 1:
            raise KnobError("membership knob awareness_max_multiplier must be >= 1")
        if self.max_piggyback_bytes < 256 or self.max_message_bytes < 4096:
            raise KnobError("membership knobs max_piggyback_bytes >= 256 and "
                            "max_message_bytes >= 4096 are required")

    # --- derived values (formulas live here so docs and code agree) ----------------------------

    def probe_deadline(self) -> float:
        """Seconds from a ping to the verdict "no answer": probe_timeout + indirect_timeout."""
        return self.probe_timeout + self.indirect_timeout

    def suspicion_min_timeout(self, n: int) -> float:
        """Minimum suspicion timeout for a cluster of n members (self included)."""
        return self.probe_deadline() * (self.suspicion_mult
                                      + self.suspicion_decade_mult * math.log10(max(n, 10)))

    def retransmit_limit(self, n: int) -> int:
        """How many times each member sends one update: retransmit_mult * ceil(log10(n + 1))."""
        return self.retransmit_mult * math.ceil(math.log10(n + 1))

    def push_pull_period(self, n: int) -> float:
        """memberlist's pushPullScale: flat up to 32 members, then + one interval per doubling."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)
