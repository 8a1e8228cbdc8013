"""A fence driver from a plain per-host spec (one TOML table), every key checked.

``make_fence_driver(spec, host=...)`` takes what a config file says for one host, e.g.::

    {"driver": "redfish", "address": "10.0.0.21", "username": "fence",
     "password_file": "/etc/hagent/bmc/compute-1.pw", "ca_file": "/etc/hagent/bmc-ca.pem"}

and returns a driver that is ready to use: the password file has been checked (private, one
line), ipmitool found, the CA file loaded. Anything wrong raises FenceConfigError naming the
host, the key and the fix, so a bad spec stops start-up rather than a fence in the middle of
a failure. ``SPEC_KEYS`` declares every key once, with its default and the reason for it.

Driver ``lab`` is the lab's BMC stand-in (``lab_bmc.py``): it powers a lab host off through
its simulated power switch (key ``socket``), so the fence-driver path runs in a lab.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from hagent.fencing import ipmi, lab_bmc, redfish
from hagent.fencing.external import FenceConfigError, FenceDriver

BMC_DRIVERS = ("ipmi", "redfish")   # real BMCs, reached over the network with credentials
DRIVERS = (*BMC_DRIVERS, "lab")
REQUIRED = object()  # marks a key without a default


@dataclass(frozen=True)
class SpecKey:
    """One key of a fence spec: which drivers take it, its default and why that default."""

    default: Any
    drivers: tuple[str, ...]
    doc: str


SPEC_KEYS: dict[str, SpecKey] = {
    "driver": SpecKey(REQUIRED, DRIVERS, "`ipmi` (ipmitool, IPMI 2.0 lanplus), `redfish`, or "
                      "`lab` (the lab's simulated power switch standing in for a BMC; labs "
                      "only)."),
    "address": SpecKey(REQUIRED, BMC_DRIVERS, "The BMC's host name or IP address (no port, no "
                       "scheme): the management controller, not the host itself."),
    "port": SpecKey(None, BMC_DRIVERS, "The BMC's port; default the protocol's standard one: "
                    "623/udp for ipmi (RMCP+), 443/tcp for redfish (HTTPS)."),
    "username": SpecKey(REQUIRED, BMC_DRIVERS, "The BMC user. It must be allowed to power the "
                        "system off: for ipmi the ADMINISTRATOR privilege (ipmitool's default "
                        "session level, as fence_ipmilan's), for redfish a role allowed "
                        "ComputerSystem.Reset (Operator or Administrator)."),
    "password_file": SpecKey(REQUIRED, BMC_DRIVERS, "File holding the BMC password on one line, "
                             "mode 0600 (refused if group or others may read it). Never the "
                             "password itself: configs get copied and shown."),
    "system_id": SpecKey(None, ("redfish",), "Id of the system under /redfish/v1/Systems; "
                         "default: the only system the BMC lists (most servers list one)."),
    "verify_tls": SpecKey(True, ("redfish",), "Check the BMC's TLS certificate. Off only "
                          "explicitly (labs): then anyone on the path can read the password."),
    "ca_file": SpecKey(None, ("redfish",), "PEM CA certificate that signed the BMC's "
                       "certificate, when not a system-trusted CA (BMCs usually have "
                       "self-signed or private-CA certificates)."),
    "socket": SpecKey(REQUIRED, ("lab",), "Unix socket of the lab host's power switch "
                      "(hagent.lab.hostpower; `hagent.lab.configs.power_socket_path`). The lab "
                      "writes it."),
    "timeout": SpecKey(10.0, DRIVERS, "Seconds one BMC call (one ipmitool run, one HTTP "
                       "request) may take. BMCs are slow embedded computers that can take "
                       "seconds per request; ipmitool's own retries give up after ~6 s."),
    "power_off_timeout": SpecKey(30.0, DRIVERS, "Seconds power_off waits for the BMC to read "
                                 "off before reporting the fence unconfirmed. Real hardware "
                                 "cuts power within seconds (sushy's fake takes up to 11 s); "
                                 "fence_ipmilan waits 20 s, Ironic 60 s."),
    "poll_interval": SpecKey(1.0, DRIVERS, "Seconds between power-state reads while waiting: "
                             "light for a BMC, and adds at most this to a confirmed fence."),
}


def make_fence_driver(spec: Mapping[str, Any], *, host: str) -> FenceDriver:
    """A ready FenceDriver for ``host`` from its spec; FenceConfigError naming the bad key."""
    address = spec.get("socket") if spec.get("driver") == "lab" else spec.get("address")
    bmc = address if isinstance(address, str) and address else "(no address)"

    def bad(key: str, problem: str, fix: str | None = None) -> FenceConfigError:
        return FenceConfigError(host, bmc, f"fence spec key {key!r}: {problem}",
                                fix or f"fix {key!r} in this host's fencing spec")

    driver = spec.get("driver", REQUIRED)
    if driver is REQUIRED:
        raise bad("driver", "missing", f"set it to one of {', '.join(DRIVERS)}")
    if driver not in DRIVERS:
        raise bad("driver", f"{driver!r} is not one of {', '.join(DRIVERS)}")
    for key in spec:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
            raise bad(key, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""),
                      f"remove it; known keys: {', '.join(SPEC_KEYS)}")
        if driver not in SPEC_KEYS[key].drivers:
            raise bad(key, f"only the {' and '.join(SPEC_KEYS[key].drivers)} driver takes it, "
                      f"not {driver}", "remove it")
    values: dict[str, Any] = {}
    for key, declared in SPEC_KEYS.items():
        if driver not in declared.drivers or key == "driver":
            continue
        if key not in spec:
            if declared.default is REQUIRED:
                raise bad(key, "missing", f"set {key!r} in this host's fencing spec")
            values[key] = declared.default
            continue
        try:
            values[key] = _PARSERS[key](spec[key])
        except ValueError as exc:
            raise bad(key, f"{exc}, got {spec[key]!r}") from None
    if values["poll_interval"] >= values["power_off_timeout"]:
        raise bad("poll_interval", f"{values['poll_interval']:g} s is not below "
                  f"power_off_timeout ({values['power_off_timeout']:g} s)")
    if driver == "lab":
        return lab_bmc.LabBmcFenceDriver(host=host, **values)
    if driver == "ipmi":
        return ipmi.IpmiFenceDriver(host=host, **_with_port(values, ipmi.DEFAULT_PORT))
    return redfish.RedfishFenceDriver(host=host, **_with_port(values, redfish.DEFAULT_PORT))


def _with_port(values: dict[str, Any], default: int) -> dict[str, Any]:
    return {**values, "port": default if values["port"] is None else values["port"]}


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError("must be a non-empty string without surrounding spaces")
    return value


def _address(value: Any) -> str:
    value = _text(value)
    if "/" in value or any(c.isspace() for c in value) or value.startswith("["):
        raise ValueError("must be a bare host name or IP address (no scheme, path, brackets "
                         "or port)")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError("has a ':' but is not an IPv6 address (give the port as 'port')") \
                from None
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("must be an integer from 1 to 65535")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number of seconds above 0")
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    return Path(_text(value))


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "address": _address, "port": _port, "username": _text, "password_file": _path,
    "system_id": _text, "verify_tls": _flag, "ca_file": _path, "timeout": _seconds,
    "power_off_timeout": _seconds, "poll_interval": _seconds, "socket": _path,
}
