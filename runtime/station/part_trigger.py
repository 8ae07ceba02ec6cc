"""Part ids from the line's controller: a message on an MQTT topic says which part is in front of
the cameras now (`watch --part-trigger mqtt://broker/line1/part`).

The payload is the part id as text, or a JSON object {"part_id": "...", "source": "cam1"} where
`source` limits it to one camera. Each frame gets the id of the latest trigger received at or
before its capture time (its own source's, else one for every source), so a frame captured just
before a new part arrives keeps the old part's id. A trigger older than `max_age_s` no longer
names frames: a stopped line does not stamp an old part id on everything that follows.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque

from .messaging import MqttTarget
from .mqtt_client import connect_mqtt

log = logging.getLogger(__name__)
HISTORY = 256  # triggers kept: enough for frames still queued when the next part arrives
ALL_SOURCES = "*"


class MqttPartTrigger:
    """Subscribes to a topic (QoS 1, again after every reconnect) and answers `part_for(source, at)`."""

    def __init__(self, url: str, max_age_s: float = 60.0) -> None:
        self.target = MqttTarget.parse(url)
        self.max_age_s = max_age_s
        self.received = self.unreadable = 0
        self._history: deque[tuple[float, str, str]] = deque(maxlen=HISTORY)  # (time, source, part id)
        self._lock = threading.Lock()
        topic = self.target.topic
        self.client = connect_mqtt(
            self.target, "--part-trigger", on_connect=lambda client: client.subscribe(topic, qos=1),
            on_message=self._on_message,
        )  # fmt: skip

    def part_for(self, source: str, at: float) -> str | None:
        """The part id in front of `source` at wall-clock time `at`, or None."""
        with self._lock:
            for when, target, part in reversed(self._history):
                if when <= at and target in (source, ALL_SOURCES):
                    return part if at - when <= self.max_age_s else None
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:
        received = time.time()
        text = message.payload.decode("utf-8", errors="replace").strip()
        source, part = ALL_SOURCES, text
        if text.startswith("{"):
            try:
                data = json.loads(text)
                part, source = str(data["part_id"]), str(data.get("source", ALL_SOURCES))
            except (ValueError, KeyError, TypeError):
                part = ""
        if not part:
            self.unreadable += 1
            log.warning("part trigger: unreadable message on %s: %.80r", message.topic, text)
            return
        with self._lock:
            self._history.append((received, source, part))
        self.received += 1
