"""A voter whose Raft halted (it acknowledges nothing any more) makes the daemon stop with
exit status 1, so systemd restarts it and start-up reports why; a healthy one keeps running."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from hagent.daemon import _exit_on_fatal


def agent_with(errors: list[str | None]) -> SimpleNamespace:
    answers = iter(errors)
    return SimpleNamespace(backend=SimpleNamespace(fatal_error=lambda: next(answers, errors[-1])))


def test_halted_backend_stops_the_daemon_with_status_1(monkeypatch):
    monkeypatch.setattr("hagent.daemon.FATAL_POLL", 0.001)
    stop, status = asyncio.Event(), [0]
    asyncio.run(asyncio.wait_for(
        _exit_on_fatal(agent_with([None, None, "cannot load snapshot: newer format"]), stop, status),
        timeout=5))
    assert stop.is_set() and status == [1]


def test_healthy_backend_runs_until_stopped(monkeypatch):
    monkeypatch.setattr("hagent.daemon.FATAL_POLL", 0.001)
    stop, status = asyncio.Event(), [0]
    polls = []

    def fatal_error():
        polls.append(1)
        if len(polls) == 20:
            stop.set()
        return None

    asyncio.run(asyncio.wait_for(
        _exit_on_fatal(SimpleNamespace(backend=SimpleNamespace(fatal_error=fatal_error)), stop, status),
        timeout=5))
    assert status == [0] and len(polls) >= 20
