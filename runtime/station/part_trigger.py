"""Part ids from the line's controller: which part is in front of the cameras now.

- MQTT (`watch --part-trigger mqtt://broker/line1/part`): a message's payload is the part id as
  text, or a JSON object {"part_id": "...", "source": "cam1"} where `source` limits it to one camera.
- OPC UA (`watch --part-trigger opc.tcp://plc:4840 --part-trigger-node ns=2;s=Line1.PartId`): each
  change of the node's value is a new part (for every source); the value when the station starts
  counts as the part in front of it then.

Each frame gets the id of the latest trigger received at or before its capture time (its own
source's, else one for every source), so a frame captured just before a new part arrives keeps
the old part's id. A trigger older than `max_age_s` no longer names frames: a stopped line does
not stamp an old part id on everything that follows.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque

from ..errors import ZsadEdgeError
from .credentials import masked
from .messaging import MqttTarget
from .mqtt_client import CONNECT_TIMEOUT_S, connect_mqtt
from .plc import OpcUaServer

log = logging.getLogger(__name__)
HISTORY = 256  # triggers kept: enough for frames still queued when the next part arrives
ALL_SOURCES = "*"


class PartTrigger:
    """The triggers received so far, and `part_for(source, at)`; subclasses listen and `note` them."""

    def __init__(self, max_age_s: float = 60.0) -> None:
        self.max_age_s = max_age_s
        self.received = self.unreadable = 0
        self._history: deque[tuple[float, str, str]] = deque(maxlen=HISTORY)  # (time, source, part id)
        self._lock = threading.Lock()

    def part_for(self, source: str, at: float) -> str | None:
        """The part id in front of `source` at wall-clock time `at`, or None."""
        with self._lock:
            for when, target, part in reversed(self._history):
                if when <= at and target in (source, ALL_SOURCES):
                    return part if at - when <= self.max_age_s else None
        return None

    def note(self, part: str, source: str = ALL_SOURCES) -> None:
        with self._lock:
            self._history.append((time.time(), source, part))
        self.received += 1

    def close(self) -> None:
        """Stop listening."""


class MqttPartTrigger(PartTrigger):
    """Subscribes to a topic (QoS 1, again after every reconnect). Ready only once the broker has
    confirmed the subscription: a trigger sent before that would be lost, and a topic the broker
    refuses is an error at start."""

    def __init__(self, url: str, max_age_s: float = 60.0) -> None:
        super().__init__(max_age_s)
        self.target = MqttTarget.parse(url)
        topic = self.target.topic
        confirmed, refused = threading.Event(), []

        def acknowledged(client, userdata, mid, reason_codes, properties) -> None:
            refused.extend(str(code) for code in reason_codes if code.is_failure)
            confirmed.set()

        def subscribe(client) -> None:
            client.on_subscribe = acknowledged
            client.subscribe(topic, qos=1)

        self.client = connect_mqtt(self.target, "--part-trigger", on_connect=subscribe, on_message=self._on_message)
        if not confirmed.wait(CONNECT_TIMEOUT_S) or refused:
            self.close()
            reason = refused[0] if refused else "no answer"
            raise ZsadEdgeError(f"--part-trigger: the broker did not accept the subscription to {topic!r}: {reason}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:
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
        self.note(part, source)


class OpcUaPartTrigger(PartTrigger):
    """Subscribes to data changes of one node (a PLC's part id variable). A session that is lost (a
    PLC restart, a cable) is noticed by a read every `check_s` and opened again, with backoff."""

    check_s = 2.0
    max_backoff_s = 30.0

    def __init__(self, url: str, node_id: str | None, max_age_s: float = 60.0, timeout_s: float = 5.0) -> None:
        super().__init__(max_age_s)
        self.server, self.node_id, self.timeout_s = OpcUaServer.parse(url, "--part-trigger"), node_id, timeout_s
        if not node_id:
            raise ZsadEdgeError("--part-trigger opc.tcp://... needs --part-trigger-node NODEID (the part id variable)")
        self.client = None
        self.reconnects = 0
        try:
            self._subscribe()
        except Exception as exc:  # noqa: BLE001  (asyncua raises many kinds; all mean "cannot start")
            raise ZsadEdgeError(f"--part-trigger {self.server.shown} {node_id}: {type(exc).__name__}: {exc}") from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="part-trigger", daemon=True)
        self._thread.start()

    def datachange_notification(self, node, value, data) -> None:  # asyncua's subscription handler
        if value is None or str(value) == "":
            self.unreadable += 1
            return
        self.note(str(value))

    def close(self) -> None:
        self._stop.set()
        self._disconnect()

    def _subscribe(self) -> None:
        client = self.server.connect(self.timeout_s)
        try:
            self.node = client.get_node(self.node_id)
            client.create_subscription(100, self).subscribe_data_change(self.node)
        except BaseException:
            client.disconnect()  # also stops the client's event-loop thread
            raise
        self.client = client

    def _watch(self) -> None:
        delay = self.check_s
        while not self._stop.wait(delay):
            try:
                if self.client is None:
                    self._subscribe()
                    self.reconnects += 1
                    log.warning("part trigger: %s is back", self.server.shown)
                self.node.read_value()
                delay = self.check_s
            except Exception as exc:  # noqa: BLE001  (a lost session: any asyncua error)
                if self.client is not None:
                    log.warning("part trigger: lost %s (%s); reconnecting", self.server.shown, type(exc).__name__)
                    self._disconnect()
                delay = min(2 * delay, self.max_backoff_s)

    def _disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # noqa: BLE001  (already gone)
                log.debug("part trigger: disconnect failed", exc_info=True)


def open_part_trigger(url: str, node_id: str | None = None) -> PartTrigger:
    """The trigger a URL names: mqtt[s]:// or opc.tcp://."""
    if url.startswith("opc.tcp://"):
        return OpcUaPartTrigger(url, node_id)
    if url.startswith(("mqtt://", "mqtts://")):
        return MqttPartTrigger(url)
    raise ZsadEdgeError(
        f"--part-trigger wants mqtt://broker/topic or opc.tcp://server (with --part-trigger-node), got {masked(url)!r}"
    )
