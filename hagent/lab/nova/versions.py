"""Compute API microversions: what a request asks for, and the version documents.

Nova reads ``OpenStack-API-Version: compute X.Y`` (or the legacy
``X-OpenStack-Nova-API-Version: X.Y``); no header means the minimum, 2.1; ``latest`` means
the maximum; a malformed value is 400 and one outside [min, max] is 406 "Version X is not
supported by the API. Minimum is 2.1 and maximum is M." (nova/api/openstack/wsgi.py). Every
reply names the version used in both headers, with ``Vary``.

The maximum defaults to 2.104, real Nova 34's (REAL-NOVA.md); replies follow the shapes of the
versions the engine and openstacksdk use (fields added after 2.100 are not rendered).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

Version = tuple[int, int]

MIN_VERSION: Version = (2, 1)
MAX_VERSION: Version = (2, 104)
_FORMAT = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


class VersionError(Exception):
    """The requested microversion is malformed (400) or unsupported (406)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def text(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def parse(value: str) -> Version:
    """``"2.53"`` -> (2, 53); VersionError(400) if malformed."""
    match = _FORMAT.match(value.strip())
    if not match:
        raise VersionError(400, f"API Version String {value} is of invalid format. Must be of "
                                f"format MajorNum.MinorNum.")
    return int(match.group(1)), int(match.group(2))


def requested(headers: Mapping[str, str], maximum: Version = MAX_VERSION,
              minimum: Version = MIN_VERSION) -> Version:
    """The microversion a request asks for (headers looked up case-insensitively)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = None
    new = lowered.get("openstack-api-version")
    if new:
        for part in new.split(","):
            service, _, ver = part.strip().partition(" ")
            if service.lower() == "compute":
                value = ver.strip()
    if value is None:
        value = lowered.get("x-openstack-nova-api-version")
    if not value:
        return minimum
    if value.lower() == "latest":
        return maximum
    version = parse(value)
    if not minimum <= version <= maximum:
        raise VersionError(406, f"Version {value} is not supported by the API. Minimum is "
                                f"{text(minimum)} and maximum is {text(maximum)}.")
    return version


def reply_headers(version: Version) -> dict[str, str]:
    return {"OpenStack-API-Version": f"compute {text(version)}",
            "X-OpenStack-Nova-API-Version": text(version),
            "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}


def compute_version(base: str, maximum: Version = MAX_VERSION,
                    minimum: Version = MIN_VERSION) -> dict[str, Any]:
    """The v2.1 version object as Nova serves it (``GET /v2.1`` wraps it in "version")."""
    return {"id": "v2.1", "status": "CURRENT", "version": text(maximum),
            "min_version": text(minimum), "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{base}/v2.1/"},
                      {"rel": "describedby", "type": "text/html",
                       "href": "http://docs.openstack.org/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}]}


def compute_versions(base: str, maximum: Version = MAX_VERSION,
                     minimum: Version = MIN_VERSION) -> dict[str, Any]:
    """``GET /`` of the compute endpoint: every version (v2.0 is the legacy one)."""
    legacy = {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
              "updated": "2011-01-21T11:33:21Z",
              "links": [{"rel": "self", "href": f"{base}/v2/"}]}
    current = compute_version(base, maximum, minimum)
    return {"versions": [legacy, {k: current[k] for k in
                                  ("id", "status", "version", "min_version", "updated",
                                   "links")}]}
