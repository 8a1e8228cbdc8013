"""Install what a real Nova lab needs, once: MariaDB and RabbitMQ from Debian, and Keystone,
Placement and Nova (with gunicorn, PyMySQL, python-memcached) into a virtualenv of their own.

Idempotent and cheap when done: the Debian packages are installed only when their programs
are missing, and the virtualenv is rebuilt only when ``PINS`` change (its ``stamp`` file holds
the pinned set it was built from). The virtualenv lives in ``HAGENT_REALNOVA_HOME``
(default ``/var/cache/hagent/realnova``) ``/venv``, outside the repository and any lab
directory, so every lab and test run on a machine shares one.

No systemd runs as PID 1 on the lab machines: a Debian postinst would try to start MariaDB
and RabbitMQ and fail or leave them running. A ``policy-rc.d`` that answers 101 ("action
forbidden") for the duration of the install keeps every daemon stopped; the lab starts its
own, as root, in its own directories (``services.py``).

Run by hand: ``python -m hagent.lab.realnova.install`` (prints what it did and how long).
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HOME_ENV = "HAGENT_REALNOVA_HOME"
DEFAULT_HOME = Path("/var/cache/hagent/realnova")

#: The Python set measured to work together on this machine (REAL-NOVA.md). Changing it
#: rebuilds the virtualenv on the next install.
PINS = (
    "nova==34.0.0",
    "openstack-placement==16.0.0",
    "keystone==30.0.0",
    "gunicorn==27.0.1",
    "PyMySQL==1.2.4",
    "python-memcached==1.62",
)

#: Debian package -> a program it installs (present = installed).
DEBIAN = {
    "mariadb-server": "/usr/sbin/mariadbd",
    "rabbitmq-server": "/usr/lib/rabbitmq/bin/rabbitmq-server",
}
POLICY_RC = Path("/usr/sbin/policy-rc.d")
#: The interpreter the virtualenv is built with: the system's (Nova 34 wants 3.10-3.12).
PYTHON = "/usr/bin/python3"


class InstallError(Exception):
    """A package could not be installed; the message names it and the log to read."""


@dataclass(frozen=True)
class Installed:
    """Where things are once installed, and what this call had to do."""

    home: Path
    venv: Path
    apt_seconds: float = 0.0   # 0 when the Debian packages were already there
    pip_seconds: float = 0.0   # 0 when the virtualenv was up to date

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)


def stamp_text() -> str:
    return "\n".join((f"python={PYTHON}",) + PINS) + "\n"


def ensure(base: Path | None = None) -> Installed:
    """Install whatever is missing (under a lock: parallel test workers install once)."""
    base = base or home()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        apt = _ensure_debian(base)
        pip = _ensure_venv(base)
    return Installed(base, base / "venv", apt, pip)


def installed(base: Path | None = None) -> Installed | None:
    """The installation if it is complete and current, without installing anything."""
    base = base or home()
    venv = base / "venv"
    try:
        current = (venv / "stamp").read_text() == stamp_text()
    except OSError:
        current = False
    if current and all(Path(p).exists() for p in DEBIAN.values()):
        return Installed(base, venv)
    return None


def _ensure_debian(base: Path) -> float:
    missing = [pkg for pkg, program in DEBIAN.items() if not Path(program).exists()]
    if not missing:
        return 0.0
    started = time.monotonic()
    logfile = base / "apt.log"
    log.info("installing %s from Debian (log: %s)", ", ".join(missing), logfile)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    had_policy = POLICY_RC.exists()
    if not had_policy:
        POLICY_RC.write_text("#!/bin/sh\n# hagent realnova install: start no daemon\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        with open(logfile, "ab") as out:
            # Wait for a dpkg lock another apt-get holds instead of failing at once.
            apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
            for argv in ([*apt, "update"],
                         [*apt, "install", "-y", "--no-install-recommends", *missing]):
                rc = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env)
                if rc != 0:
                    raise InstallError(f"`{' '.join(argv)}` failed (exit {rc}); see {logfile}")
    finally:
        if not had_policy:
            POLICY_RC.unlink(missing_ok=True)
    still = [pkg for pkg in missing if not Path(DEBIAN[pkg]).exists()]
    if still:
        raise InstallError(f"{', '.join(still)} installed but its program is missing; see "
                           f"{logfile}")
    return time.monotonic() - started


def _ensure_venv(base: Path) -> float:
    venv = base / "venv"
    try:
        if (venv / "stamp").read_text() == stamp_text():
            return 0.0
    except OSError:
        pass
    started = time.monotonic()
    logfile = base / "pip.log"
    log.info("building the real-Nova virtualenv %s (log: %s)", venv, logfile)
    shutil.rmtree(venv, ignore_errors=True)
    with open(logfile, "ab") as out:
        for argv in ([PYTHON, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "pip"), "install", "--no-input", *PINS]):
            rc = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
            if rc != 0:
                raise InstallError(f"`{' '.join(argv[:4])} ...` failed (exit {rc}); see "
                                   f"{logfile}")
    (venv / "stamp").write_text(stamp_text())
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hagent.lab.realnova.install",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None,
                        help=f"where to install (default ${HOME_ENV} or {DEFAULT_HOME})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    try:
        done = ensure(args.home)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"real Nova installed in {done.home}: apt {done.apt_seconds:.1f} s, "
          f"pip {done.pip_seconds:.1f} s, total {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
