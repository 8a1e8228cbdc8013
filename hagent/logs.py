"""Logging set-up: every record carries the node name, whoever logged it.

The node name is stamped by a filter on the root handler rather than passed by each
caller, so records from libraries (pysyncobj, asyncio) carry it too.
"""
from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s node=%(node)s %(name)s: %(message)s"


class NodeNameFilter(logging.Filter):
    """Adds ``record.node`` so the format string can always use ``%(node)s``."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


def setup_logging(node: str, level: str = "INFO", stream=None) -> None:
    """Route all logging to ``stream`` (stderr: journald under systemd) with the node name."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(NodeNameFilter(node))
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
