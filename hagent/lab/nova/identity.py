"""A Keystone v3 stand-in: password authentication, project-scoped tokens, token checks.

Enough of Keystone for keystoneauth (inside openstacksdk) to log in exactly as it does
against a real cloud: ``POST /v3/auth/tokens`` with the ``password`` method and a project
scope answers 201 with the token in ``X-Subject-Token`` and a body carrying the user, the
project, the roles and the service catalog. Two users: ``admin`` (project ``admin``, role
``admin``) and ``demo`` (project ``demo``, role ``member``), both in domain ``Default``.
Tokens expire after ``ttl`` seconds (wall clock, as Keystone's ``expires_at``).
"""
from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hagent.lab.nova.model import Context

DOMAIN = {"id": "default", "name": "Default"}


class AuthError(Exception):
    """Authentication failed: HTTP ``status`` and Keystone's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class User:
    id: str
    name: str
    password: str
    project_id: str
    project_name: str
    roles: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Identity:
    """Users and their tokens. ``admin_password`` / ``demo_password``: the passwords
    (random if not given); ``ttl``: token lifetime in seconds."""

    def __init__(self, admin_password: str | None = None, demo_password: str | None = None,
                 ttl: float = 3600.0) -> None:
        self.users = [
            User(uuid.uuid4().hex, "admin", admin_password or secrets.token_urlsafe(12),
                 uuid.uuid4().hex, "admin", ("admin", "member", "reader")),
            User(uuid.uuid4().hex, "demo", demo_password or secrets.token_urlsafe(12),
                 uuid.uuid4().hex, "demo", ("member", "reader")),
        ]
        self.ttl = ttl
        self._tokens: dict[str, tuple[User, float]] = {}
        self._lock = threading.Lock()

    def user(self, name: str) -> User:
        return next(u for u in self.users if u.name == name)

    def authenticate(self, body: Any, catalog: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """A token and Keystone's reply body for a ``POST /v3/auth/tokens`` body."""
        try:
            identity = body["auth"]["identity"]
            methods = identity["methods"]
        except (KeyError, TypeError):
            raise AuthError(400, "Expecting to find identity in auth - the server could not "
                                 "comply with the request since it is either malformed or "
                                 "otherwise incorrect.") from None
        if "password" not in methods:
            raise AuthError(401, "The request you have made requires authentication.")
        spec = identity.get("password", {}).get("user", {})
        user = next((u for u in self.users
                     if spec.get("id") == u.id or (spec.get("name") == u.name
                                                   and _in_default(spec.get("domain")))), None)
        if user is None or spec.get("password") != user.password:
            raise AuthError(401, "The request you have made requires authentication.")
        scope = (body["auth"].get("scope") or {}).get("project")
        if scope is not None and not (scope.get("id") == user.project_id or (
                scope.get("name") == user.project_name and _in_default(scope.get("domain")))):
            raise AuthError(401, f"User {user.id} has no access to project "
                                 f"{scope.get('id') or scope.get('name')}")
        now = time.time()
        token = "gAAAA" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (user, now + self.ttl)
        project = {"id": user.project_id, "name": user.project_name, "domain": DOMAIN}
        return token, {"token": {
            "methods": ["password"],
            "user": {"id": user.id, "name": user.name, "domain": DOMAIN,
                     "password_expires_at": None},
            "audit_ids": [secrets.token_urlsafe(16)],
            "issued_at": _iso(now), "expires_at": _iso(now + self.ttl),
            "project": project, "is_domain": False,
            "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_DNS, r).hex, "name": r}
                      for r in user.roles],
            "catalog": catalog}}

    def validate(self, token: str | None) -> Context | None:
        """The caller behind a token, or None if unknown or expired."""
        if not token:
            return None
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[1] <= time.time():
            return None
        user = entry[0]
        return Context(user_id=user.id, project_id=user.project_id, is_admin=user.is_admin)


def _in_default(domain: Any) -> bool:
    """Keystone needs the user's (or project's) domain when named; only Default exists."""
    if not isinstance(domain, dict):
        return False
    return domain.get("id") == DOMAIN["id"] or domain.get("name") == DOMAIN["name"]


def versions(base: str) -> dict[str, Any]:
    """``GET /identity/``: Keystone's version list."""
    return {"versions": {"values": [version(base)["version"]]}}


def version(base: str) -> dict[str, Any]:
    """``GET /identity/v3``."""
    return {"version": {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                        "links": [{"rel": "self", "href": f"{base}/v3/"}],
                        "media-types": [{"base": "application/json",
                                         "type": "application/vnd.openstack.identity-v3+json"}]}}
