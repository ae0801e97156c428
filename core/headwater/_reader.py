"""Reading records out of a journal: the queries, and a reader that never writes.

The queries take any connection inside a read transaction: the journal's own
(:class:`~headwater.SQLiteStore`) or a read-only one (:class:`JournalReader`,
and :class:`PlainReader`, what ``headwater status`` uses). "Latest first" is by creation time, then by
id: ``ORDER BY created_at DESC, id DESC``, which the indexes of schema 3
serve (a page reads only its own rows); a journal of an older schema, which
a read-only reader cannot migrate, gives the same answers more slowly.

A row that is not a record (a bit flip, a hand edit) is never an error of a
query: it is logged as a warning naming the journal, the row's id and why,
and left out; nothing here changes the journal.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from headwater._errors import StoreError, UnknownDownloadError
from headwater._plain import TERMINAL, decode_plain
from headwater._schema import at_rest, check, connect, failure, snapshot

# Records, and attrs with them, are imported where they are made: PlainReader (what
# `headwater status` reads through) needs neither.
if TYPE_CHECKING:
    from headwater._records import Record, State

_T = TypeVar("_T")
_R = TypeVar("_R")

#: A record as :func:`headwater._plain.decode_plain` reads it: its fields as JSON values.
Plain = dict[str, object]

#: A row as the queries return it: id, created_at and data. The id and the data
#: come as bytes, so that a row whose text is not UTF-8 is one undecodable row
#: and not an error of the query.
Row = tuple[bytes, object, bytes]

#: Where a page ends: the (created_at, id) of its last row (or any place); the next page
#: holds the rows below it.
Cursor = tuple[object, bytes | str]

#: The columns of a :data:`Row`.
ROW = "CAST(id AS BLOB), created_at, CAST(data AS BLOB)"

#: Records a streamed read decodes, and holds, at a time.
CHUNK = 1000

#: The condition of a terminal record's row.
ENDED = "state NOT IN ('queued', 'running')"

#: The condition of a row whose id starts or ends with the parameter ``:key``.
NAMED = "substr(id, 1, length(:key)) = :key OR substr(id, -length(:key)) = :key"


def select_page(
    conn: sqlite3.Connection,
    *,
    ended_only: bool,
    states: Collection[State] | Collection[str] | None,
    sources: Collection[str] | None,
    below: Cursor | None,
    limit: int,
    ascending: bool = False,
) -> list[Row]:
    """Up to ``limit`` rows, latest first, below the cursor ``below`` if given.

    With ``ascending``, oldest first and above the cursor instead. Only
    those whose state is one of ``states`` (State members, or their values)
    and whose source one of
    ``sources`` (None: any), and with ``ended_only`` only terminal ones. One
    statement: a part per state and source asked for, each walking its
    index from the cursor on, merged. Raises sqlite3.Error.
    """
    keys: list[str | None] | None = None
    if states is not None:
        values = [s if isinstance(s, str) else s.value for s in states]
        keys = [v for v in values if v in TERMINAL or not ended_only]
    if limit <= 0 or keys == [] or (sources is not None and not sources):
        return []
    parts: list[str] = []
    params: list[object] = []
    past, order = (">", "ASC") if ascending else ("<", "DESC")
    names: list[str | None] = [None] if sources is None else list(sources)
    for state in keys or [None]:
        for source in names:
            where = [ENDED] if ended_only and state is None else []
            if state is not None:
                where.append("state = ?")
                params.append(state)
            if source is not None:
                where.append("source = ?")
                params.append(source)
            if below is not None:
                where.append(f"(created_at, id) {past} (?, CAST(? AS TEXT))")
                params.extend(below)
            parts.append(
                f"SELECT {ROW} FROM records WHERE {' AND '.join(where) or 'true'} "
                f"ORDER BY created_at {order}, id {order} LIMIT ?"
            )
            params.append(limit)
    if len(parts) == 1:
        return conn.execute(parts[0], params).fetchall()
    merged = " UNION ALL ".join(f"SELECT * FROM ({part})" for part in parts)
    return conn.execute(f"{merged} ORDER BY 2 {order}, 1 {order} LIMIT ?", [*params, limit]).fetchall()


def find_cursor(conn: sqlite3.Connection, download_id: str) -> Cursor | None:
    """The cursor of the row ``download_id`` (the rows below it come after it, latest first), or None."""
    found = conn.execute("SELECT created_at, CAST(id AS BLOB) FROM records WHERE id = ?", (download_id,))
    row = found.fetchone()
    return None if row is None else (row[0], row[1])


def select_one(conn: sqlite3.Connection, download_id: str) -> bytes | None:
    """The data of the row ``download_id``, or None if there is none."""
    row = conn.execute("SELECT CAST(data AS BLOB) FROM records WHERE id = ?", (download_id,)).fetchone()
    return None if row is None else bytes(row[0])


def count_matches(conn: sqlite3.Connection, key: str) -> tuple[int, str | None]:
    """(how many, the first): the ids that are ``key``, or else that start or end with it.

    An id equal to ``key`` is the one match. Otherwise every id is looked at
    once (a scan of the smallest index); nothing but the count and the first
    id is kept.
    """
    if conn.execute("SELECT 1 FROM records WHERE id = ?", (key,)).fetchone() is not None:
        return 1, key
    found = conn.execute(f"SELECT CAST(id AS BLOB) FROM records WHERE {NAMED}", {"key": key})
    count, first = 0, None
    for (row_id,) in found:
        count += 1
        first = first or row_id.decode("utf-8", "replace")
    return count, first


def select_named_ended(conn: sqlite3.Connection, key: str, limit: int) -> list[Row]:
    """The rows of the ended records ``key`` names (see :meth:`~headwater.RecordStore.matching`).

    The ids that start or end with ``key`` are found in one scan of the
    smallest index; only their rows are read.
    """
    exact = conn.execute(f"SELECT {ROW} FROM records WHERE id = ? AND {ENDED}", (key,)).fetchall()
    if exact:
        return exact
    return conn.execute(
        f"SELECT {ROW} FROM records WHERE id IN (SELECT id FROM records WHERE {NAMED}) AND {ENDED} "
        "ORDER BY created_at DESC, id DESC LIMIT :limit",
        {"key": key, "limit": limit},
    ).fetchall()


def stream(
    read: Callable[[Cursor | None, int], list[Row]],
    path: Path,
    *,
    below: Cursor | None = None,
    limit: int | None = None,
) -> Iterator[Record]:
    """The records of page after page, ``read(cursor, size)`` each, from the cursor ``below`` down.

    Pages of :data:`CHUNK` rows at the most (fewer to stop at ``limit``
    rows, None: no limit), each decoded as by :func:`decode_rows` and let
    go of before the next is read; a short page is the last.
    """
    from headwater._codec import decode

    return _stream(read, path, decode, below=below, limit=limit)


def _stream(
    read: Callable[[Cursor | None, int], list[Row]],
    path: Path,
    decode: Callable[[bytes], _R],
    *,
    below: Cursor | None,
    limit: int | None,
) -> Iterator[_R]:
    """As :func:`stream`, each row decoded by ``decode``."""
    left = limit
    while left is None or left > 0:
        size = CHUNK if left is None else min(left, CHUNK)
        rows = read(below, size)
        yield from _decoded(path, rows, decode)
        if len(rows) < size:
            return
        below = (rows[-1][1], rows[-1][0])
        if left is not None:
            left -= len(rows)


def decode_rows(path: Path, rows: Iterable[Row]) -> list[Record]:
    """The records of ``rows``, in order; a row that is not a record is logged and left out."""
    from headwater._codec import decode

    return _decoded(path, rows, decode)


def _decoded(path: Path, rows: Iterable[Row], decode: Callable[[bytes], _R]) -> list[_R]:
    """``decode`` of each of ``rows``, in order; a row it refuses is logged and left out."""
    records = []
    for row_id, _, data in rows:
        try:
            records.append(decode(data))
        except (ValueError, TypeError, RecursionError) as exc:
            import logging  # here: a status that meets no such row never imports it

            logging.getLogger("headwater.store").warning(
                "journal %s: record %s cannot be read (%s), so it is left out; it stays in the journal "
                "as it is: %.120r",
                path,
                row_id.decode("utf-8", "replace"),
                exc,
                data,
            )
    return records


def decode_or_fail(path: Path, download_id: str, data: bytes) -> Record:
    """The record ``data`` holds; StoreError naming the journal and the id if it is not one."""
    from headwater._codec import decode

    return _decoded_or_fail(path, download_id, data, decode)


def _decoded_or_fail(path: Path, download_id: str, data: bytes, decode: Callable[[bytes], _R]) -> _R:
    """``decode(data)``; StoreError naming the journal and the id if it refuses it."""
    try:
        return decode(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StoreError(f"journal {path}: record {download_id} cannot be read ({exc})") from exc


class Reader(Generic[_R]):
    """The journal at ``path``, read-only, each row as ``decode`` makes it: beside any running engines.

    Reading writes nothing. Each read is one read transaction. A journal
    whose commits are all in its file (no process has it open, or none has
    written since it did) is read from that file alone, without locks, so a
    full disk or a read-only folder does not stop it; that read counts only
    if the file did not change meanwhile. Else it is read beside the
    processes writing it, through SQLite's WAL (WAL readers never block the
    writer). A missing file holds no records.

    Every method raises StoreError, naming the file, for a damaged, foreign
    or newer file, and for one that cannot be read, saying why (a full disk,
    a permission, a lock held too long). Any thread; no state is kept
    between calls. ``decode`` takes a row's data and raises ValueError,
    TypeError or RecursionError for one that is not a record.
    """

    def __init__(self, path: Path, decode: Callable[[bytes], _R]) -> None:
        self.path = path
        self._decode = decode

    def get(self, download_id: str) -> _R | None:
        """The record ``download_id``, in whatever state, or None; StoreError if its row is not a record."""
        data = self._read(lambda conn: select_one(conn, download_id), None)
        return None if data is None else _decoded_or_fail(self.path, download_id, data, self._decode)

    def match(self, key: str) -> tuple[int, _R | None]:
        """How many downloads ``key`` names (an id, or else the start or end of ids), and the one if one.

        StoreError if that one's row is not a record.
        """
        none: tuple[int, str | None] = (0, None)
        count, first = self._read(lambda conn: count_matches(conn, key), none)
        if count != 1 or first is None:
            return count, None
        return 1, self.get(first)

    def records(
        self,
        *,
        states: Collection[State] | Collection[str] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> Iterator[_R]:
        """The records, latest first, streamed: at most :data:`CHUNK` of them held at a time.

        Only those in one of ``states`` and of one of ``sources`` (None:
        all), created before the download ``before`` if given, at most
        ``limit`` (None: all). Each chunk is its own read, so a record
        written meanwhile may show in its new state or not at all if it is
        newer than the chunk; none shows twice. Raises UnknownDownloadError
        if ``before`` is not in the journal.
        """
        below: Cursor | None = None
        if before is not None:
            below = self._read(lambda conn: find_cursor(conn, before), None)
            if below is None:
                raise UnknownDownloadError(before)

        def read(below: Cursor | None, size: int) -> list[Row]:
            page = functools.partial(
                select_page, ended_only=False, states=states, sources=sources, below=below, limit=size
            )
            return self._read(page, [])

        return _stream(read, self.path, self._decode, below=below, limit=limit)

    def all_oldest_first(self) -> list[_R]:
        """Every record, oldest first, in one read transaction (for small journals: it holds them all)."""
        rows: list[Row] = self._read(
            lambda conn: conn.execute(f"SELECT {ROW} FROM records ORDER BY created_at, id").fetchall(), []
        )
        return _decoded(self.path, rows, self._decode)

    def _read(self, read: Callable[[sqlite3.Connection], _T], empty: _T) -> _T:
        """``read(conn)`` in one read transaction; ``empty`` for a missing or new (schema 0) file."""
        try:
            if not self.path.exists():
                return empty
        except OSError as exc:
            raise StoreError(f"cannot read journal {self.path}: {exc}") from exc
        before = at_rest(self.path)
        if before is not None:
            try:
                result = self._read_on(read, empty, immutable=True)
            except StoreError:
                if at_rest(self.path) == before:
                    raise
            else:
                if at_rest(self.path) == before:
                    return result
            # A process wrote the journal meanwhile: read it as a reader beside writers does.
        return self._read_on(read, empty, immutable=False)

    def _read_on(self, read: Callable[[sqlite3.Connection], _T], empty: _T, *, immutable: bool) -> _T:
        try:
            conn = connect(self.path, read_only=True, immutable=immutable)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise failure(exc, self.path, "open") from exc
        try:
            with snapshot(conn):
                if check(conn, self.path) == 0:
                    return empty
                return read(conn)  # every schema since 1 has the records table: no migration needed
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise failure(exc, self.path, "read") from exc
        finally:
            conn.close()


class JournalReader(Reader["Record"]):
    """The journal at ``path``, read-only, as :class:`~headwater.Record` objects (see :class:`Reader`)."""

    def __init__(self, path: Path) -> None:
        from headwater._codec import decode

        super().__init__(path, decode)


class PlainReader(Reader[Plain]):
    """The journal at ``path``, read-only, each record as its plain JSON values: what ``status`` reads.

    Each is what :func:`headwater._codec.plain` makes of the record (see
    :mod:`headwater._plain`), read without attrs; see :class:`Reader`.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, decode_plain)


def read_records(path: Path) -> list[Record]:
    """Every record in the journal at ``path``, oldest first, read-only (see :class:`JournalReader`).

    One read transaction that holds them all: for small journals and tests;
    ``headwater status`` streams with :meth:`JournalReader.records`.
    """
    return JournalReader(path).all_oldest_first()
