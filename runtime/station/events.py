"""What a station says about each frame: the event dict, and the append-only JSON-lines log of them.

An event carries what an operator or a MES needs without the images: verdict and score, map
statistics, the boxes and areas of the anomalous regions, per-stage latency, and the source's
drop counter at that moment, and for drop-folder files the file's key (and part id).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ZsadEdgeError
from ..pipeline import DetectionResult
from ..regions import anomalous_regions
from .sources import Frame

log = logging.getLogger(__name__)


def frame_event(frame: Frame, result: DetectionResult, stages_ms: dict[str, float], dropped: int, done: float) -> dict:
    """The event of one processed frame; `done` is the wall-clock time its result was ready."""
    mask = result.refinement.mask if result.refinement is not None else result.mask
    regions, total = anomalous_regions(mask)
    summary = result.summary()
    del summary["height"], summary["width"]
    return {
        "event": "frame",
        "source": frame.source,
        "frame": frame.index,
        "origin": frame.origin,
        "captured_at": round(frame.captured_at, 6),
        "captured_monotonic": round(frame.captured_monotonic, 6),
        **summary,
        "regions": regions,
        "regions_total": total,
        "latency_ms": round((done - frame.captured_at) * 1e3, 3),
        "stages_ms": {stage: round(ms, 3) for stage, ms in stages_ms.items()},
        "source_dropped": dropped,
        **frame.details,
    }


MAX_HELD = 10_000  # events held in memory while the disk is full; older ones are lost, counted
TAIL_BYTES = 1 << 20  # how much of the log's end a restart reads to find what was recorded last
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def read_events(path: Path) -> Iterator[dict]:
    """The events of a log, in order. A torn last line (a crash in mid-write) is not an event and is
    never returned; neither is any line that is not a JSON object."""
    with open(path, "rb") as handle:
        yield from _parse_lines(handle.read())


def tail_events(path: Path, max_bytes: int = TAIL_BYTES) -> list[dict]:
    """The whole events at the end of a log (at most max_bytes of it); none when there is no log."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    if size > max_bytes:
        data = data[data.find(b"\n") + 1 :]  # the first line may be cut by the window
    return list(_parse_lines(data))


def _parse_lines(data: bytes) -> Iterator[dict]:
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn or empty
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def set_aside_torn_tail(path: Path) -> int:
    """A log whose last line has no newline was cut by a crash: move that part to PATH.torn (kept as
    evidence, one per line) so the next event starts a line of its own. Returns the bytes moved."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
            if tail.endswith(b"\n"):
                return 0
            cut = size - len(tail) + tail.rfind(b"\n") + 1
            handle.seek(cut)
            torn = handle.read()
            with open(path.with_name(path.name + ".torn"), "ab") as evidence:
                evidence.write(torn + b"\n")
            handle.truncate(cut)
            return len(torn)
    except FileNotFoundError:
        return 0


class EventLog:
    """events.jsonl, opened for appending before any frame (an unwritable folder fails at once).

    Every event is one write(2) of one whole line, so a crash loses at most the line being written,
    and a restart sets such a torn line aside (`set_aside_torn_tail`). A full disk is a state, not a
    crash: a line that does not fit is cut back off, events are held in memory (up to MAX_HELD,
    older ones then lost and counted), `disk_full` is true, and each `write` or `retry` tries again;
    once they fit, a `disk_full` event saying since when, how many were held and lost goes first.
    Receipts (drop-folder files) are called only once their event's line is written and synced
    to the disk (fdatasync), so a file marked done has its event even after a power cut.

    only_anomalies: write frame events of anomalous frames only (status events always).
    rotate_bytes: past this size the log is renamed events-UTCTIME.jsonl and a new one begins, so
    retention can remove old events as it removes old images."""

    def __init__(
        self, path: Path, only_anomalies: bool = False, max_held: int = MAX_HELD, rotate_bytes: int | None = None
    ) -> None:
        self.path = Path(path)
        self.only_anomalies, self.max_held, self.rotate_bytes = only_anomalies, max_held, rotate_bytes
        self.disk_full = False
        self.lost = 0
        self._full_since: float | None = None
        self._lost_at_start = 0
        self._held: deque[tuple[bytes, Callable[[], None] | None]] = deque()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.torn_bytes = set_aside_torn_tail(self.path)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ZsadEdgeError(f"cannot write events to {self.path}: {exc.strerror}") from None

    @property
    def pending(self) -> int:
        """Events held in memory, waiting for room on the disk."""
        return len(self._held)

    def write(self, event: dict, on_written: Callable[[], None] | None = None) -> None:
        if self.only_anomalies and event["event"] == "frame" and not event["is_anomalous"]:
            if on_written is not None:
                on_written()
            return
        line = (json.dumps(event) + "\n").encode("utf-8")
        with self._lock:
            if len(self._held) >= self.max_held:
                self._held.popleft()
                self.lost += 1
            self._held.append((line, on_written))
            receipts = self._write_held()
        for receipt in receipts:
            receipt()

    def retry(self) -> None:
        """Try again to write what a full disk held back (the station calls this while it runs)."""
        with self._lock:
            receipts = self._write_held() if self._held else []
        for receipt in receipts:
            receipt()

    def state(self) -> dict:
        return {"disk_full": self.disk_full, "held": self.pending, "lost": self.lost}

    def close(self) -> None:
        self.retry()
        if self._held:
            log.error("events: %d event(s) could not be written (disk full); they are lost", len(self._held))
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        os.close(self.fd)

    def _write_held(self) -> list[Callable[[], None]]:
        receipts = []
        if self.disk_full and not self._append(self._outage_line()):
            return receipts
        if self.disk_full:
            log.warning("events: the disk has room again; %d held event(s) written", len(self._held))
            self.disk_full, self._full_since = False, None
        while self._held:
            line, receipt = self._held[0]
            if not self._append(line):
                if not self.disk_full:
                    log.warning("events: no room on the disk for %s; holding events in memory", self.path)
                    self.disk_full, self._full_since, self._lost_at_start = True, time.time(), self.lost
                return receipts
            self._held.popleft()
            if receipt is not None:
                receipts.append(receipt)
        if receipts:  # a file is about to be marked done: its event must survive a power cut first
            with contextlib.suppress(OSError):
                os.fdatasync(self.fd)
        if self.rotate_bytes and os.fstat(self.fd).st_size >= self.rotate_bytes:
            self._rotate()
        return receipts

    def rotated(self) -> list[Path]:
        """The rotated logs beside this one, oldest first."""
        return sorted(self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}"))

    def _rotate(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{time.time_ns() % 1_000_000:06d}"
        try:
            os.replace(self.path, self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}"))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:  # keep appending to the open file; the next write tries again
            log.warning("events: cannot rotate %s: %s", self.path, exc.strerror)
            return
        os.close(self.fd)
        self.fd = fd

    def _outage_line(self) -> bytes:
        outage = {
            "event": "disk_full",
            "since": round(self._full_since or 0.0, 6),
            "until": round(time.time(), 6),
            "held": len(self._held),
            "lost": self.lost - self._lost_at_start,
        }
        return (json.dumps(outage) + "\n").encode("utf-8")

    def _append(self, data: bytes) -> bool:
        """Write one whole line, or nothing: a partial write on a full disk is cut back off."""
        start = os.fstat(self.fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(self.fd, data[done:])
            return True
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)
            return False

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
