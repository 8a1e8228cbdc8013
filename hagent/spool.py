"""On-disk, append-only spool of notifications the log has not confirmed yet.

Safety rule 4 ("nothing accepted is lost") starts here: a notification is acknowledged to its
sender only once it is in this file *and fsynced*, so a crash of this agent right after the
acknowledgement still leaves the notification on disk, and the submitter resends it on restart.

File format (``<directory>/spool.log``): one record per line, ``<crc32 as 8 hex digits>
<space> <compact JSON>\\n``, the CRC taken over the JSON bytes. Two kinds of record:

- ``{"op": "put", "uuid": U, "record": {...}}``: a notification to deliver;
- ``{"op": "done", "uuid": U}``: a tombstone, U was confirmed (committed or refused).

A crash in the middle of a write leaves a torn tail (a partial line, or a whole line whose
CRC does not match, or zero-filled blocks after power loss). Loading drops everything after
the last valid record and truncates the file there: start-up never fails on a torn tail. A bad
record *followed by* valid ones cannot come from a torn write; it is skipped and logged.

Group commit: ``append``/``confirm`` queue their line and wait; one writer task takes
everything queued, writes it with one ``write`` and one ``fsync`` (in a worker thread so the
event loop keeps running), then resolves every waiter. While one fsync runs the next batch
accumulates, so throughput is bounded by batches per second, not records per second.
``confirm_soon`` queues a tombstone without waiting: it goes out with the next batch.

Each record is encoded to JSON once, in ``append``; the spool keeps that line (not the
dict) for every pending uuid, and ``pending()`` decodes copies from it, so what is resent
after a restart is exactly what is in memory now.

Compaction: when the file holds at least ``compact_after`` dead lines and more dead than
live ones, the writer rewrites it with only the live records (write temp, fsync, rename,
fsync the directory), between two batches so nothing is written concurrently.

All methods must be called from the one event loop thread that owns the spool.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.log"


class SpoolError(Exception):
    """The spool could not make a record durable; the caller must not acknowledge it."""


def encode_line(entry: dict[str, Any]) -> bytes:
    """One spool line: CRC32 (hex) of the JSON, a space, the JSON, a newline.

    Raises TypeError or ValueError when ``entry`` is not plain JSON (a set, an object).
    Keys keep their order (no sorting: nothing compares lines, and sorting costs per record).
    """
    body = json.dumps(entry, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The entry in ``line`` (without its newline), or None when it is torn or corrupt."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        entry = json.loads(body)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("op") not in ("put", "done") \
            or not isinstance(entry.get("uuid"), str):
        return None
    if entry["op"] == "put" and not isinstance(entry.get("record"), dict):
        return None
    return entry


def _record_of(line: bytes) -> dict[str, Any]:
    """The record of a put line this spool wrote or loaded (so known to decode)."""
    return json.loads(line[9:])["record"]


def fsync_dir(path: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    """fsync a directory so a create or rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable queue of notification records keyed by ``record[key]`` (their uuid).

    ``pending()`` lists the records not yet confirmed, in append order, at most one per uuid.
    ``fsync`` is injectable so tests can count and observe fsyncs without monkeypatching.
    """

    def __init__(self, directory: Path | str, *, key: str = "notification_uuid",
                 fsync: Callable[[int], None] = os.fsync, compact_after: int = 1000) -> None:
        self.directory = Path(directory)
        self.path = self.directory / SPOOL_FILE
        self.key = key
        self.compact_after = compact_after
        self._fsync = fsync
        # uuid -> encoded put line for every uuid appended and not confirmed (at call time).
        self._pending: dict[str, bytes] = {}
        # uuid -> encoded put line, for live records whose put is durably in the file.
        self._file_live: dict[str, bytes] = {}
        self._file_lines = 0          # valid lines in the current file
        self._size = 0                # bytes of the current file known good
        self._queue: list[tuple[bytes, str, str, asyncio.Future]] = []
        self._batch: list[tuple[bytes, str, str, asyncio.Future]] = []  # being written now
        self._durable: dict[str, asyncio.Future] = {}  # uuid -> future of its queued put
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._closed = False
        # Counters the daemon may export.
        self.fsyncs = 0
        self.batches = 0
        self.compactions = 0
        self.dropped_torn_bytes = 0
        self.corrupt_records = 0

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = not self.path.exists()
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if created:
            self._fsync(self._fd)
            fsync_dir(self.directory, self._fsync)

    # ---- reading -------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        entries: list[tuple[int, dict[str, Any], bytes]] = []  # (end offset, entry, line)
        bad_before: list[int] = []  # offsets of invalid lines
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                bad_before.append(pos)  # partial last line
                break
            entry = decode_line(data[pos:nl])
            if entry is None:
                bad_before.append(pos)
            else:
                entries.append((nl + 1, entry, data[pos:nl + 1]))
            pos = nl + 1
        good_end = entries[-1][0] if entries else 0
        self.corrupt_records = sum(1 for off in bad_before if off < good_end)
        if self.corrupt_records:
            log.error("spool %s: %d corrupt record(s) between valid ones skipped (disk "
                      "corruption, not a torn write)", self.path, self.corrupt_records)
        if good_end < len(data):
            self.dropped_torn_bytes = len(data) - good_end
            log.warning("spool %s: dropping a torn tail of %d bytes left by a crash",
                        self.path, self.dropped_torn_bytes)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                self._fsync(f.fileno())
        self._size = good_end
        for _, entry, line in entries:
            self._file_lines += 1
            uuid = entry["uuid"]
            if entry["op"] == "put":
                if uuid not in self._pending:
                    self._pending[uuid] = line
                    self._file_live[uuid] = line
            else:
                self._pending.pop(uuid, None)
                self._file_live.pop(uuid, None)

    def pending(self) -> list[dict[str, Any]]:
        """Records appended and not confirmed, oldest first, one per uuid (fresh copies,
        decoded from the lines written: plain JSON values only)."""
        return [_record_of(line) for line in self._pending.values()]

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._pending

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.pending())

    @property
    def depth(self) -> int:
        """Number of records waiting for confirmation (the spool-depth metric)."""
        return len(self._pending)

    # ---- writing -------------------------------------------------------------------------

    async def append(self, record: dict[str, Any]) -> None:
        """Add ``record``; returns once it is written and fsynced (raises SpoolError if not).

        Appending a uuid that is already pending writes nothing and waits for the earlier
        append to be durable, so the file never holds two live records for one uuid.
        """
        uuid = record.get(self.key)
        if not isinstance(uuid, str) or not uuid:
            raise ValueError(f"spool record needs a non-empty string {self.key!r}")
        if uuid in self._pending:
            fut = self._durable.get(uuid)
            if fut is not None:
                await asyncio.shield(fut)
            return
        # The one JSON encoding of this record (raises TypeError/ValueError if not plain JSON);
        # the caller may change ``record`` afterwards without changing what is spooled.
        line = encode_line({"op": "put", "uuid": uuid, "record": record})
        fut = self._enqueue(line, "put", uuid)
        self._pending[uuid] = line
        self._durable[uuid] = fut
        try:
            await asyncio.shield(fut)
        except BaseException:
            if fut.done() and fut.exception() is not None and self._pending.get(uuid) is line:
                del self._pending[uuid]
            raise

    async def confirm(self, uuid: str) -> None:
        """Mark ``uuid`` confirmed (tombstone) and wait for the tombstone's fsync.

        Raises SpoolError if it could not be written. See ``confirm_soon`` for not waiting.
        """
        fut = self.confirm_soon(uuid)
        if fut is not None:
            await asyncio.shield(fut)

    def confirm_soon(self, uuid: str) -> asyncio.Future | None:
        """Mark ``uuid`` confirmed: it leaves ``pending()`` at once, and its tombstone is
        written and fsynced with the next batch; returns that write's future (None when
        ``uuid`` is not pending: nothing to do). Nobody has to await it.

        Not waiting is safe because losing a tombstone (a crash before that fsync, a failed
        write, which the writer logs) only means the record is still pending after a restart
        and is resent; the log answers "already known", so it stays one notification. Once
        confirmed, appending the same uuid again queues a new put after the tombstone, so
        the file still holds at most one live record per uuid. Raises SpoolError when the
        spool is closed.
        """
        if uuid not in self._pending:
            return None
        fut = self._enqueue(encode_line({"op": "done", "uuid": uuid}), "done", uuid)
        del self._pending[uuid]
        return fut

    def _enqueue(self, line: bytes, op: str, uuid: str) -> asyncio.Future:
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed")
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write_loop(), name="spool-writer")
        fut = loop.create_future()
        self._queue.append((line, op, uuid, fut))
        self._wake.set()
        return fut

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                if self._closed:
                    return
                continue
            batch, self._queue = self._queue, []
            self._batch = batch
            data = b"".join(item[0] for item in batch)
            try:
                await loop.run_in_executor(None, self._write_sync, data)
            except Exception as e:  # noqa: BLE001 - every waiter must learn of the failure
                err = SpoolError(f"spool {self.path}: write/fsync failed: {e}")
                # Said here once: tombstones queued by confirm_soon have no one waiting.
                log.error("%s (%d record(s) not written)", err, len(batch))
                for _, _, uuid, fut in batch:
                    if self._durable.get(uuid) is fut:
                        del self._durable[uuid]
                    if not fut.done():
                        fut.set_exception(err)
                        fut.exception()  # mark retrieved: a caller may not await a confirm
                self._batch = []
                continue
            self._batch = []
            self.batches += 1
            for line, op, uuid, fut in batch:
                self._file_lines += 1
                if op == "put":
                    self._file_live.setdefault(uuid, line)
                    if self._durable.get(uuid) is fut:
                        del self._durable[uuid]
                else:
                    self._file_live.pop(uuid, None)
                if not fut.done():
                    fut.set_result(None)
            if self._needs_compaction():
                snapshot = list(self._file_live.values())
                try:
                    await loop.run_in_executor(None, self._compact_sync, snapshot)
                except Exception as e:  # noqa: BLE001 - the old file is still intact
                    log.error("spool %s: compaction failed, keeping the old file: %s", self.path, e)

    def _write_sync(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._fsync(self._fd)
            self.fsyncs += 1
        except BaseException:
            try:  # do not leave a partial line in front of the next batch
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(data)

    def _needs_compaction(self) -> bool:
        dead = self._file_lines - len(self._file_live)
        return dead >= self.compact_after and dead > len(self._file_live)

    def _compact_sync(self, lines: list[bytes]) -> None:
        tmp = self.directory / (SPOOL_FILE + ".tmp")
        data = b"".join(lines)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self._fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(self.directory, self._fsync)
        new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        old_fd, self._fd = self._fd, new_fd
        os.close(old_fd)
        self._size = len(data)
        self._file_lines = len(lines)
        self.compactions += 1
        log.info("spool %s compacted to %d live record(s)", self.path, len(lines))

    async def flush(self) -> None:
        """Wait until everything queued so far is durable."""
        futs = [item[3] for item in self._batch + self._queue]
        if futs:
            await asyncio.gather(*(asyncio.shield(f) for f in futs), return_exceptions=True)

    async def close(self) -> None:
        """Write what is queued, stop the writer and close the file."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        if self._writer is not None:
            self._wake.set()
            await self._writer
            self._writer = None
        os.close(self._fd)
