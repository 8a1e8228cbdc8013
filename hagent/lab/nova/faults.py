"""Fault injection for the Nova simulator's HTTP API: rules matched against each request.

A rule names a method (or any), a regular expression searched in the path (e.g.
``/servers/[^/]+/action`` or ``os-services``), what to do and how many times:

- ``error``: answer ``status`` (default 500, Nova's computeFault body) without acting;
- ``conflict``: answer 409 conflictingRequest without acting (a lost race);
- ``delay``: wait ``delay`` seconds, then act and answer normally;
- ``timeout``: no answer: hold the connection ``delay`` seconds (default 30), then close it.
  With ``apply`` the request takes effect first (the call happened, its reply was lost: the
  case exactly-once code must survive); without, it never reaches Nova.

``count``: how many matching requests the rule hits (None: every one until cleared). Rules are
tried in the order added; the first that still has hits left wins.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

KINDS = ("error", "conflict", "delay", "timeout")


class FaultError(ValueError):
    """A fault rule that cannot be used; says which field and why."""


@dataclass
class Rule:
    path: str
    kind: str
    method: str | None = None
    count: int | None = 1
    status: int = 500
    delay: float = 0.0
    apply: bool = False
    hits: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FaultError(f"fault kind {self.kind!r} unknown (known: {', '.join(KINDS)})")
        try:
            self._pattern = re.compile(self.path)
        except re.error as exc:
            raise FaultError(f"fault path {self.path!r} is not a regular expression: {exc}") \
                from None
        if self.count is not None and self.count < 1:
            raise FaultError(f"fault count must be >= 1 or null, got {self.count}")
        if self.kind == "timeout" and not self.delay:
            self.delay = 30.0
        if self.method:
            self.method = self.method.upper()

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and \
            bool(self._pattern.search(path)) and (self.count is None or self.hits < self.count)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "method": self.method,
                "count": self.count, "status": self.status, "delay": self.delay,
                "apply": self.apply, "hits": self.hits}


class Faults:
    """The rule list, thread-safe."""

    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._lock = threading.Lock()

    def add(self, **spec: Any) -> Rule:
        """Add a rule from keyword fields (see Rule); FaultError if malformed."""
        known = {"path", "kind", "method", "count", "status", "delay", "apply"}
        unknown = set(spec) - known
        if unknown:
            raise FaultError(f"unknown fault field(s) {sorted(unknown)} (known: {sorted(known)})")
        if "path" not in spec or "kind" not in spec:
            raise FaultError("a fault needs 'path' (a regular expression) and 'kind'")
        rule = Rule(**spec)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> Rule | None:
        """The first rule hitting this request (its hit is counted), or None."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.describe() for rule in self._rules]
