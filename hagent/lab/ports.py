"""Free loopback ports for lab agents, so labs running side by side never collide.

Three things can take a port between the moment the lab picks it and the moment the agent
binds it (or between a `lab crash` and the `lab start` that rebinds the same port):

1. another lab picking at the same time. Each pick is *claimed* with a file
   ``<claim_dir>/<port>`` created with O_EXCL and naming the lab directory; other labs skip
   claimed ports. A claim lasts while that lab's ``lab.json`` exists (the lab is up, even if
   the agent using the port is crashed), or ``CLAIM_TTL`` after it was made otherwise.
2. any process's outgoing TCP connection, whose source port the kernel takes from the
   ephemeral range (``net.ipv4.ip_local_port_range``), and any ``bind(("", 0))``, which takes
   from the same range. So ports are picked *below* that range, where the kernel never hands
   out a port by itself; a candidate is kept only if binding it succeeds right now.
3. a process binding that exact port explicitly: unpreventable; ``Lab.up`` notices the
   collision and retries with fresh ports.

If no port below the ephemeral range is free, picking falls back to ``bind(0)``.
"""
from __future__ import annotations

import errno
import os
import random
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

# A claim outlives the start-up of a lab by far (start-up takes seconds) but does not block a
# port forever if its lab vanished without `down`.
CLAIM_TTL = 300.0
# Never pick below this: well-known and registered services live there.
LOWEST_PORT = 20000
DEFAULT_CLAIM_DIR = Path(tempfile.gettempdir()) / "hagent-lab-ports"


class PortError(Exception):
    """No free port could be found; the message says where it looked."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (``ip_local_port_range``), or Linux's default."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def can_bind(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing holds ``host:port`` right now (TCP, no SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortPicker:
    """Picks and claims free TCP ports on ``host`` for the lab in ``owner`` (a directory)."""

    def __init__(self, owner: Path | str, host: str = "127.0.0.1",
                 claim_dir: Path | str = DEFAULT_CLAIM_DIR, ttl: float = CLAIM_TTL,
                 rng: random.Random | None = None,
                 bindable: Callable[[int, str], bool] | None = None) -> None:
        self.owner = str(Path(owner).resolve())
        self.host = host
        self.claim_dir = Path(claim_dir)
        self.ttl = ttl
        self.rng = rng or random.Random()
        self.bindable = bindable or can_bind  # injectable: unit tests open no sockets

    def pick(self, count: int) -> list[int]:
        """``count`` distinct ports, free now and claimed for this lab."""
        self.claim_dir.mkdir(parents=True, exist_ok=True)
        low, _ = ephemeral_range()
        ports: list[int] = []
        tries = 0
        while len(ports) < count:
            tries += 1
            if tries <= 2000 and low > LOWEST_PORT:
                port = self.rng.randrange(LOWEST_PORT, low)
            elif tries <= 4000:
                port = self._kernel_port()
            else:
                raise PortError(f"found only {len(ports)} of {count} free ports on {self.host} "
                                f"after {tries} tries (claims in {self.claim_dir})")
            if port in ports or not self.bindable(port, self.host):
                continue
            if self._claim(port):
                ports.append(port)
        return ports

    def _kernel_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((self.host, 0))
            return sock.getsockname()[1]

    def _claim(self, port: int) -> bool:
        path = self.claim_dir / str(port)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._stale(path):
                    return False
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            return True
        return False

    def _stale(self, path: Path) -> bool:
        """A claim no longer protects its port: its lab is gone and it is older than the TTL."""
        try:
            owner = path.read_text().strip()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if owner == self.owner:
            return True  # our own lab re-picking (e.g. `up` again after `down`)
        if owner and (Path(owner) / "lab.json").exists():
            return False
        return age > self.ttl

    def release(self, ports: list[int]) -> None:
        """Drop this lab's claims on ``ports`` (others' claims are left alone)."""
        for port in ports:
            path = self.claim_dir / str(port)
            try:
                if path.read_text().strip() == self.owner:
                    path.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
