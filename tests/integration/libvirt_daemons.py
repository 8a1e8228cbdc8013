"""libvirtd instances the instance monitor tests start, each private to one test.

- ``TestDriverLibvirtd``: libvirtd with only its built-in test driver on a socket in a fresh
  directory, URI ``test+unix:///default?socket=...``; it lives in ``hagent/lab/libvirtd.py``
  (the lab runs one per simulated host) and is re-exported here for the tests.
- ``SessionQemuLibvirtd``: an unprivileged (session) libvirtd with the QEMU driver, run as
  ``nobody`` with HOME and the XDG directories in a fresh directory, so its domains, logs,
  virtlogd and QEMU processes are this test's alone (a second system libvirtd would share
  /run/libvirt and /var/lib/libvirt with anything else on the machine). QEMU runs under TCG.
  The test process (root) connects to its socket with ``qemu+unix:///session?socket=...``.

Unix socket paths must stay under 108 bytes, so the directories are short ones under /tmp,
removed at the end. Every process is stopped by its pid, never by name.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from hagent.lab.libvirtd import TestDriverLibvirtd, can_connect

__all__ = ["SessionQemuLibvirtd", "TestDriverLibvirtd", "poll"]

LIBVIRTD = "/usr/sbin/libvirtd"
QEMU = "/usr/bin/qemu-system-x86_64"
START_TIMEOUT = 20.0


def poll(check, what: str, timeout: float = START_TIMEOUT, log: Path | None = None):
    """Poll ``check()`` until truthy; fail naming ``what`` (and a log tail) if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise AssertionError(f"{what} not within {timeout} s\n{tail}")


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _terminate(pid: int, grace: float = 5.0) -> None:
    """SIGTERM ``pid`` (not a child of ours), SIGKILL after ``grace`` s; quiet if gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _stop_child(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM our child ``proc``, SIGKILL after ``grace`` s, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SessionQemuLibvirtd:
    """An unprivileged libvirtd with the QEMU driver; see the module docstring."""

    USER = "nobody"

    def __init__(self) -> None:
        for binary in (LIBVIRTD, QEMU, "/usr/sbin/virtlogd"):
            if not os.access(binary, os.X_OK):
                raise AssertionError(f"{binary} is missing: install the Debian packages "
                                     "libvirt-daemon, libvirt-daemon-driver-qemu and "
                                     "qemu-system-x86")
        if os.geteuid() != 0:
            raise AssertionError("the QEMU test starts libvirtd as 'nobody' and needs root")
        self.dir = Path(tempfile.mkdtemp(prefix="hagent-qm-"))
        self.dir.chmod(0o755)
        user = pwd.getpwnam(self.USER)
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.dir / "home"),
                    "XDG_RUNTIME_DIR": str(self.dir / "run"),
                    "XDG_CONFIG_HOME": str(self.dir / "config"),
                    "XDG_CACHE_HOME": str(self.dir / "cache")}
        for key in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
            path = Path(self.env[key])
            path.mkdir(mode=0o700)
            os.chown(path, user.pw_uid, user.pw_gid)
        self.runtime = Path(self.env["XDG_RUNTIME_DIR"]) / "libvirt"
        self.socket = self.runtime / "libvirt-sock"
        self.uri = f"qemu+unix:///session?socket={self.socket}"
        self.log = self.dir / "libvirtd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["setpriv", f"--reuid={self.USER}", "--regid=nogroup", "--clear-groups",
                 LIBVIRTD], env=self.env, cwd=self.dir, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        poll(lambda: can_connect(self.uri), "session libvirtd accepting connections",
             log=self.log)

    def qemu_pid(self, name: str) -> int:
        """The pid of domain ``name``'s QEMU process (from libvirt's pid file)."""
        path = self.runtime / "qemu" / "run" / f"{name}.pid"
        return int(poll(lambda: path.exists() and path.read_text().strip(),
                        f"pid file of domain {name}"))

    def domain_log(self, name: str) -> str:
        path = Path(self.env["XDG_CACHE_HOME"]) / "libvirt" / "qemu" / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def cleanup(self) -> None:
        """Stop QEMU processes left running, libvirtd, then the virtlogd it spawned."""
        pids = []
        for pidfile in (self.runtime / "qemu" / "run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pids.append(int(pidfile.read_text().strip()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            _stop_child(self.proc)
        virtlogd = self.runtime / "virtlogd.pid"
        if virtlogd.exists():
            with contextlib.suppress(ValueError, OSError):
                _terminate(int(virtlogd.read_text().strip()))
        shutil.rmtree(self.dir, ignore_errors=True)
