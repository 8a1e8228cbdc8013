"""Where a real Nova lab keeps everything, and on which ports it listens.

All of it is under ``DIR/realnova/`` (data, configs, logs, sockets), so removing that one
directory leaves nothing behind; the lab's record is ``DIR/realnova.json`` and the clouds
file ``DIR/clouds.yaml`` (the same name the simulator writes, so agents and tools need not
know which Nova they talk to).

The APIs (Keystone, Placement, nova-api, the image and network stand-ins) listen on
``bind``; MariaDB, RabbitMQ and epmd only ever talk to Nova's own daemons, which run in the
root namespace, so they stay on 127.0.0.1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hagent.lab.configs import admin_socket_path

RECORD_FILE = "realnova.json"
CLOUDS_FILE = "clouds.yaml"
DATA_DIR = "realnova"
DEFAULT_CLOUD = "hagent-lab"
REGION = "RegionOne"
LOCAL = "127.0.0.1"

#: The ports a lab needs: the first five on ``bind``, the others on 127.0.0.1.
API_PORTS = ("keystone", "placement", "nova_api", "image", "network")
LOCAL_PORTS = ("mariadb", "rabbitmq", "rabbitmq_dist", "epmd")


@dataclass(frozen=True)
class Layout:
    """Paths and addresses of one lab. ``ports`` maps the names above to port numbers."""

    dir: Path
    hosts: tuple[str, ...]
    bind: str
    ports: dict[str, int]
    admin_password: str
    demo_password: str
    cloud: str = DEFAULT_CLOUD
    controller: str = "controller"  # `host` of nova-api, -conductor, -scheduler

    @property
    def data(self) -> Path:
        return self.dir / DATA_DIR

    @property
    def record(self) -> Path:
        return self.dir / RECORD_FILE

    @property
    def clouds_yaml(self) -> Path:
        return self.dir / CLOUDS_FILE

    @property
    def etc(self) -> Path:
        return self.data / "etc"

    @property
    def logs(self) -> Path:
        return self.data / "logs"

    @property
    def control_socket(self) -> Path:
        """``DIR/realnova/run/control.sock``, or a short path under the temp dir if that
        would not fit in an AF_UNIX address (as the lab's other sockets)."""
        return admin_socket_path(self.dir, DATA_DIR, "control.sock")

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def url(self, service: str) -> str:
        return f"http://{self.bind}:{self.ports[service]}"

    @property
    def auth_url(self) -> str:
        return self.url("keystone") + "/v3"

    @property
    def compute_url(self) -> str:
        return self.url("nova_api") + "/v2.1"

    def db_url(self, database: str) -> str:
        return (f"mysql+pymysql://root@{LOCAL}:{self.ports['mariadb']}/{database}"
                f"?charset=utf8")

    @property
    def transport_url(self) -> str:
        return f"rabbit://guest:guest@{LOCAL}:{self.ports['rabbitmq']}/"

    def state_path(self, host: str) -> Path:
        """A nova-compute's own state_path: FakeDriverWithoutFakeNodes keeps its node uuid
        in ``$state_path/compute_id``, so computes sharing one would share one node."""
        return self.data / "compute" / host
