"""The SQLite file under the journal: opened, migrated, and healed.

One connection, shared by the daemon's threads behind a lock. A damaged file (at open, or a
query that finds "malformed" pages) is moved aside as `<name>.corrupt-<UTC time>` and a fresh
one is built; a file deleted or replaced under a running daemon is written again from the
connection it has open. Only `run`, which holds the state_dir lock, heals: `submit` and `status`
report the damage. Every rebuild is appended to `<name>.rebuilds`, for `status`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.errors import JournalError

log = structlog.get_logger()

BUSY_TIMEOUT_S: Final = 5.0
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_NOTADB: Final = 26


class JournalFile:
    def __init__(
        self,
        path: Path,
        migrations: tuple[str, ...],
        *,
        readonly: bool = False,
        heal: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._migrations = migrations
        self._heal = heal and not readonly
        self._lock = threading.Lock()
        # How often it was found damaged (or deleted) and rebuilt: the daemon then rescans,
        # so that the sidecars tell what is done.
        self.rebuilds = 0
        # Called with a rebuilt file's connection (the lock held): rows to write back.
        self.on_rebuilt: Callable[[sqlite3.Connection], None] = lambda db: None
        self._inode: int | None = None  # of the file opened: a replaced file is noticed
        self._closed = False
        self._db: sqlite3.Connection | None = self._open()

    @property
    def rebuild_log(self) -> Path:
        return rebuild_log_of(self.path)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._conn()  # raises JournalError only
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                raise self._failed(exc) from None
            except BaseException:
                _rollback(db)
                raise

    def write(
        self,
        sql: str,
        params: tuple[object, ...],
        then: Callable[[list[sqlite3.Row]], None] = lambda rows: None,
    ) -> list[sqlite3.Row]:
        """One statement, which SQLite makes atomic on its own: no BEGIN/COMMIT round trips.

        All rows are fetched, because an UPDATE ... RETURNING is not done before that. `then`
        sees them with the lock still held: a claim is known to be in flight before any rebuild
        could run.
        """
        with self._lock:
            try:
                rows = self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(exc) from None
            then(rows)
            return rows

    def query(self, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._conn().execute(sql, tuple(params)))
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def check(self) -> None:
        """The daemon's once-a-second look: a file deleted or replaced under us is written
        again with the rows we have open; a connection lost in a failed rebuild is retried."""
        if self.readonly or self._closed:
            return
        try:
            same = self._db is not None and self.path.stat().st_ino == self._inode
        except FileNotFoundError:
            same = False
        except OSError as exc:
            raise JournalError(
                f"{self.path}: cannot look at the journal ({exc})"
            ) from None
        if same:
            return
        with self._lock:
            if self._db is None:
                self._conn()
                return
            self._rebuild(
                "the journal file was deleted or replaced while ocrwatch ran",
                keep_rows=True,
            )

    def rebuild(self, why: str) -> None:
        """What a damaged page does to a healing journal, at a moment of the caller's choosing
        (tests use it to rebuild while an upload is in flight)."""
        with self._lock:
            self._rebuild(why, keep_rows=False)

    def _conn(self) -> sqlite3.Connection:
        """The connection, reopened if a rebuild could not reopen it (a full disk, say).

        The claims in flight are written back in the same step; if that fails, the connection
        is dropped, so that the next use tries both again.
        """
        if self._closed:
            raise JournalError(f"{self.path}: the journal is closed")
        if self._db is None:
            try:
                db = self._connect()
            except (sqlite3.Error, OSError) as exc:
                raise self._cannot_open(exc) from None
            try:
                db.execute("BEGIN IMMEDIATE")
                self.on_rebuilt(db)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                db.close()
                raise JournalError(
                    f"{self.path}: the rebuilt journal cannot be written ({exc}); "
                    "check the disk under state_dir"
                ) from None
            self._db = db
        return self._db

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise self._cannot_open(exc) from None
            if not self._heal:
                raise self._damaged(exc) from None
            try:
                kept = self._move_aside()
            except OSError as move:
                raise self._cannot_open(move) from None
            self.rebuilds += 1
            self._note_rebuild(str(exc), kept)
        except OSError as exc:
            raise self._cannot_open(exc) from None
        try:
            return self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise self._cannot_open(exc) from None

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            db = self._connect_readonly()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None
            )
        try:
            # First, so that a `submit` opening the journal while `run` writes waits its turn.
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            db.execute(
                "SELECT count(*) FROM sqlite_master"
            )  # reads the header: is it SQLite?
            if not self.readonly:
                _use_wal(db)
                db.execute("PRAGMA synchronous=NORMAL")
                self._migrate(db)
                [[verdict], *_] = db.execute("PRAGMA quick_check(1)").fetchall()
                if verdict != "ok":
                    raise sqlite3.DatabaseError(
                        f"database disk image is malformed: {verdict}"
                    )
            self._inode = self.path.stat().st_ino if self.path.exists() else None
        except BaseException:
            db.close()
            raise
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        """A reader that may not write to state_dir (an admin in the service's group) cannot
        open a WAL journal whose `-shm` is not there (no daemon has it open). Without a
        `-wal` file the main file is the whole journal, so it is read as immutable then."""

        def connect(flags: str) -> sqlite3.Connection:
            db = sqlite3.connect(
                f"file:{self.path}?{flags}",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
            try:
                db.execute("SELECT count(*) FROM sqlite_master")
            except BaseException:
                db.close()
                raise
            return db

        try:
            return connect("mode=ro")
        except sqlite3.OperationalError:
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise
            return connect("mode=ro&immutable=1")

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the schema up to date, in one transaction that reads the version first.

        `run` and `submit` may open a fresh journal at the same moment: the second waits for the
        first and then finds nothing left to do.
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(self._migrations):
                raise JournalError(
                    f"{self.path}: journal schema {version} is newer than this ocrwatch "
                    "understands; upgrade ocrwatch"
                )
            for number, script in enumerate(
                self._migrations[version:], start=version + 1
            ):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _failed(self, exc: sqlite3.Error) -> JournalError:
        """The error to raise, with the lock held: a damaged journal is rebuilt first."""
        if isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc):
            if not self._heal:
                return self._damaged(exc)
            try:
                self._rebuild(str(exc), keep_rows=False)
            except JournalError as again:
                return again
            return JournalError(
                f"{self.path}: the journal was damaged ({exc}); rebuilt"
            )
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL:
            return JournalError(
                f"{self.path}: state_dir is full ({exc}); files wait on disk until there "
                "is space again"
            )
        return JournalError(
            f"{self.path}: journal write failed ({exc}); check the disk under state_dir"
        )

    def _rebuild(self, why: str, *, keep_rows: bool) -> None:
        """With the lock held: a new file, with the rows we have open if `keep_rows` (the file
        was deleted), else empty (it was damaged); then what is in flight is written back."""
        old, self._db = self._db, None
        fresh = Path(f"{self.path}.rebuilding")
        kept: Path | None = None
        try:
            fresh.unlink(missing_ok=True)
            if keep_rows and old is not None:
                fresh.parent.mkdir(parents=True, exist_ok=True)  # `rm -rf state_dir`
                old.execute("VACUUM INTO ?", (str(fresh),))
        except (sqlite3.Error, OSError) as exc:
            self._db = old
            raise JournalError(
                f"{self.path}: the journal file went away and cannot be written again "
                f"({exc}); check state_dir"
            ) from None
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        try:
            if keep_rows and fresh.exists():
                fresh.replace(self.path)
            else:
                kept = self._move_aside()
        except OSError as exc:  # the next use tries to open the file again
            raise JournalError(
                f"{self.path}: the journal cannot be rebuilt ({exc.strerror}); check state_dir"
            ) from None
        self.rebuilds += 1
        self._note_rebuild(why, kept)
        self._conn()  # raises if it cannot be opened; the next use tries again

    def _move_aside(self) -> Path:
        """Keep a damaged journal for a post-mortem, under a name that says when.

        Raises OSError if it cannot be moved (a read-only state_dir): callers translate it.
        """
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").rename(f"{kept}{suffix}")
        return kept

    def _note_rebuild(self, why: str, kept: Path | None) -> None:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        copy = (
            f"; the damaged file is kept as {kept.name}"
            if kept
            else "; its rows were kept"
        )
        with contextlib.suppress(OSError), self.rebuild_log.open("a") as handle:
            handle.write(f"{stamp} {' '.join(why.split())}{copy}\n")
        log.error(
            "journal.rebuilt",
            path=str(self.path),
            reason=why,
            damaged_copy=str(kept) if kept else None,
            note="files with a current sidecar count as done; the others are sent",
        )

    def _damaged(self, exc: BaseException) -> JournalError:
        return JournalError(
            f"{self.path}: the journal is damaged ({exc}); `ocrwatch run` moves it aside and "
            "rebuilds it from the sidecars"
        )

    def _cannot_open(self, exc: BaseException) -> JournalError:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return JournalError(f"{self.path}: state_dir is full ({exc.strerror})")
        return JournalError(
            f"{self.path}: cannot open the journal ({exc}); check that state_dir exists "
            "and the service user may write to it"
        )


def rebuild_log_of(path: Path) -> Path:
    return path.with_name(f"{path.name}.rebuilds")


def recent_rebuilds(path: Path, limit: int = 5) -> list[str]:
    """The last lines of the rebuild log: when, why, and where the damaged file was kept."""
    try:
        with rebuild_log_of(path).open(encoding="utf-8", errors="replace") as handle:
            lines = deque(handle, maxlen=limit)
    except OSError:
        return []
    return [line.rstrip("\n")[:1000] for line in lines]


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL, waiting for another process that is switching a fresh journal.

    This pragma fails at once with "locked", without the busy handler, while another
    connection converts the file; it is retried for as long as busy_timeout would wait.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: a damaged file, not a busy or full one."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    text = str(exc)
    return (
        code in (SQLITE_CORRUPT, SQLITE_NOTADB)
        or "malformed" in text
        or "not a database" in text
    )
