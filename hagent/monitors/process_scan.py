"""Which watched processes run: command lines read with psutil, matched as Masakari matches.

masakari-processmonitor runs ``ps -ef`` and counts a process as running when its
``process_name`` occurs anywhere in the output. ``ps -ef`` prints each command line as its
arguments joined by spaces, so the same test here is: ``process_name`` is a substring of some
process's arguments joined by spaces. ``/usr/sbin/libvirtd`` thus matches
``/usr/sbin/libvirtd --listen``, and ``nova-compute`` matches
``/usr/bin/python3 /usr/bin/nova-compute --config-file ...``.

Left out, unlike a plain ``ps -ef``: zombies (dead, only not yet reaped by their parent),
kernel threads (no command line) and the agent itself.
"""
from __future__ import annotations

import os
from typing import Iterable

import psutil


def running(names: Iterable[str], command_lines: Iterable[str]) -> set[str]:
    """The ``names`` that occur in at least one of ``command_lines``."""
    wanted = set(names)
    found: set[str] = set()
    for line in command_lines:
        for name in wanted - found:
            if name in line:
                found.add(name)
        if found == wanted:
            break
    return found


def command_lines() -> list[str]:
    """Every live process's arguments joined by spaces (blocking: run it in a thread).

    Processes that exit or deny access while being read are skipped: an exiting process is
    not running, and the agent runs as root, so access is denied only in tests.
    """
    own = os.getpid()
    lines = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        info = proc.info
        if proc.pid == own or info["status"] == psutil.STATUS_ZOMBIE or not info["cmdline"]:
            continue
        lines.append(" ".join(info["cmdline"]))
    return lines
