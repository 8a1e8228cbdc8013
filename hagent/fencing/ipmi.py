"""IPMI fencing through ipmitool over IPMI 2.0 (``lanplus``), as pacemaker's fence_ipmilan does.

Each BMC call runs one ipmitool process, as an argv list (never through a shell)::

    ipmitool -I lanplus -H <address> -p <port> -U <username> -f <password_file>
             -N 1 -R 2 -v chassis power status | chassis power off

- The password reaches ipmitool through ``-f`` (the operator's 0600 file, checked before
  every call), never on the command line, where ``ps`` shows it to every user.
- ``chassis power off`` cuts power at once; ``soft`` would ask the guest OS, which a failed
  host may never do.
- ``-N 1 -R 2``: ipmitool's own retries give up after ~6 s without an answer (measured
  here: 2, 6 and 12 s for ``-R`` 1, 2 and 3), so with the default 10 s timeout ipmitool
  usually reports its reason before the timeout kills it.
- ``-v`` puts the reason for a refused session on stderr ("RAKP 2 HMAC is invalid" is a wrong
  password), so failures can be told apart: credentials (not retried) from no answer.

A process still running at the call's timeout is killed (and reaped) before the call returns,
also when the caller cancels it.
"""
from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from hagent.fencing.credentials import read_password
from hagent.fencing.external import (FenceAuthError, FenceConfigError, FenceDriver,
                                     FenceProtocolError, FenceTimeout, FenceUnreachable)

DEFAULT_PORT = 623
# IPMI 2.0 passwords are at most 20 bytes; ipmitool -f reads no more than that.
MAX_PASSWORD_BYTES = 20
# Per-attempt timeout and retries handed to ipmitool (see the module docstring).
ATTEMPT_SECONDS = 1
RETRIES = 2

_STATUS = re.compile(r"^Chassis Power is (on|off)\s*$", re.MULTILINE)
# Lower-case stderr fragments meaning the BMC refused who we are (checked first: ipmitool
# also prints "Unable to establish IPMI v2 / RMCP+ session" after these).
_AUTH_FAILURES = ("hmac is invalid", "unauthorized name", "invalid integrity check",
                  "insufficient privilege", "invalid role")
_NO_ANSWER = ("no response from rakp", "get auth capabilities error", "unable to establish",
              "address lookup", "no route to host")
_NOISE = ("loading iana pen registry", "using best available cipher suite")


class IpmiFenceDriver(FenceDriver):
    """Fences one host through its BMC's IPMI-over-LAN interface with ipmitool."""

    def __init__(self, *, host: str, address: str, port: int, username: str, password_file: Path,
                 timeout: float, power_off_timeout: float, poll_interval: float,
                 ipmitool: str = "ipmitool") -> None:
        shown = f"[{address}]" if ":" in address else address
        super().__init__(host=host, bmc=f"ipmi://{shown}:{port}", timeout=timeout,
                         power_off_timeout=power_off_timeout, poll_interval=poll_interval)
        self.address = address
        self.port = port
        self.username = username
        self.password_file = Path(password_file)
        found = shutil.which(ipmitool)
        if found is None:
            raise self.error(FenceConfigError, f"{ipmitool} is not installed (not on PATH)",
                             "install it (`apt-get install ipmitool`)")
        self.ipmitool = found
        self._check_password()

    def _check_password(self) -> None:
        """Refuse a password file ipmitool would read differently than we check it."""
        password = read_password(self.password_file, host=self.host, bmc=self.bmc,
                                 max_bytes=MAX_PASSWORD_BYTES)
        if "\t" in password:
            raise self.error(FenceConfigError, f"{self.password_file}: the password has a tab, "
                             "where ipmitool stops reading", "set a password without tabs")

    def argv(self, *command: str) -> list[str]:
        """The ipmitool command line for ``command`` (no password in it)."""
        return [self.ipmitool, "-I", "lanplus", "-H", self.address, "-p", str(self.port),
                "-U", self.username, "-f", str(self.password_file),
                "-N", str(ATTEMPT_SECONDS), "-R", str(RETRIES), "-v", *command]

    async def _read_state(self, timeout: float) -> str:
        out = await self._run(("chassis", "power", "status"), timeout)
        match = _STATUS.search(out)
        return match.group(1) if match else "unknown"

    async def _request_off(self, timeout: float) -> None:
        await self._run(("chassis", "power", "off"), timeout)

    async def _run(self, command: tuple[str, ...], timeout: float) -> str:
        """ipmitool's stdout for ``command``; FenceError if it failed or overran ``timeout``."""
        self._check_password()  # the file may have changed since start-up
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(*command), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise self.error(FenceConfigError, f"cannot run {self.ipmitool}: {exc.strerror}",
                             "reinstall ipmitool (`apt-get install ipmitool`)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            raise self.error(FenceTimeout, f"`ipmitool {' '.join(command)}` got no answer within "
                             f"{timeout:.3g} s (killed it)",
                             "check that the BMC is up and its IPMI-over-LAN port is reachable "
                             "from this node") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise self._failure(command, err.decode(errors="replace"))
        return out.decode(errors="replace")

    def _failure(self, command: tuple[str, ...], stderr: str) -> Exception:
        lines = [line.strip().lstrip("> ") for line in stderr.splitlines()]
        lines = [line for line in lines if line and not line.lower().startswith(_NOISE)]
        said = "; ".join(lines[-3:]) or "no message"
        text = stderr.lower()
        what = f"`ipmitool {' '.join(command)}` failed: {said}"
        if any(fragment in text for fragment in _AUTH_FAILURES):
            return self.error(FenceAuthError, what,
                              f"check username {self.username!r}, the password in "
                              f"{self.password_file} and that the user may control power")
        if any(fragment in text for fragment in _NO_ANSWER):
            return self.error(FenceUnreachable, what,
                              "check the BMC address and port and that IPMI over LAN is "
                              "enabled on the BMC")
        return self.error(FenceProtocolError, what, "check the BMC's logs; "
                          "try the same ipmitool command by hand")
