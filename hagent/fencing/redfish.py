"""Redfish fencing: ForceOff through the system's ComputerSystem.Reset action, then poll.

The two requests (DMTF Redfish, as Ironic's and pacemaker's fence_redfish drivers use them)::

    GET  https://<address>:<port>/redfish/v1/Systems/<system_id>
         -> PowerState, and the Reset action's target and allowed reset types
    POST <that target, by default .../Systems/<system_id>/Actions/ComputerSystem.Reset>
         {"ResetType": "ForceOff"}

- HTTPS only (Redfish requires it, and the password travels in every request). TLS
  verification is on by default against the system's CAs; ``ca_file`` names the CA that
  signed a BMC's certificate; ``verify_tls = False`` turns checking off and must be asked for
  (then anyone on the path to the BMC can read the password).
- Basic auth on every request, password read from its file each time (checked by
  hagent.fencing.credentials). No sessions: nothing to expire or leak on a crash.
- ``system_id`` may be left out when the BMC lists exactly one system (most servers).
- Redirects are followed only within the same scheme, host and port (so the password is never
  sent elsewhere), at most ``MAX_REDIRECTS`` times; the address redirected to is remembered.
- Stdlib ``http.client`` only, run in a worker thread (``asyncio.to_thread``). Each request
  opens a new connection (BMCs often mishandle keep-alive) whose socket timeout is what is
  left of the call's timeout; the asyncio backstop in FenceDriver bounds the caller even if a
  BMC trickles bytes. Responses over ``MAX_BODY`` bytes are refused.
"""
from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from hagent.fencing.credentials import read_password
from hagent.fencing.external import (FenceAuthError, FenceConfigError, FenceDriver, FenceError,
                                     FenceProtocolError, FenceTimeout, FenceUnreachable)

log = logging.getLogger(__name__)

DEFAULT_PORT = 443
SYSTEMS = "/redfish/v1/Systems"
MAX_REDIRECTS = 3
# A system resource is a few KiB; anything near this is not a BMC answering our request.
MAX_BODY = 1 << 20
# Redfish PowerState -> ours. Only "Off" is off: a host powering off may still write to the
# shared storage, a paused one can resume.
POWER_STATES = {"On": "on", "Off": "off", "PoweringOn": "on", "PoweringOff": "on", "Paused": "on"}
_REDIRECTS = (301, 302, 303, 307, 308)


