"""A drop folder: image files written by a camera or a line PC, each scored exactly once, and only
once it is complete.

When is a file complete? Writers signal it in one of the ways the industry uses, and each is
honoured:
- write `NAME.tmp` (or `.part`, `.partial`, or a name starting with `.`) and rename it to NAME
  when done: such names are never taken, and a rename is atomic;
- leave a marker `NAME.done` (or `STEM.done`) beside the file: with `done_markers`, a file is
  taken only once its marker exists (and the marker follows the file when it is moved or deleted);
- otherwise the file must be non-empty, keep its size and modification time for `settle_s`, and,
  for formats with one, end with a complete end marker (PNG's IEND chunk, JPEG's EOI, BMP's
  stated size). A file that settles without its end marker is waited for up to `incomplete_s`,
  then recorded as skipped.
A file that fails to decode is tried again, up to `retries` times, then recorded as skipped with a
`file_skipped` event. Nothing is taken twice, and nothing is "taken" before it is on record: a
file is marked done only when its frame event was written (the station calls the frame's
receipt), so after any stop — Ctrl-C, SIGTERM, kill -9, a power cut — a restart scores exactly the
files without an event. Files are known by name + size + mtime (ledger.py), so a camera that
overwrites `latest.jpg` has each picture scored.

An idle folder costs next to nothing however many scored files it keeps: it is listed again only
when its own modification time changes (a file was added, removed or renamed) or every
`full_rescan_s` (a file overwritten in place). `processed` moves or deletes scored files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ImageReadError, ZsadEdgeError
from ..image_io import IMAGE_SUFFIXES, read_image
from .ledger import FileKey, FileLedger
from .sources import Frame, FrameSource

log = logging.getLogger(__name__)
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial")
DONE_SUFFIX = ".done"
LEDGER_FILE = "drop-folders.sqlite"
PNG_END = b"IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"


def has_end_marker(path: Path, size: int) -> bool:
    """True when a file of a format with an end marker ends with it (other formats: always)."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg", ".bmp"):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
            handle.seek(max(0, size - 64))
            tail = handle.read(64)
    except OSError:
        return False
    if suffix == ".png":
        return tail.endswith(PNG_END)
    if suffix == ".bmp":
        return len(head) == 6 and int.from_bytes(head[2:6], "little") <= size
    return tail.rstrip(b"\x00").endswith(JPEG_END)  # some cameras pad after the end marker


class ProcessedAction:
    """What happens to a file once its event is on record: keep, delete, or move into a folder."""

    def __init__(self, spec: str = "keep") -> None:
        self.spec = spec
        self.folder: Path | None = None
        if spec.startswith("move:") and len(spec) > 5:
            self.folder = Path(spec[5:])
        elif spec not in ("keep", "delete"):
            raise ZsadEdgeError(f"--processed wants keep, delete or move:FOLDER, got {spec!r}")

    def apply(self, path: Path, marker: Path | None) -> None:
        for item in (path, marker):
            if item is None or self.spec == "keep":
                continue
            if self.folder is None:
                item.unlink(missing_ok=True)
                continue
            self.folder.mkdir(parents=True, exist_ok=True)
            target = self.folder / item.name
            if target.exists():  # the same name again (a camera reusing it): keep both
                target = self.folder / f"{item.stem}.{time.time_ns()}{item.suffix}"
            shutil.move(str(item), str(target))


