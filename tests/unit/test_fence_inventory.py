"""The BMC inventory file: every host's spec becomes a driver, every mistake names the entry."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hagent.fencing.inventory import InventoryError, load_fence_inventory


def write(tmp_path: Path, text: str) -> Path:
    pw = tmp_path / "bmc" / "c1.pw"
    pw.parent.mkdir(exist_ok=True)
    pw.write_text("secret\n")
    os.chmod(pw, 0o600)
    path = tmp_path / "bmc.toml"
    path.write_text(text)
    return path


def test_hosts_become_drivers_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.c1]\ndriver = "redfish"\naddress = "10.1.0.11"\n'
                           'username = "fence"\npassword_file = "bmc/c1.pw"\n')
    drivers = load_fence_inventory(path)
    assert list(drivers) == ["c1"]
    driver = drivers["c1"]
    assert type(driver).__name__ == "RedfishFenceDriver"
    assert (driver.host, driver.bmc) == ("c1", "https://10.1.0.11:443")


def test_a_bad_key_names_the_file_the_host_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.c1]\ndriver = "redfish"\naddress = "10.1.0.11"\n'
                           'username = "fence"\npassword_file = "bmc/c1.pw"\nprot = 1\n')
    with pytest.raises(InventoryError, match=r"bmc.toml: hosts.c1: .*'prot'.*did you mean 'port'"):
        load_fence_inventory(path)


def test_unreadable_and_malformed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read"):
        load_fence_inventory(tmp_path / "missing.toml")
    with pytest.raises(InventoryError, match="not valid TOML"):
        load_fence_inventory(write(tmp_path, "[hosts.c1\n"))
    with pytest.raises(InventoryError, match="unknown table"):
        load_fence_inventory(write(tmp_path, "[bmcs.c1]\n"))
