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

import functools
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from ocrwatch.errors import JournalError
from ocrwatch.journalfile import JournalFile
from ocrwatch.log import redact_text

log = structlog.get_logger()

STATES: Final = (
    "queued",
    "submitting",
    "submitted",
    "fetching",
    "completed",
    "failed",
    "rejected",
)
DONE_STATES: Final = ("submitted", "fetching", "completed", "rejected")
# The service has the task: a GUID that describes the row's content.
ACCEPTED_STATES: Final = ("submitted", "fetching", "completed")
ACCEPTED_SQL: Final = "('submitted', 'fetching', 'completed')"
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
    # version 4: what the daemon knows beyond rows (an upload pause, the last prune), for
    # `status`; submissions per hour and the daily prune by index
    """
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
    CREATE INDEX files_accepted ON files(accepted_at) WHERE accepted_at IS NOT NULL;
    CREATE INDEX files_finished ON files(updated_at)
        WHERE state IN ('submitted', 'rejected');
    """,
    # version 5: results. A `fetching` row waits for its poll at next_attempt_at (claimed_by
    # set while one is in flight) until fetch_deadline; `pdf`: the task is RecognizePdf's;
    # fetch_s: the timeout it was given (`retry` gives it again); results: what was written
    # (JSON [name, inode, size, mtime_ns]), to know our files later; resubmits: uploads
    # again after NotExist; refetch: `retry` fetches again instead of uploading
    """
    ALTER TABLE files ADD COLUMN pdf INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN fetch_s REAL;
    ALTER TABLE files ADD COLUMN fetch_deadline REAL;
    ALTER TABLE files ADD COLUMN polls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN results TEXT;
    ALTER TABLE files ADD COLUMN resubmits INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN refetch INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX files_polls ON files(next_attempt_at)
        WHERE state='fetching' AND claimed_by IS NULL;
    DROP INDEX files_finished;
    CREATE INDEX files_finished ON files(updated_at)
        WHERE state IN ('submitted', 'rejected', 'completed');
    """,
    # version 6: the result files written, apart from their original's row, so that a kept
    # result stays ours (never input) after its original and its row are gone; filled from
    # the rows' `results` of version 5
    """
    CREATE TABLE results(
        path TEXT PRIMARY KEY,
        original TEXT NOT NULL,
        inode INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        written_at REAL NOT NULL
    );
    INSERT OR REPLACE INTO results(path, original, inode, size, mtime_ns, written_at)
        SELECT rtrim(f.path, replace(f.path, '/', '')) || json_extract(r.value, '$[0]'),
            f.path, json_extract(r.value, '$[1]'), json_extract(r.value, '$[2]'),
            json_extract(r.value, '$[3]'), f.updated_at
        FROM files AS f,
            json_each(CASE WHEN json_valid(f.results) THEN f.results ELSE '[]' END) AS r;
    """,
)
POLL_COLUMNS: Final = (
    "path, root, size, mtime_ns, guid, pdf, polls, fetch_deadline, resubmits, results,"
    " profile, fetch_s, refetch"
)
# A poll's outcome is recorded only on the row as it was claimed: still `fetching` by this
# process, with the content and task it was claimed for. A file rewritten meanwhile was queued
# anew by the watcher, and no answer about the old task may seal the new content.
POLL_GUARD_SQL: Final = (
    " WHERE path=? AND state='fetching' AND claimed_by=? AND size=? AND mtime_ns=?"
    " AND guid=?"
)
# The next due poll; claimed_by marks it in flight (a crash: `resume` frees it).
CLAIM_POLL_SQL: Final = (
    "UPDATE files SET claimed_by=?, updated_at=? WHERE path = ("
    " SELECT path FROM files INDEXED BY files_polls WHERE state='fetching'"
    " AND claimed_by IS NULL AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT 1)"
    f" RETURNING {POLL_COLUMNS}"
)
POLL_DUE_SQL: Final = (
    "SELECT 1 FROM files INDEXED BY files_polls WHERE state='fetching'"
    " AND claimed_by IS NULL AND next_attempt_at <= ? LIMIT 1"
)
CLAIM_POLL_OF_SQL: Final = (
    "UPDATE files SET claimed_by=?, updated_at=? WHERE path=? AND state='fetching'"
    f" AND claimed_by IS NULL AND next_attempt_at <= ? RETURNING {POLL_COLUMNS}"
)
# INDEXED BY: with few rows and no statistics SQLite would pick files_due and sort the backlog.
CLAIM_SQL: Final = (
    "UPDATE files SET state='submitting', claimed_by=?, updated_at=? WHERE path = ("
    " SELECT path FROM files INDEXED BY files_todo WHERE state IN ('queued', 'failed')"
    " AND held=0 AND next_attempt_at <= ? ORDER BY next_attempt_at, created_at LIMIT 1)"
    " RETURNING path, root, size, mtime_ns, attempts, profile"
)
# A claim written back into a rebuilt journal.
RESEED_SQL: Final = (
    "INSERT INTO files(path, root, size, mtime_ns, state, profile, claimed_by, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, 'submitting', ?, ?, ?, ?)"
    " ON CONFLICT(path) DO NOTHING"  # a journal rebuilt with its rows has them as they are
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
    " WHERE files.state != 'submitting' AND NOT (files.state IN ('submitted', 'fetching', 'completed')"
    " AND files.size=excluded.size AND files.mtime_ns=excluded.mtime_ns)"
    " RETURNING path, root, size, mtime_ns, attempts, profile"
)
LOOKUP_BATCH: Final = 500
# How long a claim by a process that /proc hides from us is believed (see `is_alive`).
UNVERIFIED_CLAIM_MAX_S: Final = 3600.0
# The service keeps a task's result this long (aspose-api.md §5).
TASK_LIFETIME_S: Final = 24 * 3600.0
TEXT_MAX: Final = 500  # a reason longer than this is cut: it is shown, not parsed
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


