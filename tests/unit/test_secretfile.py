"""read_secret refuses files others may read; write_secret makes 0600 files."""
from __future__ import annotations

import os
import stat

import pytest

from hagent.secretfile import SecretFileError, read_secret, write_secret


def make(path, text, mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_reads_and_strips(tmp_path):
    assert read_secret(make(tmp_path / "s", "  abc123\n\n")) == "abc123"


def test_missing_file_names_path_and_fix(tmp_path):
    path = tmp_path / "missing"
    with pytest.raises(SecretFileError) as info:
        read_secret(path)
    message = str(info.value)
    assert str(path) in message and "does not exist" in message and "umask 077" in message
    assert info.value.path == path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o660, 0o666, 0o700 | 0o004])
def test_group_or_world_access_refused_with_chmod_fix(tmp_path, mode):
    path = make(tmp_path / "s", "abc", mode)
    with pytest.raises(SecretFileError) as info:
        read_secret(path)
    assert f"mode {mode:04o}" in str(info.value)
    assert info.value.fix == f"run `chmod 600 {path}`"


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_accepted(tmp_path, mode):
    assert read_secret(make(tmp_path / "s", "abc", mode)) == "abc"


@pytest.mark.parametrize("text", ["", "  \n\t\n"])
def test_empty_refused(tmp_path, text):
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret(make(tmp_path / "s", text))


def test_directory_refused(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret(directory)


def test_not_utf8_refused(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"\xff\xfe")
    path.chmod(0o600)
    with pytest.raises(SecretFileError, match="not UTF-8"):
        read_secret(path)


def test_write_secret_creates_0600_random_secret(tmp_path):
    old = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        path = tmp_path / "cluster.secret"
        secret = write_secret(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 40
    assert read_secret(path) == secret
    assert write_secret(tmp_path / "other") != secret
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_secret_refuses_to_replace_unless_asked(tmp_path):
    path = tmp_path / "cluster.secret"
    first = write_secret(path)
    with pytest.raises(SecretFileError, match="already exists"):
        write_secret(path)
    assert read_secret(path) == first
    second = write_secret(path, overwrite=True)
    assert second != first and read_secret(path) == second


def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret(fifo)
