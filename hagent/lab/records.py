"""The small JSON records a lab keeps of the helper processes it started (power switches,
libvirtds), so that ``lab down`` from any process can find and stop exactly those."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil


def load(path: Path, error: type[Exception]) -> dict[str, dict[str, Any]]:
    """The record at ``path`` ({} if there is none); ``error`` if it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None


def save(path: Path, record: dict[str, dict[str, Any]]) -> None:
    """Replace the record at ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def process_entry(pid: int) -> dict[str, Any]:
    """What identifies process ``pid`` in a record: its pid and its start time."""
    return {"pid": pid, "created": psutil.Process(pid).create_time()}


def alive(entry: dict[str, Any]) -> psutil.Process | None:
    """The process recorded in ``entry`` if it is still that process (not a reused pid)."""
    try:
        proc = psutil.Process(entry["pid"])
        if proc.create_time() == entry["created"] and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (psutil.Error, KeyError):
        pass
    return None
