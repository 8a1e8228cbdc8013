"""masakari-monitors' ``process_list.yaml``, read as it is.

The file (or the same YAML text inline in hagent.toml, ``monitors.process_list_inline``) is a
YAML sequence with one mapping per watched process::

    - process_name: /usr/sbin/libvirtd            # matched against command lines
      start_command: systemctl start libvirtd     # run when the agent starts and it is down
      pre_start_command:                          # optional; empty or null: none
      post_start_command:
      restart_command: systemctl restart libvirtd # run when it dies
      pre_restart_command:
      post_restart_command:
      run_as_root: True

``process_name``, ``start_command``, ``restart_command`` and ``run_as_root`` are required,
as masakari-monitors requires them; the pre/post commands may be null, empty or absent.
Commands are split into argv with ``shlex.split`` and never go through a shell, so ``;``,
``$(...)`` or ``>`` in them are plain characters of an argument.

Everything wrong in the file is collected and raised together as ``ProcessListError``, each
problem naming the entry (index, line and process_name) and the field, so an operator can
fix the file in one pass. Callers may rely on a parsed list being non-empty, with unique
process names, non-empty start and restart commands, and notification names that fit a
PROCESS payload (1-255 characters).
"""
from __future__ import annotations

import difflib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

REQUIRED = ("process_name", "start_command", "restart_command", "run_as_root")
FIELDS = ("process_name",) + tuple(f"{stage}_command" for stage in (
    "start", "pre_start", "post_start", "restart", "pre_restart", "post_restart")) + (
    "run_as_root",)
# A PROCESS payload's string values are at most 255 characters (consensus/payload.py).
MAX_NAME = 255

Argv = tuple[str, ...]


class ProcessListError(Exception):
    """A process list the monitor must not run with; ``problems`` lists every mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True)
class ProcessEntry:
    """One watched process. Commands are argv tuples; an empty tuple means "no command"."""

    index: int
    line: int
    process_name: str
    start_command: Argv
    pre_start_command: Argv
    post_start_command: Argv
    restart_command: Argv
    pre_restart_command: Argv
    post_restart_command: Argv
    run_as_root: bool

    @property
    def notified_name(self) -> str:
        """The ``process_name`` a PROCESS notification carries: the last ``/``-separated part
        of ``process_name``, as masakari-processmonitor sends it (``/usr/sbin/libvirtd`` ->
        ``libvirtd``), which is what Masakari's engine compares with ``nova-compute``."""
        return self.process_name.split("/")[-1]

    def commands(self, initial: bool) -> tuple[tuple[str, Argv], ...]:
        """(field name, argv) of the pre, main and post commands of a start (``initial``) or
        a restart, in the order they run; fields without a command are left out."""
        stage = "start" if initial else "restart"
        names = (f"pre_{stage}_command", f"{stage}_command", f"post_{stage}_command")
        return tuple((name, getattr(self, name)) for name in names if getattr(self, name))


def _q(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({_q(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_q(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} ({value})"


def parse_process_list(text: str, source: str = "process list") -> tuple[ProcessEntry, ...]:
    """Parse the YAML ``text``; ``source`` (a path, or the config key) prefixes each error.

    Raises ProcessListError listing every problem found.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise ProcessListError(source, [f"not valid YAML: {_yaml_problem(exc)}"]) from None
    finally:
        loader.dispose()
    if data is None:
        raise ProcessListError(source, ["no entries: the list is empty; give one entry per "
                                        "process to watch (see process_list.yaml.sample)"])
    if not isinstance(data, list):
        raise ProcessListError(source, [f"expected a list of entries (each starting with '-'), "
                                        f"got {_what(data)}"])
    if not data:
        raise ProcessListError(source, ["no entries: the list is empty"])
    problems: list[str] = []
    entries: list[ProcessEntry] = []
    seen: dict[str, int] = {}
    for index, (raw, node) in enumerate(zip(data, root.value)):
        entry = _entry(index, node.start_mark.line + 1, raw, problems)
        if entry is None:
            continue
        if entry.process_name in seen:
            problems.append(f"{_where(entry.index, entry.line, entry.process_name)}: "
                            f"process_name: already watched by entry [{seen[entry.process_name]}]")
            continue
        seen[entry.process_name] = index
        entries.append(entry)
    if problems:
        raise ProcessListError(source, problems)
    return tuple(entries)


def load_process_list(path: Path) -> tuple[ProcessEntry, ...]:
    """``parse_process_list`` of the file at ``path``; an unreadable file is a ProcessListError."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ProcessListError(str(path), [f"cannot read the process list: "
                                           f"{exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ProcessListError(str(path), [f"not UTF-8 text: {exc.reason} at byte "
                                           f"{exc.start}"]) from None
    return parse_process_list(text, str(path))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else problem
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    return text


def _where(index: int, line: int, name: Any) -> str:
    shown = f", process_name {_q(name)}" if isinstance(name, str) and name else ""
    return f"entry [{index}] (line {line}{shown})"


def _entry(index: int, line: int, raw: Any, problems: list[str]) -> ProcessEntry | None:
    if not isinstance(raw, dict):
        problems.append(f"entry [{index}] (line {line}): expected a mapping of "
                        f"{', '.join(REQUIRED)}, ..., got {_what(raw)}")
        return None
    where = _where(index, line, raw.get("process_name"))
    before = len(problems)

    def bad(field: str, reason: str) -> None:
        problems.append(f"{where}: {field}: {reason}")

    for key in raw:
        if key not in FIELDS:
            hint = difflib.get_close_matches(str(key), FIELDS, n=1)
            bad(str(key), "unknown field" + (f" (did you mean {hint[0]}?)" if hint else
                                             f" (known: {', '.join(FIELDS)})"))
    for key in REQUIRED:
        if key not in raw:
            bad(key, "required field missing")
    values: dict[str, Any] = {"index": index, "line": line}
    name = raw.get("process_name")
    if "process_name" in raw:
        if not isinstance(name, str) or not name.strip():
            bad("process_name", f"expected a non-empty string, got {_what(name)}")
        elif not 1 <= len(name.split("/")[-1]) <= MAX_NAME:
            bad("process_name", f"the part after the last '/' ({_q(name.split('/')[-1])}) is "
                                f"what notifications carry and must be 1 to {MAX_NAME} characters")
        values["process_name"] = name
    for key in FIELDS[1:-1]:
        values[key] = _command(raw.get(key), key in REQUIRED, key, bad) if key in raw else ()
    root = raw.get("run_as_root")
    if "run_as_root" in raw and not isinstance(root, bool):
        bad("run_as_root", f"expected True or False, got {_what(root)}")
    values["run_as_root"] = root
    if len(problems) > before:
        return None
    return ProcessEntry(**values)


def _command(value: Any, required: bool, field: str, bad: Callable[[str, str], None]) -> Argv:
    if value is None or value == "":
        if required:
            bad(field, "must not be empty")
        return ()
    if not isinstance(value, str):
        bad(field, f"expected a command line (a string), got {_what(value)}")
        return ()
    try:
        argv = tuple(shlex.split(value))
    except ValueError as exc:
        bad(field, f"cannot split {_q(value)} into arguments: {exc}")
        return ()
    if not argv and required:
        bad(field, "must not be empty")
    return argv