class DropFolder(FrameSource):
    """Images of a folder in name order; with `follow`, also the files that arrive later.

    state_folder: where the ledger of recorded files lives (none: this run only).
    part_id: a regex on the file name; its `part` group (or the whole match) is the event's part id.
    """

    full_rescan_s = 2.0

    def __init__(
        self,
        name: str,
        folder: Path,
        follow: bool = False,
        state_folder: Path | None = None,
        settle_s: float = 0.5,
        poll_s: float = 0.2,
        processed: str = "keep",
        retries: int = 3,
        done_markers: bool = False,
        incomplete_s: float = 60.0,
        part_id: str | None = None,
        **options: Any,
    ) -> None:
        if options.get("stride", 1) != 1 or options.get("max_fps"):
            raise ZsadEdgeError(f"source {name}: --stride and --max-fps thin streams; a drop folder scores every file")
        super().__init__(name, **options)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ZsadEdgeError(f"source {name}: folder not found: {self.folder}")
        if retries < 1 or settle_s < 0 or poll_s <= 0:
            raise ZsadEdgeError(f"source {name}: retries must be >= 1, settle time >= 0 and poll time > 0")
        self.follow, self.settle_s, self.poll_s = follow, settle_s, poll_s
        self.retries, self.done_markers, self.incomplete_s = retries, done_markers, incomplete_s
        self.processed = ProcessedAction(processed)
        try:
            self.part_id = re.compile(part_id) if part_id else None
        except re.error as exc:
            raise ZsadEdgeError(f"source {name}: --part-id is not a valid regular expression: {exc}") from None
        self.ledger = FileLedger(Path(state_folder) / LEDGER_FILE if state_folder else None, name)
        self.scans = 0  # folder looks, listed or not (tests wait on it instead of on a clock)
        self._waiting: dict[str, tuple[FileKey, float]] = {}  # name -> (key, since when unchanged)
        self._failures: dict[FileKey, int] = {}
        self._in_flight: set[FileKey] = set()  # handed out, not yet on record
        self._listed: tuple[int, float] | None = None  # (folder mtime, when) of the last listing
        self._current: tuple[Path, FileKey] | None = None

    def key(self, path: Path) -> FileKey:
        stat = path.stat()
        return FileKey(path.name, stat.st_size, stat.st_mtime_ns)

    def read(self) -> Iterator[tuple[np.ndarray | None, str]]:
        while not self._stop.is_set():
            for path, key in self.pending():
                image = self._decode(path, key)
                if image is None:
                    continue
                self._current = (path, key)
                self._in_flight.add(key)
                yield image, path.name
                if self._stop.is_set():
                    return
            if not self.follow:
                return
            self._stop.wait(self.poll_s)

    def pending(self) -> list[tuple[Path, FileKey]]:
        """Files ready to be taken now, in name order."""
        self.scans += 1
        now = time.monotonic()
        try:
            folder_mtime = self.folder.stat().st_mtime_ns
        except OSError as exc:
            raise OSError(f"drop folder {self.folder} is gone: {exc.strerror}") from None
        fresh = self._listed is not None and self._listed[0] == folder_mtime
        if fresh and not self._waiting and now - self._listed[1] < self.full_rescan_s:
            return []
        self._listed = (folder_mtime, now)
        ready = []
        with os.scandir(self.folder) as entries:
            names = sorted(entry.name for entry in entries if self._candidate(entry))
        present = set(names)
        for gone in [name for name in self._waiting if name not in present]:
            del self._waiting[gone]
        for name in names:
            path = self.folder / name
            try:
                key = self.key(path)
            except OSError:
                continue
            if key in self.ledger or key in self._in_flight:
                continue
            if self._is_ready(path, key, now):
                ready.append((path, key))
        return ready

    def acknowledge(self, path: Path, key: FileKey) -> None:
        """The file's event is on record: mark it done, then move or delete it as asked."""
        self.ledger.mark(key, "done")
        self._in_flight.discard(key)
        try:
            self.processed.apply(path, self._marker(path))
        except OSError as exc:
            log.warning("source %s: scored %s but could not %s it: %s", self.name, path.name, self.processed.spec, exc)

    def _candidate(self, entry: os.DirEntry) -> bool:
        name = entry.name
        if name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES):
            return False
        return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and entry.is_file()

    def _marker(self, path: Path) -> Path | None:
        for marker in (path.with_name(path.name + DONE_SUFFIX), path.with_suffix(DONE_SUFFIX)):
            if marker.is_file():
                return marker
        return None

    def _is_ready(self, path: Path, key: FileKey, now: float) -> bool:
        if not self.follow:
            return True  # a folder given once is complete; a bad file is skipped when decoded
        if key.size == 0:
            return False
        if self.done_markers:
            return self._marker(path) is not None
        seen = self._waiting.get(key.name)
        if seen is None or seen[0] != key:
            self._waiting[key.name] = (key, now)
            return self.settle_s == 0 and self._complete(path, key, now)
        if now - seen[1] < self.settle_s:
            return False
        return self._complete(path, key, seen[1])

    def _complete(self, path: Path, key: FileKey, since: float) -> bool:
        """Settled: complete when it ends with its end marker; one that never does is skipped."""
        if has_end_marker(path, key.size):
            self._waiting.pop(key.name, None)
            return True
        if time.monotonic() - since >= self.incomplete_s:
            self._waiting.pop(key.name, None)
            self._give_up(key, f"incomplete: no end marker {self.incomplete_s:g} s after its last change", 1)
        return False

    def _decode(self, path: Path, key: FileKey) -> np.ndarray | None:
        """The image, or None: a failure is retried on a later look, up to `retries` attempts."""
        try:
            return read_image(path)
        except ImageReadError as exc:
            attempts = self._failures.get(key, 0) + 1
            self._failures[key] = attempts
            if attempts >= self.retries or not self.follow:
                self._failures.pop(key, None)
                self._give_up(key, f"could not decode: {exc}", attempts)
            else:
                self._waiting[key.name] = (key, time.monotonic())  # settle again before the next try
            return None

    def _give_up(self, key: FileKey, reason: str, attempts: int) -> None:
        """Record a file that will not be scored: counted, a file_skipped event, never tried again."""
        self.counts.captured += 1
        self._skip(f"{key.name}: {reason}")
        self.ledger.mark(key, "skipped")
        self._status("file_skipped", reason, origin=key.name, attempts=attempts, file=key._asdict())

    def _frame(self, index: int, now: float, image: np.ndarray, origin: str) -> Frame:
        frame = super()._frame(index, now, image, origin)
        if self._current is None:
            return frame
        path, key = self._current
        frame.details["file"] = key._asdict()
        if self.part_id is not None and (match := self.part_id.search(key.name)):
            frame.details["part_id"] = match.groupdict().get("part") or match.group(0)
        frame.receipt = lambda: self.acknowledge(path, key)
        return frame


def reconcile(sources: list[FrameSource], events: list[dict]) -> int:
    """Mark done the drop-folder files whose frame events are in `events` (the end of the log) but not
    in the ledger: a stop between writing an event and marking its file. Returns how many."""
    marked = 0
    for source in sources:
        if not isinstance(source, DropFolder):
            continue
        ours = [e for e in events if e.get("event") == "frame" and e.get("source") == source.name and "file" in e]
        keys = [FileKey(**e["file"]) for e in ours]
        new = [key for key in keys if key not in source.ledger]
        source.ledger.mark_many(new, "done")
        marked += len(new)
    return marked
