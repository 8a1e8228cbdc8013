"""Self-fencing drivers: what makes a host stop running VMs when its lease runs out.

Every driver promises one thing: after ``arm(deadline)`` the host is fenced no later than
``deadline`` (CLOCK_MONOTONIC seconds) unless ``arm`` is called again. The lease service
arms with the self-fence deadline each time a renewal commits (docs/fencing.md, "Timing").

- ``linux``: the kernel watchdog device. Each arm sets the device's timeout to the whole
  seconds left before the deadline (``WDIOC_SETTIMEOUT``, which also pings it), so the
  device fires at most a second early and never late. A clean stop writes the magic ``V``
  before closing, so stopping the agent does not reset the host; a self-fence just closes
  the device, and the kernel resets the host when the timeout runs out.
- ``lab``: the lab's simulated host power switch (``hagent.lab.hostpower``), armed with the
  deadline itself; it SIGKILLs the agent and empties the host's instances when it passes.
- no watchdog: ``watchdog_mode = "off"``, ``watchdog_driver = "none"`` (both need
  ``unsafe_no_fencing``), or ``automatic`` mode when the driver could not open.

Modes, as Patroni's: ``required`` refuses to start without a working driver
(``WatchdogRequired``), ``automatic`` logs a warning and runs without, ``off`` uses none.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any

from hagent.lab import hostpower

log = logging.getLogger(__name__)

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class WatchdogError(Exception):
    """A watchdog driver failed; the message names the device or socket and the fix."""


class WatchdogRequired(WatchdogError):
    """``watchdog_mode = "required"`` and the driver could not open: start-up stops."""


def linux_boot_id() -> str:
    """The kernel's id of this boot: monotonic times from another boot mean nothing here."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown-boot"


class Watchdog:
    """The driver interface; this base class is also the "no watchdog" driver.

    ``active`` says whether the driver can fence the host at all. The methods are called
    from the agent's event loop and return quickly (an ioctl, or a local socket round trip).
    """

    name = "none"
    active = False

    def __init__(self, reason: str = "no watchdog") -> None:
        self.reason = reason

    def open(self) -> None:
        """Take hold of the device; raises WatchdogError. A driver whose device starts
        counting on open arms itself for the longest safe timeout before returning."""

    def boot_id(self) -> str:
        """The boot this host is in (the lease service keys its saved deadline by it)."""
        return linux_boot_id()

    def arm(self, deadline: float) -> float | None:
        """Fence the host no later than ``deadline`` unless armed again; returns when it will
        fire (None: it cannot fire). Raises WatchdogError if the device failed."""
        return None

    def close(self) -> None:
        """Clean stop: disarm (the magic close), so the host keeps running."""

    def abandon(self) -> None:
        """Self-fence: stop feeding without disarming; the armed deadline stands."""

    def describe(self) -> str:
        return f"no watchdog ({self.reason}): this host cannot fence itself"


# --- linux -------------------------------------------------------------------------------------
# <linux/watchdog.h> ioctls, with the asm-generic _IOC layout (x86, arm, arm64, riscv, s390;
# mips, powerpc and sparc differ and are not supported): dir << 30 | size << 16 | 'W' << 8 | nr.

def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("W") << 8) | nr


_READ, _WRITE = 2, 1
_INFO_FORMAT = "=II32s"  # struct watchdog_info: options, firmware_version, identity[32]
WDIOC_GETSUPPORT = _ioc(_READ, 0, struct.calcsize(_INFO_FORMAT))
WDIOC_SETTIMEOUT = _ioc(_READ | _WRITE, 6, 4)
WDIOC_GETTIMEOUT = _ioc(_READ, 7, 4)
WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100
MAX_TIMEOUT = 65535


def settable_timeout(deadline: float, now: float) -> int:
    """The timeout (whole seconds) that makes a device pinged at ``now`` fire no later than
    ``deadline``: the seconds left, rounded down (0 when less than one is left)."""
    return min(MAX_TIMEOUT, max(0, math.floor(deadline - now)))


