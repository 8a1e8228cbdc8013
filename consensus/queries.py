"""Filtering, sorting and paging for the read-only queries, the way Masakari's list APIs do.

Masakari (masakari/db/sqlalchemy/api.py, _process_sort_params; masakari/api/openstack/
common.py, get_sort_params) sorts by ``created_at`` descending unless told otherwise and
breaks ties by row id in the same direction; a page starts after the ``marker`` record and
holds at most ``limit`` records. Here the row id is the order of insertion.

Queries run on the caller's thread against live records, so they only read them; a bad
argument raises `QueryError` (queries are not replicated, so raising is safe here).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, TypeVar

from consensus.validate import CommandError, boolean, generated_time

T = TypeVar("T")


class QueryError(ValueError):
    """A query argument is invalid; the message names it and what it accepts."""


def select(items: Iterable[T], *, sort_key: str, sort_dir: str, sort_keys: tuple[str, ...],
           limit: int | None, marker: str | None, ident: Callable[[T], str]) -> list[T]:
    """Sort ``items`` (given in insertion order) and cut out one page."""
    if sort_key not in sort_keys:
        raise QueryError(f"sort_key must be one of {', '.join(sort_keys)} (got {sort_key!r})")
    if sort_dir not in ("asc", "desc"):
        raise QueryError(f"sort_dir must be 'asc' or 'desc' (got {sort_dir!r})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise QueryError(f"limit must be an integer >= 0 or None (got {limit!r})")

    def key(pair: tuple[int, T]) -> tuple[bool, Any, int]:
        value = getattr(pair[1], sort_key)
        # None sorts first ascending, as NULL does in MySQL; the index breaks ties.
        return (value is not None, value if value is not None else 0, pair[0])

    ordered = [item for _, item in sorted(enumerate(items), key=key, reverse=sort_dir == "desc")]
    if marker is not None:
        positions = [i for i, item in enumerate(ordered) if ident(item) == marker]
        if not positions:
            raise QueryError(f"marker {marker!r} not found")
        ordered = ordered[positions[0] + 1:]
    return ordered if limit is None else ordered[:limit]


def check_filters(filters: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> dict[str, Any]:
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise QueryError(f"filters must be a mapping (got {filters!r})")
    unknown = sorted(str(k) for k in filters if k not in allowed)
    if unknown:
        raise QueryError(f"unknown filter {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    return dict(filters)


def bool_filter(value: Any, name: str) -> bool:
    try:
        return boolean(value, name)
    except CommandError as exc:
        raise QueryError(str(exc)) from None


def since_filter(value: Any) -> float:
    """``generated-since``: an ISO 8601 time string or a datetime; returns the epoch."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    try:
        return generated_time(value, "generated-since")[1]
    except CommandError as exc:
        raise QueryError(str(exc)) from None


def status_filter(value: Any, statuses: tuple[str, ...]) -> frozenset[str]:
    """``status``: one status or a list of them, as Masakari's filter accepts."""
    wanted = [value] if isinstance(value, str) else value
    if not isinstance(wanted, (list, tuple, set, frozenset)) or not all(
            isinstance(s, str) and s in statuses for s in wanted):
        raise QueryError(f"status filter must be one or more of {', '.join(statuses)} "
                         f"(got {value!r})")
    return frozenset(wanted)
