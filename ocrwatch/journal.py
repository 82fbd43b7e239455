"""Durable file states in SQLite (WAL): the journal is the queue that `run` and `submit` claim from.

queued -> submitting -> submitted | rejected, or -> failed (transient; offered again at
next_attempt_at). A crash leaves `submitting` rows, which `resume()` puts back in the queue, so an
upload in flight at a crash is sent again (at-least-once). synchronous=NORMAL may lose the last
commits on power loss, never on a process crash; the catch-up scan finds such files again.
Several processes may open it at once (`run` and any number of `submit`s): each claim is one
statement that records the claiming process, so a row is never claimed twice, and only the rows
of a process that is gone are put back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.errors import JournalError
from ocrwatch.log import redact_text

log = structlog.get_logger()

STATES: Final = ("queued", "submitting", "submitted", "failed", "rejected")
DONE_STATES: Final = ("submitted", "rejected")
MIGRATIONS: Final = (
    # version 1
    """
    CREATE TABLE files(
        path TEXT PRIMARY KEY,
        root TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT,
        state TEXT NOT NULL,
        guid TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        held INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX files_due ON files(state, held, next_attempt_at);
    """,
    # version 2: claim the next due file by an index walk, not a sort of the whole backlog
    # (the WHERE must stay word for word the one in `claim`, or SQLite will not use it)
    """
    CREATE INDEX files_todo ON files(next_attempt_at, created_at)
        WHERE state IN ('queued', 'failed') AND held=0;
    """,
    # version 3: the profile `submit` chose (NULL: the folder's); which process claimed a
    # `submitting` row (see `this_process`); and, for content dedupe, a digest of the settings
    # a file was sent with and when the service accepted it
    """
    ALTER TABLE files ADD COLUMN profile TEXT;
    ALTER TABLE files ADD COLUMN claimed_by TEXT;
    ALTER TABLE files ADD COLUMN settings_key TEXT;
    ALTER TABLE files ADD COLUMN accepted_at REAL;
    CREATE INDEX files_content ON files(sha256, settings_key) WHERE sha256 IS NOT NULL;
    """,
)
# INDEXED BY: with few rows and no statistics SQLite would pick files_due and sort the backlog.
CLAIM_SQL: Final = (
    "UPDATE files SET state='submitting', claimed_by=?, updated_at=? WHERE path = ("
    " SELECT path FROM files INDEXED BY files_todo WHERE state IN ('queued', 'failed')"
    " AND held=0 AND next_attempt_at <= ? ORDER BY next_attempt_at, created_at LIMIT 1)"
    " RETURNING path, root, size, mtime_ns, attempts, profile"
)
# One file claimed by path (`submit`): a new row, or one that is neither in flight elsewhere
# nor submitted with this very content.
CLAIM_FILE_SQL: Final = (
    "INSERT INTO files(path, root, size, mtime_ns, state, profile, claimed_by, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, 'submitting', ?, ?, ?, ?)"
    " ON CONFLICT(path) DO UPDATE SET state='submitting', root=excluded.root,"
    " claimed_by=excluded.claimed_by,"
    " size=excluded.size, mtime_ns=excluded.mtime_ns, profile=excluded.profile, held=0,"
    " attempts=CASE WHEN files.state IN ('queued', 'failed') THEN files.attempts ELSE 0 END,"
    " updated_at=excluded.updated_at"
    " WHERE files.state != 'submitting' AND NOT (files.state='submitted'"
    " AND files.size=excluded.size AND files.mtime_ns=excluded.mtime_ns)"
    " RETURNING path, root, size, mtime_ns, attempts, profile"
)
LOOKUP_BATCH: Final = 500
TEXT_MAX: Final = 500  # a reason longer than this is cut: it is shown, not parsed
BUSY_TIMEOUT_S: Final = 5.0
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_NOTADB: Final = 26
ENTRY_COLUMNS: Final = "path, size, mtime_ns, state, guid, attempts, next_attempt_at, last_error, held, updated_at, sha256"


@dataclass(frozen=True, slots=True)
class Job:
    """A file to submit, as it looked when it settled (or when `submit` was given it).

    `profile` is None for the daemon's files, which use their folder's profile at the time they
    are sent; `submit` stores the one it was asked for.
    """

    path: Path
    root: Path
    size: int
    mtime_ns: int
    attempts: int = 0
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """A journal row as it stands, for the catch-up scan and `status` (the path as stored)."""

    path: str
    size: int
    mtime_ns: int
    state: str
    guid: str | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    held: bool
    updated_at: float
    sha256: str | None = None  # of the content `guid` was given for


class Journal:
    """One SQLite connection shared by the daemon's threads behind a lock."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.Lock()
        # How often it was found damaged (or deleted) and rebuilt: the daemon then rescans,
        # so that the sidecars tell what is done.
        self.rebuilds = 0
        self._inode: int | None = None  # of the file opened: a replaced file is noticed
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise self._cannot_open(exc) from None
            if self.readonly:
                raise self._damaged(exc) from None
            self._move_aside(str(exc))
        except OSError as exc:
            raise self._cannot_open(exc) from None
        try:
            return self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise self._cannot_open(exc) from None

    def _damaged(self, exc: BaseException) -> JournalError:
        return JournalError(
            f"{self.path}: the journal is damaged ({exc}); `ocrwatch run` moves it aside and "
            "rebuilds it from the sidecars at its next start"
        )

    def _cannot_open(self, exc: BaseException) -> JournalError:
        return JournalError(
            f"{self.path}: cannot open the journal ({exc}); check that state_dir exists "
            "and the service user may write to it"
        )

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            db = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
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

    def _move_aside(self, why: str) -> Path:
        """Keep a damaged journal for a post-mortem, under a name that says when and why."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").rename(f"{kept}{suffix}")
        self.rebuilds += 1
        log.error(
            "journal.rebuilt",
            path=str(self.path),
            reason=why,
            damaged_copy=str(kept),
            note="files with a current sidecar count as done; the others are sent",
        )
        return kept

    def check_file(self) -> None:
        """Rebuild the journal if its file was deleted or replaced under us; the rows we have
        open are copied into the new one. The daemon calls this once a second."""
        if self.readonly:
            return
        try:
            same = self.path.stat().st_ino == self._inode
        except FileNotFoundError:
            same = False
        if same:
            return
        with self._lock:
            fresh = Path(f"{self.path}.rebuilding")
            with contextlib.suppress(FileNotFoundError):
                fresh.unlink()
            try:
                self._db.execute("VACUUM INTO ?", (str(fresh),))
                self._db.close()
                fresh.replace(self.path)
                self._db = self._connect()
            except (sqlite3.Error, OSError) as exc:
                raise JournalError(
                    f"{self.path}: the journal file went away and cannot be written again "
                    f"({exc}); check state_dir"
                ) from None
            self.rebuilds += 1
        log.error(
            "journal.rebuilt",
            path=str(self.path),
            reason="the journal file was deleted or replaced while ocrwatch ran",
            rows_kept=True,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the schema up to date, in one transaction that reads the version first.

        `run` and `submit` may open a fresh journal at the same moment: the second waits for the
        first and then finds nothing left to do.
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise JournalError(
                    f"{self.path}: journal schema {version} is newer than this ocrwatch understands; upgrade ocrwatch"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._failed(exc) from None
            except BaseException:
                self._rollback()
                raise

    def _failed(self, exc: sqlite3.Error) -> JournalError:
        """The error to raise, with the lock held: a damaged journal is rebuilt first."""
        damage = isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc)
        if damage and self.readonly:
            return self._damaged(exc)
        if damage:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._move_aside(str(exc))
            try:
                self._db = self._connect()
            except (sqlite3.Error, OSError) as again:
                return self._cannot_open(again)
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

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _write(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        """One statement, which SQLite makes atomic on its own: no BEGIN/COMMIT round trips.

        All rows are fetched, because an UPDATE ... RETURNING is not done before that.
        """
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def _query(self, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, tuple(params)))
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def note_many(self, jobs: Iterable[Job], now: float) -> list[Job]:
        """Queue settled files in one transaction (a burst settles together); returns the queued.

        A file already queued, in flight, or done with this very content is not queued again.
        """
        queued = []
        with self._tx() as db:
            for job in jobs:
                if self._note(db, job, now):
                    queued.append(job)
        return queued

    @staticmethod
    def _note(db: sqlite3.Connection, job: Job, now: float) -> bool:
        path, root = _key(job.path), _key(job.root)
        row = db.execute(
            "SELECT state, size, mtime_ns FROM files WHERE path=?", (path,)
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO files(path, root, size, mtime_ns, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (path, root, job.size, job.mtime_ns, now, now),
            )
            return True
        state, old_size, old_mtime = row
        if state in DONE_STATES and (old_size, old_mtime) != (job.size, job.mtime_ns):
            db.execute(
                "UPDATE files SET state='queued', size=?, mtime_ns=?, attempts=0, next_attempt_at=0, "
                "last_error=NULL, held=0, root=?, profile=NULL, updated_at=? WHERE path=?",
                (job.size, job.mtime_ns, root, now, path),
            )
            return True
        if state == "queued" and (old_size, old_mtime) != (job.size, job.mtime_ns):
            # It settled anew (a truncated file completed, say): no reason to wait longer.
            db.execute(
                "UPDATE files SET size=?, mtime_ns=?, next_attempt_at=0 WHERE path=?",
                (job.size, job.mtime_ns, path),
            )
        elif state == "failed":
            db.execute(
                "UPDATE files SET size=?, mtime_ns=? WHERE path=?",
                (job.size, job.mtime_ns, path),
            )
        return False

    def lookup(self, paths: Iterable[str | Path]) -> dict[str, Entry]:
        """The row of each known path, keyed by its string, looked up in batches.

        This is the catch-up scan's hot path, hence strings rather than Path objects.
        """
        found: dict[str, Entry] = {}
        batch: list[str] = []
        for path in paths:
            batch.append(_key(path))
            if len(batch) == LOOKUP_BATCH:
                self._lookup_batch(batch, found)
                batch = []
        if batch:
            self._lookup_batch(batch, found)
        return found

    def _lookup_batch(self, batch: list[str], found: dict[str, Entry]) -> None:
        marks = ",".join("?" * len(batch))
        for row in self._query(
            f"SELECT {ENTRY_COLUMNS} FROM files WHERE path IN ({marks})", batch
        ):
            entry = _entry(row)
            found[entry.path] = entry

    def claim(self, now: float) -> Job | None:
        """Take the next due file for submission, or None if nothing is due."""
        return _job(self._write(CLAIM_SQL, (this_process(), now, now)))

    def claim_file(self, job: Job, now: float) -> Job | None:
        """Take this one file for submission (`submit`), recording it if it is new.

        None if another process has it in flight, or it was submitted with this content already.
        """
        params = (_key(job.path), _key(job.root), job.size, job.mtime_ns, job.profile)
        return _job(self._write(CLAIM_FILE_SQL, (*params, this_process(), now, now)))

    def _set(
        self, path: Path, now: float, sql: str, params: tuple[object, ...]
    ) -> None:
        self._write(
            f"UPDATE files SET {sql}, updated_at=? WHERE path=?",
            (*params, now, _key(path)),
        )

    def mark_submitted(
        self,
        path: Path,
        *,
        guid: str,
        sha256: str | None,
        size: int,
        mtime_ns: int,
        now: float,
        settings_key: str | None = None,
        accepted_at: float | None = None,
    ) -> None:
        """Done: the service has the task `guid`.

        With `settings_key` and `accepted_at` (when the service took this content with these
        settings), the row can serve the same content again without an upload; a GUID taken
        over from a sidecar someone else wrote has neither.
        """
        self._set(
            path,
            now,
            "state='submitted', guid=?, sha256=?, size=?, mtime_ns=?, settings_key=?, "
            "accepted_at=?, attempts=attempts+1, last_error=NULL, held=0",
            (guid, sha256, size, mtime_ns, settings_key, accepted_at),
        )

    def mark_content(
        self, path: Path, sha256: str, settings_key: str, *, since: float
    ) -> bool:
        """Note what a claimed file is about to be sent as, unless another file with the same
        content and settings is being sent right now, or was accepted since `since` (then
        False: use, or wait for, its GUID). One statement, so two twins never both pass."""
        # A GUID the row kept from earlier content no longer describes it: dropped here, so
        # that it is never reused for this content.
        rows = self._write(
            "UPDATE files SET sha256=?1, settings_key=?2,"
            " guid=CASE WHEN sha256=?1 AND settings_key=?2 THEN guid END,"
            " accepted_at=CASE WHEN sha256=?1 AND settings_key=?2 THEN accepted_at END"
            " WHERE path=? AND NOT EXISTS ("
            " SELECT 1 FROM files AS other WHERE other.sha256=? AND other.settings_key=?"
            " AND other.path != ? AND (other.state='submitting'"
            " OR (other.state='submitted' AND other.accepted_at >= ?))) RETURNING path",
            (sha256, settings_key, _key(path), sha256, settings_key, _key(path), since),
        )
        return bool(rows)

    def same_content(
        self, sha256: str, settings_key: str, *, besides: Path
    ) -> list[tuple[Path, str]]:
        """(path, GUID) of every other file submitted with this content and these settings."""
        rows = self._query(
            "SELECT path, guid FROM files WHERE sha256=? AND settings_key=?"
            " AND state='submitted' AND guid IS NOT NULL AND path != ?",
            (sha256, settings_key, _key(besides)),
        )
        return [(Path(_unkey(path)), guid) for path, guid in rows]

    def find_accepted(
        self, sha256: str, settings_key: str, since: float, *, own: Path
    ) -> tuple[Path, str, float] | None:
        """(path, GUID, accepted at) of this content sent with these settings since `since`:
        by another file, or by `own` before (a file whose time alone changed, `touch`)."""
        rows = self._query(
            "SELECT path, guid, accepted_at FROM files WHERE sha256=? AND settings_key=?"
            " AND (state='submitted' OR path=?) AND guid IS NOT NULL AND accepted_at >= ?"
            " ORDER BY path=? DESC, accepted_at DESC LIMIT 1",
            (sha256, settings_key, _key(own), since, _key(own)),
        )
        return None if not rows else (Path(_unkey(rows[0][0])), rows[0][1], rows[0][2])

    def mark_adopted(
        self, path: Path, *, guid: str, size: int, mtime_ns: int, now: float
    ) -> None:
        """Done by a current `.guid` found beside the file. If ocrwatch gave this GUID to this
        path, the row keeps what makes it a dedupe source; a GUID from elsewhere does not."""
        self._write(
            "UPDATE files SET state='submitted', size=?2, mtime_ns=?3,"
            " sha256=CASE WHEN guid=?1 THEN sha256 END,"
            " settings_key=CASE WHEN guid=?1 THEN settings_key END,"
            " accepted_at=CASE WHEN guid=?1 THEN accepted_at END,"
            " guid=?1, last_error=NULL, held=0, updated_at=?4 WHERE path=?5",
            (guid, size, mtime_ns, now, _key(path)),
        )

    def mark_rejected(
        self, path: Path, *, reason: str, size: int, mtime_ns: int, now: float
    ) -> None:
        self._set(
            path,
            now,
            "state='rejected', last_error=?, size=?, mtime_ns=?, attempts=attempts+1, held=0",
            (_text(reason), size, mtime_ns),
        )

    def mark_failed(
        self, path: Path, *, error: str, next_attempt_at: float, now: float
    ) -> None:
        """A transient failure outlasted the client's retries: offer the file again later."""
        self._set(
            path,
            now,
            "state='failed', last_error=?, next_attempt_at=?, attempts=attempts+1",
            (_text(error), next_attempt_at),
        )

    def release(
        self,
        job: Job,
        *,
        now: float,
        not_before: float = 0.0,
        reason: str | None = None,
    ) -> None:
        """Put a claimed file back in the queue without counting an attempt.

        The job's size and mtime are stored with it: a file that changed is claimed again only
        once it has looked the same for its settle time.
        """
        self._set(
            job.path,
            now,
            "state='queued', size=?, mtime_ns=?, next_attempt_at=?, last_error=COALESCE(?, last_error)",
            (job.size, job.mtime_ns, not_before, _text(reason)),
        )

    def hold(self, path: Path, *, reason: str, now: float) -> None:
        """Keep a file queued but unclaimable until `release_held` (its override file is invalid)."""
        self._set(path, now, "state='queued', held=1, last_error=?", (_text(reason),))

    def release_held(self, under: Path, now: float) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE files SET held=0, last_error=NULL, next_attempt_at=0, updated_at=? "
                "WHERE held=1 AND (path LIKE ? ESCAPE '\\')",
                (now, _like_prefix(under)),
            )
            return cursor.rowcount

    def forget(self, path: Path) -> None:
        self._write("DELETE FROM files WHERE path=?", (_key(path),))

    def resume(self, now: float, *, in_flight: Iterable[Path] = ()) -> int:
        """Put back in the queue what a process that is gone left in flight (a crash, a kill).

        Rows this process claimed and no longer has `in_flight` go back too (their outcome
        could not be recorded); rows of another live process (`submit` beside `run`) stay.
        """
        mine, keep = this_process(), {_key(p) for p in in_flight}
        with self._tx() as db:
            rows = db.execute(
                "SELECT path, claimed_by FROM files WHERE state='submitting'"
            ).fetchall()
            orphans = [
                path
                for path, owner in rows
                if (path not in keep if owner == mine else not is_alive(owner))
            ]
            for path in orphans:
                db.execute(
                    "UPDATE files SET state='queued', updated_at=? WHERE path=?",
                    (now, path),
                )
        return len(orphans)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._query("SELECT state, COUNT(*) FROM files GROUP BY state"):
            counts[state] = n
        return counts

    def is_empty(self) -> bool:
        """No table yet: a journal file that was created and never written (0 bytes)."""
        rows = self._query("SELECT count(*) FROM sqlite_master WHERE name='files'")
        return int(rows[0][0]) == 0

    def held_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM files WHERE held=1")[0][0])

    def next_due_at(self) -> float:
        rows = self._query(
            "SELECT MIN(next_attempt_at) FROM files WHERE state IN ('queued','failed') AND held=0"
        )
        value = rows[0][0]
        return math.inf if value is None else float(value)

    def entries(
        self, *, states: Iterable[str] = STATES, held: bool = False, limit: int = 1000
    ) -> list[Entry]:
        """The latest rows in `states`; with `held`, only the held ones (of any state)."""
        wanted = tuple(states)
        marks = ",".join("?" * len(wanted))
        rows = self._query(
            f"SELECT {ENTRY_COLUMNS} FROM files WHERE state IN ({marks})"
            f"{' AND held=1' if held else ''} ORDER BY updated_at DESC LIMIT ?",
            (*wanted, limit),
        )
        return [_entry(r) for r in rows]


