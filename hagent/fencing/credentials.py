"""BMC password files: read only if no one but their owner can read or change them.

A BMC password powers hosts off, so it lives in a file of its own (never in the config, never
on a command line) and a file other users may read is refused, with the command that fixes
it, rather than used. The checks are hagent/secretfile.py's (on the opened file, so a swap
between check and read is caught).
"""
from __future__ import annotations

from pathlib import Path

from hagent.fencing.external import FenceConfigError
from hagent.secretfile import SecretFileError, read_private


def read_password(path: Path, *, host: str, bmc: str, max_bytes: int | None = None) -> str:
    """The password in ``path``: its one line, surrounding whitespace stripped.

    Raises FenceConfigError (naming host, BMC, file and fix) if the file is missing, not a
    regular file, readable or writable by group or others, empty, not UTF-8, longer than one
    line, or over ``max_bytes`` bytes (IPMI 2.0 passwords are at most 20).
    """
    path = Path(path)
    create = (f"write the BMC password into it with `(umask 077; printf '%s\\n' 'PASSWORD' "
              f"> {path})`")
    try:
        password = read_private(path, "BMC password file", create,
                                "check password_file in this host's fencing spec")
    except SecretFileError as exc:
        raise FenceConfigError(host, bmc, f"{path}: {exc.problem}", exc.fix) from None
    if "\n" in password or "\r" in password:
        raise FenceConfigError(host, bmc, f"{path}: BMC password file has more than one line",
                               "keep only the password in it, on one line")
    if max_bytes is not None and len(password.encode()) > max_bytes:
        raise FenceConfigError(host, bmc, f"{path}: the password is longer than {max_bytes} "
                               "bytes", f"set a password of at most {max_bytes} bytes on the "
                               "BMC and in the file")
    return password
