"""The spool: durable before acknowledged, torn tails dropped, one record per uuid."""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from hagent.spool import SPOOL_FILE, Spool, SpoolError, decode_line, encode_line


class CountingFsync:
    """An fsync that counts calls and remembers what the spool file held at each one."""

    def __init__(self, path: Path | None = None, fail: bool = False) -> None:
        self.calls = 0
        self.path = path
        self.fail = fail
        self.seen: list[bytes] = []

    def __call__(self, fd: int) -> None:
        if self.fail:
            raise OSError(5, "Input/output error")
        self.calls += 1
        if self.path is not None and self.path.exists():
            self.seen.append(self.path.read_bytes())
        os.fsync(fd)


def rec(n: int | str, **extra) -> dict:
    return {"notification_uuid": f"u-{n}", "type": "VM", "hostname": "node1",
            "payload": {"n": n}, **extra}


def run(coro):
    return asyncio.run(coro)


def test_line_roundtrip_and_crc_check() -> None:
    line = encode_line({"op": "put", "uuid": "a", "record": {"x": 1}})
    assert line.endswith(b"\n")
    assert decode_line(line[:-1]) == {"op": "put", "uuid": "a", "record": {"x": 1}}
    flipped = line[:-3] + bytes([line[-3] ^ 1]) + line[-2:-1]
    assert decode_line(flipped) is None
    assert decode_line(b"") is None
    assert decode_line(b"\0" * 40) is None


def test_append_is_in_the_file_and_fsynced_before_it_resolves(tmp_path: Path) -> None:
    fsync = CountingFsync(tmp_path / SPOOL_FILE)

    async def main() -> None:
        spool = Spool(tmp_path, fsync=fsync)
        before = fsync.calls
        await spool.append(rec(1))
        # Resolved: an fsync ran after the bytes were written, and they are in the file.
        assert fsync.calls == before + 1
        assert b'"u-1"' in fsync.seen[-1]
        assert b'"u-1"' in (tmp_path / SPOOL_FILE).read_bytes()
        await spool.close()

    run(main())


def test_pending_survives_reopen_in_order_and_confirm_removes(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        for n in range(5):
            await spool.append(rec(n))
        await spool.confirm("u-2")
        assert [r["notification_uuid"] for r in spool.pending()] == ["u-0", "u-1", "u-3", "u-4"]
        await spool.close()

    run(main())
    again = Spool(tmp_path)
    assert [r["notification_uuid"] for r in again.pending()] == ["u-0", "u-1", "u-3", "u-4"]
    assert again.pending()[0]["payload"] == {"n": 0}
    assert "u-2" not in again and len(again) == 4


@pytest.mark.parametrize("tail", [
    b"deadbeef {\"op\":\"put\",\"uu",                    # partial last line
    encode_line({"op": "put", "uuid": "u-x", "record": {}})[:-5] + b"zzzz\n",  # bad CRC, whole line
    b"\0" * 4096,                                         # zero-filled blocks after power loss
])
def test_torn_tail_is_dropped_and_truncated_not_an_error(tmp_path: Path, tail: bytes) -> None:
    async def write() -> None:
        spool = Spool(tmp_path)
        await spool.append(rec(1))
        await spool.append(rec(2))
        await spool.close()

    run(write())
    path = tmp_path / SPOOL_FILE
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)
    spool = Spool(tmp_path)
    assert [r["notification_uuid"] for r in spool.pending()] == ["u-1", "u-2"]
    assert spool.dropped_torn_bytes == len(tail)
    assert path.read_bytes() == good  # truncated back to the last valid record

    async def more() -> None:
        await spool.append(rec(3))
        await spool.close()

    run(more())
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == ["u-1", "u-2", "u-3"]


def test_corrupt_record_between_valid_ones_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / SPOOL_FILE
    lines = [encode_line({"op": "put", "uuid": f"u-{n}", "record": rec(n)}) for n in range(3)]
    lines[1] = lines[1].replace(b"u-1", b"u-9")  # CRC no longer matches
    path.write_bytes(b"".join(lines))
    spool = Spool(tmp_path)
    assert [r["notification_uuid"] for r in spool.pending()] == ["u-0", "u-2"]
    assert spool.corrupt_records == 1