def _entry(r: sqlite3.Row) -> Entry:
    path = _unkey(r[0])
    return Entry(
        path, r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), r[9], r[10]
    )


def _job(rows: list[sqlite3.Row]) -> Job | None:
    if not rows:
        return None
    path, root, size, mtime_ns, attempts, profile = rows[0]
    return Job(
        Path(_unkey(path)), Path(_unkey(root)), size, mtime_ns, attempts, profile
    )


def _like_prefix(directory: Path) -> str:
    escaped = (
        _key(directory).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    )
    return escaped.rstrip("/") + "/%"


# A name that is not valid UTF-8 comes from os.fsdecode with its odd bytes as lone surrogates,
# which SQLite's UTF-8 cannot hold. They are stored as "\0" and two hex digits: lossless, no
# real path has a NUL, and a folder keeps its prefix for the LIKE in `release_held`.
_ODD_BYTE: Final = re.compile("[\udc80-\udcff]")
_ESCAPED_BYTE: Final = re.compile("\0([0-9a-f]{2})")


def _key(path: str | Path) -> str:
    text = os.fspath(path)
    if text.isascii():
        return text
    return _ODD_BYTE.sub(lambda m: f"\0{ord(m.group()) - 0xDC00:02x}", text)


def _unkey(key: str) -> str:
    if "\0" not in key:
        return key
    return _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), key)


def _text(text: str | None) -> str | None:
    """A reason as the journal keeps it: secrets masked, odd bytes escaped, a sane length."""
    if text is None:
        return None
    clean = redact_text(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return clean if len(clean) <= TEXT_MAX else clean[: TEXT_MAX - 1] + "…"


@functools.cache
def this_process() -> str:
    """Who claims a row: boot, pid and start time, so that a reused pid is not taken for us."""
    return owner_of(os.getpid())


def owner_of(pid: int) -> str:
    return f"{_boot_id()}/{pid}/{_start_time(pid)}"


def is_alive(owner: str | None) -> bool:
    """Is the process that claimed a row still running? Unknown owners count as gone."""
    try:
        boot, pid, started = (owner or "").split("/")
        now_started = _start_time(int(pid))
    except ValueError:
        return False
    if boot != _boot_id() or now_started == "gone":
        return False
    if "?" not in (started, now_started):
        return now_started == started
    try:  # /proc hidden from us: the pid is all there is to go on
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "?"


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: clock ticks from boot to the process's start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "?"
    return stat[stat.rindex(")") + 2 :].split()[19]


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
