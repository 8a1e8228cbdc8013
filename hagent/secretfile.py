"""The cluster secret file: read it only if no one else can, create it so no one else can.

The secret is pysyncobj's password: whoever knows it can join the Raft log and, through
pysyncobj's pickles, run code on every voter. So a file other users may read (or
replace) is refused at start-up with the command that fixes it, rather than trusted.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

# Random bytes in a generated secret; 32 bytes = 256 bits, Fernet's key size.
SECRET_BYTES = 32


class SecretFileError(Exception):
    """The secret file cannot be used; the message names the path and the fix."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem}; {fix}")


def read_secret(path: Path) -> str:
    """The secret in ``path``, surrounding whitespace stripped.

    Raises SecretFileError if the file is missing, not a regular file, has any group or
    other permission bit (readable or writable by others), is not UTF-8, or is empty.
    The mode is checked on the opened file, so a swap between check and read is caught;
    a FIFO does not block the open.
    """
    path = Path(path)
    create = (f"create one with `(umask 077; head -c {SECRET_BYTES} /dev/urandom | base64 > {path})` "
              "and copy the same file to every node")
    return read_private(path, "secret file", create, "check the path in raft.secret_file")


def read_private(path: Path, what: str, create: str, path_fix: str) -> str:
    """The UTF-8 text of a file only its owner may read or change, stripped.

    ``what`` names the file in errors ("secret file", "key file"); ``create`` is the fix
    for a missing, empty or unreadable one; ``path_fix`` the fix when it cannot be opened.
    Same checks as ``read_secret``.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SecretFileError(path, f"{what} does not exist", create) from None
    except PermissionError:
        raise SecretFileError(path, f"{what} is not readable by this user",
                              "run the agent as the file's owner (or root)") from None
    except OSError as exc:
        raise SecretFileError(path, f"cannot open the {what}: {exc.strerror}", path_fix) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(path, f"{what} is not a regular file", create)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            who = "group and others" if mode & 0o070 and mode & 0o007 else (
                "its group" if mode & 0o070 else "other users")
            raise SecretFileError(
                path, f"{what} has mode {mode:04o}, so {who} may read or change it",
                f"run `chmod 600 {path}`")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretFileError(path, f"{what} is not UTF-8 text", create) from None
    if not text:
        raise SecretFileError(path, f"{what} is empty", create)
    return text


def write_secret(path: Path, *, overwrite: bool = False) -> str:
    """Create ``path`` with a new random secret, mode 0600, fsynced; returns the secret.

    Refuses (SecretFileError) to replace an existing file unless ``overwrite``: replacing
    a live cluster's secret splits it. The file is written under a temporary name and
    renamed, so a reader never sees a partial secret.
    """
    secret = secrets.token_urlsafe(SECRET_BYTES)
    write_private(Path(path), secret + "\n", overwrite=overwrite, what="secret file",
                  keep="keep it, or delete it first if the whole cluster gets a new one")
    return secret


def write_private(path: Path, text: str, *, overwrite: bool, what: str, keep: str) -> None:
    """Write ``text`` to ``path`` mode 0600, fsynced, atomically (temporary name + rename).

    Refuses (SecretFileError, with ``keep`` as the fix) to replace an existing file unless
    ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise SecretFileError(path, f"{what} already exists", keep)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask can only remove bits; this pins the mode exactly
        os.write(fd, text.encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
