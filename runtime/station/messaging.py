"""Sinks that tell other systems: MQTT (the factory's usual message bus) and an HTTP webhook.

Both send the frame event (JSON) of anomalous frames, behind a per-source rate limit (sinks.py),
and both store and forward: a message goes into the sink's on-disk spool (spool.py) before its
frame's event is written and leaves it only once the broker or web server acknowledged it,
oldest first, from a sender thread; so an outage, a stop or a crash loses nothing and a restart
replays what was left. Each reports its connection state: `sink_down` / `sink_up` events, /healthz, and
the metrics. Both are checked before the first frame: an unreachable broker, refused credentials
or a malformed URL stop the station at start with one line. Credentials never show (credentials.py).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import unquote, urlsplit

from ..errors import ZsadEdgeError
from ..pipeline import DetectionResult
from .credentials import expand, masked, remember, split_userinfo
from .mqtt_client import connect_mqtt
from .sinks import Connection, QueuedSink, lower_priority
from .sources import Frame
from .spool import Spool

log = logging.getLogger(__name__)

MQTT_PASSWORD_ENV = "ZSAD_EDGE_MQTT_PASSWORD"  # read from the environment, not the command line `ps` shows
DEFAULT_TOPIC = "zsad-edge/anomalies"
ACK_TIMEOUT_S = 5.0  # one message's wait for its acknowledgement before the receiver counts as down
RETRY_S = 1.0  # while down, try the spool's oldest message again this often
UNRECORDED_WINDOW = 1000  # newest spooled messages looked at for a kill between spooling and the event


@dataclass(frozen=True)
class MqttTarget:
    """Where and how to publish: from mqtt[s]://[user[:password]@]host[:port]/topic and the TLS options."""

    host: str
    port: int
    topic: str
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def parse(cls, url: str, username: str | None = None, **tls_files: str | None) -> "MqttTarget":
        url = expand(url, "--mqtt")
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ZsadEdgeError(f"--mqtt wants mqtt://host[:port]/topic or mqtts://... (TLS), got {masked(url)!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ZsadEdgeError(f"--mqtt: bad port in {masked(url)!r}") from None
        remember(os.environ.get(MQTT_PASSWORD_ENV))
        return cls(
            host=parts.hostname,
            port=port,
            topic=unquote(parts.path.lstrip("/")) or DEFAULT_TOPIC,
            tls=tls or any(tls_files.values()),
            username=username or (unquote(parts.username) if parts.username else None),
            password=os.environ.get(MQTT_PASSWORD_ENV) or (unquote(parts.password) if parts.password else None),
            **tls_files,
        )


class Refused(Exception):
    """The receiver answered and will never take this message (a 4xx): counted failed, not retried."""


class ForwardingSink(QueuedSink):
    """A sink that stores, then forwards, in order: subclasses implement `send`.

    Each message is put into the spool at once, on the station's thread, before the frame's event
    is written (one small SQLite commit, never held up by the network): so no stop, kill -9
    included, can leave an anomalous event on record without its message. A sender thread sends
    the spool's oldest message whenever there is one and the receiver answers, retrying every
    RETRY_S while it does not. `written` counts messages taken
    into the spool, `delivered` those the receiver acknowledged, `failed` those it refused for
    good; `spooled` is what waits. `connection` reports the receiver's state (sinks.Connection).
    """

    def __init__(
        self,
        spool: Spool | None = None,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        recorded: Sequence[dict] = (),
        **options,
    ) -> None:
        """recorded: the end of the event log, to forget what a killed run spooled but never recorded."""
        self.spool = spool if spool is not None else Spool(None)  # (an empty spool is falsy)
        self.forget_unrecorded(recorded)
        self.ack_timeout_s = ack_timeout_s
        self.delivered = 0
        self.connection = Connection(self.kind, self.target)
        self._more = threading.Event()
        self._sender_done = threading.Event()
        self._left_in_spool: int | None = None  # once the spool is closed at the end of the run
        super().__init__(**options)
        self._sender = threading.Thread(target=self._send_loop, name=f"sender-{self.kind}", daemon=True)
        self._sender.start()
        if len(self.spool):
            log.warning("%s sink: %d message(s) left by an earlier run will be sent first", self.kind, len(self.spool))
            self.wake()

    def wake(self) -> None:
        """Have the sender look at the spool now (a message came, or the receiver is back)."""
        self._more.set()

    @property
    def target(self) -> str:
        """Where messages go, as it may be shown (no credentials)."""
        raise NotImplementedError

    def send(self, topic: str, payload: bytes, item_id: int, timeout_s: float) -> None:
        """Deliver one message and return once the receiver acknowledged it; raise ConnectionError or
        OSError while it cannot, Refused when it never will."""
        raise NotImplementedError

    def topic_of(self, frame: Frame) -> str:
        return ""

    def take(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        try:
            self.handle(frame, result, event)
            self.written += 1
        except (OSError, sqlite3.Error) as exc:  # a full or failing disk: counted, the line goes on
            self.failed += 1
            self.last_error = f"cannot spool: {exc}"
            log.warning("%s sink: cannot spool a message: %s (counted)", self.kind, exc)

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        self.spool.put(self.topic_of(frame), json.dumps(event).encode("utf-8"))
        self.wake()

    def forget_unrecorded(self, events: Sequence[dict]) -> int:
        """Before sending: remove the messages of the last run whose frame event never reached the log (a
        kill between spooling and writing the event; a file of it is scored again). `events`: the
        end of the log. Returns how many were removed."""
        runs = [event["run"] for event in events if "run" in event]
        if not runs:
            return 0
        recorded = {(e["run"], e["source"], e["frame"]) for e in events if e.get("event") == "frame"}
        removed = 0
        for item_id, payload in self.spool.newest(UNRECORDED_WINDOW):
            message = json.loads(payload)
            if message.get("run") != runs[-1]:
                break
            if (message["run"], message["source"], message["frame"]) not in recorded:
                self.spool.remove(item_id)
                removed += 1
        return removed

    def _send_loop(self) -> None:
        lower_priority()
        while not self._sender_done.is_set():
            self._more.wait(RETRY_S)
            self._more.clear()
            try:
                self.forward()
            except Exception as exc:  # noqa: BLE001  (the sender must outlive any one message; all is spooled)
                log.exception("%s sink: sending failed unexpectedly; retrying", self.kind)
                self.connection.down(masked(f"{type(exc).__name__}: {exc}"))

    def forward(self) -> None:
        """Send the spool's messages, oldest first, until it is empty, the receiver is down, or the
        drain deadline has come."""
        while not self._sender_done.is_set() and (item := self.spool.oldest()) is not None:
            item_id, topic, payload = item
            try:
                self.send(topic, payload, item_id, self.remaining_s(self.ack_timeout_s))
            except Refused as exc:
                self.failed += 1
                self.last_error = masked(str(exc))
                log.warning("%s sink: %s refused a message (counted, not retried): %s", self.kind, self.target, exc)
            except (ConnectionError, OSError) as exc:
                self.last_error = masked(str(exc))
                self.connection.down(self.last_error)
                return
            else:
                self.delivered += 1
                self.connection.up()
            self.spool.remove(item_id)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return

    def finish(self) -> None:
        """Let the sender send what it can until the drain deadline, then stop it."""
        while self.connection.connected and len(self.spool) and self._sender.is_alive():
            if self.deadline is not None and time.monotonic() >= self.deadline:
                break
            self.wake()
            time.sleep(0.02)
        self._sender_done.set()
        self.wake()
        self._sender.join(None if self.deadline is None else max(0.05, self.deadline - time.monotonic()))
        if self._sender.is_alive():
            log.warning("%s sink: a send was still in progress at the end of the drain time", self.kind)
        if len(self.spool):
            log.warning("%s sink: %d message(s) kept in the spool %s for the next run", self.kind,
                        len(self.spool), self.spool.path or "(memory: lost)")  # fmt: skip
        self._left_in_spool = len(self.spool)
        if not self._sender.is_alive():  # else the sender still holds it; the process end closes it
            self.spool.close()

    def counts(self) -> dict:
        return {**super().counts(), "delivered": self.delivered, "spooled": self.state()["spooled"],
                "spool_dropped": self.spool.dropped}  # fmt: skip

    def state(self) -> dict:
        spooled = self._left_in_spool if self._left_in_spool is not None else len(self.spool)
        return {"connected": self.connection.connected, "spooled": spooled}


class MqttSink(ForwardingSink):
    """Publishes each anomalous frame's event at QoS 1 to `topic` (`{source}` in it is replaced by the
    source's name). paho reconnects by itself; while it is away, messages wait in the spool."""

    kind = "mqtt"

    def __init__(self, target: MqttTarget, client_id: str = "", **options) -> None:
        self.broker = target
        self._in_flight: tuple[int, object] | None = None  # (spool id, paho's MQTTMessageInfo)
        self.client = connect_mqtt(target, "--mqtt", on_connect=self._back, client_id=client_id)
        super().__init__(**options)

    @property
    def target(self) -> str:
        return f"the MQTT broker {self.broker.host}:{self.broker.port}"

    def topic_of(self, frame: Frame) -> str:
        return self.broker.topic.replace("{source}", frame.source)

    def _back(self, client) -> None:
        if hasattr(self, "_more"):  # (re)connected once the sink is running: send the spool now
            self.wake()

    def send(self, topic: str, payload: bytes, item_id: int, timeout_s: float) -> None:
        if self._in_flight is not None and self._in_flight[0] == item_id:
            info = self._in_flight[1]  # published before the broker went away: paho resends it itself
        else:
            if not self.client.is_connected():
                raise ConnectionError("not connected")
            info = self.client.publish(topic, payload, qos=1)
            if info.rc not in (0, 4):  # success, or no connection (paho keeps it and resends)
                raise ConnectionError(f"publish failed: {info.rc!r}")
            self._in_flight = (item_id, info)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise ConnectionError(f"no acknowledgement within {timeout_s:.1f} s")
        self._in_flight = None

    def finish(self) -> None:
        super().finish()
        self.client.disconnect()
        self.client.loop_stop()


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` (value may hold ${ENV} / ${file:PATH}; it is treated as a secret)."""
    name, separator, value = text.partition(":")
    if not separator or not name.strip() or not value.strip():
        raise ZsadEdgeError(f"--webhook-header wants 'Name: value', got {masked(text)!r}")
    value = expand(value.strip(), "--webhook-header")
    remember(value)
    return name.strip(), value


class WebhookSink(ForwardingSink):
    """POSTs each anomalous frame's event as JSON to a URL. A 2xx answer is a delivery; a 4xx other
    than 408 / 429 is a refusal (counted failed, not retried); no answer within the timeout, or any
    other status, means the server is down: the message waits in the spool.

    `user:password@` in the URL becomes a Basic Authorization header (never sent in the URL, never
    shown); `headers` are added to every request (an API token, from the environment)."""

    kind = "webhook"

    def __init__(self, url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None, **options) -> None:
        url = expand(url, "--webhook")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ZsadEdgeError(f"--webhook wants an http:// or https:// URL, got {masked(url)!r}")
        self.url, user, password = split_userinfo(url)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
            remember(token)
        super().__init__(ack_timeout_s=timeout_s, **options)

    @property
    def target(self) -> str:
        return f"the webhook {masked(self.url)}"

    def send(self, topic: str, payload: bytes, item_id: int, timeout_s: float) -> None:
        request = urllib.request.Request(self.url, data=payload, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise Refused(f"HTTP {exc.code} {exc.reason}") from None
            raise ConnectionError(f"HTTP {exc.code} {exc.reason}") from None
