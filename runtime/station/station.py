"""The station: frames from every source through the detector on three threads, one event per frame.

    prepare (gather a batch across sources, decode checks, preprocess)
      -> infer (encoder, heads, map stages: the model call; onnxruntime releases the GIL)
      -> finish (post-process, result stages, events, sinks)

Each hand-over holds at most QUEUE_DEPTH batch, so the model call of one batch overlaps the
preprocessing of the next and the post-processing of the previous one, and memory stays bounded.
Per source, events come in capture order. `stop()` stops capture; the frames already captured
still go through, then the threads end. `watch()` is the same as a generator.

`replace_model()` swaps the model between two batches (a bundle rollout, rollout.py): each batch
is prepared, run and post-processed by the model that took it, so no frame is dropped or scored
twice, and the `bundle_changed` event comes right before the first event of the new model.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from ..errors import ServerUnavailableError
from ..pipeline import DetectionResult
from ..stopping import NEVER, StopRequest
from .batching import gather
from .events import frame_event
from .source_rules import SourceRules
from .sources import Frame, FrameSource
from .stats import StationStats

QUEUE_DEPTH = 1  # one batch waiting between threads is enough to overlap them; more only adds latency
IDLE_S = 0.05  # with no frame, the prepare thread looks at stops and stalls this often
EVENT_QUEUE = 64  # events waiting for a slow `watch()` consumer before the station waits for it
JOIN_S = 5.0
PROBES = 4  # the latest frames kept as a rollout's canary images
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0  # backoff while a model server is unavailable


def new_run_id() -> str:
    """A run's id: its UTC start time (sortable, readable) and a random suffix (two starts in one second)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class EventTaker(Protocol):
    """Takes each event; calls `receipt` (where given) once the event is on record, which may be later
    (a full disk) or never (a crash): a drop-folder file is marked done only then."""

    def __call__(self, event: dict, receipt: Callable[[], None] | None = None) -> None: ...


class StationModel(Protocol):
    """What the station runs on its threads: a local detector (pipeline.py), or a RemoteDetector
    (serving/remote.py) whose `run` is the server call."""

    result_stages: Sequence

    def load(self, images: Sequence) -> list: ...
    def prepare(self, loaded: Sequence) -> Any: ...
    def run(self, prepared: Any) -> Any: ...
    def synchronize(self) -> None: ...
    def results(self, inferred: Any) -> list[DetectionResult]: ...
    def refine(self, results: list[DetectionResult], loaded: Sequence) -> list[DetectionResult]: ...


class Sink(Protocol):
    """Gets every processed frame; must return at once (sinks.py queues the work on its own thread)."""

    def __call__(self, frame: Frame, result: DetectionResult, event: dict) -> None: ...


@dataclass(frozen=True)
class RunningModel:
    """A model and its run record (bundle, digest, signature, thresholds): what made an event."""

    model: StationModel
    record: dict

    @property
    def digest(self) -> str | None:
        return self.record.get("digest")


@dataclass
class Batch:
    """Frames moving through the three threads, with what each thread added."""

    frames: list[Frame]
    statuses: list[dict]
    running: RunningModel | None = None  # the model that prepared it runs and post-processes it
    loaded: list[np.ndarray] = field(default_factory=list)
    prepared: Any = None  # the model's `prepare` output (what `run` takes)
    inferred: Any = None  # its `run` output (what `results` takes)
    started: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)


_END = None  # passed down the threads when capture has ended and every frame went through