class LinuxWatchdog(Watchdog):
    """``/dev/watchdog`` (softdog or hardware), or a FIFO stand-in for tests.

    A FIFO at ``device`` is accepted as a stand-in because it cannot be a real watchdog:
    the driver logs a warning that nothing will reset the host, and writes what it would
    tell the device: ``timeout=<n>\\n`` for each WDIOC_SETTIMEOUT, ``1`` for a plain keepalive
    and ``V`` before a clean close. Anything else that is not a character device is refused.
    """

    name = "linux"
    active = True

    def __init__(self, device: Path, window: float) -> None:
        #: ``window`` is lease_ttl - safety_margin: the longest any arm may last.
        self.device = Path(device)
        self.window = window
        self.stand_in = False
        self.identity = ""
        self.magic_close = True
        self.fixed_timeout: int | None = None  # a device whose timeout cannot be set
        self.fires_at: float | None = None     # monotonic time the device fires unless fed
        self._fd: int | None = None

    def open(self) -> None:
        try:
            # O_NONBLOCK: opening a FIFO without a reader fails instead of hanging.
            fd = os.open(self.device, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise WatchdogError(f"cannot open watchdog device {self.device}: "
                                f"{exc.strerror or exc}{_open_hint(exc)}") from None
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            self.stand_in = True
            log.warning("watchdog device %s is a FIFO: using it as a test stand-in; NOTHING "
                        "will reset this host when its lease runs out", self.device)
        elif not stat.S_ISCHR(mode):
            os.close(fd)
            raise WatchdogError(f"watchdog device {self.device} is not a character device "
                                f"(set fencing.watchdog_device to /dev/watchdog)")
        os.set_blocking(fd, True)
        self._fd = fd
        if self.stand_in:
            self.identity = "FIFO stand-in"
            return
        try:
            self._check_device()
        except WatchdogError:
            self._magic_close()  # it started counting on open: stop it before giving up
            raise

    def _check_device(self) -> None:
        info = bytearray(struct.calcsize(_INFO_FORMAT))
        try:
            fcntl.ioctl(self._fd, WDIOC_GETSUPPORT, info, True)
        except OSError as exc:
            raise WatchdogError(f"{self.device} is not a watchdog device (WDIOC_GETSUPPORT: "
                                f"{exc.strerror}); set fencing.watchdog_device") from None
        options, _, identity = struct.unpack(_INFO_FORMAT, info)
        self.identity = identity.rstrip(b"\0").decode(errors="replace")
        self.magic_close = bool(options & WDIOF_MAGICCLOSE)
        if not self.magic_close:
            log.warning("%s cannot be disarmed (no magic close, or nowayout): a clean agent "
                        "stop will reset this host unless the agent is back within the timeout",
                        self.describe())
        if options & WDIOF_SETTIMEOUT:
            longest = settable_timeout(self.window, 0.0)
            timeout = self._set_timeout(longest)
            if timeout > self.window:
                raise WatchdogError(f"{self.describe()} rounds a {longest} s timeout up to "
                                    f"{timeout} s, beyond lease_ttl - safety_margin "
                                    f"({self.window:g} s)")
        else:
            self.fixed_timeout = self._get_timeout()
            if self.fixed_timeout >= self.window:
                raise WatchdogError(
                    f"{self.describe()} has a fixed {self.fixed_timeout} s timeout, not below "
                    f"lease_ttl - safety_margin ({self.window:g} s): it would fire after the "
                    f"leader may count the host fenced; use a device that supports "
                    f"WDIOC_SETTIMEOUT (softdog does) or raise lease_ttl")
            self._keepalive()
            timeout = self.fixed_timeout
        self.fires_at = time.monotonic() + timeout
        log.info("%s opened: %s", self.describe(),
                 f"fixed {timeout} s timeout" if self.fixed_timeout is not None
                 else f"timeout set at every renewal, at most {timeout} s")

    def arm(self, deadline: float) -> float | None:
        if self._fd is None:
            raise WatchdogError(f"watchdog device {self.device} is not open")
        now = time.monotonic()
        if self.fixed_timeout is not None:
            if now + self.fixed_timeout > deadline:
                return self.fires_at  # feeding now would fire late; the last arm stands
            self._keepalive()
            self.fires_at = time.monotonic() + self.fixed_timeout
            return self.fires_at
        timeout = settable_timeout(deadline, now)
        if timeout < 1:
            if self.fires_at is not None and self.fires_at <= deadline:
                return self.fires_at  # under a second left: the last arm fires in time
            timeout = 1
            log.warning("watchdog armed with under a second to its deadline: it fires up to "
                        "%.2f s late", 1 - (deadline - now))
        actual = self._set_timeout(timeout)
        if actual > timeout:
            log.error("%s set a %d s timeout when asked for %d s: this host may run up to %d s "
                      "past its lease", self.describe(), actual, timeout, actual - timeout)
        # Read after the ping: an upper bound of when the device fires, so the "last arm
        # fires in time" test above never trusts an arm that fires late.
        self.fires_at = time.monotonic() + actual
        return self.fires_at

    def _set_timeout(self, seconds: int) -> int:
        """WDIOC_SETTIMEOUT (the kernel pings the device with it); the timeout it took."""
        if self.stand_in:
            self._write(f"timeout={seconds}\n".encode())
            return seconds
        buf = bytearray(struct.pack("=i", seconds))
        try:
            fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, buf, True)
        except OSError as exc:
            raise WatchdogError(f"cannot set the timeout of {self.describe()}: "
                                f"{exc.strerror}") from None
        return struct.unpack("=i", buf)[0]

    def _get_timeout(self) -> int:
        buf = bytearray(4)
        try:
            fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, buf, True)
        except OSError as exc:
            raise WatchdogError(f"cannot read the timeout of {self.describe()}: "
                                f"{exc.strerror}") from None
        return struct.unpack("=i", buf)[0]

    def _keepalive(self) -> None:
        self._write(b"1")

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except OSError as exc:
            raise WatchdogError(f"cannot write to {self.describe()}: {exc.strerror}") from None

    def close(self) -> None:
        if self._fd is not None:
            self._magic_close()
            log.info("%s disarmed (magic close): the host keeps running", self.describe())

    def _magic_close(self) -> None:
        fd, self._fd = self._fd, None
        try:
            os.write(fd, b"V")
        except OSError as exc:
            log.error("cannot disarm %s (%s): it may still reset this host", self.device, exc.strerror)
        finally:
            os.close(fd)
        self.fires_at = None

    def abandon(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # no 'V': the kernel keeps counting and resets the host at fires_at

    def describe(self) -> str:
        if self.stand_in:
            return f"watchdog stand-in FIFO {self.device} (tests only: nothing resets this host)"
        return f"linux watchdog {self.device}" + (f" ({self.identity})" if self.identity else "")


def _open_hint(exc: OSError) -> str:
    import errno

    return {
        errno.ENOENT: " (no watchdog: load softdog with `modprobe softdog`, or set "
                      "fencing.watchdog_device)",
        errno.EBUSY: " (another process holds it: a second agent, or a watchdog daemon)",
        errno.EACCES: " (the agent needs write access to it: run as root)",
        errno.ENXIO: " (a FIFO stand-in with no reader)",
    }.get(exc.errno, "")


# --- lab ---------------------------------------------------------------------------------------

class LabWatchdog(Watchdog):
    """The lab's simulated host power switch (``hagent.lab.hostpower``) at ``socket``.

    ``pid`` is the process a power-off kills: the agent itself unless a test says otherwise.
    Each call is a fresh local connection, so a restarted switch needs no reconnect logic.
    """

    name = "lab"
    active = True

    def __init__(self, socket: str | Path, pid: int | None = None) -> None:
        self.socket = str(socket)
        self.pid = os.getpid() if pid is None else pid
        self._boot_id: str | None = None
        self._open = False

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return hostpower.call(self.socket, request)
        except hostpower.HostPowerError as exc:
            raise WatchdogError(str(exc)) from None

    def open(self) -> None:
        if not self.socket:
            raise WatchdogError("watchdog_driver = \"lab\" needs fencing.lab_power_socket "
                                "(the lab writes it)")
        answer = self._call({"cmd": "register", "pid": self.pid})
        self._boot_id = str(answer["boot_id"])
        self._open = True
        log.info("%s: registered pid %d", self.describe(), self.pid)

    def boot_id(self) -> str:
        return self._boot_id or linux_boot_id()

    def arm(self, deadline: float) -> float | None:
        if not self._open:
            raise WatchdogError(f"{self.describe()} is not open")
        self._call({"cmd": "arm", "deadline": deadline})
        return deadline

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._call({"cmd": "disarm"})
                log.info("%s disarmed: the host keeps running", self.describe())
            except WatchdogError as exc:
                log.error("cannot disarm: %s; it may still power the host off", exc)

    def abandon(self) -> None:
        self._open = False  # the switch keeps the armed deadline

    def describe(self) -> str:
        return f"lab power switch {self.socket}"


# --- choosing one ------------------------------------------------------------------------------

def open_watchdog(fencing: Any) -> Watchdog:
    """The open driver ``fencing`` (``hagent.config.FencingConfig``) asks for, per its mode.

    Raises WatchdogRequired when ``watchdog_mode = "required"`` and the driver cannot open,
    and WatchdogError for driver ``none`` without ``unsafe_no_fencing`` (config validation
    refuses that already; this is the second lock on the same door).
    """
    if fencing.watchdog_mode == "off":
        log.warning("UNSAFE: watchdog_mode = \"off\": this host cannot fence itself; VMs may "
                    "run here while they are evacuated elsewhere")
        return Watchdog('watchdog_mode = "off"')
    if fencing.watchdog_driver == "none":
        if not fencing.unsafe_no_fencing:
            raise WatchdogError("watchdog_driver = \"none\" needs unsafe_no_fencing = true "
                                "(labs only): without fencing a cut-off host keeps its VMs running")
        log.warning("UNSAFE: watchdog_driver = \"none\": this host cannot fence itself; VMs "
                    "may run here while they are evacuated elsewhere")
        return Watchdog('watchdog_driver = "none"')
    driver: Watchdog
    if fencing.watchdog_driver == "lab":
        driver = LabWatchdog(fencing.lab_power_socket)
    else:
        driver = LinuxWatchdog(fencing.watchdog_device, fencing.lease_ttl - fencing.safety_margin)
    try:
        driver.open()
    except WatchdogError as exc:
        if fencing.watchdog_mode == "required":
            raise WatchdogRequired(
                f"{exc}; watchdog_mode = \"required\" refuses to run without a working "
                f"watchdog (fix it, or set watchdog_mode = \"automatic\" to run without)") from None
        log.warning("no watchdog: %s; running WITHOUT self-fencing (watchdog_mode = "
                    "\"automatic\"): a cut-off host keeps its VMs running", exc)
        return Watchdog(f"unavailable: {exc}")
    return driver
