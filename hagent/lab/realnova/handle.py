"""``RealNova``: the Python handle of a real Nova lab, with the methods of the simulator's
``NovaSim`` that the lab, the tests and the benchmarks use, so one test body runs on both.

    nova = RealNova.start(tmp_path, ["cmp1", "cmp2", "cmp3"])   # ~60 s: blocks until READY
    ids = nova.boot(n_ha=4, n_non_ha=2, hosts=["cmp1"])         # ACTIVE, pinned
    conn = nova.connect(compute_api_version="2.94")            # openstacksdk, DIR/clouds.yaml
    nova.stop_compute("cmp1")       # SIGKILL: its guests "keep running" as far as Nova knows
    nova.power("cmp2", "off")       # through its lab switch if it has one
    nova.evacuate_count(ids["ha"][0])
    nova.stop()                     # every process ended, DIR/realnova removed

The lab itself runs in a supervisor process (``supervisor.py``), which owns the daemons and
the power link; this handle talks to it through its control socket and to Nova through
openstacksdk, so a handle ``attach``-ed from another process works the same.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import psutil

from hagent.lab import records
from hagent.lab.hostpower import exchange
from hagent.lab.realnova import daemons, failure
from hagent.lab.realnova.layout import CLOUDS_FILE, DATA_DIR, DEFAULT_CLOUD, LOCAL, RECORD_FILE
from hagent.lab.realnova.supervisor import RealNovaError, clear_stale, remove_data

#: Cold start here is ~60 s; a first install adds ~40 s; a loaded CI machine more.
START_TIMEOUT = 400.0
STOP_TIMEOUT = 30.0
HA_KEY = "HA_Enabled"
PACKAGE_ROOT = Path(__file__).resolve().parents[3]
#: Parallel POST /servers of ``boot`` (Nova builds at most 10 at a time per compute).
BOOT_THREADS = 8


class RealNova:
    """A running real Nova lab: its directory, hosts, cloud name and record."""

    def __init__(self, directory: Path, record: dict[str, Any],
                 process: subprocess.Popen | None = None) -> None:
        self.dir = Path(directory).resolve()
        self.record = record
        self.url: str = record["url"]
        self.auth_url: str = record["auth_url"]
        self.cloud: str = record["cloud"]
        self.clouds_yaml = Path(record["clouds_yaml"])
        self.hosts: list[str] = list(record["hosts"])
        self.image_id: str = record["image_id"]
        self._process = process

    # --- life -------------------------------------------------------------------------------

    @classmethod
    def start(cls, directory: Path | str, hosts: list[str], *, lab_dir: Path | str | None = None,
              bind: str = LOCAL, cloud: str = DEFAULT_CLOUD,
              timeout: float = START_TIMEOUT) -> RealNova:
        """Start a real Nova lab for ``hosts`` (installing what is missing) and wait until
        READY: every nova-compute mapped to cell1 and reported up. ``lab_dir``: a lab whose
        ``power.json`` lists the hosts' power switches. ``bind``: the address the APIs listen
        on and clouds.yaml names (a netns lab's bridge address). RealNovaError if it does not
        get READY: what it started is stopped, its logs are moved to
        ``DIR/realnova-failed-<UTC time>-<pid>/`` and the error names them and tells the
        failing step, its daemon and the tail of its log (``failure.py``)."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        clear_stale(directory)
        logs = directory / DATA_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / "supervisor.log"
        args = [sys.executable, "-m", "hagent.lab.realnova", "--dir", str(directory),
                "--hosts", ",".join(hosts), "--bind", bind, "--cloud", cloud]
        if lab_dir:
            args += ["--lab-dir", str(Path(lab_dir).resolve())]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                          env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_file, "ab") as out:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                record = _read_record(directory, missing_ok=True)
                if record and record.get("ready"):
                    return cls(directory, record, process)
                if process.poll() is not None:
                    why = f"its supervisor exited {process.returncode}"
                    break
                if time.monotonic() >= deadline:
                    why = f"not READY within {timeout:g} s"
                    break
                time.sleep(0.2)
        except BaseException:
            _stop_failed(directory, process)
            raise
        kept = _stop_failed(directory, process)
        raise RealNovaError(f"the real Nova lab did not start ({why}):\n"
                            f"{_failure_text(kept)}\n(logs kept in {kept})")

    @classmethod
    def attach(cls, directory: Path | str) -> RealNova:
        """The lab whose ``realnova.json`` is in ``directory`` (started elsewhere, READY)."""
        record = _read_record(Path(directory))
        if not record.get("ready"):
            raise RealNovaError(f"the real Nova lab in {directory} is not READY yet")
        return cls(Path(directory), record)

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """End everything the lab started and remove its data (logs included), record and
        clouds.yaml. Seconds it took."""
        began = time.monotonic()
        _stop(self.dir, self.record, timeout, keep_logs=False)
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        return time.monotonic() - began

    def processes(self) -> list[psutil.Process]:
        """Every live process of the lab: the supervisor and each daemon's session."""
        record = _read_record(self.dir, missing_ok=True) or self.record
        sessions = {entry["pid"] for entry in record.get("daemons", {}).values()
                    if records.alive(entry) is not None}
        found = [p for p in [records.alive(record)] if p is not None]
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in sessions:
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    def rss_bytes(self) -> int:
        """Resident memory of every process of the lab, summed."""
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    # --- openstacksdk -----------------------------------------------------------------------

    def connect(self, demo: bool = False, **kwargs: Any) -> Any:
        """An openstacksdk Connection built from ``DIR/clouds.yaml`` (user admin, or demo),
        as an operator's tool builds one; ``kwargs`` go to openstacksdk (e.g.
        ``compute_api_version='2.94'``)."""
        import openstack.config
        import openstack.connection

        config = openstack.config.OpenStackConfig(config_files=[str(self.clouds_yaml)],
                                                  vendor_files=[])
        region = config.get_one(cloud=f"{self.cloud}-demo" if demo else self.cloud, **kwargs)
        return openstack.connection.Connection(config=region)

    def boot(self, n_ha: int = 0, n_non_ha: int = 0, hosts: list[str] | None = None, *,
             flavor: str = "10", project: str = "admin", wait: float | None = 120.0,
             metadata: dict[str, str] | None = None) -> dict[str, list[str]]:
        """Boot HA (metadata HA_Enabled=True) and non-HA servers pinned round-robin to
        ``hosts`` (default: all; availability_zone ``nova:HOST``, networks 'none'), as the
        admin in ``project`` (admin or demo); wait (``wait`` s at most) until all ACTIVE."""
        hosts = list(hosts or self.hosts)
        unknown = [h for h in hosts if h not in self.hosts]
        if unknown:
            raise RealNovaError(f"no lab host {unknown[0]!r} (hosts: {self.hosts})")
        conn = self.connect(project_name=project) if project != "admin" else self.connect()
        try:
            start = sum(1 for _ in conn.compute.servers(all_projects=True))
            plan = []
            for key, count, ha in (("ha", n_ha, True), ("non_ha", n_non_ha, False)):
                meta = dict(metadata or {})
                if ha:
                    meta[HA_KEY] = "True"
                prefix = "ha" if ha else "vm"
                for i in range(count):
                    start += 1
                    plan.append((key, {"name": f"{prefix}-{start}", "image_id": self.image_id,
                                       "flavor_id": flavor, "networks": "none",
                                       "availability_zone": f"nova:{hosts[i % len(hosts)]}",
                                       "metadata": meta}))
            with ThreadPoolExecutor(max_workers=BOOT_THREADS) as pool:
                created = list(pool.map(lambda item: conn.compute.create_server(**item[1]).id,
                                        plan))
            out: dict[str, list[str]] = {"ha": [], "non_ha": []}
            for (key, _), server_id in zip(plan, created):
                out[key].append(server_id)
            if wait:
                self._wait_active(conn, created, wait)
            return out
        finally:
            conn.close()

    @staticmethod
    def _wait_active(conn: Any, ids: list[str], timeout: float) -> None:
        pending = set(ids)
        deadline = time.monotonic() + timeout
        while pending:
            for server in conn.compute.servers(all_projects=True, details=True):
                if server.id in pending and server.status in ("ACTIVE", "ERROR"):
                    if server.status == "ERROR":
                        raise RealNovaError(f"server {server.id} did not boot: {server.fault}")
                    pending.discard(server.id)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise RealNovaError(f"{len(pending)} server(s) not ACTIVE within {timeout:g} "
                                    f"s: {sorted(pending)[:3]}")
            time.sleep(0.2)

    def instance_actions(self, server_id: str) -> list[dict[str, Any]]:
        """Nova's instance actions of a server (newest first), as plain dicts."""
        conn = self.connect()
        try:
            return [{"action": a.action, "request_id": a.request_id,
                     "start_time": a.start_time, "message": a.message}
                    for a in conn.compute.server_actions(server_id)]
        finally:
            conn.close()

    def evacuate_count(self, server_id: str) -> int:
        """How many times Nova recorded an ``evacuate`` action for the server."""
        return sum(1 for a in self.instance_actions(server_id) if a["action"] == "evacuate")

    # --- the lab's hosts --------------------------------------------------------------------

    def _call(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        path = self.record["control_socket"]
        try:
            data = exchange(path, request, timeout)
        except OSError as exc:
            raise RealNovaError(f"the real Nova lab's supervisor ({path}) is unreachable: "
                                f"{exc}") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise RealNovaError(f"no answer from {path} to {request!r}") from None
        if not answer.get("ok"):
            raise RealNovaError(f"the real Nova lab refused {request!r}: {answer.get('error')}")
        return answer

    def status(self) -> dict[str, dict[str, Any]]:
        """Per lab host: powered, wanted, compute_running, compute_pid, switch."""
        return self._call({"cmd": "status"})["hosts"]

    def stop_compute(self, host: str) -> dict[str, Any]:
        """SIGKILL the host's nova-compute (its guests keep running as far as Nova knows);
        it stays stopped, also across power cycles, until ``start_compute``."""
        return self._call({"cmd": "compute", "host": host, "action": "stop"})["host"]

    def start_compute(self, host: str) -> dict[str, Any]:
        """Start the host's nova-compute again (returns before it reports up)."""
        return self._call({"cmd": "compute", "host": host, "action": "start"})["host"]

    def power(self, host: str, action: str) -> dict[str, Any]:
        """Power ``host`` "off" or "on": through its lab switch if it has one, else in the
        lab alone. Off SIGKILLs its nova-compute; on starts it again."""
        return self._call({"cmd": "power", "host": host, "action": action})["host"]

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str,
                 period: float = 0.2) -> Any:
        """Poll ``check()`` until truthy (its value) or raise RealNovaError."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise RealNovaError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(period)


def stop_lab(directory: Path | str, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the real Nova lab recorded in ``directory``, READY or not, from any process, and
    remove its data. False if none was recorded there."""
    directory = Path(directory).resolve()
    record = _read_record(directory, missing_ok=True)
    if record is None:
        remove_data(directory / DATA_DIR)
        return False
    _stop(directory, record, timeout, keep_logs=False)
    return True


