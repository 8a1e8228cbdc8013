"""How hagentctl shows a notification's recovery: the steps the leader took and each
instance's progress.

``notification show`` prints the record's fields first (with one-line summaries of its
``recovery_steps`` and ``vmoves``), then the steps as one table and the instances as
another, so an operator sees at a glance what was done, by which leader's term, how long
each step took and what each instance became. ``vmove list`` prints the instance table
alone, as python-masakariclient's ``openstack vmove list`` does. JSON output is not
touched: scripts get the records as the agent stores them.

Times are shown as ISO 8601 UTC to the millisecond (``2024-05-01T10:00:03.250Z``), a step's
end as the time of day alone when it is on its start's date; long texts are wrapped, so a
table stays readable in a terminal.
"""
from __future__ import annotations

import textwrap
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Sequence

from hagent.ctl import render

#: Columns of the steps table.
STEP_COLUMNS = ("step", "key", "term", "attempt", "outcome", "started", "ended", "took",
                "detail", "result")
#: Columns of the instances table (``vmove list`` and ``notification show``): Masakari's
#: vmove fields, ``message`` last because it is the longest.
VMOVE_COLUMNS = ("instance_uuid", "instance_name", "status", "source_host", "dest_host",
                 "start_time", "end_time", "message")
#: Longest line of a free-text cell before it wraps.
TEXT_WIDTH = 40
#: What an intent without a result is called (the step is under way, or its leader died).
OPEN = "open"


def short_time(value: Any) -> str | None:
    """An ISO 8601 time as UTC to the millisecond with ``Z``; None stays None, text that is
    not a time is shown as it is."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def end_time(started: Any, ended: Any) -> str | None:
    """``ended`` as ``short_time`` does, without the date when it is ``started``'s date."""
    start, end = short_time(started), short_time(ended)
    if isinstance(start, str) and isinstance(end, str) and start[:11] == end[:11] and "T" in end:
        return end[11:]
    return end


def took(started: Any, ended: Any) -> str | None:
    """Seconds from ``started`` to ``ended`` (ISO times) as ``1.234 s``; None while open."""
    try:
        seconds = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return None
    return f"{seconds:.3f} s"


def wrap(text: Any, width: int = TEXT_WIDTH) -> Any:
    """Long text broken into lines of at most ``width`` characters (words kept whole)."""
    if not isinstance(text, str) or len(text) <= width:
        return text
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False))


def outcome(step: dict[str, Any]) -> str:
    """``done``/``failed``/``skipped``; ``open`` without a result; the term that recorded
    the result is added when it is not the intent's (a later leader resumed the step)."""
    result = step.get("outcome")
    if result is None:
        return OPEN
    if step.get("outcome_term") not in (None, step.get("term")):
        return f"{result} (term {step['outcome_term']})"
    return result


def step_row(step: dict[str, Any]) -> list[Any]:
    return [step.get("step"), step.get("key"), step.get("term"), step.get("attempt"),
            outcome(step), short_time(step.get("started_at")),
            end_time(step.get("started_at"), step.get("ended_at")),
            took(step.get("started_at"), step.get("ended_at")), wrap(step.get("detail")),
            wrap(step.get("outcome_detail"))]


def steps_table(steps: Sequence[dict[str, Any]]) -> str:
    """The steps taken, in the order their intents were committed."""
    return render.box(STEP_COLUMNS, (step_row(s) for s in steps))


def vmove_row(vmove: dict[str, Any]) -> list[Any]:
    return [vmove.get("instance_uuid"), vmove.get("instance_name"), vmove.get("status"),
            vmove.get("source_host"), vmove.get("dest_host"), short_time(vmove.get("start_time")),
            short_time(vmove.get("end_time")), wrap(vmove.get("message"))]


def vmoves_table(vmoves: Sequence[dict[str, Any]]) -> str:
    """One row per instance of a host recovery."""
    return render.box(VMOVE_COLUMNS, (vmove_row(v) for v in vmoves))


def tally(records: Sequence[dict[str, Any]], label: Any) -> str:
    """``7: 5 done, 1 failed, 1 open``: how many records, then how many of each kind."""
    if not records:
        return "none"
    counts = Counter(label(r) for r in records)
    return f"{len(records)}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def notification_view(record: dict[str, Any], columns: Sequence[str]) -> str:
    """``notification show``: the fields (steps and instances summed up in one line each),
    then the steps table and the instances table when there are any."""
    steps = record.get("recovery_steps") or []
    vmoves = record.get("vmoves") or []
    fields = dict(record)
    if "recovery_steps" in fields:
        fields["recovery_steps"] = tally(steps, lambda s: s.get("outcome") or OPEN)
    if "vmoves" in fields:
        fields["vmoves"] = tally(vmoves, lambda v: v.get("status"))
    parts = [render.show_table(fields, columns)]
    if steps:
        parts += ["Steps taken (recovery_steps):", steps_table(steps)]
    if vmoves:
        parts += ["Instances (vmoves):", vmoves_table(vmoves)]
    return "\n".join(parts)


def engine_lines(engine: dict[str, Any]) -> list[str]:
    """``status``: this voter's recovery engine (``status()["recovery"]``) in a few lines.
    Its counters count what this node did while it led, since it started."""
    c = {k: engine.get(k, 0) for k in ("runs", "finished", "ignored", "errors", "failed",
                                       "expired", "evacuations_succeeded",
                                       "evacuations_failed", "nova_calls", "nova_errors")}
    term = engine.get("leading_term")
    return [
        f"leading in term {term}" if term is not None else "not leading",
        f"{len(engine.get('in_progress') or [])} in progress",
        f"{c['runs']} runs: {c['finished']} finished, {c['ignored']} ignored, {c['errors']} "
        f"errors, {c['failed']} failed ({c['expired']} expired)",
        f"evacuations: {c['evacuations_succeeded']} succeeded, {c['evacuations_failed']} failed",
        f"Nova: {c['nova_calls']} calls, {c['nova_errors']} errors",
    ]
