"""The one-time set-up steps of a real Nova lab: databases, schemas, Keystone's keys, users
and catalog, Nova's cells, the flavors, and mapping the computes.

What a cloud operator gets from the lab is what the simulator offers (``hagent.lab.nova``):
``clouds.yaml`` with clouds ``hagent-lab`` (user admin, project admin) and
``hagent-lab-demo`` (user demo, a member of project demo), the flavors of
``hagent.lab.nova.records.DEFAULT_FLAVORS`` with the same ids and names, and one image
(``standins.IMAGE_ID``). The admin also holds the admin role in project demo, so the lab
can boot servers pinned to a host into that project (``RealNova.boot(project="demo")``).

The ``*-manage`` steps are Python programs that import all of Nova or Keystone (3-6 s each
here): independent ones run at once, in threads.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import yaml

from hagent.lab.nova.records import DEFAULT_FLAVORS
from hagent.lab.realnova import daemons, services
from hagent.lab.realnova.install import Installed
from hagent.lab.realnova.layout import REGION, Layout

log = logging.getLogger(__name__)

DATABASES = ("keystone", "placement", "nova_api", "nova", "nova_cell0")
#: How long the computes may take to register and be mapped to cell1.
DISCOVER_TIMEOUT = 120.0


def in_parallel(*steps: Callable[[], None]) -> None:
    """Run ``steps`` at once; re-raise the first failure after all ended."""
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(step) for step in steps]
    for future in futures:
        future.result()


def create_databases(layout: Layout) -> None:
    services.mysql(layout, " ".join(f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8;"
                                    for db in DATABASES))


def _manage(layout: Layout, installed: Installed, program: str, conf: Path, *args: str) -> None:
    daemons.run(f"{program} {' '.join(args)}",
                [str(installed.bin(program)), "--config-file", str(conf), *args],
                layout.log("setup"), services.base_env())


def keystone_keys(layout: Layout, installed: Installed) -> None:
    conf = layout.etc / "keystone" / "keystone.conf"
    for step in ("fernet_setup", "credential_setup"):
        _manage(layout, installed, "keystone-manage", conf, step,
                "--keystone-user", "root", "--keystone-group", "root")


def keystone_schema(layout: Layout, installed: Installed) -> None:
    conf = layout.etc / "keystone" / "keystone.conf"
    _manage(layout, installed, "keystone-manage", conf, "db_sync")
    _manage(layout, installed, "keystone-manage", conf, "bootstrap",
            # One argument: a value starting with "-" would be read as an option (exit 2).
            f"--bootstrap-password={layout.admin_password}",
            "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
            "--bootstrap-region-id", REGION, "--bootstrap-admin-url", layout.auth_url,
            "--bootstrap-internal-url", layout.auth_url, "--bootstrap-public-url",
            layout.auth_url)


def placement_schema(layout: Layout, installed: Installed) -> None:
    _manage(layout, installed, "placement-manage",
            layout.etc / "placement" / "placement.conf", "db", "sync")


def nova_schema(layout: Layout, installed: Installed) -> None:
    """api_db sync, cell0 and cell1 mapped, the cell databases' schema."""
    conf = layout.etc / "nova" / "nova.conf"
    _manage(layout, installed, "nova-manage", conf, "api_db", "sync")
    _manage(layout, installed, "nova-manage", conf, "cell_v2", "map_cell0",
            "--database_connection", layout.db_url("nova_cell0"))
    _manage(layout, installed, "nova-manage", conf, "cell_v2", "create_cell", "--name", "cell1")
    _manage(layout, installed, "nova-manage", conf, "db", "sync")


def write_clouds(layout: Layout) -> None:
    """``DIR/clouds.yaml``, mode 0600 (it holds passwords), as the simulator writes it."""
    clouds: dict[str, Any] = {"clouds": {}}
    for name, user, password in ((layout.cloud, "admin", layout.admin_password),
                                 (f"{layout.cloud}-demo", "demo", layout.demo_password)):
        clouds["clouds"][name] = {
            "auth": {"auth_url": layout.auth_url, "username": user, "password": password,
                     "project_name": user, "user_domain_name": "Default",
                     "project_domain_name": "Default"},
            "region_name": REGION, "identity_api_version": 3, "interface": "public"}
    path = layout.clouds_yaml
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(clouds, sort_keys=False))
    os.replace(tmp, path)


def connect(layout: Layout, project: str = "admin") -> Any:
    """An openstacksdk Connection as the lab's admin, scoped to ``project``."""
    import openstack.connection

    return openstack.connection.Connection(
        auth_url=layout.auth_url, username="admin", password=layout.admin_password,
        project_name=project, user_domain_name="Default", project_domain_name="Default",
        region_name=REGION, identity_api_version="3", interface="public")


def identity(layout: Layout) -> None:
    """The catalog (compute, placement, image, network) and the demo project and user."""
    conn = connect(layout)
    try:
        idn = conn.identity
        endpoints = {"compute": ("nova", layout.compute_url),
                     "placement": ("placement", layout.url("placement")),
                     "image": ("glance", layout.url("image")),
                     "network": ("neutron", layout.url("network"))}
        for kind, (name, url) in endpoints.items():
            service = idn.create_service(name=name, type=kind, enabled=True)
            for interface in ("public", "internal", "admin"):
                idn.create_endpoint(service_id=service.id, interface=interface, url=url,
                                    region_id=REGION)
        project = idn.create_project(name="demo", domain_id="default")
        user = idn.create_user(name="demo", password=layout.demo_password,
                               default_project_id=project.id, domain_id="default")
        member = idn.find_role("member", ignore_missing=False)
        admin_role = idn.find_role("admin", ignore_missing=False)
        admin = idn.find_user("admin", ignore_missing=False)
        idn.assign_project_role_to_user(project, user, member)
        idn.assign_project_role_to_user(project, admin, admin_role)
    finally:
        conn.close()


def flavors(layout: Layout) -> None:
    """The simulator's flavors, same ids and names."""
    conn = connect(layout)
    try:
        for flavor in DEFAULT_FLAVORS:
            conn.compute.create_flavor(id=flavor.id, name=flavor.name, vcpus=flavor.vcpus,
                                       ram=flavor.ram, disk=flavor.disk,
                                       is_public=flavor.is_public)
    finally:
        conn.close()


def map_computes(layout: Layout, installed: Installed, alive: Callable[[], None]) -> None:
    """Wait until every lab host's nova-compute registered its node, then run
    ``discover_hosts`` until all are mapped to cell1 (periodic discovery is off).
    ``alive()`` raises if a daemon the wait depends on died."""
    conf = layout.etc / "nova" / "nova.conf"
    hosts = set(layout.hosts)
    deadline = time.monotonic() + DISCOVER_TIMEOUT

    def rows(sql: str) -> set[str]:
        return set(services.mysql(layout, sql).split())

    while True:
        alive()
        registered = rows("SELECT host FROM nova.compute_nodes WHERE deleted = 0")
        mapped = rows("SELECT host FROM nova_api.host_mappings")
        if hosts <= mapped:
            return
        if time.monotonic() >= deadline:
            raise daemons.DaemonError(
                f"computes not mapped within {DISCOVER_TIMEOUT:g} s: registered "
                f"{sorted(registered & hosts)}, mapped {sorted(mapped & hosts)} of "
                f"{sorted(hosts)}; see {layout.logs}")
        if hosts <= registered:
            _manage(layout, installed, "nova-manage", conf, "cell_v2", "discover_hosts")
        else:
            time.sleep(0.5)
