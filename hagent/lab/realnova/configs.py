"""The configuration files of a real Nova lab, written from its ``Layout``.

Settings and why (REAL-NOVA.md):

- every service logs to stderr, which ``daemons.spawn`` sends to its own log file (the WSGI
  apps cannot be given ``--log-file``);
- ``service_down_time = 10``, ``report_interval = 2``: a dead compute is seen in ~10 s, as
  the simulator's default timings assume;
- one worker each for nova-conductor and nova-scheduler (the default, one per CPU, costs
  ~140 MiB more each);
- ``NoopQuotaDriver``: quotas lifted, benchmarks boot hundreds of servers;
- ``discover_hosts_in_cells_interval = -1``: the lab maps its computes itself, once, before
  it says READY;
- every nova-compute has its own ``host`` and ``state_path`` (``compute-HOST.conf`` on top
  of ``nova.conf``);
- Nova reaches Placement, the image and the network stand-ins through ``endpoint_override``
  (the catalog has them too, for openstacksdk), as the lab's admin.
- the gunicorn config empties ``sys.argv``: Keystone and Nova parse it with oslo.config and
  gunicorn's own arguments would make their worker exit (and be respawned forever).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from hagent.lab.realnova.layout import REGION, Layout

#: gunicorn threads per WSGI app: nova-api must answer while one request waits on an RPC
#: call (up to rpc_response_timeout, 60 s), and Keystone validates every API request.
API_THREADS = 8


def _ini(sections: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, options in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value}" for key, value in options.items()]
        lines.append("")
    return "\n".join(lines)


def _admin_auth(layout: Layout) -> dict[str, object]:
    """keystoneauth password options for the lab's admin (a lab needs no service users)."""
    return {"auth_type": "password", "auth_url": layout.auth_url, "username": "admin",
            "password": layout.admin_password, "project_name": "admin",
            "user_domain_name": "Default", "project_domain_name": "Default",
            "region_name": REGION}


def _authtoken(layout: Layout) -> dict[str, object]:
    return {"www_authenticate_uri": layout.auth_url, **_admin_auth(layout)}


def keystone_conf(layout: Layout) -> str:
    keys = layout.data / "keystone"
    return _ini({
        "DEFAULT": {"use_stderr": "true"},
        "database": {"connection": layout.db_url("keystone")},
        "token": {"provider": "fernet"},
        "fernet_tokens": {"key_repository": keys / "fernet-keys"},
        "fernet_receipts": {"key_repository": keys / "fernet-keys"},
        "credential": {"key_repository": keys / "credential-keys"},
    })


def placement_conf(layout: Layout) -> str:
    return _ini({
        "DEFAULT": {"use_stderr": "true"},
        "api": {"auth_strategy": "keystone"},
        "placement_database": {"connection": layout.db_url("placement")},
        "keystone_authtoken": _authtoken(layout),
    })


def nova_conf(layout: Layout) -> str:
    return _ini({
        "DEFAULT": {
            "use_stderr": "true",
            "host": layout.controller,
            "my_ip": layout.bind,
            "state_path": layout.data / "nova",
            "transport_url": layout.transport_url,
            "compute_driver": "fake.FakeDriverWithoutFakeNodes",
            "service_down_time": 10,
            "report_interval": 2,
        },
        "api": {"auth_strategy": "keystone"},
        "api_database": {"connection": layout.db_url("nova_api")},
        "database": {"connection": layout.db_url("nova")},
        "keystone_authtoken": _authtoken(layout),
        "placement": {**_admin_auth(layout), "endpoint_override": layout.url("placement")},
        "glance": {"endpoint_override": layout.url("image"), "region_name": REGION},
        "neutron": {**_admin_auth(layout), "endpoint_override": layout.url("network")},
        "conductor": {"workers": 1},
        "scheduler": {"workers": 1, "discover_hosts_in_cells_interval": -1},
        "quota": {"driver": "nova.quota.NoopQuotaDriver"},
        "oslo_concurrency": {"lock_path": layout.data / "lock"},
        "vnc": {"enabled": "false"},
    })


def compute_conf(layout: Layout, host: str) -> str:
    """What differs for one lab host's nova-compute, read after ``nova.conf``."""
    return _ini({"DEFAULT": {"host": host, "state_path": layout.state_path(host)}})


def gunicorn_conf() -> str:
    return ("# Keystone and Nova parse sys.argv with oslo.config: hide gunicorn's own.\n"
            "import sys\n"
            "sys.argv[1:] = []\n")


def nova_compute_conf_path(layout: Layout, host: str) -> Path:
    return layout.etc / f"compute-{host}.conf"


def write_all(layout: Layout, venv: Path) -> None:
    """Every config file of the lab under ``DIR/realnova/etc`` (and the directories the
    services expect to exist)."""
    etc = layout.etc
    for sub in ("keystone", "placement", "nova"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    for path in (layout.logs, layout.data / "lock", layout.data / "nova",
                 layout.data / "keystone"):
        path.mkdir(parents=True, exist_ok=True)
    (etc / "keystone" / "keystone.conf").write_text(keystone_conf(layout))
    (etc / "placement" / "placement.conf").write_text(placement_conf(layout))
    (etc / "nova" / "nova.conf").write_text(nova_conf(layout))
    shutil.copy(venv / "etc" / "nova" / "api-paste.ini", etc / "nova" / "api-paste.ini")
    (etc / "gunicorn.conf.py").write_text(gunicorn_conf())
    for host in layout.hosts:
        layout.state_path(host).mkdir(parents=True, exist_ok=True)
        nova_compute_conf_path(layout, host).write_text(compute_conf(layout, host))