def journal_exists(path: Path) -> bool:
    """Is there a journal at `path`? A state_dir this user may not look into is said in one
    sentence (`status` and `retry` run by an admin who is not the service user)."""
    try:
        return path.exists()
    except OSError as exc:
        raise JournalError(
            f"{path.parent}: cannot look into state_dir ({exc.strerror}); run this as the "
            "service user, e.g. `sudo -u ocrwatch ocrwatch status`"
        ) from None


@dataclass(frozen=True, slots=True)
class Fetch:
    """A submitted file's result is to be waited for: how long, the first look, the endpoint."""

    timeout_s: float
    first_poll_s: float
    pdf: bool


@dataclass(frozen=True, slots=True)
class Poll:
    """A `fetching` row claimed for one look at its task."""

    path: Path
    root: Path
    size: int
    mtime_ns: int
    guid: str
    pdf: bool
    polls: int
    deadline: float
    resubmits: int
    results: tuple[tuple[str, int, int, int], ...]  # (name, inode, size, mtime_ns) ours
    profile: str | None
    fetch_s: float
    # The service had the result once (Completed), or the task was only to be asked about
    # (`fetch`, an adopted `.guid`): NotExist then means it expired, and nothing is uploaded.
    refetch: bool = False

    @property
    def job(self) -> Job:
        return Job(self.path, self.root, self.size, self.mtime_ns, 0, self.profile)