def _stop(directory: Path, record: dict[str, Any], timeout: float, keep_logs: bool) -> None:
    """SIGTERM the supervisor, which ends every daemon and removes the data; then make sure
    of it from the record (the supervisor may be dead or too slow)."""
    supervisor = records.alive(record) if "created" in record else _pid(record["pid"])
    if supervisor is not None:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout)
        except psutil.TimeoutExpired:
            supervisor.kill()
    latest = _read_record(directory, missing_ok=True) or record
    daemons.end_sessions(list(latest.get("daemons", {}).values()))
    remove_data(directory / DATA_DIR, keep={"logs"} if keep_logs else None)
    (directory / RECORD_FILE).unlink(missing_ok=True)
    (directory / CLOUDS_FILE).unlink(missing_ok=True)


def _stop_failed(directory: Path, process: subprocess.Popen) -> Path | None:
    """End a start that did not get READY (on SIGTERM its supervisor writes why, ends what
    it started and moves its logs aside); make sure of it. Where the logs were kept."""
    _stop(directory, _read_record(directory, missing_ok=True) or {"pid": process.pid},
          STOP_TIMEOUT, keep_logs=True)
    process.wait()
    kept = failure.keep_logs(directory, process.pid)  # the supervisor's, or ours if killed
    remove_data(directory / DATA_DIR)
    return kept


def _failure_text(kept: Path | None) -> str:
    """The supervisor's report of why, or the tail of its log if it wrote none."""
    if kept is None:
        return "(no logs)"
    report = kept / failure.FAILURE_FILE
    if report.exists():
        return report.read_text().rstrip()
    return "\n".join(failure.tail(kept / "supervisor.log", 30))


def _pid(pid: int) -> psutil.Process | None:
    """Our own child that has not written its record yet."""
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _read_record(directory: Path, missing_ok: bool = False) -> dict[str, Any] | None:
    path = Path(directory) / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RealNovaError(f"no real Nova lab recorded in {path} (start one with python -m "
                            f"hagent.lab.realnova --dir {directory} --hosts ...)") from None
    except ValueError as exc:
        if missing_ok:
            return None  # being replaced
        raise RealNovaError(f"{path} is not valid JSON: {exc}") from None
