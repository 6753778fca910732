"""
Rows of C{jobs} read straight from the pages of a damaged database, for
L{rawsvc.spool.salvage} when SQLite itself cannot reach them (a b-tree
whose inner pages are gone, a truncated file).

The pages are those of the main file with the WAL's committed frames laid
over them (the newest version of each page); the free-list pages are left
out (they hold purged jobs).  Every live cell of every table leaf page is
decoded (overflow chains followed where they can be) and kept when it looks
like a row of C{jobs}: its column count, text where our text columns are,
a state we know.  Of two versions of one row, the one updated last wins.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from typing import Any

from rawsvc.spool.schema import FINISHED, SCHEMA

WAL_MAGIC = (0x377F0682, 0x377F0683)
STATES = frozenset(FINISHED + ("queued", "running", "waiting", "held", "interrupted"))


def job_columns() -> list[str]:
    """The columns of C{jobs} as this version creates them, in order."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(SCHEMA)
        return [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
    finally:
        conn.close()


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = 0
    for n in range(9):
        if i >= len(buf):
            raise ValueError("varint past the end")
        b = buf[i]
        i += 1
        if n == 8:
            return (value << 8) | b, i
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, i
    return value, i


def read_pages(db: str) -> tuple[int, dict[int, bytes]]:
    """(page size, {page number: bytes}) of the main file, with the WAL's committed frames over it."""
    with open(db, "rb") as f:
        data = f.read()
    size = struct.unpack(">H", data[16:18])[0] if len(data) >= 100 else 4096
    size = 65536 if size == 1 else size or 4096
    pages = {n + 1: data[n * size:(n + 1) * size] for n in range(len(data) // size)}
    try:
        with open(db + "-wal", "rb") as f:
            wal = f.read()
    except OSError:
        wal = b""
    if len(wal) >= 32 and struct.unpack(">I", wal[:4])[0] in WAL_MAGIC:
        wal_size = struct.unpack(">I", wal[8:12])[0]
        salts = wal[16:24]
        pending: dict[int, bytes] = {}
        i = 32
        while i + 24 + wal_size <= len(wal):
            number, commit = struct.unpack(">II", wal[i:i + 8])
            if wal[i + 8:i + 16] != salts:
                break
            pending[number] = wal[i + 24:i + 24 + wal_size]
            if commit:  # a commit frame: what came before it is committed
                pages.update(pending)
                pending = {}
                size = wal_size
            i += 24 + wal_size
    return size, pages


def _free_pages(header: bytes, pages: dict[int, bytes]) -> set[int]:
    free: set[int] = set()
    trunk = struct.unpack(">I", header[32:36])[0] if len(header) >= 36 else 0
    while trunk and trunk in pages and trunk not in free:
        free.add(trunk)
        page = pages[trunk]
        count = struct.unpack(">I", page[4:8])[0]
        free.update(struct.unpack(">I", page[8 + 4 * k:12 + 4 * k])[0] for k in range(min(count, len(page) // 4 - 2)))
        trunk = struct.unpack(">I", page[:4])[0]
    return free


def _payload(page: bytes, i: int, total: int, usable: int, pages: dict[int, bytes]) -> bytes:
    biggest = usable - 35
    if total <= biggest:
        return page[i:i + total]
    least = ((usable - 12) * 32 // 255) - 23
    local = least + (total - least) % (usable - 4)
    if local > biggest:
        local = least
    out = [page[i:i + local]]
    have = local
    next_page = struct.unpack(">I", page[i + local:i + local + 4])[0]
    seen: set[int] = set()
    while have < total and next_page and next_page in pages and next_page not in seen:
        seen.add(next_page)
        overflow = pages[next_page]
        chunk = overflow[4:4 + min(usable - 4, total - have)]
        out.append(chunk)
        have += len(chunk)
        next_page = struct.unpack(">I", overflow[:4])[0]
    if have < total:
        raise ValueError("overflow chain broken")
    return b"".join(out)


def _record(payload: bytes) -> list[Any]:
    header_size, i = _varint(payload, 0)
    types = []
    while i < header_size:
        t, i = _varint(payload, i)
        types.append(t)
    values: list[Any] = []
    j = header_size
    for t in types:
        if t == 0:
            values.append(None)
        elif 1 <= t <= 6:
            n = (1, 2, 3, 4, 6, 8)[t - 1]
            values.append(int.from_bytes(payload[j:j + n], "big", signed=True))
            j += n
        elif t == 7:
            values.append(struct.unpack(">d", payload[j:j + 8])[0])
            j += 8
        elif t in (8, 9):
            values.append(t - 8)
        elif t >= 12:
            n = (t - 12) // 2
            raw = payload[j:j + n]
            values.append(raw.decode("utf-8") if t % 2 else bytes(raw))
            j += n
        else:
            raise ValueError("reserved serial type")
        if j > len(payload):
            raise ValueError("record past its payload")
    return values


def _as_job(rowid: int, values: list[Any], columns: list[str]) -> dict[str, Any] | None:
    if len(values) < 15 or len(values) > len(columns) + 8:
        return None
    row = dict(zip(columns, values))
    row["seq"] = rowid
    texts = ("job_id", "trigger", "flow", "state")
    if not all(isinstance(row.get(k), str) for k in texts) or row["state"] not in STATES:
        return None
    if not isinstance(row.get("updated_at"), (int, float)):
        return None
    return row


def recover_jobs(db: str) -> list[dict[str, Any]]:
    """Every row of C{jobs} the pages of C{db} (and its WAL) still hold, by seq."""
    if not os.path.exists(db):
        return []
    usable_size, pages = read_pages(db)
    header = pages.get(1, b"")
    reserved = header[20] if len(header) > 20 else 0
    usable = usable_size - reserved
    free = _free_pages(header, pages)
    columns = job_columns()
    found: dict[int, dict[str, Any]] = {}
    for number, page in pages.items():
        if number in free:
            continue
        start = 100 if number == 1 else 0
        if len(page) < start + 8 or page[start] != 0x0D:
            continue
        count = struct.unpack(">H", page[start + 3:start + 5])[0]
        for k in range(count):
            try:
                at = struct.unpack(">H", page[start + 8 + 2 * k:start + 10 + 2 * k])[0]
                total, i = _varint(page, at)
                rowid, i = _varint(page, i)
                row = _as_job(rowid, _record(_payload(page, i, total, usable, pages)), columns)
            except (ValueError, struct.error, UnicodeDecodeError, IndexError):
                continue
            if row is not None and (rowid not in found or row["updated_at"] >= found[rowid]["updated_at"]):
                found[rowid] = row
    return [found[k] for k in sorted(found)]