class RedfishFenceDriver(FenceDriver):
    """Fences one host through its BMC's Redfish service."""

    def __init__(self, *, host: str, address: str, port: int, username: str, password_file: Path,
                 system_id: str | None, verify_tls: bool, ca_file: Path | None, timeout: float,
                 power_off_timeout: float, poll_interval: float) -> None:
        shown = f"[{address}]" if ":" in address else address
        super().__init__(host=host, bmc=f"https://{shown}:{port}", timeout=timeout,
                         power_off_timeout=power_off_timeout, poll_interval=poll_interval)
        self.address = address
        self.port = port
        self.username = username
        self.password_file = Path(password_file)
        self._tls = self._tls_context(verify_tls, ca_file)
        read_password(self.password_file, host=host, bmc=self.bmc)  # refuse a bad file now
        self._system = f"{SYSTEMS}/{quote(system_id, safe='')}" if system_id else None
        self._reset_target: str | None = None

    def _tls_context(self, verify: bool, ca_file: Path | None) -> ssl.SSLContext:
        if not verify:
            if ca_file is not None:
                raise self.error(FenceConfigError, "ca_file is set but verify_tls is false",
                                 "drop ca_file, or set verify_tls = true to check the BMC "
                                 "against it")
            log.warning("fencing %s: TLS verification of BMC %s is off; anyone on the path can "
                        "read its password", self.host, self.bmc)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise self.error(FenceConfigError, f"cannot load ca_file {ca_file}: {exc}",
                             "point ca_file at the PEM certificate of the CA that signed the "
                             "BMC's certificate") from None

    async def _read_state(self, timeout: float) -> str:
        return await asyncio.to_thread(self._read_state_sync, time.monotonic() + timeout)

    async def _request_off(self, timeout: float) -> None:
        await asyncio.to_thread(self._request_off_sync, time.monotonic() + timeout)

    def _read_state_sync(self, deadline: float) -> str:
        state = self._get_system(deadline).get("PowerState")
        return POWER_STATES.get(state, "unknown") if isinstance(state, str) else "unknown"

    def _request_off_sync(self, deadline: float) -> None:
        if self._reset_target is None:
            self._get_system(deadline)  # learns the Reset action's target
        target = self._reset_target or f"{self._system}/Actions/ComputerSystem.Reset"
        self._request("POST", target, deadline, {"ResetType": "ForceOff"})

    def _get_system(self, deadline: float) -> dict[str, Any]:
        """The system resource; remembers its final path and its Reset action's target."""
        if self._system is None:
            self._system = self._only_system(deadline)
        path, doc = self._request("GET", self._system, deadline)
        self._system = path
        action = _object(_object(doc.get("Actions")).get("#ComputerSystem.Reset"))
        allowed = action.get("ResetType@Redfish.AllowableValues")
        if isinstance(allowed, list) and "ForceOff" not in allowed:
            raise self.error(FenceConfigError, f"the BMC does not offer ResetType ForceOff for "
                             f"{path} (it offers {', '.join(map(str, allowed))})",
                             "fence this host with the ipmi driver, or update the BMC firmware")
        target = action.get("target")
        self._reset_target = (self._same_origin(path, target) if isinstance(target, str)
                              else f"{path}/Actions/ComputerSystem.Reset")
        return doc

    def _only_system(self, deadline: float) -> str:
        _, doc = self._request("GET", SYSTEMS, deadline)
        listed = doc.get("Members")
        members = [_object(m).get("@odata.id") for m in listed] if isinstance(listed, list) else []
        if len(members) == 1 and isinstance(members[0], str):
            return self._same_origin(SYSTEMS, members[0])
        listed = ", ".join(str(m).rsplit("/", 1)[-1] for m in members) or "none"
        raise self.error(FenceConfigError, f"the BMC lists {len(members)} systems ({listed}), "
                         "so which one is this host is not known",
                         "set system_id in this host's fencing spec")

    def _request(self, method: str, path: str, deadline: float,
                 body: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """(final path, JSON body or {}) of a 2xx answer; FenceError for anything else."""
        password = read_password(self.password_file, host=self.host, bmc=self.bmc)
        token = base64.b64encode(f"{self.username}:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Accept": "application/json",
                   "OData-Version": "4.0"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for _ in range(MAX_REDIRECTS + 1):
            status, location, raw = self._exchange(method, path, data, headers, deadline)
            if status in _REDIRECTS and method == "GET" and location:
                path = self._same_origin(path, location)
                continue
            return path, self._answer(method, path, status, raw)
        raise self.error(FenceProtocolError, f"{method} {path}: more than {MAX_REDIRECTS} "
                         "redirects", "check the BMC's Redfish service")

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict[str, str],
                  deadline: float) -> tuple[int, str | None, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out(method, path)
        conn = http.client.HTTPSConnection(self.address, self.port, timeout=remaining,
                                           context=self._tls)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_BODY + 1)
            return resp.status, resp.getheader("Location"), raw
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc, method, path) from None
        finally:
            conn.close()

    def _answer(self, method: str, path: str, status: int, raw: bytes) -> dict[str, Any]:
        what = f"{method} {path}"
        if len(raw) > MAX_BODY:
            raise self.error(FenceProtocolError, f"{what}: answer over {MAX_BODY} bytes",
                             "check that address and port are the BMC's Redfish service")
        try:
            doc = json.loads(raw) if raw.strip() else {}
        except ValueError:
            doc = None
        if 200 <= status < 300:
            if method != "GET":
                return doc if isinstance(doc, dict) else {}
            if not isinstance(doc, dict):
                raise self.error(FenceProtocolError, f"{what}: HTTP {status} without a JSON "
                                 "object", "check that address and port are the BMC's "
                                 "Redfish service")
            return doc
        said = _redfish_message(doc) or raw[:200].decode(errors="replace").strip()
        problem = f"{what}: HTTP {status}" + (f" ({said})" if said else "")
        if status == 401:
            raise self.error(FenceAuthError, problem, f"check username {self.username!r} and "
                             f"the password in {self.password_file}")
        if status == 403:
            raise self.error(FenceAuthError, problem, f"give user {self.username!r} a role "
                             "that may reset the system (Operator or Administrator)")
        if status == 404:
            raise self.error(FenceConfigError, problem, f"set system_id to one listed at "
                             f"{SYSTEMS} on the BMC")
        raise self.error(FenceProtocolError, problem, "check the BMC's logs")

    def _transport_error(self, exc: Exception, method: str, path: str) -> FenceError:
        what = f"{method} {path}"
        if isinstance(exc, TimeoutError):
            return self._timed_out(method, path)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return self.error(FenceAuthError, f"{what}: the BMC's TLS certificate is not "
                              f"trusted ({exc.verify_message})",
                              "set ca_file to the CA that signed it (verify_tls = false only "
                              "in a lab)")
        if isinstance(exc, ssl.SSLError):
            return self.error(FenceProtocolError, f"{what}: TLS handshake failed ({exc.reason})",
                              f"check that port {self.port} is the BMC's HTTPS port")
        if isinstance(exc, ConnectionRefusedError):
            return self.error(FenceUnreachable, f"{what}: connection refused",
                              f"check address and port {self.port}, and that the BMC's Redfish "
                              "service is on")
        if isinstance(exc, http.client.HTTPException):
            return self.error(FenceProtocolError, f"{what}: broken HTTP answer ({exc!r})",
                              "check that address and port are the BMC's Redfish service")
        return self.error(FenceUnreachable, f"{what}: {exc}",
                          "check the BMC address and the network path to it")

    def _timed_out(self, method: str, path: str) -> FenceError:
        return self.error(FenceTimeout, f"{method} {path}: no complete answer in time "
                          f"(timeout {self.timeout:.3g} s per call)",
                          "check that the BMC is up and reachable from this node")

    def _same_origin(self, base: str, reference: str) -> str:
        """The path (and query) ``reference`` names, if it is on this BMC; else FenceError."""
        url = urlsplit(urljoin(self.bmc + base, reference))
        if (url.scheme != "https" or (url.hostname or "").lower() != self.address.lower()
                or (url.port or DEFAULT_PORT) != self.port):
            raise self.error(FenceProtocolError, f"the BMC points to {reference}, off this BMC; "
                             "the password is not sent there",
                             "set address and port to where the BMC's Redfish service is")
        return url.path + (f"?{url.query}" if url.query else "")


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: BMC answers are not trusted."""
    return value if isinstance(value, dict) else {}


def _redfish_message(doc: Any) -> str:
    """The message of a Redfish error body ({"error": {"message", "@Message.ExtendedInfo"}})."""
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return ""
    error = doc["error"]
    info = error.get("@Message.ExtendedInfo")
    if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("Message"):
        return str(info[0]["Message"])[:300]
    return str(error.get("message", ""))[:300]
