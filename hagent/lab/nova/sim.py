"""``NovaSim``: the Python handle tests, the lab and the demo use to run and read the Nova
simulator, in this process (threads) or as a ``python -m hagent.lab.nova`` child.

Everything goes through HTTP: openstacksdk for the Nova API (``connect()``), the ``/_sim``
control API for what a real cloud has no API for (the invariant report, fault injection,
power of hosts without a lab switch, nova-compute stop/start, booting a lab's instances).
So a NovaSim attached to a simulator another process started (``attach(dir)``) works the same.

    sim = NovaSim.start(tmp_path, ["node1", "node2", "node3"], timings=Timings().scaled(0.1))
    ids = sim.boot(n_ha=4, n_non_ha=2)          # waits until ACTIVE
    conn = sim.connect()                          # openstacksdk, through DIR/clouds.yaml
    sim.power("node1", "off")
    ...
    assert sim.report()["ok"]
    sim.stop()
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import psutil

from hagent.lab.nova.model import HostSpec, Timings
from hagent.lab.nova.server import CLOUDS_FILE, DEFAULT_CLOUD, STATE_FILE, NovaServer

START_TIMEOUT = 15.0
PACKAGE_ROOT = Path(__file__).resolve().parents[3]


class NovaSimError(Exception):
    """The simulator could not be started or reached, or refused a control request."""


class NovaSim:
    """A running simulator: its directory, URL, cloud name and control secret."""

    def __init__(self, directory: Path, record: dict[str, Any], *,
                 server: NovaServer | None = None,
                 process: subprocess.Popen | None = None) -> None:
        self.dir = Path(directory)
        self.record = record
        self.url: str = record["url"]
        self.auth_url: str = record["auth_url"]
        self.cloud: str = record["cloud"]
        self.clouds_yaml = Path(record["clouds_yaml"])
        self.hosts: list[str] = list(record["hosts"])
        self._secret: str = record["secret"]
        self._server = server
        self._process = process

    # --- life -----------------------------------------------------------------------------

    @classmethod
    def start(cls, directory: Path | str, hosts: list[str], *, in_process: bool = True,
              port: int = 0, lab_dir: Path | str | None = None,
              timings: Timings | None = None, host_specs: dict[str, HostSpec] | None = None,
              cloud: str = DEFAULT_CLOUD, max_version: str | None = None,
              log_file: Path | None = None, bind: str = "127.0.0.1") -> NovaSim:
        """Start a simulator for ``hosts`` writing ``DIR/clouds.yaml`` and ``DIR/nova.json``.
        ``lab_dir``: read the hosts' power switches from ``lab_dir/power.json``. ``bind``:
        the address it listens on and writes into ``clouds.yaml`` (a netns lab's agents
        reach the root namespace only through the bridge's address, not 127.0.0.1)."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).unlink(missing_ok=True)
        lab = Path(lab_dir).resolve() if lab_dir else None
        if in_process:
            from hagent.lab.nova import versions
            server = NovaServer(list(hosts), bind=bind, port=port, lab_dir=lab, timings=timings,
                                host_specs=host_specs,
                                max_version=versions.parse(max_version) if max_version
                                else versions.MAX_VERSION)
            server.start()
            server.write_files(directory, cloud)
            return cls(directory, _read_record(directory), server=server)
        args = [sys.executable, "-m", "hagent.lab.nova", "--dir", str(directory),
                "--hosts", ",".join(hosts), "--bind", bind, "--port", str(port),
                "--cloud", cloud]
        if lab:
            args += ["--lab-dir", str(lab)]
        if timings:
            args += ["--timings", json.dumps(asdict(timings))]
        if host_specs:
            args += ["--host-specs", json.dumps({h: asdict(s) for h, s in host_specs.items()})]
        if max_version:
            args += ["--max-version", max_version]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                          env.get("PYTHONPATH")]))
        out = open(log_file or directory / "nova.log", "ab")
        with out:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not (directory / STATE_FILE).exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise NovaSimError(f"the Nova simulator did not start (exit "
                                   f"{process.poll()}); see {log_file or directory / 'nova.log'}")
            time.sleep(0.02)
        return cls(directory, _read_record(directory), process=process)

    @classmethod
    def attach(cls, directory: Path | str) -> NovaSim:
        """The simulator whose ``nova.json`` is in ``directory`` (started elsewhere)."""
        return cls(Path(directory), _read_record(Path(directory)))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it if this handle started it (in-process or child), or by its recorded pid."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        elif self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout)
            self._process = None
        else:  # started elsewhere: its recorded pid, if that is still the same process
            try:
                proc = psutil.Process(int(self.record["pid"]))
                if proc.create_time() == self.record.get("created"):
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout)
            except psutil.TimeoutExpired:
                proc.kill()
            except psutil.Error:
                pass  # already gone

    @property
    def server(self) -> NovaServer | None:
        """The in-process server (None for a child or an attached simulator)."""
        return self._server

    # --- openstacksdk ---------------------------------------------------------------------

    def connect(self, demo: bool = False, **kwargs: Any) -> Any:
        """An openstacksdk Connection built from ``DIR/clouds.yaml`` (user admin, or demo),
        as an operator's tool builds one. ``kwargs`` go to Connection (e.g.
        ``compute_api_version='2.94'``)."""
        import openstack.config
        import openstack.connection

        config = openstack.config.OpenStackConfig(config_files=[str(self.clouds_yaml)],
                                                  vendor_files=[])
        region = config.get_one(cloud=f"{self.cloud}-demo" if demo else self.cloud, **kwargs)
        return openstack.connection.Connection(config=region)

    # --- the control API ------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/_sim/{path}", data=data, method=method,
                                         headers={"X-Sim-Secret": self._secret,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise NovaSimError(f"simulator refused {method} /_sim/{path}: HTTP {exc.code} "
                               f"{exc.read()[:300]!r}") from None
        except OSError as exc:
            raise NovaSimError(f"simulator at {self.url} unreachable: {exc}") from None

    def state(self) -> dict[str, Any]:
        """hosts (power, service up, forced_down, disabled, usage), servers (host, status,
        vm/task/power state, metadata), running lists, migrations."""
        return self._call("GET", "state")

    def report(self) -> dict[str, Any]:
        """The invariant checker's verdict (``invariants.py``) plus ``evacuate_actions``
        (evacuate instance actions Nova recorded per server)."""
        return self._call("GET", "report")

    def boot(self, n_ha: int = 0, n_non_ha: int = 0, hosts: list[str] | None = None, *,
             flavor: str = "10", project: str = "admin", wait: float | None = 30.0,
             metadata: dict[str, str] | None = None) -> dict[str, list[str]]:
        """Boot HA (metadata HA_Enabled=True) and non-HA servers pinned round-robin to
        ``hosts`` (default: all); wait (``wait`` seconds at most) until all are ACTIVE."""
        out = {"ha": [], "non_ha": []}
        for key, count, ha in (("ha", n_ha, True), ("non_ha", n_non_ha, False)):
            if count:
                out[key] = self._call("POST", "boot", {
                    "count": count, "ha": ha, "hosts": hosts, "flavor": flavor,
                    "project": project, "metadata": metadata})["ids"]
        if wait:
            ids = out["ha"] + out["non_ha"]
            self.wait_for(lambda s: all(s["servers"][i]["status"] in ("ACTIVE", "ERROR")
                                        for i in ids), wait, "booted servers to be ACTIVE")
            failed = [i for i in ids if self.state()["servers"][i]["status"] != "ACTIVE"]
            if failed:
                raise NovaSimError(f"{len(failed)} server(s) did not boot: {failed[:3]}")
        return out

    def inject(self, path: str, kind: str, **rule: Any) -> dict[str, Any]:
        """Add a fault rule (``faults.py``): e.g. ``inject("/action", "error", count=2)``."""
        return self._call("POST", "faults", {"path": path, "kind": kind, **rule})["fault"]

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "faults")["faults"]

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def power(self, host: str, action: str) -> dict[str, Any]:
        """Power ``host`` on/off: through its lab switch if it has one, else in the model."""
        return self._call("POST", "power", {"host": host, "action": action})

    def stop_compute(self, host: str) -> dict[str, Any]:
        """Kill nova-compute on a powered host (its guests keep running)."""
        return self._call("POST", "compute", {"host": host, "action": "stop"})

    def start_compute(self, host: str) -> dict[str, Any]:
        return self._call("POST", "compute", {"host": host, "action": "start"})

    def wait_for(self, check: Callable[[dict[str, Any]], Any], timeout: float,
                 what: str, period: float = 0.05) -> Any:
        """Poll ``check(state())`` until truthy (its value) or raise NovaSimError."""
        deadline = time.monotonic() + timeout
        while True:
            value = check(self.state())
            if value:
                return value
            if time.monotonic() >= deadline:
                raise NovaSimError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(period)


def _read_record(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NovaSimError(f"no Nova simulator recorded in {path} (start one with "
                           f"python -m hagent.lab.nova --dir {directory} --hosts ...)") from None
    except ValueError as exc:
        raise NovaSimError(f"{path} is not valid JSON: {exc}") from None


__all__ = ["CLOUDS_FILE", "NovaSim", "NovaSimError"]
