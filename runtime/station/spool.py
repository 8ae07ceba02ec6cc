"""Store and forward: messages a broker or web server has not yet acknowledged, kept on disk.

Every message a forwarding sink sends goes into its spool first and leaves it only when the
receiver acknowledged it, so a broker that is down, a stop, or a crash loses nothing: the spool
is replayed oldest first when the receiver is back, also by the next run. The spool is bounded
(`max_items`): beyond it the oldest message is dropped and counted, so an outage of weeks cannot
fill the disk. SQLite (standard library) keeps it: one small transaction per message, safe
against kill -9 (store.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

from .store import open_store

DEFAULT_MAX_ITEMS = 100_000
SCHEMA = "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, payload BLOB)"


class Spool:
    """An on-disk FIFO of (topic, payload) messages; `path` None keeps it in memory (tests, no --out)."""

    def __init__(self, path: Path | None, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        if max_items < 1:
            raise ValueError("a spool must hold at least one message")
        self.path, self.max_items = path, max_items
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = open_store(path, SCHEMA, "the message spool")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def put(self, topic: str, payload: bytes) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT INTO messages (topic, payload) VALUES (?, ?)", (topic, payload))
            excess = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] - self.max_items
            if excess > 0:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,)
                )
                self.dropped += excess

    def oldest(self) -> tuple[int, str, bytes] | None:
        with self._lock:
            return self._db.execute("SELECT id, topic, payload FROM messages ORDER BY id LIMIT 1").fetchone()

    def newest(self, limit: int) -> list[tuple[int, bytes]]:
        """(id, payload) of the newest `limit` messages, newest first."""
        with self._lock:
            return self._db.execute("SELECT id, payload FROM messages ORDER BY id DESC LIMIT ?", (limit,)).fetchall()

    def remove(self, item_id: int) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM messages WHERE id = ?", (item_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
