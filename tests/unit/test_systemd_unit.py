"""systemd/hagent.service carries the directives the agent's safety and hardening rely on."""
from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "hagent.service"


@pytest.fixture(scope="module")
def unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # systemd directives are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.parametrize("key, value", [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("WatchdogSec", "30s"),
    ("Restart", "on-failure"),
    ("RuntimeDirectory", "hagent"),
    ("RuntimeDirectoryMode", "0750"),
    ("StateDirectory", "hagent"),
    ("StateDirectoryMode", "0700"),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectControlGroups", "yes"),
    ("KillSignal", "SIGTERM"),
])
def test_service_directive(unit, key, value):
    assert unit["Service"].get(key) == value


def test_exec_start_runs_the_daemon_with_the_default_config(unit):
    from hagent.config import DEFAULT_CONFIG_PATH

    assert unit["Service"]["ExecStart"] == f"/usr/bin/hagent run --config {DEFAULT_CONFIG_PATH}"


def test_address_families(unit):
    assert set(unit["Service"]["RestrictAddressFamilies"].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


def test_state_and_run_dirs_writable_and_match_config_defaults(unit):
    from hagent.config import NodeConfig

    paths = set(unit["Service"]["ReadWritePaths"].split())
    defaults = {f.name: f.default for f in NodeConfig.__dataclass_fields__.values() if f.name != "name"}
    assert {str(defaults["state_dir"]), str(defaults["run_dir"])} <= paths


def test_stop_timeout_set(unit):
    assert unit["Service"]["TimeoutStopSec"].endswith("s")


def test_no_private_devices_because_of_dev_watchdog(unit):
    assert unit["Service"].get("PrivateDevices", "no") == "no"


def test_every_service_directive_has_a_reason():
    """Each directive in [Service] is preceded (within its block) by a comment saying why."""
    block_has_comment = False
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
            block_has_comment = False
        elif not line:
            block_has_comment = False
        elif line.startswith("#"):
            block_has_comment = True
        elif section == "[Service]":
            assert block_has_comment, f"no comment explains {line!r}"


def test_installable(unit):
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """systemd's own parser: no unknown directive, no unparsable value.

    ExecStart= points at /bin/true in the copy because /usr/bin/hagent is not installed here.
    """
    copy = tmp_path / "hagent.service"
    copy.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/hagent ", "ExecStart=/bin/true "))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
