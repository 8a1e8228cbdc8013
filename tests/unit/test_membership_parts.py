"""The single-mechanism modules alone: suspicion timer, awareness, broadcast queue, knobs."""

from __future__ import annotations

import math

import pytest

from hagent.membership.awareness import Awareness
from hagent.membership.broadcasts import BroadcastQueue
from hagent.membership.knobs import KnobError, MembershipKnobs
from hagent.membership.messages import Alive, Dead, Suspect
from hagent.membership.suspicion import Suspicion, suspicion_timeout


def test_suspicion_timeout_for_each_number_of_confirmations() -> None:
    lo, hi, k = 3.0, 12.0, 3
    got = [suspicion_timeout(c, k, lo, hi) for c in range(k + 2)]
    want = [hi - (hi - lo) * math.log(c + 1) / math.log(k + 1) for c in range(k + 1)]
    assert got[:k + 1] == pytest.approx(want)
    assert got[0] == hi and got[k] == pytest.approx(lo) and got[k + 1] == pytest.approx(lo)
    assert got == sorted(got, reverse=True)
    assert suspicion_timeout(0, 0, lo, hi) == lo     # nobody can confirm: the minimum


def test_suspicion_counts_distinct_confirmers_only() -> None:
    s = Suspicion("a", 4, start=100.0, k=3, min_timeout=3.0, max_timeout=12.0, witnessed=True)
    assert s.deadline == 112.0
    assert not s.confirm("a")              # the accuser is not a confirmation
    assert s.confirm("b") and not s.confirm("b")
    assert s.deadline == pytest.approx(100.0 + suspicion_timeout(1, 3, 3.0, 12.0))
    assert s.confirm("c") and s.confirm("d")
    assert s.deadline == pytest.approx(103.0)
    assert not s.confirm("e")             # k reached: nothing left to shrink
    s.postpone(105.0)
    assert s.deadline == 105.0


def test_awareness_scales_and_clamps() -> None:
    a = Awareness(8)
    assert a.scale(0.5) == 0.5
    a.apply_delta(3)
    assert a.scale(0.2) == pytest.approx(0.8)
    a.apply_delta(100)
    assert a.score == 7 and a.scale(0.5) == 4.0
    a.apply_delta(-100)
    assert a.score == 0


def test_retransmit_limit_grows_with_log_n() -> None:
    k = MembershipKnobs()
    assert [k.retransmit_limit(n) for n in (1, 9, 10, 99, 100, 999, 1000)] == \
        [4, 4, 8, 8, 12, 12, 16]


def test_queue_sends_each_update_limit_times_least_sent_first() -> None:
    q = BroadcastQueue()
    q.queue(Alive("a", 1, "a"))
    sent = [q.take(4096, limit=3) for _ in range(3)]
    assert all(s == (Alive("a", 1, "a"),) for s in sent)
    assert q.take(4096, limit=3) == () and len(q) == 0
    q.queue(Alive("old", 1, "old"))
    q.take(4096, limit=10)
    q.queue(Alive("new", 1, "new"))
    assert q.take(4096, limit=10)[0].name == "new"   # fewest transmissions first


def test_newer_update_about_a_member_replaces_the_queued_one() -> None:
    q = BroadcastQueue()
    q.queue(Suspect("x", 1, "a"))
    q.queue(Alive("x", 2, "x"))
    q.queue(Dead("y", 0, "b"))
    assert sorted(q.take(4096, limit=5), key=repr) == [Alive("x", 2, "x"), Dead("y", 0, "b")]
    q.invalidate("x")
    assert q.take(4096, limit=5) == (Dead("y", 0, "b"),)


def test_queue_respects_the_byte_budget() -> None:
    q = BroadcastQueue()
    for i in range(100):
        q.queue(Alive(f"member-{i:03d}", 0, f"tcp://10.0.0.{i}:7172"))
    first = q.take(400, limit=5)
    assert 3 <= len(first) < 10
    assert len(q) == 100


def test_knobs_defaults_keep_a_three_second_pause_alive() -> None:
    k = MembershipKnobs()
    for n in (2, 10, 100, 1000, 10000):
        # earliest suspicion: the end of a probe round started just before the pause
        assert k.probe_deadline() + k.suspicion_min_timeout(n) >= 3.5


@pytest.mark.parametrize("bad", [dict(probe_timeout=0), dict(probe_interval=0),
                                 dict(indirect_checks=-1), dict(awareness_max_multiplier=0)])
def test_bad_knobs_are_refused_with_the_knob_named(bad: dict) -> None:
    with pytest.raises(KnobError, match=next(iter(bad))):
        MembershipKnobs(**bad)
