"""How each daemon of a real Nova lab is started, as root, without systemd, in the lab's own
directories (REAL-NOVA.md has why each trick is needed):

- MariaDB: ``mariadb-install-db`` then ``mariadbd --no-defaults --user=root``, TCP on
  127.0.0.1 only, root without a password;
- RabbitMQ: ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (the /usr/sbin wrapper su's to
  user rabbitmq and writes under /var), every path under the lab directory, with an epmd of
  its own (on a port of its own) started first so its pid is known;
- Keystone, Placement, nova-api: gunicorn with a config file that hides gunicorn's arguments
  from oslo.config, no control socket (gunicorn 27 would share ~/.gunicorn between them),
  the config directory given by environment variable;
- nova-conductor, nova-scheduler, one nova-compute per lab host.

Every ``start_*`` returns the ``Popen`` of a daemon in its own session and waits until it
answers where that is cheap to see (ports); Nova's RPC services are judged by the lab later
(services up in Nova's API).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hagent.lab.realnova import configs, daemons
from hagent.lab.realnova.install import Installed
from hagent.lab.realnova.layout import LOCAL, Layout

MARIADB_START_TIMEOUT = 60.0
RABBITMQ_START_TIMEOUT = 90.0
API_START_TIMEOUT = 90.0
RABBITMQ_DIR = Path("/usr/lib/rabbitmq/bin")

#: name -> (config dir variable, WSGI application, config subdirectory).
WSGI_APPS = {
    "keystone": ("OS_KEYSTONE_CONFIG_DIR", "keystone.wsgi.api:application", "keystone"),
    "placement": ("OS_PLACEMENT_CONFIG_DIR", "placement.wsgi.api:application", "placement"),
    "nova_api": ("OS_NOVA_CONFIG_DIR", "nova.wsgi.osapi_compute:application", "nova"),
}


def base_env() -> dict[str, str]:
    """The environment of every daemon: this one without what would confuse them."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV", "NOTIFY_SOCKET"))}
    env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
    return env


def mysql(layout: Layout, sql: str, timeout: float = 30.0) -> str:
    """Run ``sql`` in the lab's MariaDB (the ``mariadb`` client; tab-separated rows)."""
    out = subprocess.run(["mariadb", "--no-defaults", "-h", LOCAL, "-P",
                          str(layout.ports["mariadb"]), "-uroot", "-N", "-B", "-e", sql],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise daemons.DaemonError(f"mariadb: {sql[:80]!r} failed: {out.stderr.strip()}")
    return out.stdout


def start_mariadb(layout: Layout) -> subprocess.Popen:
    datadir = layout.data / "mysql"
    logfile = layout.log("mariadb")
    if not (datadir / "mysql").exists():
        datadir.mkdir(parents=True, exist_ok=True)
        daemons.run("mariadb-install-db",
                    ["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root",
                     "--auth-root-authentication-method=normal", "--skip-test-db"],
                    logfile, base_env())
    proc = daemons.spawn("mariadb", [
        "/usr/sbin/mariadbd", "--no-defaults", "--user=root", f"--datadir={datadir}",
        f"--bind-address={LOCAL}", f"--port={layout.ports['mariadb']}",
        f"--socket={layout.data / 'mysql.sock'}", f"--pid-file={layout.data / 'mysql.pid'}",
        "--max-connections=1000", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
        "--innodb-flush-log-at-trx-commit=2", "--log-error=" + str(logfile)],
        logfile, base_env())
    daemons.wait_until(lambda: daemons.listening(LOCAL, layout.ports["mariadb"]),
                       MARIADB_START_TIMEOUT, "mariadb", proc, logfile)
    return proc


def rabbitmq_env(layout: Layout) -> dict[str, str]:
    base = layout.data / "rabbitmq"
    env = base_env()
    env.update({
        "HOME": str(base),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_NODENAME": "rabbit@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": LOCAL,
        "RABBITMQ_NODE_PORT": str(layout.ports["rabbitmq"]),
        "RABBITMQ_DIST_PORT": str(layout.ports["rabbitmq_dist"]),
        "ERL_EPMD_ADDRESS": LOCAL,
        "ERL_EPMD_PORT": str(layout.ports["epmd"]),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    })
    return env


def start_epmd(layout: Layout) -> subprocess.Popen:
    logfile = layout.log("epmd")
    proc = daemons.spawn("epmd", ["epmd", "-address", LOCAL, "-port", str(layout.ports["epmd"])],
                         logfile, base_env())
    daemons.wait_until(lambda: daemons.listening(LOCAL, layout.ports["epmd"]), 10.0, "epmd",
                       proc, logfile)
    return proc


def spawn_rabbitmq(layout: Layout) -> subprocess.Popen:
    """Start RabbitMQ (needs the lab's epmd); ``wait_rabbitmq`` waits for its AMQP port."""
    base = layout.data / "rabbitmq"
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "rabbitmq-env.conf").write_text("")
    (base / "rabbitmq.conf").write_text("")
    (base / "advanced.config").write_text("[].\n")
    (base / "enabled_plugins").write_text("[].\n")
    return daemons.spawn("rabbitmq", [str(RABBITMQ_DIR / "rabbitmq-server")],
                         layout.log("rabbitmq"), rabbitmq_env(layout), cwd=base)


def wait_rabbitmq(layout: Layout, proc: subprocess.Popen) -> None:
    daemons.wait_until(lambda: daemons.listening(LOCAL, layout.ports["rabbitmq"]),
                       RABBITMQ_START_TIMEOUT, "rabbitmq", proc, layout.log("rabbitmq"))


def spawn_wsgi(layout: Layout, installed: Installed, name: str) -> subprocess.Popen:
    """gunicorn serving Keystone, Placement or nova-api on ``bind``; ``wait_wsgi`` waits."""
    variable, app, subdir = WSGI_APPS[name]
    env = base_env()
    env[variable] = str(layout.etc / subdir)
    return daemons.spawn(name, [
        str(installed.bin("gunicorn")), "-c", str(layout.etc / "gunicorn.conf.py"),
        "--no-control-socket", "-b", f"{layout.bind}:{layout.ports[name]}",
        "--workers", "1", "--threads", str(configs.API_THREADS), "--timeout", "120",
        "--graceful-timeout", "1", "--name", f"hagent-realnova-{name}", app],
        layout.log(name), env)


def wait_wsgi(layout: Layout, name: str, proc: subprocess.Popen) -> None:
    daemons.wait_until(lambda: daemons.listening(layout.bind, layout.ports[name]),
                       API_START_TIMEOUT, name, proc, layout.log(name))


def nova_argv(layout: Layout, installed: Installed, binary: str,
              host: str | None = None) -> list[str]:
    argv = [str(installed.bin(binary)), "--config-file", str(layout.etc / "nova" / "nova.conf")]
    if host is not None:
        argv += ["--config-file", str(configs.nova_compute_conf_path(layout, host))]
    return argv


def spawn_nova(layout: Layout, installed: Installed, binary: str,
               host: str | None = None) -> subprocess.Popen:
    """nova-conductor, nova-scheduler, or (``host`` given) that host's nova-compute."""
    name = binary if host is None else f"{binary}-{host}"
    return daemons.spawn(name, nova_argv(layout, installed, binary, host), layout.log(name),
                         base_env())
