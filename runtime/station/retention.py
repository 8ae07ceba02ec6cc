"""Retention: a station runs for months on a disk of fixed size, so old evidence must go, oldest
first, and what went must be on record.

Covered: saved frames (OUT/frames), video segments (OUT/video) and rotated event logs
(OUT/events-*.jsonl). Not covered: the live events.jsonl, the per-run summaries (small), the
drop-folder ledger and the spools (state the station needs). `keep_days` removes what is older;
`max_disk_bytes` then removes the oldest until the rest fits. Each sweep that removed something
says so in one log line and one `retention` event (how many files and bytes, the oldest and
newest removed).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)
SWEEP_S = 60.0


class Retention:
    """Sweeps OUT every `interval_s` on its own thread (`start`, `close`), or once with `sweep`."""

    def __init__(
        self,
        out: Path,
        keep_days: float | None = None,
        max_disk_bytes: int | None = None,
        report: Callable[[dict], None] | None = None,
        interval_s: float = SWEEP_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.out, self.keep_days, self.max_disk_bytes = Path(out), keep_days, max_disk_bytes
        self.report, self.interval_s, self.clock = report, interval_s, clock
        self.removed_files = self.removed_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    @property
    def active(self) -> bool:
        return self.keep_days is not None or self.max_disk_bytes is not None

    def start(self) -> "Retention":
        if self.active:
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def evidence(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every file retention may remove, oldest first."""
        paths = [*self._files(self.out / "frames"), *self._files(self.out / "video"), *self.out.glob("events-*.jsonl")]
        found = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:  # removed meanwhile
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return sorted(found)

    def sweep(self) -> list[Path]:
        """Remove what is too old, then the oldest beyond the budget; returns what was removed."""
        files = self.evidence()
        doomed: list[tuple[float, int, Path]] = []
        if self.keep_days is not None:
            cutoff = self.clock() - self.keep_days * 86400
            doomed = [item for item in files if item[0] < cutoff]
            files = files[len(doomed) :]
        if self.max_disk_bytes is not None:
            total = sum(size for _, size, _ in files)
            while files and total > self.max_disk_bytes:
                item = files.pop(0)
                doomed.append(item)
                total -= item[1]
        removed = [item for item in doomed if self._remove(item[2])]
        if removed:
            self._record(removed)
        return [path for _, _, path in removed]

    def _record(self, removed: list[tuple[float, int, Path]]) -> None:
        size = sum(item[1] for item in removed)
        self.removed_files += len(removed)
        self.removed_bytes += size
        first, last = (str(item[2].relative_to(self.out)) for item in (removed[0], removed[-1]))
        log.warning("retention: removed %d file(s), %.1f MB, from %s to %s", len(removed), size / 1e6, first, last)
        if self.report is not None:
            self.report({"event": "retention", "time": round(time.time(), 6), "files": len(removed),
                         "bytes": size, "oldest": first, "newest": last})  # fmt: skip

    def _remove(self, path: Path) -> bool:
        try:
            path.unlink()
        except OSError as exc:
            log.warning("retention: cannot remove %s: %s", path, exc.strerror)
            return False
        folder = path.parent
        while folder != self.out and folder.is_relative_to(self.out):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
        return True

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        found = []
        for root, _, names in os.walk(folder):
            found.extend(Path(root) / name for name in names if not name.startswith("."))  # not files mid-write
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sweep()
