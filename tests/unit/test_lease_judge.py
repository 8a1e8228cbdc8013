"""LeaseJudge (the leader's view) alone, and together with a LeaseKeeper in a simulated
world: whenever the leader counts a host fenced, the host had fenced itself at least
safety_margin earlier (ARCHITECTURE.md §3 rule 2)."""
from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from hagent.fencing.lease import LeaseJudge, LeaseKeeper

TTL = 15.0


def test_never_fenced_unless_leader():
    judge = LeaseJudge(TTL)
    judge.renewal_applied("cn1", 1, now=0.0)
    assert not judge.fenced("cn1", now=1000.0)
    assert judge.expires_in("cn1", now=1000.0) is None


def test_fenced_lease_ttl_after_the_latest_applied_renewal():
    judge = LeaseJudge(TTL)
    judge.became_leader(now=0.0)
    judge.renewal_applied("cn1", 1, now=20.0)
    assert not judge.fenced("cn1", now=34.9)
    assert judge.expires_in("cn1", now=30.0) == 5.0
    assert judge.fenced("cn1", now=35.0)
    judge.renewal_applied("cn1", 2, now=35.5)
    assert not judge.fenced("cn1", now=36.0)


def test_never_fenced_sooner_than_lease_ttl_after_becoming_leader():
    judge = LeaseJudge(TTL)
    judge.renewal_applied("cn1", 1, now=0.0)   # applied long ago, as a follower
    judge.became_leader(now=100.0)
    assert not judge.fenced("cn1", now=114.9)
    assert judge.fenced("cn1", now=115.0)
    # A host this node never saw renew may still run VMs: judged from leadership alone.
    assert not judge.fenced("never-seen", now=114.9)
    assert judge.fenced("never-seen", now=115.0)


def test_a_new_term_starts_the_count_again():
    judge = LeaseJudge(TTL)
    judge.became_leader(now=0.0)
    judge.renewal_applied("cn1", 1, now=1.0)
    judge.lost_leadership()
    assert not judge.is_leader and not judge.fenced("cn1", now=50.0)
    judge.became_leader(now=50.0)
    assert not judge.fenced("cn1", now=64.0)
    assert judge.fenced("cn1", now=65.0)


def test_a_stale_renewal_still_extends_never_shortens():
    judge = LeaseJudge(TTL)
    judge.became_leader(now=0.0)
    judge.renewal_applied("cn1", 5, now=10.0)
    judge.renewal_applied("cn1", 3, now=12.0)  # a delayed resend of an older renewal
    assert judge.last_seq("cn1") == 5
    assert judge.expires_in("cn1", now=12.0) == TTL
    assert judge.hosts() == ["cn1"]


# --- the safety inequality, simulated ----------------------------------------------------------

MARGIN, INTERVAL = 5.0, 5.0

renewal_fates = st.lists(
    st.tuples(
        st.booleans(),                                  # the renewal reaches the log
        st.floats(min_value=0.0, max_value=3.0),        # send -> leader applies it
        # apply -> the host learns of it (None: the answer is lost)
        st.one_of(st.none(), st.floats(min_value=0.0, max_value=3.0)),
    ),
    min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(fates=renewal_fates, leader_at=st.floats(min_value=0.0, max_value=60.0))
def test_the_leader_counts_a_host_fenced_only_after_it_fenced_itself(fates, leader_at):
    """One host and one leader on one clock. Renewals are sent whenever the keeper says;
    each is lost or applied by the leader after a delay, and the answer (the sequence
    number the log then stores) reaches the host after another delay or never. At every
    step, if the judge says fenced, the host's self-fence deadline passed at least
    safety_margin before."""
    keeper = LeaseKeeper("cn1", lease_ttl=TTL, safety_margin=MARGIN, renew_interval=INTERVAL, now=0.0)
    judge = LeaseJudge(TTL)
    events: list[tuple[float, int, str, int, int]] = []  # (time, tie-break, kind, seq, stored)
    heapq.heappush(events, (leader_at, 0, "leader", 0, 0))
    answer_delays: dict[int, float | None] = {}
    fate_of = iter(fates)
    order = 1
    for step in range(1600):  # 80 s in 50 ms steps
        t = step * 0.05
        seq = keeper.poll(t)
        if seq is not None:
            reaches, apply_delay, answer_delay = next(fate_of, (False, 0.0, None))
            if reaches:
                answer_delays[seq] = answer_delay
                heapq.heappush(events, (t + apply_delay, order, "apply", seq, 0))
                order += 1
        while events and events[0][0] <= t:
            at, _, kind, seq, stored = heapq.heappop(events)
            if kind == "leader":
                judge.became_leader(at)
            elif kind == "apply":
                judge.renewal_applied("cn1", seq, at)
                delay = answer_delays[seq]
                if delay is not None:
                    heapq.heappush(events, (at + delay, order, "answer", seq, judge.last_seq("cn1")))
                    order += 1
            else:
                keeper.answered(seq, {"ok": True, "result": {"cn1": {"seq": stored}}}, at)
        if judge.fenced("cn1", t):
            assert keeper.deadline <= t - MARGIN + 1e-9, (t, keeper.deadline)
