"""Which drop-folder files have been recorded: an indexed store (SQLite, in the standard library).

A file is known by name, size and modification time, so a camera that overwrites `latest.jpg`
gets each new picture scored. Recording one file is one small transaction whatever the history
holds (a list rewritten per file would cost more with every part), and the set of recorded keys
is kept in memory for the folder scans. Writes are committed at once (store.py): a file marked
here stays marked after a crash.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterable, NamedTuple

from .store import open_store

OUTCOMES = ("done", "skipped")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS files (source TEXT, name TEXT, size INTEGER, mtime_ns INTEGER, "
    "outcome TEXT, recorded_at REAL, PRIMARY KEY (source, name, size, mtime_ns))"
)


class FileKey(NamedTuple):
    name: str
    size: int
    mtime_ns: int


class FileLedger:
    """The recorded files of one source; `path` None keeps them in memory only (no restart memory)."""

    def __init__(self, path: Path | None, source: str) -> None:
        self.path, self.source = path, source
        self._lock = threading.Lock()
        self._db = open_store(path, SCHEMA, f"source {source}: the drop-folder state")
        rows = self._db.execute("SELECT name, size, mtime_ns FROM files WHERE source = ?", (source,))
        self._known = {FileKey(*row) for row in rows}

    def __contains__(self, key: FileKey) -> bool:
        return key in self._known

    def __len__(self) -> int:
        return len(self._known)

    def mark(self, key: FileKey, outcome: str) -> None:
        self.mark_many([key], outcome)

    def mark_many(self, keys: Iterable[FileKey], outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        keys = [key for key in keys if key not in self._known]
        if not keys:
            return
        now = time.time()
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [(self.source, *key, outcome, now) for key in keys],
            )
            self._known.update(keys)
