"""The process that owns a real Nova lab: it starts everything, says READY, keeps the
hosts' nova-computes in line with their power, answers the lab's requests, and on SIGTERM
ends everything it started and removes the lab's data.

Run as ``python -m hagent.lab.realnova --dir DIR --hosts a,b,c [--lab-dir D] [--bind ADDR]``
(``RealNova.start`` runs it so). It records itself and every daemon in
``DIR/realnova.json`` as it goes (``ready`` turns true at READY), so the lab can be stopped
from any process, also if this one died (``RealNova.stop``).

Control socket (``DIR/realnova/run/control.sock``, ``layout.py``): one JSON object per line,
one answer per line, ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``. Requests (``cmd``):
``compute`` (``host``, ``action`` stop/start), ``power`` (``host``, ``action`` off/on),
``status``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from hagent.lab import records
from hagent.lab.ports import PortPicker
from hagent.lab.realnova import bootstrap, configs, daemons, failure, install, services
from hagent.lab.realnova.failure import Stopped, step
from hagent.lab.realnova.layout import (API_PORTS, DEFAULT_CLOUD, LOCAL, LOCAL_PORTS,
                                        Layout)
from hagent.lab.realnova.powerlink import PowerLink
from hagent.lab.realnova.standins import IMAGE_ID, StandIn

log = logging.getLogger(__name__)

READY_LINE = "READY"
#: How long the computes may take to be reported up once mapped.
SERVICES_UP_TIMEOUT = 60.0


class RealNovaError(Exception):
    """A real Nova lab could not be started, reached or asked; names the log to read."""


def clear_stale(directory: Path) -> None:
    """Refuse if a lab's supervisor still runs in ``directory``; else end what a dead one
    left running and remove its data (keeping ``logs/supervisor.log``, which may be ours)."""
    layout_record = directory / "realnova.json"
    try:
        record = json.loads(layout_record.read_text())
    except (FileNotFoundError, ValueError):
        record = None
    if record:
        if records.alive(record) is not None and record["pid"] != os.getpid():
            raise RealNovaError(f"a real Nova lab is already running in {directory} (pid "
                                f"{record['pid']}); stop it first (`hagent lab down`)")
        daemons.end_sessions(list(record.get("daemons", {}).values()))
        layout_record.unlink(missing_ok=True)
    remove_data(directory / "realnova", keep={"logs/supervisor.log"})


def remove_data(data: Path, keep: set[str] | None = None) -> None:
    """Remove ``data`` but the paths (relative to it) in ``keep`` and their directories:
    a lab that failed to start keeps its logs; a new start keeps its own log."""
    keep = keep or set()
    if not data.exists():
        return
    for path in sorted(data.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = path.relative_to(data).as_posix()
        # kept: a kept path, what is inside one, and the directories leading to one
        if any(k == rel or rel.startswith(k + "/") or k.startswith(rel + "/") for k in keep):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)


class Supervisor:
    """One lab in ``directory`` for ``hosts``; ``start`` it, then ``serve`` until stopped."""

    def __init__(self, directory: Path, hosts: list[str], *, lab_dir: Path | None = None,
                 bind: str = LOCAL, cloud: str = DEFAULT_CLOUD) -> None:
        if not hosts or len(set(hosts)) != len(hosts):
            raise RealNovaError(f"need distinct lab host names, got {hosts!r}")
        self.dir = directory.resolve()
        self.hosts = list(hosts)
        self.lab_dir = lab_dir.resolve() if lab_dir else None
        self.bind = bind
        self.cloud = cloud
        self.started = time.monotonic()
        self.stop_event = threading.Event()
        self._failed = threading.Event()
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        self.wanted = {host: True for host in hosts}    # stop_compute makes it False
        self.powered = {host: True for host in hosts}
        self.timings: dict[str, float] = {}
        self.ready = False
        self.layout: Layout | None = None
        self.installed: install.Installed | None = None
        self.link = PowerLink(self.hosts, self.lab_dir, self._power_changed)
        self._standins: list[StandIn] = []
        self._control: socketserver.UnixStreamServer | None = None
        self._threads: list[threading.Thread] = []
        self._ports: list[tuple[str, list[int]]] = []

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Everything, in dependency order, independent branches at once; READY when every
        compute is mapped and reported up. A failure leaves as ``failure.StepFailed``
        naming the step, and the daemon and log that tell why."""
        with step("clear a previous lab"):
            clear_stale(self.dir)
        with step("install", log_file=install.home() / "pip.log"):
            self.installed = install.ensure()
        self.timings["install"] = time.monotonic() - self.started
        with step("configure"):
            self.layout = layout = self._layout()
            configs.write_all(layout, self.installed.venv)
            self._save()
            for kind in ("image", "network"):
                self._standins.append(StandIn(kind, layout.bind, layout.ports[kind]).start())
            self._serve_control()
        with step("start epmd", "epmd", layout.log("epmd")):
            self._add("epmd", services.start_epmd(layout), layout.log("epmd"))
        with step("start rabbitmq", "rabbitmq", layout.log("rabbitmq")):
            rabbit = self._add("rabbitmq", services.spawn_rabbitmq(layout),
                               layout.log("rabbitmq"))
        with step("start mariadb", "mariadb", layout.log("mariadb")):
            self._add("mariadb", services.start_mariadb(layout), layout.log("mariadb"))
        with step("create the databases", "mariadb", layout.log("mariadb")):
            bootstrap.create_databases(layout)
        keystone_up = threading.Event()
        placement_up = threading.Event()
        bootstrap.in_parallel(
            self._branch(lambda: self._keystone(keystone_up)),
            self._branch(lambda: self._placement(keystone_up, placement_up)),
            self._branch(lambda: self._nova(rabbit, keystone_up, placement_up)))
        self.timings["services"] = time.monotonic() - self.started
        with step("create the flavors", "nova_api", layout.log("nova_api")):
            bootstrap.flavors(layout)
        with step("map the computes to cell1", None, layout.log("setup")):
            bootstrap.map_computes(layout, self.installed, self._check_alive)
        with step("wait for the computes to report up"):
            self._wait_computes_up()
        self.timings["ready"] = time.monotonic() - self.started
        self._start_link()
        with self.lock:
            self.ready = True
            self._save()
        log.info("READY in %.1f s (%s)", self.timings["ready"],
                 ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))

    def _picker(self, host: str = LOCAL) -> PortPicker:
        """Ports claimed for ``DIR/realnova``, not ``DIR``: a picker treats its own owner's
        claims as stale, so claiming for the lab directory would let this lab take a port
        ``Lab.up`` claimed for an agent that has not bound it yet."""
        return PortPicker(self.dir / "realnova", host=host)

    def _layout(self) -> Layout:
        if self.bind == LOCAL:
            ports = self._picker().pick(len(API_PORTS) + len(LOCAL_PORTS))
            self._ports.append((LOCAL, ports))
            api, local = ports[:len(API_PORTS)], ports[len(API_PORTS):]
        else:
            api = self._picker(self.bind).pick(len(API_PORTS))
            local = self._picker().pick(len(LOCAL_PORTS))
            self._ports += [(self.bind, api), (LOCAL, local)]
        return Layout(dir=self.dir, hosts=tuple(self.hosts), bind=self.bind,
                      ports={**dict(zip(API_PORTS, api)), **dict(zip(LOCAL_PORTS, local))},
                      admin_password=secrets.token_hex(16),
                      demo_password=secrets.token_hex(16), cloud=self.cloud)

    def _keystone(self, up: threading.Event) -> None:
        layout, installed = self.layout, self.installed
        with step("keystone keys and schema", None, layout.log("setup")):
            bootstrap.keystone_keys(layout, installed)
            bootstrap.keystone_schema(layout, installed)
        with step("start keystone", "keystone", layout.log("keystone")):
            proc = self._add("keystone", services.spawn_wsgi(layout, installed, "keystone"),
                             layout.log("keystone"))
            services.wait_wsgi(layout, "keystone", proc)
        with step("keystone catalog and demo user", "keystone", layout.log("keystone")):
            bootstrap.identity(layout)
            bootstrap.write_clouds(layout)
        self.timings["keystone"] = time.monotonic() - self.started
        up.set()

    def _placement(self, keystone_up: threading.Event, up: threading.Event) -> None:
        layout, installed = self.layout, self.installed
        with step("placement schema", None, layout.log("setup")):
            bootstrap.placement_schema(layout, installed)
        with step("start placement", "placement", layout.log("placement")):
            proc = self._add("placement", services.spawn_wsgi(layout, installed, "placement"),
                             layout.log("placement"))
            services.wait_wsgi(layout, "placement", proc)
        self._wait_event(keystone_up, "keystone")
        self.timings["placement"] = time.monotonic() - self.started
        up.set()

    def _nova(self, rabbit: subprocess.Popen, keystone_up: threading.Event,
              placement_up: threading.Event) -> None:
        layout, installed = self.layout, self.installed
        with step("nova schema and cells", None, layout.log("setup")):
            bootstrap.nova_schema(layout, installed)
        with step("wait for rabbitmq", "rabbitmq", layout.log("rabbitmq")):
            services.wait_rabbitmq(layout, rabbit)
        for binary in ("nova-conductor", "nova-scheduler"):
            with step(f"start {binary}", binary, layout.log(binary)):
                self._add(binary, services.spawn_nova(layout, installed, binary),
                          layout.log(binary))
        # A compute reports its resources to Placement once, at start: both must be up.
        self._wait_event(placement_up, "placement")
        for host in self.hosts:
            name = self.compute_name(host)
            with step(f"start {name}", name, layout.log(name)):
                self._start_compute(host)
        with step("start nova_api", "nova_api", layout.log("nova_api")):
            proc = self._add("nova_api", services.spawn_wsgi(layout, installed, "nova_api"),
                             layout.log("nova_api"))
            services.wait_wsgi(layout, "nova_api", proc)
        self.timings["nova"] = time.monotonic() - self.started

    def _branch(self, step: Any) -> Any:
        """``step`` that marks the start-up failed if it raises, so other branches waiting
        for it give up instead of waiting out their deadline."""
        def run() -> None:
            try:
                step()
            except BaseException:
                self._failed.set()
                raise
        return run

    def _wait_event(self, event: threading.Event, what: str) -> None:
        """Wait for another start-up branch; give up if one failed (its error is raised)."""
        deadline = time.monotonic() + 300.0
        while not event.wait(0.2):
            if self._failed.is_set() or self.stop_event.is_set():
                raise RealNovaError(f"gave up waiting for {what}: start-up failed")
            if time.monotonic() > deadline:
                raise RealNovaError(f"gave up waiting for {what} after 300 s")

    def _wait_computes_up(self) -> None:
        conn = bootstrap.connect(self.layout)
        try:
            deadline = time.monotonic() + SERVICES_UP_TIMEOUT
            while True:
                self._check_alive()
                states = {s.host: s.state for s in conn.compute.services(binary="nova-compute")}
                down = [h for h in self.hosts if states.get(h) != "up"]
                if not down:
                    return
                if time.monotonic() >= deadline:
                    raise RealNovaError(f"nova-compute not reported up on {', '.join(down)} "
                                        f"within {SERVICES_UP_TIMEOUT:g} s; see "
                                        f"{self.layout.logs}")
                time.sleep(0.2)
        finally:
            conn.close()

    def _check_alive(self) -> None:
        """RealNovaError naming the first daemon that died (a compute stopped on purpose
        is not counted)."""
        with self.lock:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RealNovaError(f"{name} exited ({proc.returncode}) during start-up; "
                                        f"see {self.entries[name]['log']}")

    # --- daemons ----------------------------------------------------------------------------

    def _add(self, name: str, proc: subprocess.Popen, log_file: Path) -> subprocess.Popen:
        with self.lock:
            self.procs[name] = proc
            self.entries[name] = daemons.entry(proc, log_file)
            self._save()
        return proc

    def _forget(self, name: str) -> None:
        with self.lock:
            self.procs.pop(name, None)
            self.entries.pop(name, None)
            self._save()

    def _save(self) -> None:
        layout = self.layout
        me = psutil.Process()
        record: dict[str, Any] = {
            "pid": me.pid, "created": me.create_time(), "ready": self.ready,
            "dir": str(self.dir), "hosts": self.hosts, "bind": self.bind, "cloud": self.cloud,
            "lab_dir": str(self.lab_dir) if self.lab_dir else None, "image_id": IMAGE_ID,
            "daemons": self.entries, "timings": self.timings,
        }
        if layout is not None:
            record.update({
                "clouds_yaml": str(layout.clouds_yaml), "auth_url": layout.auth_url,
                "url": layout.compute_url, "ports": layout.ports,
                "control_socket": str(layout.control_socket), "data_dir": str(layout.data),
                "logs": str(layout.logs)})
        records.save(self.dir / "realnova.json", record)

    @staticmethod
    def compute_name(host: str) -> str:
        return f"nova-compute-{host}"

    def _compute_running(self, host: str) -> bool:
        proc = self.procs.get(self.compute_name(host))
        return proc is not None and proc.poll() is None

    def _start_compute(self, host: str) -> None:
        with self.lock:
            if self._compute_running(host):
                return
            name = self.compute_name(host)
            self._add(name, services.spawn_nova(self.layout, self.installed, "nova-compute",
                                                host), self.layout.log(name))

    def _kill_compute(self, host: str) -> None:
        """SIGKILL the host's nova-compute (its session: nothing of it survives)."""
        with self.lock:
            name = self.compute_name(host)
            entry = self.entries.get(name)
            proc = self.procs.get(name)
            if entry is not None:
                daemons.end_sessions([entry], timeout=5.0)
            if proc is not None:
                proc.wait()
            self._forget(name)
            log.info("killed %s", name)

    def _power_changed(self, host: str, on: bool) -> None:
        with self.lock:
            self.powered[host] = on
            if not on:
                self._kill_compute(host)
            elif self.wanted[host]:
                self._start_compute(host)

    # --- requests ---------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, "ready": self.ready, "hosts": self.status()}
        host = request.get("host")
        action = request.get("action")
        if host not in self.hosts:
            return {"ok": False, "error": f"no lab host {host!r} (hosts: {self.hosts})"}
        if cmd == "compute" and action in ("stop", "start"):
            with self.lock:
                if action == "start" and not self.powered[host]:
                    return {"ok": False, "error": f"{host} is powered off; power it on"}
                self.wanted[host] = action == "start"
                if action == "stop":
                    self._kill_compute(host)
                else:
                    self._start_compute(host)
            return {"ok": True, "host": self.status()[host]}
        if cmd == "power" and action in ("on", "off"):
            if host in self.link.sockets():
                self.link.power(host, action)
            else:
                self._power_changed(host, action == "on")
            return {"ok": True, "host": self.status()[host]}
        return {"ok": False, "error": f"unknown request {request!r}"}

    def status(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            switches = self.link.sockets()
            return {host: {"powered": self.powered[host], "wanted": self.wanted[host],
                           "compute_running": self._compute_running(host),
                           "compute_pid": (self.entries.get(self.compute_name(host)) or {})
                           .get("pid"), "switch": host in switches}
                    for host in self.hosts}

    def _serve_control(self) -> None:
        supervisor = self
        path = self.layout.control_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    try:
                        answer = supervisor.handle(json.loads(line))
                    except Exception as exc:  # noqa: BLE001 - answer, do not drop the lab
                        log.exception("control request failed")
                        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    self.wfile.write(json.dumps(answer).encode() + b"\n")
                    self.wfile.flush()

        server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        server.daemon_threads = True
        self._control = server
        self._thread(server.serve_forever, "control")

    def _start_link(self) -> None:
        self.link.poll_once()  # a switch already off: its compute goes now, not later
        self._thread(lambda: self.link.run(self.stop_event), "powerlink")

    def _thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # --- stop -------------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> Path | None:
        """After a start that did not get READY: write and log why (``failure.report``),
        end everything, and move the logs where stopping does not remove them. Where."""
        log.error("start-up failed", exc_info=exc)
        with self.lock:
            text = failure.report(exc, dict(self.procs),
                                  {name: Path(e["log"]) for name, e in self.entries.items()})
        log.error("real Nova lab did not start:\n%s", text)
        logs = self.dir / "realnova" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / failure.FAILURE_FILE).write_text(text + "\n")
        self.shutdown(keep_logs=True)
        kept = failure.keep_logs(self.dir, os.getpid())
        log.error("logs kept in %s", kept)
        return kept

    def shutdown(self, keep_logs: bool = False) -> float:
        """End every daemon (SIGKILL to each session: the data goes anyway), remove the
        lab's data, record and clouds.yaml, free its ports. Seconds it took."""
        began = time.monotonic()
        self.stop_event.set()
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            self.layout.control_socket.unlink(missing_ok=True)
        for standin in self._standins:
            standin.stop()
        with self.lock:
            left = daemons.end_sessions(list(self.entries.values()))
            for proc in self.procs.values():
                try:
                    proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    left.append(proc.pid)
            if left:
                log.error("processes still alive after SIGKILL: %s", left)
            self.procs.clear()
            self.entries.clear()
        for host, ports in self._ports:
            self._picker(host).release(ports)
        remove_data(self.dir / "realnova", keep={"logs"} if keep_logs else None)
        (self.dir / "realnova.json").unlink(missing_ok=True)
        if self.layout is not None:
            self.layout.clouds_yaml.unlink(missing_ok=True)
        took = time.monotonic() - began
        log.info("stopped in %.1f s", took)
        return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hagent.lab.realnova",
        description="Run a real Nova lab (Keystone, Placement, Nova with one fake-driver "
                    "nova-compute per host) until SIGTERM; prints READY when usable.")
    parser.add_argument("--dir", type=Path, required=True,
                        help="the lab directory: clouds.yaml, realnova.json, realnova/")
    parser.add_argument("--hosts", required=True, help="comma-separated lab host names")
    parser.add_argument("--lab-dir", type=Path, default=None,
                        help="a lab whose power.json lists the hosts' power switches")
    parser.add_argument("--bind", default=LOCAL, help="address the APIs listen on")
    parser.add_argument("--cloud", default=DEFAULT_CLOUD, help="cloud name in clouds.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(args.dir, [h for h in args.hosts.split(",") if h],
                            lab_dir=args.lab_dir, bind=args.bind, cloud=args.cloud)

    def on_signal(signum: int, frame: Any) -> None:
        supervisor.stop_event.set()
        if not supervisor.ready:
            raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        supervisor.start()
    except BaseException as exc:  # noqa: BLE001 - every failure is told and stopped alike
        supervisor.fail(exc)
        return 1
    print(READY_LINE, flush=True)
    supervisor.stop_event.wait()
    supervisor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
