"""The BMC inventory: which fence driver powers off which host.

A separate TOML file (``fencing.bmc_inventory``) rather than tables in hagent.toml, because
it is the same on every voter (any voter may become the leader that fences) and operators
generate it from their hardware inventory::

    [hosts.compute-01]
    driver = "ipmi"
    address = "10.1.0.11"
    username = "fence"
    password_file = "bmc/compute-01.pw"    # relative to this file

Every spec is checked by ``make_fence_driver`` when the agent starts, so a wrong key stops
start-up with the file, the host and the key instead of failing in the middle of a failure.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hagent.fencing.external import FenceConfigError, FenceDriver
from hagent.fencing.factory import make_fence_driver


class InventoryError(Exception):
    """The BMC inventory file cannot be used; the message names the file and the entry."""


def load_fence_inventory(path: Path) -> dict[str, FenceDriver]:
    """host name -> ready fence driver, for every ``[hosts.NAME]`` table in ``path``."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the BMC inventory: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"hosts"})
    if unknown:
        raise InventoryError(f"{path}: unknown table(s) {', '.join(unknown)}; the file holds "
                             f"only [hosts.NAME] tables")
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise InventoryError(f"{path}: 'hosts' must be tables [hosts.NAME], got {hosts!r}")
    drivers: dict[str, FenceDriver] = {}
    for host, spec in sorted(hosts.items()):
        if not isinstance(spec, dict):
            raise InventoryError(f"{path}: hosts.{host} must be a table of driver settings")
        spec = dict(spec)
        for key in ("password_file", "ca_file"):
            if isinstance(spec.get(key), str) and not Path(spec[key]).is_absolute():
                spec[key] = str(path.parent / spec[key])
        try:
            drivers[host] = make_fence_driver(spec, host=host)
        except FenceConfigError as exc:
            raise InventoryError(f"{path}: hosts.{host}: {exc}") from None
    return drivers
