"""LeaseKeeper in virtual time: when renewals go out, and the self-fence deadline counted
from when the latest committed renewal was SENT."""
from __future__ import annotations

import pytest

from hagent.fencing.lease import (
    COMMITTED, FAILED, OLDER, STALE, LeaseKeeper, renewal_command,
)

TTL, MARGIN, INTERVAL = 15.0, 5.0, 5.0
WINDOW = TTL - MARGIN


def keeper(now: float = 100.0, **kw) -> LeaseKeeper:
    return LeaseKeeper("cn1", lease_ttl=TTL, safety_margin=MARGIN, renew_interval=INTERVAL,
                       now=now, **kw)


def ok(seq: int, host: str = "cn1") -> dict:
    return {"ok": True, "result": {host: {"host": host, "seq": seq, "renewed_at": 1.7e9}}}


def test_first_renewal_goes_out_at_once_and_the_deadline_counts_from_start_up():
    k = keeper(now=100.0)
    assert k.poll(100.0) == 1
    assert k.poll(100.0) is None
    assert k.deadline == 100.0 + WINDOW
    assert not k.expired(109.99)
    assert k.expired(110.0)


def test_deadline_counts_from_the_sent_time_not_the_commit_time():
    k = keeper(now=0.0)
    k.poll(0.0)
    k.poll(1.0)  # retry: the first has not committed after RETRY_AFTER
    assert k.answered(1, ok(1), now=3.0) == COMMITTED
    assert k.deadline == 0.0 + WINDOW  # sent at 0, not learned at 3
    assert k.committed_seq == 1 and k.committed_at == 3.0 and k.committed_sent_at == 0.0


def test_renewals_every_interval_once_committed_and_every_second_while_not():
    k = keeper(now=0.0)
    assert k.poll(0.0) == 1
    assert k.poll(0.99) is None
    assert k.poll(1.0) == 2          # 1 not committed yet: retry after a second
    assert k.answered(2, ok(2), now=1.01) == COMMITTED
    assert k.next_wakeup(1.01) == 1.0 + INTERVAL
    assert k.poll(5.99) is None
    assert k.poll(6.0) == 3
    assert k.answered(3, {"ok": False, "error": "no leader"}, now=6.2) == FAILED
    assert k.poll(7.0) == 4          # failed: retry a second after it was sent
    assert k.deadline == 1.0 + WINDOW


def test_a_failed_renewal_leaves_the_deadline_where_it_was():
    k = keeper(now=0.0)
    k.poll(0.0)
    k.answered(1, ok(1), now=0.1)
    k.poll(5.0)
    assert k.answered(2, {"ok": False, "retryable": True, "error": "timeout"}, now=13.0) == FAILED
    assert k.deadline == WINDOW
    assert k.answered(3, "garbage", now=13.0) == FAILED
    assert k.expired(10.0)


def test_answers_out_of_order_only_move_the_deadline_forward():
    k = keeper(now=0.0)
    k.poll(0.0)
    k.poll(1.0)
    assert k.answered(2, ok(2), now=1.5) == COMMITTED
    assert k.deadline == 1.0 + WINDOW
    assert k.answered(1, ok(2), now=1.6) == OLDER   # 1's answer shows the log already holds 2
    assert k.deadline == 1.0 + WINDOW
    assert k.in_flight == 0


def test_a_batched_answer_naming_a_newer_renewal_of_ours_commits_that_one():
    k = keeper(now=0.0)
    k.poll(0.0)
    k.poll(1.0)
    # Both were merged into one entry: the log stores 2, the answer to 1 says so.
    assert k.answered(1, ok(2), now=1.2) == COMMITTED
    assert k.committed_seq == 2 and k.deadline == 1.0 + WINDOW


def test_a_higher_number_from_an_earlier_run_is_not_a_commit_and_is_jumped_over():
    k = keeper(now=0.0, first_seq=1)
    assert k.poll(0.0) == 1
    assert k.answered(1, ok(57), now=0.1) == STALE
    assert k.committed_seq is None and k.deadline == WINDOW
    assert k.poll(1.0) == 58
    assert k.answered(58, ok(58), now=1.1) == COMMITTED
    assert k.deadline == 1.0 + WINDOW


def test_an_inherited_deadline_is_never_extended_before_a_commit():
    k = keeper(now=100.0, inherited_deadline=104.0)
    assert k.deadline == 104.0
    k.poll(100.0)
    k.answered(1, ok(1), now=100.2)
    assert k.deadline == 100.0 + WINDOW
    later = keeper(now=100.0, inherited_deadline=500.0)
    assert later.deadline == 100.0 + WINDOW


def test_sequence_numbers_continue_from_first_seq():
    k = keeper(now=0.0, first_seq=41)
    assert k.poll(0.0) == 41
    assert k.highest_sent == 41
    assert renewal_command("cn1", 41) == {"op": "lease.renew", "hosts": {"cn1": 41}}


def test_next_wakeup_is_the_deadline_when_it_comes_first_and_ignores_a_past_one():
    k = keeper(now=0.0)
    k.poll(0.0)
    k.answered(1, ok(1), now=0.1)
    k.poll(5.0)                      # not answered: retry at 6.0
    assert k.next_wakeup(5.0) == 6.0
    k2 = keeper(now=0.0, inherited_deadline=0.5)
    k2.poll(0.0)
    assert k2.next_wakeup(0.0) == 0.5
    assert k2.next_wakeup(0.7) == 1.0  # past the deadline: only the next send matters
    assert k2.silent_for(0.7) == pytest.approx(0.7)


def test_in_flight_renewals_are_bounded():
    k = keeper(now=0.0)
    t = 0.0
    for _ in range(200):
        k.poll(t)
        t += 1.0
    assert k.in_flight <= 64


def test_bad_timings_are_refused():
    with pytest.raises(ValueError):
        LeaseKeeper("cn1", lease_ttl=5, safety_margin=5, renew_interval=1, now=0)
    with pytest.raises(ValueError):
        LeaseKeeper("cn1", lease_ttl=15, safety_margin=5, renew_interval=0, now=0)
