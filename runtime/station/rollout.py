"""Live bundle rollout: a station keeps running while its bundle changes.

The station's bundle path (a folder, or a symlink switched to a new version folder: the atomic
way to release one) is looked at every `check_s`. A new version is taken once every one of its
files has stayed unchanged for `settle_s` (a copy in progress is waited for), then loaded beside
the running model with every check a start makes (hashes, the signature where trusted keys are
set, input size), and run on a canary: the station's latest frames (or a grey image before the
first frame) must give finite scores and maps of the frames' sizes. Only then does the station
swap it in between two batches (station.py: `bundle_changed`). A version failing any check is
refused with a `bundle_rejected` event naming the reason, and the running one stays; the same
version is not tried again until it changes. A failure while the files are still changing is not
a rejection: the copy is waited for.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..contract import MANIFEST_FILE
from ..errors import ZsadEdgeError

LOG = logging.getLogger(__name__)
CANARY_SIDE = 256  # the grey canary image before any frame was seen


@dataclass(frozen=True)
class BundleVersion:
    """What a bundle path points at now: the resolved folder and every file's size and mtime."""

    folder: Path
    files: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, path: Path) -> "BundleVersion | None":
        """The version at `path`, or None while it has no manifest (mid-switch, mid-copy)."""
        try:
            folder = path.resolve(strict=True)
            files = tuple(
                (item.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns)
                for item in sorted(folder.rglob("*"))
                if item.is_file() and (stat := item.stat())
            )
        except OSError:
            return None
        if not any(name == MANIFEST_FILE for name, _, _ in files):
            return None
        return cls(folder, files)


def canary(model: Any, probes: list[np.ndarray]) -> None:
    """Refuse a model whose outputs on the probe frames are not finite or not of the frames' sizes."""
    images = probes or [np.full((CANARY_SIDE, CANARY_SIDE, 3), 128, np.uint8)]
    results = model.score_batch(images)
    for image, result in zip(images, results):
        if not np.isfinite(result.score) or not np.isfinite(result.anomaly_map).all():
            raise ZsadEdgeError("canary: the new bundle gives non-finite scores or maps on the station's latest frames")
        if result.anomaly_map.shape[:2] != image.shape[:2]:
            raise ZsadEdgeError(
                f"canary: the new bundle's map is {result.anomaly_map.shape[:2]} for a {image.shape[:2]} frame"
            )


OpenModel = Callable[[Path], tuple[Any, dict]]  # a version folder -> (model, run record)


class Rollout:
    """Watches a bundle path on its own thread and hands verified new versions to the station."""

    def __init__(self, path: Path, open_model: OpenModel, station, check_s: float = 5.0, settle_s: float = 2.0) -> None:
        self.path, self.open_model, self.station = Path(path), open_model, station
        self.check_s, self.settle_s = check_s, settle_s
        self.running = BundleVersion.of(self.path)
        self.rejected: BundleVersion | None = None
        self.counts = {"changed": 0, "rejected": 0}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bundle-rollout", daemon=True)

    def start(self) -> "Rollout":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._thread.join(max(self.check_s, self.settle_s) + 60.0)  # a load in progress ends first

    def _loop(self) -> None:
        while not self._closed.wait(self.check_s):
            seen = BundleVersion.of(self.path)
            if seen is None or seen in (self.running, self.rejected) or not self._settled(seen):
                continue
            self._try(seen)

    def _settled(self, seen: BundleVersion) -> bool:
        """True when the version stayed the same for settle_s (a copy in progress did not)."""
        return not self._closed.wait(self.settle_s) and BundleVersion.of(self.path) == seen

    def _try(self, seen: BundleVersion) -> None:
        began = time.monotonic()
        try:
            model, record = self.open_model(seen.folder)
            canary(model, self.station.probe_images())
        except Exception as exc:  # noqa: BLE001  (a bad bundle of any kind must never stop the line)
            if BundleVersion.of(self.path) != seen:
                return  # still changing: look again once it settles
            self.rejected = seen
            self.counts["rejected"] += 1
            reason = str(exc) if isinstance(exc, ZsadEdgeError) else f"{type(exc).__name__}: {exc}"
            LOG.warning("bundle %s refused, the running one stays: %s", seen.folder, reason)
            self.station.report({"event": "bundle_rejected", "time": time.time(), "bundle": str(seen.folder),
                                 "reason": reason, "running": self.station.current.digest})  # fmt: skip
            return
        self.station.replace_model(model, {**record, "load_s": round(time.monotonic() - began, 3)})
        self.running = seen
        self.counts["changed"] += 1