class Journal:
    """One SQLite connection shared by the daemon's threads behind a lock."""

    def __init__(
        self, path: Path, *, readonly: bool = False, heal: bool = False
    ) -> None:
        """`heal`: move a damaged file aside and rebuild it; only for `run`, which holds
        the state_dir lock."""
        self.path = path
        self._file = JournalFile(path, MIGRATIONS, readonly=readonly, heal=heal)
        self._file.on_rebuilt = self._reseed
        # Claims to write back into a rebuilt journal: the uploads in flight right now, so
        # that the rescan after a rebuild cannot queue and send one of them again.
        self.in_flight: Callable[[], Iterable[Job]] = lambda: ()

    @property
    def rebuilds(self) -> int:
        return self._file.rebuilds

    @property
    def rebuild_log(self) -> Path:
        return self._file.rebuild_log

    def check_file(self) -> None:
        self._file.check()

    def rebuild(self, why: str) -> None:
        """Move the file aside and start an empty one, as damage found by a query does."""
        self._file.rebuild(why)

    def close(self) -> None:
        self._file.close()

    def _reseed(self, db: sqlite3.Connection) -> None:
        now = time.time()
        for job in self.in_flight():
            params = (
                _key(job.path),
                _key(job.root),
                job.size,
                job.mtime_ns,
                job.profile,
            )
            db.execute(RESEED_SQL, (*params, this_process(), now, now))

    def note_many(self, jobs: Iterable[Job], now: float) -> list[Job]:
        """Queue settled files in one transaction (a burst settles together); returns the queued.

        A file already queued, in flight, or done with this very content is not queued again.
        """
        queued = []
        with self._file.tx() as db:
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
            # Queued anew: its wait (and its place in the queue) starts now.
            db.execute(
                "UPDATE files SET state='queued', size=?, mtime_ns=?, attempts=0, next_attempt_at=0, "
                "last_error=NULL, held=0, root=?, profile=NULL, resubmits=0, refetch=0, "
                "claimed_by=NULL, created_at=?, updated_at=? "
                "WHERE path=?",
                (job.size, job.mtime_ns, root, now, now, path),
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
        for row in self._file.query(
            f"SELECT {ENTRY_COLUMNS} FROM files WHERE path IN ({marks})", batch
        ):
            entry = _entry(row)
            found[entry.path] = entry

    def claim(
        self, now: float, on_claimed: Callable[[Job], None] = lambda job: None
    ) -> Job | None:
        """Take the next due file for submission, or None if nothing is due.

        `on_claimed` runs before anything else may use the journal: a rebuild in between
        would not know the claim.
        """

        def claimed(rows: list[sqlite3.Row]) -> None:
            if (job := _job(rows)) is not None:
                on_claimed(job)

        return _job(self._file.write(CLAIM_SQL, (this_process(), now, now), claimed))

    def claim_file(self, job: Job, now: float) -> Job | None:
        """Take this one file for submission (`submit`), recording it if it is new.

        None if another process has it in flight, or it was submitted with this content already.
        """
        params = (_key(job.path), _key(job.root), job.size, job.mtime_ns, job.profile)
        return _job(
            self._file.write(CLAIM_FILE_SQL, (*params, this_process(), now, now))
        )

    def _set(
        self, path: Path, now: float, sql: str, params: tuple[object, ...]
    ) -> None:
        self._file.write(
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
        fetch: Fetch | None = None,
    ) -> None:
        """Done: the service has the task `guid`; with `fetch`, its result is waited for.

        With `settings_key` and `accepted_at` (when the service took this content with these
        settings), the row can serve the same content again without an upload; a GUID taken
        over from a sidecar someone else wrote has neither.
        """
        self._set(
            path,
            now,
            "state=?, guid=?, sha256=?, size=?, mtime_ns=?, settings_key=?, "
            "accepted_at=?, attempts=attempts+1, last_error=NULL, held=0, "
            "pdf=?, fetch_s=?, fetch_deadline=?, next_attempt_at=?, polls=0, refetch=0, "
            "claimed_by=NULL",
            (
                "submitted" if fetch is None else "fetching",
                guid,
                sha256,
                size,
                mtime_ns,
                settings_key,
                accepted_at,
                fetch is not None and fetch.pdf,
                None if fetch is None else fetch.timeout_s,
                None if fetch is None else now + fetch.timeout_s,
                0 if fetch is None else now + fetch.first_poll_s,
            ),
        )

    def claim_poll(
        self, now: float, on_claimed: Callable[[Poll], None] = lambda poll: None
    ) -> Poll | None:
        """Take the next `fetching` row whose poll is due, or None."""

        def claimed(rows: list[sqlite3.Row]) -> None:
            if (poll := _poll(rows)) is not None:
                on_claimed(poll)

        # A read first: every upload claim comes here, and most find no poll due; a read
        # takes no write lock from the `submit`s beside the daemon.
        if not self._file.query(POLL_DUE_SQL, (now,)):
            return None
        return _poll(
            self._file.write(CLAIM_POLL_SQL, (this_process(), now, now), claimed)
        )

    def claim_poll_of(self, path: Path, now: float) -> Poll | None:
        """Take this `fetching` row if its poll is due and nobody polls it (`fetch`)."""
        return _poll(
            self._file.write(CLAIM_POLL_OF_SQL, (this_process(), now, _key(path), now))
        )

    def _settle_poll(
        self, poll: Poll, now: float, sql: str, params: tuple[object, ...]
    ) -> bool:
        """Record a poll's outcome if the row is still the one claimed (see POLL_GUARD_SQL);
        False if it moved on meanwhile (rewritten, renamed, freed by `resume`)."""
        rows = self._file.write(
            f"UPDATE files SET {sql}, updated_at=?{POLL_GUARD_SQL} RETURNING path",
            (
                *params,
                now,
                _key(poll.path),
                this_process(),
                poll.size,
                poll.mtime_ns,
                poll.guid,
            ),
        )
        return bool(rows)

    def schedule_poll(
        self,
        poll: Poll,
        *,
        at: float,
        now: float,
        error: str | None = None,
        seen_completed: bool = False,
    ) -> bool:
        """The task is not done yet (or could not be asked about): look again at `at`.

        `seen_completed`: the service had the result, which could not be written; the row
        never goes to an upload again for this content (see `Poll.refetch`)."""
        return self._settle_poll(
            poll,
            now,
            "polls=polls+1, next_attempt_at=?, claimed_by=NULL, last_error=?,"
            " refetch=MAX(refetch, ?)",
            (at, _text(error), seen_completed),
        )

    def mark_completed(
        self, poll: Poll, *, results: Iterable[tuple[str, int, int, int]], now: float
    ) -> bool:
        """Its result files are written: never fetched again (unless the file changes)."""
        return self._settle_poll(
            poll,
            now,
            "state='completed', results=?, polls=polls+1, claimed_by=NULL, last_error=NULL",
            (json.dumps([list(r) for r in results]),),
        )

    def mark_fetch_failed(
        self, poll: Poll, *, reason: str, refetch: bool, now: float
    ) -> bool:
        """No result will come (Error, lost twice) or came in time (`refetch`: `retry` asks
        the service again rather than uploading).

        A task that will never have a result is no dedupe source any more: a `retry`, or a
        copy of the file, must upload anew, not reuse the dead task's GUID.
        """
        dead = "" if refetch else ", sha256=NULL, settings_key=NULL, accepted_at=NULL"
        done = self._settle_poll(
            poll,
            now,
            "state='rejected', last_error=?, refetch=?, polls=polls+1, claimed_by=NULL"
            + dead,
            (_text(reason), refetch),
        )
        if done and not refetch:
            self._drop_source(poll.guid)
        return done

    def resubmit(self, poll: Poll, *, reason: str, now: float) -> bool:
        """The service lost the task (NotExist): upload once more, as a new task. Its GUID
        and what made it a dedupe source go, so that neither is used again."""
        done = self._settle_poll(
            poll,
            now,
            "state='queued', guid=NULL, sha256=NULL, settings_key=NULL, accepted_at=NULL,"
            " resubmits=resubmits+1, attempts=0, next_attempt_at=0, claimed_by=NULL,"
            " last_error=?",
            (_text(reason),),
        )
        if done:
            self._drop_source(poll.guid)
        return done

    def note_reason(self, path: Path, reason: str, *, now: float) -> None:
        """Replace the recorded reason (its `.error` could not be written after all)."""
        self._set(path, now, "last_error=?", (_text(reason),))

    def _drop_source(self, guid: str) -> None:
        """A dead task is no dedupe source for any row: a copy that was given its GUID keeps
        it (its own poll finds out), but no new file may dedupe onto it."""
        self._file.write(
            "UPDATE files SET sha256=NULL, settings_key=NULL, accepted_at=NULL WHERE guid=?",
            (guid,),
        )

    def keep_as_source(self, poll: Poll, now: float) -> bool:
        """Its file went away while its result was waited for (renamed, moved): the row
        stays, `submitted` with its GUID and content, so that the file under its new name
        reuses the task instead of being paid for again. The prune removes it in time."""
        return self._settle_poll(
            poll,
            now,
            "state='submitted', claimed_by=NULL, next_attempt_at=0, last_error=?",
            ("the file went away before its result came",),
        )

    def start_fetch(
        self, job: Job, guid: str, fetch: Fetch, now: float, *, resubmit: bool = False
    ) -> bool:
        """Wait for the result of a task a `.guid` names (`ocrwatch fetch`), recording the
        file if it is new. False if it is in flight or already completed with this content.

        Without `resubmit`, a task the service no longer has (expired after a day) ends in
        `.error` rather than a new, billed upload."""
        rows = self._file.write(
            "INSERT INTO files(path, root, size, mtime_ns, state, guid, pdf, fetch_s,"
            " fetch_deadline, next_attempt_at, refetch, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'fetching', ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(path) DO UPDATE SET state='fetching', guid=excluded.guid,"
            " size=excluded.size, mtime_ns=excluded.mtime_ns, pdf=excluded.pdf,"
            " fetch_s=excluded.fetch_s, fetch_deadline=excluded.fetch_deadline,"
            " next_attempt_at=excluded.next_attempt_at, polls=0, refetch=excluded.refetch,"
            " held=0,"
            " claimed_by=NULL, last_error=NULL, updated_at=excluded.updated_at"
            " WHERE files.state NOT IN ('submitting', 'queued')"
            " AND NOT (files.state='fetching' AND files.claimed_by IS NOT NULL)"
            " AND NOT (files.state='completed' AND files.guid=excluded.guid"
            " AND files.size=excluded.size AND files.mtime_ns=excluded.mtime_ns)"
            " RETURNING path",
            (
                _key(job.path),
                _key(job.root),
                job.size,
                job.mtime_ns,
                guid,
                fetch.pdf,
                fetch.timeout_s,
                now + fetch.timeout_s,
                now + fetch.first_poll_s,
                not resubmit,
                now,
                now,
            ),
        )
        return bool(rows)

    def fetch_state(self, path: Path) -> tuple[str, str | None, float] | None:
        """(state, last error, next poll or attempt) of one row, for `fetch` waiting on it."""
        rows = self._file.query(
            "SELECT state, last_error, next_attempt_at FROM files WHERE path=?",
            (_key(path),),
        )
        return None if not rows else (rows[0][0], rows[0][1], float(rows[0][2]))

    def mark_content(
        self, path: Path, sha256: str, settings_key: str, *, since: float
    ) -> bool:
        """Note what a claimed file is about to be sent as, unless another file with the same
        content and settings is being sent right now, or was accepted since `since` (then
        False: use, or wait for, its GUID). One statement, so two twins never both pass."""
        # A GUID the row kept from earlier content no longer describes it: dropped here, so
        # that it is never reused for this content.
        rows = self._file.write(
            "UPDATE files SET sha256=?1, settings_key=?2,"
            " guid=CASE WHEN sha256=?1 AND settings_key=?2 THEN guid END,"
            " accepted_at=CASE WHEN sha256=?1 AND settings_key=?2 THEN accepted_at END"
            " WHERE path=? AND NOT EXISTS ("
            " SELECT 1 FROM files AS other WHERE other.sha256=? AND other.settings_key=?"
            " AND other.path != ? AND (other.state='submitting'"
            f" OR (other.state IN {ACCEPTED_SQL} AND other.accepted_at >= ?))) RETURNING path",
            (sha256, settings_key, _key(path), sha256, settings_key, _key(path), since),
        )
        return bool(rows)

    def same_content(
        self, sha256: str, settings_key: str, *, besides: Path
    ) -> list[tuple[Path, str]]:
        """(path, GUID) of every other file submitted with this content and these settings."""
        rows = self._file.query(
            "SELECT path, guid FROM files WHERE sha256=? AND settings_key=?"
            f" AND state IN {ACCEPTED_SQL} AND guid IS NOT NULL AND path != ?",
            (sha256, settings_key, _key(besides)),
        )
        return [(Path(unkey(path)), guid) for path, guid in rows]

    def find_accepted(
        self, sha256: str, settings_key: str, since: float, *, own: Path
    ) -> tuple[Path, str, float] | None:
        """(path, GUID, accepted at) of this content sent with these settings since `since`:
        by another file, or by `own` before (a file whose time alone changed, `touch`)."""
        rows = self._file.query(
            "SELECT path, guid, accepted_at FROM files WHERE sha256=? AND settings_key=?"
            f" AND (state IN {ACCEPTED_SQL} OR path=?) AND guid IS NOT NULL AND accepted_at >= ?"
            " ORDER BY path=? DESC, accepted_at DESC LIMIT 1",
            (sha256, settings_key, _key(own), since, _key(own)),
        )
        return None if not rows else (Path(unkey(rows[0][0])), rows[0][1], rows[0][2])

    def mark_adopted(
        self,
        path: Path,
        *,
        guid: str,
        size: int,
        mtime_ns: int,
        now: float,
        fetch: Fetch | None = None,
    ) -> None:
        """Done by a current `.guid` found beside the file. If ocrwatch gave this GUID to this
        path, the row keeps what makes it a dedupe source; a GUID from elsewhere does not.

        With `fetch` (its profile fetches results, and none is there), its result is waited
        for; a task the service no longer has then ends in `.error`, never in an upload."""
        self._file.write(
            "UPDATE files SET state=?6, size=?2, mtime_ns=?3,"
            " sha256=CASE WHEN guid=?1 THEN sha256 END,"
            " settings_key=CASE WHEN guid=?1 THEN settings_key END,"
            " accepted_at=CASE WHEN guid=?1 THEN accepted_at END,"
            " pdf=?7, fetch_s=?8, fetch_deadline=?4+?8, next_attempt_at=?4+?9, polls=0,"
            " refetch=?10, claimed_by=NULL,"
            " guid=?1, last_error=NULL, held=0, updated_at=?4 WHERE path=?5",
            (
                guid,
                size,
                mtime_ns,
                now,
                _key(path),
                "submitted" if fetch is None else "fetching",
                fetch is not None and fetch.pdf,
                None if fetch is None else fetch.timeout_s,
                0 if fetch is None else fetch.first_poll_s,
                fetch is not None,
            ),
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
        low, high = _range_under(under)
        with self._file.tx() as db:
            cursor = db.execute(
                "UPDATE files SET held=0, last_error=NULL, next_attempt_at=0, updated_at=? "
                "WHERE held=1 AND path >= ? AND path < ?",
                (now, low, high),
            )
            return cursor.rowcount

    def forget(self, path: Path) -> None:
        self._file.write("DELETE FROM files WHERE path=?", (_key(path),))

    def resume(self, now: float, *, in_flight: Iterable[Path] = ()) -> int:
        """Put back in the queue what a process that is gone left in flight (a crash, a kill).

        Rows this process claimed and no longer has `in_flight` go back too (their outcome
        could not be recorded); rows of another live process (`submit` beside `run`) stay.
        """
        mine, keep = this_process(), {_key(p) for p in in_flight}
        with self._file.tx() as db:
            rows = db.execute(
                "SELECT path, claimed_by, updated_at FROM files WHERE state='submitting'"
            ).fetchall()
            orphans = [
                path
                for path, owner, claimed_at in rows
                if (
                    path not in keep
                    if owner == mine
                    else not is_alive(owner, claimed_for_s=now - claimed_at)
                )
            ]
            for path in orphans:
                db.execute(
                    "UPDATE files SET state='queued', updated_at=? WHERE path=?",
                    (now, path),
                )
            polls = db.execute(
                "SELECT path, claimed_by, updated_at FROM files WHERE state='fetching'"
                " AND claimed_by IS NOT NULL"
            ).fetchall()
            for path, owner, claimed_at in polls:
                if (
                    path not in keep
                    if owner == mine
                    else not is_alive(owner, claimed_for_s=now - claimed_at)
                ):
                    db.execute(
                        "UPDATE files SET claimed_by=NULL, next_attempt_at=?,"
                        " updated_at=? WHERE path=?",
                        (now, now, path),
                    )
        return len(orphans)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._file.query(
            "SELECT state, COUNT(*) FROM files GROUP BY state"
        ):
            counts[state] = n
        return counts

    def is_empty(self) -> bool:
        """No table yet: a journal file that was created and never written (0 bytes)."""
        rows = self._file.query("SELECT count(*) FROM sqlite_master WHERE name='files'")
        return int(rows[0][0]) == 0

    def held_count(self) -> int:
        return int(self._file.query("SELECT COUNT(*) FROM files WHERE held=1")[0][0])

    def oldest_queued_at(self) -> float | None:
        """When the file that has waited longest to be sent was queued (held ones left out)."""
        rows = self._file.query(
            "SELECT MIN(created_at) FROM files"
            " WHERE state IN ('queued','failed','submitting') AND held=0"
        )
        value = rows[0][0]
        return None if value is None else float(value)

    def next_due_at(self) -> float:
        """When the next upload or poll is due."""
        rows = self._file.query(
            "SELECT MIN(next_attempt_at) FROM files WHERE state IN ('queued','failed') AND held=0"
        )
        polls = self._file.query(
            "SELECT MIN(next_attempt_at) FROM files INDEXED BY files_polls"
            " WHERE state='fetching' AND claimed_by IS NULL"
        )
        values = [float(v) for v in (rows[0][0], polls[0][0]) if v is not None]
        return min(values, default=math.inf)

    def entries(
        self, *, states: Iterable[str] = STATES, held: bool = False, limit: int = 1000
    ) -> list[Entry]:
        """The latest rows in `states`; with `held`, only the held ones (of any state)."""
        wanted = tuple(states)
        marks = ",".join("?" * len(wanted))
        rows = self._file.query(
            f"SELECT {ENTRY_COLUMNS} FROM files WHERE state IN ({marks})"
            f"{' AND held=1' if held else ''} ORDER BY updated_at DESC LIMIT ?",
            (*wanted, limit),
        )
        return [_entry(r) for r in rows]

    def failed_under(self, folder: Path) -> list[Entry]:
        """Every failed or rejected row at or below `folder` (`retry FOLDER`)."""
        low, high = _range_under(folder)
        rows = self._file.query(
            f"SELECT {ENTRY_COLUMNS} FROM files WHERE state IN ('failed', 'rejected')"
            " AND ((path >= ? AND path < ?) OR path = ?) ORDER BY path",
            (low, high, _key(folder)),
        )
        return [_entry(r) for r in rows]

    def requeue(self, paths: Iterable[Path], now: float) -> list[Path]:
        """Queue failed or rejected files again as if new: no attempts, due now, no reason.

        Returns those that were; a row in another state (or none) is left as it is. The
        caller removes their `.error`.
        """
        done = []
        refetch_since = now - TASK_LIFETIME_S
        with self._file.tx() as db:
            for path in paths:
                # Past fetch_timeout with a task the service still keeps: asked again, not
                # uploaded (and paid for) again.
                row = db.execute(
                    "UPDATE files SET state='fetching', polls=0, refetch=0, next_attempt_at=?,"
                    " fetch_deadline=?+COALESCE(fetch_s, 600), last_error=NULL, held=0,"
                    " claimed_by=NULL, updated_at=? WHERE path=? AND state='rejected'"
                    " AND refetch=1 AND guid IS NOT NULL"
                    " AND (accepted_at IS NULL OR accepted_at >= ?) RETURNING path",
                    (now, now, now, _key(path), refetch_since),
                ).fetchone()
                if row is not None:
                    done.append(path)
                    continue
                # A new start: a task the service loses gets its one resubmission again.
                row = db.execute(
                    "UPDATE files SET state='queued', attempts=0, next_attempt_at=0,"
                    " resubmits=0, last_error=NULL, held=0, created_at=?, updated_at=?"
                    " WHERE path=? AND state IN ('failed', 'rejected') RETURNING path",
                    (now, now, _key(path)),
                ).fetchone()
                if row is not None:
                    done.append(path)
        return done

    def oldest_queued(self) -> tuple[str, float] | None:
        """The file waiting longest to be sent (held ones aside), and since when: the path
        beside what `oldest_queued_at` gives the metrics."""
        rows = self._file.query(
            "SELECT path, created_at FROM files WHERE state IN ('queued', 'failed',"
            " 'submitting') AND held=0 ORDER BY created_at LIMIT 1"
        )
        return None if not rows else (unkey(rows[0][0]), float(rows[0][1]))

    def accepted_since(self, since: float) -> int:
        """Files the service accepted (or whose content it had) since `since`."""
        # `+state`: not by files_due (every submitted row) but files_accepted, which a
        # journal of an older version, read by `status`, does not have yet.
        rows = self._file.query(
            f"SELECT COUNT(*) FROM files WHERE accepted_at >= ? AND +state IN {ACCEPTED_SQL}",
            (since,),
        )
        return int(rows[0][0])

    def finished_before(
        self, cutoff: float, after: tuple[float, int], limit: int
    ) -> list[tuple[float, int, str]]:
        """(updated_at, rowid, path as stored) of rows done before `cutoff`, in that order
        from `after`: one batch of the prune's walk, an index range, no lock kept between."""
        rows = self._file.query(
            "SELECT updated_at, rowid, path FROM files INDEXED BY files_finished"
            " WHERE state IN ('submitted', 'rejected', 'completed') AND updated_at < ?"
            " AND (updated_at, rowid) > (?, ?) ORDER BY updated_at, rowid LIMIT ?",
            (cutoff, *after, limit),
        )
        return [(float(r[0]), int(r[1]), r[2]) for r in rows]

    def forget_finished(self, keys: Iterable[str], cutoff: float) -> int:
        """Delete these rows if they are still done before `cutoff` (a file may have come
        back meanwhile); one short transaction per batch."""
        with self._file.tx() as db:
            return sum(
                db.execute(
                    "DELETE FROM files WHERE path=? AND state IN ('submitted', 'rejected',"
                    " 'completed')"
                    " AND updated_at < ?",
                    (key, cutoff),
                ).rowcount
                for key in keys
            )

    def note_results(
        self,
        original: Path,
        results: Iterable[tuple[str, int, int, int]],
        now: float,
    ) -> None:
        """Remember result files written beside `original` as (name, inode, size,
        mtime_ns), beyond its row: see `written_results`."""
        rows = [
            (_key(original.parent / name), _key(original), ino, size, mtime, now)
            for name, ino, size, mtime in results
        ]
        with self._file.tx() as db:
            db.executemany(
                "INSERT INTO results(path, original, inode, size, mtime_ns, written_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET"
                " original=excluded.original, inode=excluded.inode, size=excluded.size,"
                " mtime_ns=excluded.mtime_ns, written_at=excluded.written_at",
                rows,
            )

    def results_before(
        self, cutoff: float, after: int, limit: int
    ) -> list[tuple[int, str]]:
        """(rowid, path as stored) of result records written before `cutoff`, from rowid
        `after` on: one batch of the prune's walk."""
        rows = self._file.query(
            "SELECT rowid, path FROM results WHERE rowid > ? AND written_at < ?"
            " ORDER BY rowid LIMIT ?",
            (after, cutoff, limit),
        )
        return [(int(r[0]), r[1]) for r in rows]

    def forget_results(self, keys: Iterable[str]) -> int:
        """Drop the records of result files that are gone (paths as stored)."""
        with self._file.tx() as db:
            return sum(
                db.execute("DELETE FROM results WHERE path=?", (key,)).rowcount
                for key in keys
            )

    def written_results(
        self, paths: Iterable[str | Path]
    ) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of those `paths` that ocrwatch wrote as results, keyed by the
        path's string; for `selection.is_written_result`."""
        keys = [_key(p) for p in paths]
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(keys), LOOKUP_BATCH):
            batch = keys[start : start + LOOKUP_BATCH]
            marks = ",".join("?" * len(batch))
            for row in self._file.query(
                f"SELECT path, size, mtime_ns FROM results WHERE path IN ({marks})",
                batch,
            ):
                found[unkey(row[0])] = (int(row[1]), int(row[2]))
        return found

    def meta(self) -> dict[str, str]:
        """The daemon's notes beside the rows; none in a journal an older ocrwatch wrote."""
        if not self._file.query("SELECT 1 FROM sqlite_master WHERE name='meta'"):
            return {}
        return {k: v for k, v in self._file.query("SELECT key, value FROM meta")}

    def put_meta(self, key: str, value: str | None, now: float) -> None:
        """Set a note, or remove it (None)."""
        if value is None:
            self._file.write("DELETE FROM meta WHERE key=?", (key,))
        else:
            self._file.write(
                "INSERT INTO meta(key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value,"
                " updated_at=excluded.updated_at",
                (key, value, now),
            )


def _range_under(folder: Path) -> tuple[str, str]:
    """Keys strictly below `folder`, as a range: LIKE stops at the NUL in an escaped name."""
    low = _key(folder).rstrip("/") + "/"
    return low, low[:-1] + "0"  # "0" is the character after "/"


def _entry(r: sqlite3.Row) -> Entry:
    path = unkey(r[0])
    return Entry(
        path, r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), r[9], r[10]
    )