def test_never_two_records_for_one_uuid(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        await asyncio.gather(*(spool.append(rec(7)) for _ in range(10)))
        await spool.append(rec(7, payload={"other": True}))
        assert len(spool.pending()) == 1
        assert spool.pending()[0]["payload"] == {"n": 7}
        await spool.close()

    run(main())
    content = (tmp_path / SPOOL_FILE).read_bytes()
    assert content.count(b'"u-7"') == 2  # the uuid inside the record and the line's key: one line
    assert len(content.splitlines()) == 1
    assert len(Spool(tmp_path).pending()) == 1


def test_duplicate_put_lines_on_disk_load_as_one(tmp_path: Path) -> None:
    line = encode_line({"op": "put", "uuid": "u-1", "record": rec(1)})
    (tmp_path / SPOOL_FILE).write_bytes(line + line)
    assert len(Spool(tmp_path).pending()) == 1


def test_reappend_after_confirm_is_pending_again(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        await spool.append(rec(1))
        await spool.confirm("u-1")
        await spool.append(rec(1))
        await spool.close()

    run(main())
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == ["u-1"]


def test_group_commit_many_appends_few_fsyncs(tmp_path: Path) -> None:
    fsync = CountingFsync()
    n = 2000

    async def main() -> None:
        spool = Spool(tmp_path, fsync=fsync)
        base = fsync.calls
        await asyncio.gather(*(spool.append(rec(i)) for i in range(n)))
        assert fsync.calls - base <= n // 20, fsync.calls
        assert spool.batches == fsync.calls - base
        await spool.close()

    run(main())
    assert len(Spool(tmp_path).pending()) == n


def test_fsync_failure_fails_the_append_and_keeps_nothing_pending(tmp_path: Path) -> None:
    fsync = CountingFsync()

    async def main() -> None:
        spool = Spool(tmp_path, fsync=fsync)
        fsync.fail = True
        with pytest.raises(SpoolError, match="fsync failed"):
            await spool.append(rec(1))
        assert spool.pending() == []
        fsync.fail = False
        await spool.append(rec(2))
        await spool.close()

    run(main())
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == ["u-2"]


def test_compaction_rewrites_with_live_records_only(tmp_path: Path) -> None:
    fsync = CountingFsync()

    async def main() -> None:
        spool = Spool(tmp_path, fsync=fsync, compact_after=50)
        for i in range(60):
            await spool.append(rec(i))
        for i in range(0, 60, 2):
            await spool.confirm(f"u-{i}")
        await spool.flush()
        for i in range(1, 40, 2):
            await spool.confirm(f"u-{i}")
        await spool.append(rec("late"))
        assert spool.compactions >= 1
        await spool.close()

    run(main())
    lines = (tmp_path / SPOOL_FILE).read_bytes().splitlines()
    assert len(lines) < 60
    assert not (tmp_path / (SPOOL_FILE + ".tmp")).exists()
    expect = [f"u-{i}" for i in range(41, 60, 2)] + ["u-late"]
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == expect


def test_append_needs_a_uuid(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        with pytest.raises(ValueError):
            await spool.append({"type": "VM"})
        await spool.close()

    run(main())


def test_spool_file_is_private(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    assert (tmp_path / "spool" / SPOOL_FILE).stat().st_mode & 0o077 == 0


def test_spooled_record_is_the_callers_at_append_time(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        record = rec(1)
        await spool.append(record)
        record["payload"]["n"] = "changed later"
        record["hostname"] = "elsewhere"
        assert spool.pending() == [rec(1)]
        spool.pending()[0]["payload"]["n"] = "a copy"  # pending() hands out copies
        assert spool.pending() == [rec(1)]
        await spool.close()

    run(main())
    assert Spool(tmp_path).pending() == [rec(1)]


def test_record_that_is_not_json_is_refused_and_not_pending(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        with pytest.raises(TypeError):
            await spool.append(rec(1, payload={"x": object()}))
        assert spool.pending() == [] and "u-1" not in spool
        await spool.append(rec(1))
        assert spool.pending() == [rec(1)]
        await spool.close()

    run(main())


def test_confirm_soon_is_pending_no_more_and_lands_with_the_next_batch(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        await spool.append(rec(1))
        await spool.append(rec(2))
        assert spool.confirm_soon("u-1") is not None
        assert "u-1" not in spool and spool.depth == 1
        assert spool.confirm_soon("u-1") is None  # not pending: nothing to do
        await spool.append(rec(3))  # queued after the tombstone: durable means it is too
        assert b'"op":"done","uuid":"u-1"' in (tmp_path / SPOOL_FILE).read_bytes()
        await spool.close()

    run(main())
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == ["u-2", "u-3"]


def test_reappend_before_the_tombstone_is_written_is_one_live_record(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        await spool.append(rec(1))
        spool.confirm_soon("u-1")
        await spool.append(rec(1))
        assert [r["notification_uuid"] for r in spool.pending()] == ["u-1"]
        await spool.close()

    run(main())
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == ["u-1"]


def test_failed_tombstone_write_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    fsync = CountingFsync()

    async def main() -> None:
        spool = Spool(tmp_path, fsync=fsync)
        await spool.append(rec(1))
        fsync.fail = True
        with caplog.at_level(logging.ERROR, logger="hagent.spool"):
            spool.confirm_soon("u-1")
            await spool.flush()
        assert "fsync failed" in caplog.text
        assert "u-1" not in spool
        fsync.fail = False
        await spool.close()

    run(main())
    # The tombstone never reached the disk: the record is resent after a restart (harmless).
    assert [r["notification_uuid"] for r in Spool(tmp_path).pending()] == ["u-1"]
