"""The named read-only ClusterState queries an agent answers, on a voter or through one.

Reads travel by name (``node.query("get_host", ref="cn1")``) rather than as a function, so
a non-voter can ask a voter for them over the wire (``hagent.forward``) and a voter answers
them from its own state with the same code. Only the names in ``QUERY_NAMES`` run.
"""
from __future__ import annotations

import inspect
from typing import Any

from consensus.queries import QueryError
from hagent.forward.protocol import QUERY_NAMES as _FORWARDED_QUERY_NAMES

__all__ = ["QUERY_NAMES", "QueryError", "run_query"]

QUERY_NAMES = _FORWARDED_QUERY_NAMES


def run_query(state: Any, name: str, kwargs: dict[str, Any]) -> Any:
    """``state.<name>(**kwargs)`` for a whitelisted name; raises QueryError for an unknown
    name or arguments the query does not take (as it does for bad argument values)."""
    if name not in QUERY_NAMES:
        raise QueryError(f"unknown query {name!r}; known: {', '.join(sorted(QUERY_NAMES))}")
    fn = getattr(state, name)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise QueryError(f"{name}: {exc}") from None
    return fn(**kwargs)
