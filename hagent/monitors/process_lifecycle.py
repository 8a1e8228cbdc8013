"""What the process monitor does about one watched process: a pure state machine.

It is fed what the monitor saw (``observed(running)``) and how a start or restart ended
(``restart_finished(running)``), and answers with the one ``Action`` to take. No clock, no
I/O: the shell in ``process.py`` runs the commands and sends the notifications.

States::

    UNKNOWN --running--> RUNNING --not running--> RESTARTING --back--> RUNNING
       |                    ^                        |
       +---not running--> RESTARTING (start)         +--still down--> FAILED (report STOPPED)
                            |                                            |
    FAILED --running--> RUNNING (report STARTED) <-----------------------+

As masakari-processmonitor does, a process that could not be restarted is reported STOPPED
once and not restarted again while it stays down (an operator fixes it). Unlike Masakari,
hagent reports STARTED when it runs again, so a host disabled for it does not stay disabled.

``reported_stopped`` survives agent restarts (the monitor persists it): a process reported
STOPPED by an earlier run of the agent and found running now is reported STARTED; one still
down is started again and, if that fails, reported STOPPED again (a duplicate the log
ignores, rather than a report that might never have reached the spool).
"""
from __future__ import annotations

import enum


class State(str, enum.Enum):
    UNKNOWN = "unknown"        # not looked at yet
    RUNNING = "running"
    RESTARTING = "restarting"  # a start or restart is under way; observations are ignored
    FAILED = "failed"          # could not be restarted; reported STOPPED


class Action(enum.Enum):
    NONE = "none"
    START = "start"                    # run the start commands (first sight, down)
    RESTART = "restart"                # run the restart commands (it died)
    REPORT_STOPPED = "report_stopped"  # submit PROCESS STOPPED
    REPORT_STARTED = "report_started"  # submit PROCESS STARTED


class ProcessLifecycle:
    """One watched process's state; ``reported_stopped`` says whether the log was told STOPPED
    (and not yet STARTED)."""

    def __init__(self, reported_stopped: bool = False) -> None:
        self.state = State.UNKNOWN
        self.reported_stopped = reported_stopped

    def observed(self, running: bool) -> Action:
        """A look at the process table found the process ``running`` or not."""
        if self.state is State.RESTARTING:
            return Action.NONE
        if running:
            self.state = State.RUNNING
            return self._back()
        if self.state is State.UNKNOWN:
            self.state = State.RESTARTING
            return Action.START
        if self.state is State.RUNNING:
            self.state = State.RESTARTING
            return Action.RESTART
        return Action.NONE  # FAILED: reported already; wait for it to come back

    def restart_finished(self, running: bool) -> Action:
        """The start or restart (every attempt) ended with the process ``running`` or not."""
        if self.state is not State.RESTARTING:
            raise RuntimeError(f"restart_finished in state {self.state.value}")
        if running:
            self.state = State.RUNNING
            return self._back()
        self.state = State.FAILED
        self.reported_stopped = True
        return Action.REPORT_STOPPED

    def _back(self) -> Action:
        if self.reported_stopped:
            self.reported_stopped = False
            return Action.REPORT_STARTED
        return Action.NONE