def _poll(rows: list[sqlite3.Row]) -> Poll | None:
    if not rows:
        return None
    r = rows[0]
    results = tuple(tuple(item) for item in json.loads(r[9] or "[]"))
    return Poll(
        Path(unkey(r[0])),
        Path(unkey(r[1])),
        r[2],
        r[3],
        r[4] or "",
        bool(r[5]),
        r[6],
        float(r[7] or 0.0),
        r[8],
        results,
        r[10],
        float(r[11] or 0.0),
        bool(r[12]),
    )


def _job(rows: list[sqlite3.Row]) -> Job | None:
    if not rows:
        return None
    path, root, size, mtime_ns, attempts, profile = rows[0]
    return Job(Path(unkey(path)), Path(unkey(root)), size, mtime_ns, attempts, profile)


# A name that is not valid UTF-8 comes from os.fsdecode with its odd bytes as lone surrogates,
# which SQLite's UTF-8 cannot hold. They are stored as "\0" and two hex digits: lossless, no
# real path has a NUL, and a folder keeps its prefix for the range in `release_held`.
_ODD_BYTE: Final = re.compile("[\udc80-\udcff]")
_ESCAPED_BYTE: Final = re.compile("\0([0-9a-f]{2})")


def _key(path: str | Path) -> str:
    text = os.fspath(path)
    if text.isascii():
        return text
    return _ODD_BYTE.sub(lambda m: f"\0{ord(m.group()) - 0xDC00:02x}", text)


def unkey(key: str) -> str:
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


def is_alive(owner: str | None, *, claimed_for_s: float = 0.0) -> bool:
    """Is the process that claimed a row still running? Unknown owners count as gone.

    Where /proc hides the owner (another user's process under systemd's ProtectProc=), only
    its pid can be checked, and a pid can be reused: such a claim is believed for
    UNVERIFIED_CLAIM_MAX_S, far longer than one file's upload takes, and not for months.
    """
    try:
        boot, pid, started = (owner or "").split("/")
        now_started = _start_time(int(pid))
    except ValueError:
        return False
    if boot != _boot_id() or now_started == "gone":
        return False
    if "?" not in (started, now_started):
        return now_started == started
    return claimed_for_s < UNVERIFIED_CLAIM_MAX_S


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
        # Gone, or hidden (ProtectProc=invisible): only the kernel knows which.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            return "?"  # another user's live process
        return "?"
    except OSError:
        return "?"
    return stat[stat.rindex(")") + 2 :].split()[19]