class Station:
    """Runs a detector on sources: `start()`, `stop()`, `join()`, `stats`.

    on_event: called (on the finish thread) with every event: frame events and the sources'
    status events (source_down / source_up, file_skipped), with the frame's receipt (EventTaker).
    sinks: called with every (frame, result, event). run_id: names this run's events and files.
    rules: per source name, a region of interest and thresholds (source_rules.py).
    part_ids: (source, capture time) -> the part id then (part_trigger.py), for frames without one.
    record: the model's run record; its digest goes into every frame event.
    """

    def __init__(
        self,
        detector: StationModel,
        sources: Sequence[FrameSource],
        batch_size: int = 1,
        max_wait_ms: float = 20.0,
        sinks: Sequence[Sink] = (),
        on_event: EventTaker | None = None,
        run_id: str | None = None,
        rules: Mapping[str, SourceRules] | None = None,
        part_ids: Callable[[str, float], str | None] | None = None,
        record: dict | None = None,
    ) -> None:
        if batch_size < 1 or max_wait_ms < 0:
            raise ValueError("batch_size must be at least 1 and max_wait_ms at least 0")
        self.current = RunningModel(detector, dict(record or {}))  # the model of the latest finished batch
        self._preparing = self.current  # the model new batches are prepared with
        self._replacement: RunningModel | None = None
        self._probes: deque[np.ndarray] = deque(maxlen=PROBES)
        self.sources = list(sources)
        self.batch_size, self.max_wait_s = batch_size, max_wait_ms / 1000.0
        self.sinks, self.on_event = list(sinks), on_event
        self.rules = dict(rules or {})
        self.part_ids = part_ids
        self.stats = StationStats(self.sources)
        # events of every start append to the same log with frame indices from 0: the run id tells them apart
        self.run_id = run_id or new_run_id()
        self.error: BaseException | None = None
        self.heartbeat = time.monotonic()  # each turn of the prepare loop: the watchdog's sign of life
        # outputs besides the sinks whose state() health and metrics show (the event log)
        self.monitored: dict[str, object] = {}
        self._by_name = {source.name: source for source in self.sources}
        self._pause_lock = threading.Lock()
        self._paused_at: dict[str, tuple[float, int]] = {}  # per paused source: since when, its paused count then
        for sink in self.sinks:
            if hasattr(sink, "connection"):  # sinks that talk to others: sink_down / sink_up on record
                sink.connection.report = self.report
        self._arrived = threading.Event()
        for source in self.sources:
            source.arrivals = self._arrived
        self._prepared: queue.Queue[Batch | None] = queue.Queue(QUEUE_DEPTH)
        self._inferred: queue.Queue[Batch | None] = queue.Queue(QUEUE_DEPTH)
        self._abandon = threading.Event()  # an error, or close() before the end: threads leave at once
        self._stopping = threading.Event()  # stop(): capture ends; a batch the server cannot take is dropped
        self._server_down_since: float | None = None
        self._finished = threading.Event()
        self._threads = [
            threading.Thread(target=self._guard, args=(body,), name=f"station-{body.__name__[1:]}", daemon=True)
            for body in (self._prepare, self._infer, self._finish)
        ]

    def start(self) -> "Station":
        for source in self.sources:
            source.start()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop capture; frames already captured are still processed (unless their model server is
        down: then they are counted as dropped)."""
        self._stopping.set()
        for source in self.sources:
            source.stop()

    @property
    def detector(self) -> StationModel:
        """The model scoring now (the latest finished batch's)."""
        return self.current.model

    def replace_model(self, model: StationModel, record: dict) -> None:
        """Score with `model` from the next batch on (any thread); the batches in flight finish with
        the model that prepared them."""
        self._replacement = RunningModel(model, dict(record))

    def probe_images(self) -> list[np.ndarray]:
        """Copies of the latest frames' images, for a new model's canary check."""
        return [image.copy() for image in self._probes.copy()]  # deque.copy: one step, safe beside appends

    @property
    def finished(self) -> bool:
        """True once every captured frame has been processed (or the station failed)."""
        return self._finished.is_set()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end; True when it came. Re-raises what stopped a station thread."""
        done = self._finished.wait(timeout)
        if self.error is not None:
            raise self.error
        return done

    def close(self) -> None:
        """Stop everything now (frames in flight are abandoned) and release the sources."""
        self.stop()
        self._abandon.set()
        for thread in self._threads:
            thread.join(JOIN_S)
        for source in self.sources:
            source.join(JOIN_S)

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001  (handed to join(); the station stops)
            if self.error is None:
                self.error = exc
            self.stop()
            self._abandon.set()
            self._finished.set()

    def _put(self, into: queue.Queue, item: Batch | None) -> None:
        while not self._abandon.is_set():
            try:
                into.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _take(self, source: queue.Queue) -> Batch | None:
        while not self._abandon.is_set():
            try:
                return source.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _statuses(self) -> list[dict]:
        for source in self.sources:
            source.check_stall()
        return [status for source in self.sources for status in source.statuses()]

    def _prepare(self) -> None:
        while not self._abandon.is_set():
            self.heartbeat = time.monotonic()
            frames = gather(self.sources, self.batch_size, self.max_wait_s, self._arrived, IDLE_S)
            statuses = self._statuses()
            if not frames:
                if statuses:
                    self._put(self._prepared, Batch([], statuses))
                if all(source.finished for source in self.sources):
                    break
                continue
            if self._replacement is not None:
                self._preparing, self._replacement = self._replacement, None
            batch = Batch(frames, statuses, self._preparing, started=time.monotonic())
            for frame in frames:
                self._prepare_frame(frame)
            batch.loaded = batch.running.model.load([frame.image for frame in frames])
            self._probes.extend(batch.loaded)
            batch.prepared = batch.running.model.prepare(batch.loaded)
            batch.stages_ms["preprocess"] = 1e3 * (time.monotonic() - batch.started)
            self._put(self._prepared, batch)
        self._put(self._prepared, _END)

    def _infer(self) -> None:
        while (batch := self._take(self._prepared)) is not _END:
            if batch.frames:
                began = time.monotonic()
                batch.inferred = self._run_model(batch)
                if batch.inferred is None:
                    batch.frames = []  # dropped and counted: only its sources' status events go on
                else:
                    batch.running.model.synchronize()
                    batch.stages_ms["infer"] = 1e3 * (time.monotonic() - began)
                batch.prepared = None
            self._put(self._inferred, batch)
        self._put(self._inferred, _END)

    def _run_model(self, batch: Batch) -> Any:
        """The model call; while a model server is unavailable (a RemoteDetector), retried with
        backoff between `server_down` and `server_up` events. Live sources meanwhile drop their
        oldest frames (counted); files wait. After stop() a batch the server cannot take is
        dropped and counted (a file's event is then missing, so a restart scores it again)."""
        delay = RETRY_FIRST_S
        while True:
            try:
                inferred = batch.running.model.run(batch.prepared)
            except ServerUnavailableError as exc:
                if self._server_down_since is None:
                    self._server_down_since = time.time()
                    self._emit({"event": "server_down", "time": self._server_down_since, "reason": str(exc)})
                if self._stopping.is_set() or self._abandon.is_set():
                    for frame in batch.frames:
                        self.stats.drop(frame.source)
                    return None
                self.heartbeat = time.monotonic()  # waiting for the server is not a hang
                self._stopping.wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if self._server_down_since is not None:
                now = time.time()
                self._emit({"event": "server_up", "time": now, "down_s": round(now - self._server_down_since, 3)})
                self._server_down_since = None
            return inferred

    def _finish(self) -> None:
        while (batch := self._take(self._inferred)) is not _END:
            for status in batch.statuses:
                self._emit(status)
            if not batch.frames:
                continue
            if batch.running is not self.current:
                self._changed(batch.running)
            model = batch.running.model
            began = time.monotonic()
            results = model.results(batch.inferred)
            results = [self._judge(frame, result) for frame, result in zip(batch.frames, results)]
            batch.stages_ms["postprocess"] = 1e3 * (time.monotonic() - began)
            if model.result_stages:
                began = time.monotonic()
                model.refine(results, batch.loaded)
                batch.stages_ms["refine"] = 1e3 * (time.monotonic() - began)
            done = time.time()
            for frame, result in zip(batch.frames, results):
                waited = 1e3 * (batch.started - frame.captured_monotonic)
                stages = {"wait": waited, **batch.stages_ms}
                event = {"run": self.run_id, **frame_event(frame, result, stages, self._dropped(frame), done)}
                event["bundle_digest"] = self.current.digest
                for sink in self.sinks:  # first: a forwarding sink spools the message before the event is on record
                    sink(frame, result, event)
                self._record(event, frame.receipt)
        for status in self._statuses():
            self._emit(status)
        self._finished.set()

    def _changed(self, running: RunningModel) -> None:
        """The first batch of a new model: on record before its frames' events, and for the sinks
        that draw with its thresholds."""
        old = self.current
        self.current = running
        for sink in self.sinks:
            if hasattr(sink, "use_model"):
                sink.use_model(running.model.scoring, running.record)
        self._emit({"event": "bundle_changed", "time": time.time(), "old": old.digest, "new": running.digest,
                    "bundle": running.record.get("bundle"), "signature": running.record.get("signature")})  # fmt: skip

    def _prepare_frame(self, frame: Frame) -> None:
        """The part id of a trigger, where the frame has none of its own; and the source's region of
        interest: the model sees its bounding box (source_rules.py)."""
        if self.part_ids is not None and "part_id" not in frame.details:
            part = self.part_ids(frame.source, frame.captured_at)
            if part is not None:
                frame.details["part_id"] = part
        rules = self.rules.get(frame.source)
        if rules is not None and rules.roi is not None:
            frame.image, box = rules.crop(frame.image)
            frame.details["roi"] = list(box)

    def _judge(self, frame: Frame, result: DetectionResult) -> DetectionResult:
        rules = self.rules.get(frame.source)
        if rules is None:
            return result
        box = frame.details.get("roi")
        for name in ("image_threshold", "map_threshold"):  # on record: which thresholds judged this frame
            if getattr(rules, name) is not None:
                frame.details[name] = getattr(rules, name)
        return rules.judge(result, tuple(box) if box else None)

    def pause_source(self, name: str, by: Mapping[str, Any]) -> bool:
        """Stop scoring a source (a changeover): a live one keeps capturing and counts its frames as
        skipped, a recorded one waits. On record with who asked (`by`) and when; False when it
        already was paused. Any thread."""
        return self._set_paused(name, True, by)

    def resume_source(self, name: str, by: Mapping[str, Any]) -> bool:
        """Score a paused source again; on record with who asked, how long it was paused and how many
        frames it skipped meanwhile. False when it was not paused."""
        return self._set_paused(name, False, by)

    def _set_paused(self, name: str, paused: bool, by: Mapping[str, Any]) -> bool:
        source = self._by_name.get(name)
        if source is None:
            raise KeyError(f"no source named {name!r}; the station has {', '.join(self._by_name)}")
        with self._pause_lock:
            if source.paused == paused:
                return False
            now = time.time()
            kind = "source_paused" if paused else "source_resumed"
            event = {"event": kind, "source": name, "time": now, "by": dict(by)}
            if paused:
                self._paused_at[name] = (now, source.counts.paused)
                source.pause()
            else:
                source.resume()
                since, skipped = self._paused_at.pop(name)
                event.update(paused_s=round(now - since, 3), skipped=source.counts.paused - skipped)
            self._emit(event)
            return True

    def report(self, event: dict) -> None:
        """Put an event from outside the frame path on record (a sink's connection state); any thread."""
        self._emit(event)

    def _emit(self, event: dict) -> None:
        self._record({"run": self.run_id, **event})

    def _dropped(self, frame: Frame) -> int:
        return self._by_name[frame.source].counts.dropped

    def _record(self, event: dict, receipt: Callable[[], None] | None = None) -> None:
        """Count the event and hand it on (with the receipt of a file, called once it is on record)."""
        self.stats.record(event)
        if self.on_event is not None:
            self.on_event(event, receipt)
        elif receipt is not None:
            receipt()


def watch(
    detector: StationModel,
    sources: Sequence[FrameSource],
    batch_size: int = 1,
    max_wait_ms: float = 20.0,
    stop: StopRequest = NEVER,
    sinks: Sequence[Sink] = (),
) -> Iterator[dict]:
    """Run a station and yield its events as they come (frames, and source_down / source_up), until
    every source has ended or `stop` is requested (then the frames already captured come too).
    Leaving the loop early stops the station."""
    events: queue.Queue[dict] = queue.Queue(EVENT_QUEUE)
    closed = threading.Event()

    def deliver(event: dict, receipt: Callable[[], None] | None = None) -> None:
        while not closed.is_set():
            try:
                events.put(event, timeout=0.1)
            except queue.Full:
                continue
            if receipt is not None:  # in the consumer's hands: on record as far as the station can tell
                receipt()
            return

    station = Station(detector, sources, batch_size, max_wait_ms, sinks, on_event=deliver).start()
    try:
        while not (station.finished and events.empty()):
            if stop.requested:
                station.stop()
            try:
                yield events.get(timeout=0.05)
            except queue.Empty:
                continue
        station.join()
    finally:
        closed.set()
        station.close()
