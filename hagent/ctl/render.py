"""How hagentctl shows answers: boxed tables for people, JSON for scripts.

Tables look like the OpenStack CLI's (``+---+`` boxes, one row per record for
lists, Field/Value rows for one record) so operators used to ``openstack
segment list`` read them without thinking. JSON is the agent's records as they
are, with Masakari's field names, indented and key-sorted so diffs are stable.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def cell(value: Any) -> str:
    """One value as table text: None/True/False as the OpenStack CLI prints them."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        if all(not isinstance(v, (dict, list)) for v in value.values()):
            return "\n".join(f"{k}={cell(v)}" for k, v in value.items()) if value else ""
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, list):
        return "\n".join(cell(v) if not isinstance(v, dict) else json.dumps(v, sort_keys=True, default=str)
                         for v in value)
    return str(value)


def box(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A boxed table; cells may hold several lines."""
    text_rows = [[cell(v).splitlines() or [""] for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, lines in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in lines))
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [rule, line(headers), rule]
    for row in text_rows:
        height = max(len(lines) for lines in row)
        for i in range(height):
            out.append(line([lines[i] if i < len(lines) else "" for lines in row]))
    out.append(rule)
    return "\n".join(out)


def list_table(records: list[dict[str, Any]], columns: Sequence[str]) -> str:
    return box(columns, ([r.get(c) for c in columns] for r in records))


def show_table(record: dict[str, Any], columns: Sequence[str], skip: Sequence[str] = ()) -> str:
    """Field/Value rows: ``columns`` first in that order, then any other field by name."""
    keys = [c for c in columns if c in record]
    keys += sorted(k for k in record if k not in keys and k not in skip)
    return box(("Field", "Value"), ([k, record[k]] for k in keys))


#: Columns of ``hagentctl members`` (gossip rows) and the row key each one shows.
MEMBER_COLUMNS = ("name", "address", "state", "incarnation", "last heard", "suspicion",
                  "lease expires", "voter")


def seconds(value: float | None) -> str:
    """A duration in seconds as a short text, ``-`` when unknown."""
    return "-" if value is None else f"{value:.1f}s"


def member_cells(row: dict[str, Any]) -> list[Any]:
    """One gossip member row as the cells of MEMBER_COLUMNS."""
    heard = row.get("last_heard_ago")
    suspicion = "-"
    if row.get("state") == "suspect":
        suspicion = f"{row.get('confirmations', 0)} confirmations"
        if row.get("suspect_deadline_in") is not None:
            suspicion += f", dead in {seconds(row['suspect_deadline_in'])}"
    lease = row.get("lease_expires_in")
    if lease is None:
        lease_text = "-"
    elif lease < 0:
        lease_text = f"expired {seconds(-lease)} ago"
    else:
        lease_text = f"in {seconds(lease)}"
    return [row.get("name"), row.get("address"), row.get("state"), row.get("incarnation"),
            "self" if heard is None else f"{seconds(heard)} ago", suspicion, lease_text,
            bool(row.get("voter"))]


def members_table(rows: list[dict[str, Any]]) -> str:
    """``hagentctl members``: one line per member, the facts an operator checks first."""
    return box(MEMBER_COLUMNS, (member_cells(r) for r in rows))
