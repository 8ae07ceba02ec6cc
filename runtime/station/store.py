"""The station's small on-disk stores (the drop-folder ledger, the message spools) are SQLite
files: in the standard library, one small transaction per change, safe against kill -9 (WAL
journal), shared by the threads of one process under the caller's lock. synchronous=NORMAL: no
fsync per commit, so a power cut (not a crash) may undo the last few: a file is then scored
again, and the last messages of a spool may be lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import ZsadEdgeError


def open_store(path: Path | None, schema: str, what: str) -> sqlite3.Connection:
    """A connection to the store at `path` (None: in memory) with `schema` applied; a damaged
    file is one clear error naming it."""
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a commit survives a process crash without an fsync each
        db.execute(schema)
        return db
    except (sqlite3.DatabaseError, OSError) as exc:
        raise ZsadEdgeError(f"{what} {path} is unreadable ({exc}); move it away to start over") from None
