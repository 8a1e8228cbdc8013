"""The Nova simulator's process shell: an HTTP server (stdlib ThreadingHTTPServer, one thread
per connection), a ticker thread that moves simulated time, the power link, the lab control
API, and the files a client needs (``DIR/clouds.yaml``, ``DIR/nova.json``).

``DIR/nova.json`` (mode 0600) records ``url``, ``port``, ``pid``, ``auth_url``, ``cloud``,
``clouds_yaml``, ``hosts`` and the control ``secret``; ``DIR/clouds.yaml`` is a normal
openstacksdk cloud file with two clouds: ``<cloud>`` (user admin) and ``<cloud>-demo``.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import yaml

from hagent.lab.nova import identity as ks
from hagent.lab.nova import versions
from hagent.lab.nova.api import NovaApp, Reply, Request, compute_error
from hagent.lab.nova.faults import Faults
from hagent.lab.nova.model import Context, HostSpec, NovaError, NovaModel, Timings, new_request_id
from hagent.lab.nova.powerlink import PowerLink

log = logging.getLogger(__name__)

STATE_FILE = "nova.json"
CLOUDS_FILE = "clouds.yaml"
DEFAULT_CLOUD = "hagent-lab"
HA_KEY = "HA_Enabled"  # Masakari's instance metadata key for HA instances
TICK = 0.01


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # an engine opens tens of connections at once (default 5)
    app: NovaApp
    stopping: threading.Event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle holds the body until
        # the client's delayed ACK (~40 ms per request on loopback)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            reply = self.server.app.handle(self.command, self.path, headers, data)
        except Exception:  # noqa: BLE001 - a bug answers 500 as Nova does, it never kills
            log.exception("simulator error on %s %s", self.command, self.path)
            reply = compute_error(500, "Unexpected API Error (simulator bug, see its log).")
        if reply.wait:
            self.server.stopping.wait(reply.wait)
        if reply.drop:
            self.close_connection = True
            return
        body = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if reply.status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if reply.status != 204:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("%s " + format, self.address_string(), *args)


class NovaServer:
    """A simulated Nova for ``hosts``, served on ``bind:port`` (0: any free port).

    ``lab_dir``: a lab whose ``power.json`` lists the hosts' power switches (see
    ``powerlink.py``); ``timings``/``host_specs``/``max_version`` shape the model."""

    def __init__(self, hosts: list[str], *, bind: str = "127.0.0.1", port: int = 0,
                 lab_dir: Path | None = None, timings: Timings | None = None,
                 host_specs: dict[str, HostSpec] | None = None,
                 max_version: versions.Version = versions.MAX_VERSION,
                 admin_password: str | None = None, secret: str | None = None,
                 power_period: float = 0.05) -> None:
        specs = {h: (host_specs or {}).get(h, HostSpec()) for h in hosts}
        self.model = NovaModel(specs, time.monotonic(), timings=timings)
        self.identity = ks.Identity(admin_password=admin_password)
        self.faults = Faults()
        self.secret = secret or secrets.token_urlsafe(16)
        self.app = NovaApp(self.model, self.identity, self.faults, secret=self.secret,
                           max_version=max_version, control=self.control)
        self.link = PowerLink(self.model, lab_dir, power_period)
        self._bind, self._port = bind, port
        self._httpd: _HTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() first"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._bind}:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def start(self) -> None:
        self._httpd = _HTTPServer((self._bind, self._port), _Handler)
        self._httpd.app, self._httpd.stopping = self.app, self._stop
        self.app.base_url = self.url
        httpd = self._httpd
        for name, target in (("nova-http", lambda: httpd.serve_forever(poll_interval=0.05)),
                             ("nova-ticker", self._tick), ("nova-power", self._power)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("Nova simulator on %s for %s", self.url, ", ".join(self.model.hosts))

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(5.0)

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            self.model.advance(time.monotonic())

    def _power(self) -> None:
        self.link.run(self._stop)

    # --- files ----------------------------------------------------------------------------

    def write_files(self, directory: Path, cloud: str = DEFAULT_CLOUD) -> Path:
        """``clouds.yaml`` and ``nova.json`` in ``directory``; the nova.json path."""
        directory.mkdir(parents=True, exist_ok=True)
        clouds = {"clouds": {}}
        for name, user in ((cloud, self.identity.user("admin")),
                           (f"{cloud}-demo", self.identity.user("demo"))):
            clouds["clouds"][name] = {
                "auth": {"auth_url": self.auth_url, "username": user.name,
                         "password": user.password, "project_name": user.project_name,
                         "user_domain_name": "Default", "project_domain_name": "Default"},
                "region_name": self.app.region, "identity_api_version": 3,
                "interface": "public"}
        _write_private(directory / CLOUDS_FILE, yaml.safe_dump(clouds, sort_keys=False))
        record = {"url": self.url, "port": self.port, "pid": os.getpid(),
                  "created": psutil.Process().create_time(),
                  "auth_url": self.auth_url, "cloud": cloud,
                  "clouds_yaml": str(directory / CLOUDS_FILE), "hosts": list(self.model.hosts),
                  "secret": self.secret, "timings": asdict(self.model.timings),
                  "max_version": versions.text(self.app.max_version)}
        _write_private(directory / STATE_FILE, json.dumps(record, indent=2) + "\n")
        return directory / STATE_FILE

    # --- the lab control API (/_sim/...) ---------------------------------------------------

    def control(self, r: Request) -> Reply:
        route = (r.method, r.path)
        model = self.model
        if route == ("GET", "/_sim/state"):
            return Reply(200, self.state(r.now))
        if route == ("GET", "/_sim/report"):
            with model.lock:
                report = model.checker.report(time.monotonic())
                report["evacuate_actions"] = {sid: model.evacuation_count(sid)
                                              for sid in model.actions
                                              if model.evacuation_count(sid)}
            return Reply(200, report)
        if route == ("POST", "/_sim/boot"):
            return Reply(200, {"ids": self.boot(r.body or {}, r.now)})
        if route == ("GET", "/_sim/faults"):
            return Reply(200, {"faults": self.faults.describe()})
        if route == ("POST", "/_sim/faults"):
            return Reply(200, {"fault": self.faults.add(**(r.body or {})).describe()})
        if route == ("DELETE", "/_sim/faults"):
            self.faults.clear()
            return Reply(200, {"faults": []})
        if route == ("POST", "/_sim/power"):
            host, action = r.body["host"], r.body["action"]
            if action not in ("on", "off"):
                raise ValueError(f"power action must be 'on' or 'off', got {action!r}")
            if self.link.has_switch(host):
                self.link.power(host, action)
            elif action == "off":
                model.power_off(host, time.monotonic())
            else:
                model.power_on(host, time.monotonic())
            return Reply(200, self.state(time.monotonic())["hosts"][host])
        if route == ("POST", "/_sim/compute"):
            host, action = r.body["host"], r.body["action"]
            if action == "stop":
                model.stop_compute(host, time.monotonic())
            elif action == "start":
                model.start_compute(host, time.monotonic())
            else:
                raise ValueError(f"compute action must be 'stop' or 'start', got {action!r}")
            return Reply(200, self.state(time.monotonic())["hosts"][host])
        return Reply(404, {"error": f"no control route {r.method} {r.path}"})

    def state(self, now: float) -> dict[str, Any]:
        """Everything a test or the demo reads, in one consistent snapshot."""
        model = self.model
        with model.lock:
            switches = self.link.sockets()
            hosts = {h.name: {"power_on": h.power_on, "boot": h.boot, "off_at": h.off_at,
                              "compute_alive": model.compute_alive(h),
                              "service_up": model.service_is_up(h, now),
                              "forced_down": h.forced_down, "disabled": h.disabled,
                              "disabled_reason": h.disabled_reason,
                              "switch": h.name in switches, "az": model.host_az(h.name),
                              "usage": model.usage(h.name)}
                     for h in model.hosts.values()}
            servers = {s.id: {"name": s.name, "project_id": s.project_id, "host": s.host,
                              "status": s.status, "vm_state": s.vm_state,
                              "task_state": s.task_state, "power_state": s.power_state,
                              "metadata": dict(s.metadata), "fault": s.fault}
                       for s in model.servers.values()}
            return {"now": now, "hosts": hosts, "servers": servers,
                    "running": model.running(),
                    "migrations": [{"instance": m.instance, "source": m.source,
                                    "dest": m.dest, "status": m.status}
                                   for m in model.migrations]}

    def boot(self, spec: dict[str, Any], now: float) -> list[str]:
        """Boot ``count`` servers pinned round-robin to ``hosts`` (default: all), HA ones with
        metadata ``HA_Enabled=True``; as user ``project`` (admin or demo)."""
        count = int(spec.get("count", 1))
        hosts = spec.get("hosts") or list(self.model.hosts)
        unknown = [h for h in hosts if h not in self.model.hosts]
        if unknown:
            raise NovaError(404, f"Compute host {unknown[0]} could not be found.")
        user = self.identity.user(spec.get("project", "admin"))
        ctx = Context(user.id, user.project_id, True)  # the lab pins hosts for any project
        metadata = dict(spec.get("metadata") or {})
        if spec.get("ha"):
            metadata[HA_KEY] = "True"
        prefix = spec.get("name_prefix", "ha" if spec.get("ha") else "vm")
        ids = []
        with self.model.lock:
            start = len(self.model.servers)
            for i in range(count):
                host = hosts[i % len(hosts)]
                server = self.model.boot(
                    ctx, now, name=f"{prefix}-{start + i + 1}",
                    flavor_ref=str(spec.get("flavor", "10")), image_ref="cirros",
                    request_id=new_request_id(), availability_zone=f"nova:{host}",
                    metadata=metadata)
                ids.append(server.id)
        return ids


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


