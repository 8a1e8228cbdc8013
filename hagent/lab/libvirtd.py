"""libvirtd with libvirt's test driver: the lab's simulated hypervisors (one per lab host) and
the private libvirtd the instance monitor's tests start.

``TestDriverLibvirtd`` runs ``/usr/sbin/libvirtd`` with only its built-in test driver (an
empty ``LIBVIRT_DRIVER_DIR``: ARCHITECTURE.md §7) on sockets in a directory of its own; its
URI is ``test+unix:///default?socket=...``. Domains created there through libvirt's API
(``createXML``, ``destroy``, ...) give real domain events over a real connection, as a
compute node's libvirtd does, without QEMU. It can be SIGKILLed and started again on the same
socket. The test driver forgets every domain when its last client disconnects (and when the
daemon restarts): whoever needs domains to stay holds a connection.

Why one daemon per lab host: a libvirtd has one ``test:///default`` state, shared by every
connection to it (a domain created on one connection is listed, and its events delivered, on
every other), while a ``test:///<file>`` URI gives each connection a private state no other
client sees. Hosts' domains are therefore apart only with a daemon each. ``start_hosts``
starts them for a lab and records them in ``DIR/libvirtd.json``, so ``lab down`` stops them
also from another process than the one that started them (by pid and start time, never by
name). Each costs about 20 MB RSS (docs/monitors.md, "In the lab").

Unix socket paths must stay under 108 bytes: the caller gives a short socket directory.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from hagent.lab import records

LIBVIRTD = "/usr/sbin/libvirtd"
#: Seconds a libvirtd may take to accept connections (a loaded CI machine: a few).
START_TIMEOUT = 20.0
#: Seconds between SIGTERM and SIGKILL when stopping one.
STOP_GRACE = 5.0
RECORD_FILE = "libvirtd.json"
SOCKET = "libvirt-sock"  # libvirtd's read-write socket name inside its socket directory


class LibvirtdError(Exception):
    """A test-driver libvirtd could not be started or stopped; names it and its log."""


def poll(check: Callable[[], Any], what: str, timeout: float = START_TIMEOUT,
         log: Path | None = None) -> Any:
    """Poll ``check()`` until truthy and return it; LibvirtdError naming ``what`` (and the
    tail of ``log``) if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise LibvirtdError(f"{what} not within {timeout:g} s\n{tail}")


def can_connect(uri: str) -> bool:
    """True if a libvirt connection to ``uri`` opens (it is closed again at once)."""
    import libvirt

    from hagent.monitors import libvirt_events

    libvirt_events.ensure_running()  # libvirt's errors to the debug log, not stderr
    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def uri_for(socket_dir: Path) -> str:
    """The test driver's URI on the libvirtd whose sockets are in ``socket_dir``."""
    return f"test+unix:///default?socket={Path(socket_dir) / SOCKET}"


class TestDriverLibvirtd:
    """One libvirtd with only the test driver; see the module docstring.

    ``dir`` holds its config, pid file and log (a fresh temporary directory if None, removed
    by ``cleanup``); ``socket_dir`` its sockets (default ``dir``).
    """

    __test__ = False  # not a pytest class

    def __init__(self, dir: Path | None = None, socket_dir: Path | None = None) -> None:
        self._own_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="hagent-im-")) if dir is None else Path(dir)
        self.socket_dir = Path(socket_dir) if socket_dir is not None else self.dir
        self.conf = self.dir / "libvirtd.conf"
        self.pid_file = self.dir / "libvirtd.pid"
        self.log = self.dir / "libvirtd.log"
        self.socket = self.socket_dir / SOCKET
        self.uri = uri_for(self.socket_dir)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and return once it accepts connections (LibvirtdError otherwise)."""
        for d in (self.dir, self.dir / "no-drivers", self.socket_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conf.write_text(f'unix_sock_dir = "{self.socket_dir}"\n'
                             'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                             'unix_sock_rw_perms = "0700"\nunix_sock_ro_perms = "0700"\n'
                             'unix_sock_admin_perms = "0700"\n')
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [LIBVIRTD, "--config", str(self.conf), "--pid-file", str(self.pid_file)],
                env={**os.environ, "LIBVIRT_DRIVER_DIR": str(self.dir / "no-drivers")},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            poll(lambda: self.proc.poll() is not None or can_connect(self.uri),
                 f"libvirtd (test driver) in {self.dir} accepting connections", log=self.log)
        except LibvirtdError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise LibvirtdError(f"libvirtd in {self.dir} exited with {self.proc.returncode}; "
                                f"see {self.log}:\n{self.log.read_text(errors='replace')[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to its clients."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (it removes its sockets), SIGKILL after ``STOP_GRACE`` s; reaped."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        """Stop it; remove its directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---- one per lab host ----------------------------------------------------------------------


def _record(lab_dir: Path) -> dict[str, dict[str, Any]]:
    return records.load(lab_dir / RECORD_FILE, LibvirtdError)


def _save(lab_dir: Path, record: dict[str, dict[str, Any]]) -> None:
    records.save(lab_dir / RECORD_FILE, record)


def start_hosts(lab_dir: Path, hosts: dict[str, tuple[Path, Path]]) -> dict[str, str]:
    """Start a test-driver libvirtd for each ``host -> (dir, socket_dir)``, record them, and
    return each host's URI once all accept connections. On failure the ones started are
    stopped and LibvirtdError names the host."""
    lab_dir = Path(lab_dir)
    record, uris = _record(lab_dir), {}
    try:
        for host, (dir, socket_dir) in hosts.items():
            daemon = TestDriverLibvirtd(dir, socket_dir)
            try:
                daemon.start()
            finally:
                if daemon.proc is not None:
                    record[host] = {**records.process_entry(daemon.proc.pid),
                                    "uri": daemon.uri, "log": str(daemon.log)}
                    _save(lab_dir, record)
            uris[host] = daemon.uri
    except LibvirtdError as exc:
        stop_hosts(lab_dir)
        raise LibvirtdError(f"{host}: {exc}") from None
    return uris


def stop_hosts(lab_dir: Path) -> None:
    """Stop every recorded libvirtd (SIGTERM, then SIGKILL) and forget them."""
    lab_dir = Path(lab_dir)
    procs = [p for p in (records.alive(entry) for entry in _record(lab_dir).values()) if p is not None]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, left = psutil.wait_procs(procs, timeout=STOP_GRACE)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=STOP_GRACE)
    (lab_dir / RECORD_FILE).unlink(missing_ok=True)


def pids(lab_dir: Path) -> dict[str, int]:
    """The running libvirtds of the lab in ``lab_dir``: host -> pid."""
    return {host: proc.pid for host, entry in _record(Path(lab_dir)).items()
            if (proc := records.alive(entry)) is not None}
