"""How a recovery step or workflow ends, as exceptions the engine tells apart.

- ``LeadershipLost``: this node may no longer act (not leader, term changed, or the log
  refused a step as of a stale term). Nothing more is recorded; the next leader resumes
  from the log.
- ``StepFailed``: the step could not be done; its message is the reason the notification
  shows. The workflow fails (the next one of a priority method runs, or the notification
  goes to ``error`` and is retried).
- ``EndRecovery``: the workflow ends early and successfully (``finished``) or decides
  there is nothing it may do (``ignored``), as Masakari's Skip/Ignore exceptions do.
"""
from __future__ import annotations


class LeadershipLost(Exception):
    """This node no longer leads (or never claimed this term); stop without recording."""


class StepFailed(Exception):
    """A step failed; ``str()`` is the reason, naming the host or instance."""


class EndRecovery(Exception):
    """End the workflow now with ``status`` (finished | ignored) and ``message``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
