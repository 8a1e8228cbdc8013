"""The process lifecycle: when to start, restart, report STOPPED and report STARTED."""
from __future__ import annotations

import pytest

from hagent.monitors.process_lifecycle import Action, ProcessLifecycle, State
from hagent.monitors.process_scan import running


def test_running_at_first_sight_needs_nothing():
    lc = ProcessLifecycle()
    assert lc.observed(True) is Action.NONE
    assert lc.state is State.RUNNING
    assert lc.observed(True) is Action.NONE


def test_down_at_first_sight_is_started_with_the_start_commands():
    lc = ProcessLifecycle()
    assert lc.observed(False) is Action.START
    assert lc.state is State.RESTARTING
    assert lc.restart_finished(True) is Action.NONE
    assert lc.state is State.RUNNING


def test_death_restarts_and_looks_are_ignored_while_restarting():
    lc = ProcessLifecycle()
    lc.observed(True)
    assert lc.observed(False) is Action.RESTART
    assert lc.observed(False) is Action.NONE  # the restart task owns it now
    assert lc.observed(True) is Action.NONE
    assert lc.state is State.RESTARTING
    assert lc.restart_finished(True) is Action.NONE
    assert lc.state is State.RUNNING


def test_failed_restart_reports_stopped_once_then_started_when_back():
    lc = ProcessLifecycle()
    lc.observed(True)
    lc.observed(False)
    assert lc.restart_finished(False) is Action.REPORT_STOPPED
    assert lc.state is State.FAILED and lc.reported_stopped
    # Not restarted again, not reported again, while it stays down.
    assert [lc.observed(False) for _ in range(3)] == [Action.NONE] * 3
    assert lc.observed(True) is Action.REPORT_STARTED
    assert lc.state is State.RUNNING and not lc.reported_stopped
    # A later death starts over.
    assert lc.observed(False) is Action.RESTART


def test_reported_by_an_earlier_run_and_running_now_reports_started():
    lc = ProcessLifecycle(reported_stopped=True)
    assert lc.observed(True) is Action.REPORT_STARTED
    assert lc.observed(True) is Action.NONE


def test_reported_by_an_earlier_run_and_still_down_is_started_then_reported_again_or_back():
    lc = ProcessLifecycle(reported_stopped=True)
    assert lc.observed(False) is Action.START
    assert lc.restart_finished(False) is Action.REPORT_STOPPED
    lc = ProcessLifecycle(reported_stopped=True)
    lc.observed(False)
    assert lc.restart_finished(True) is Action.REPORT_STARTED


def test_restart_finished_outside_a_restart_is_a_bug():
    lc = ProcessLifecycle()
    lc.observed(True)
    with pytest.raises(RuntimeError):
        lc.restart_finished(True)


def test_match_is_a_substring_of_the_joined_command_line_as_ps_ef_shows_it():
    lines = ["/usr/sbin/libvirtd --listen",
             "/usr/bin/python3 /usr/bin/nova-compute --config-file x",
             "sshd: root@pts/0"]
    names = ["/usr/sbin/libvirtd", "nova-compute", "python3 /usr/bin/nova", "/usr/sbin/sshd",
             "libvirtd --listen"]
    assert running(names, lines) == {"/usr/sbin/libvirtd", "nova-compute",
                                     "python3 /usr/bin/nova", "libvirtd --listen"}
    assert running(names, []) == set()
