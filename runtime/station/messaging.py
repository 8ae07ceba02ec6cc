"""Sinks that tell other systems: MQTT (the factory's usual message bus) and an HTTP webhook.

Both send the frame event (JSON) of anomalous frames, each from its own thread behind a bounded
queue and a per-source rate limit (sinks.py). Both are checked before the first frame: an
unreachable broker, refused credentials or a malformed URL stop the station at start with one
line, not after hours of silently lost messages.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..errors import ZsadEdgeError
from ..pipeline import DetectionResult
from .sinks import QueuedSink
from .sources import Frame

MQTT_EXTRA = "pip install 'zsad-edge[station]'"
MQTT_PASSWORD_ENV = "ZSAD_EDGE_MQTT_PASSWORD"  # read from the environment, not the command line `ps` shows
DEFAULT_TOPIC = "zsad-edge/anomalies"
CONNECT_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 5.0  # on close: wait this long for the broker to acknowledge what is in flight
MAX_UNSENT = 1000  # messages paho holds while the broker is away; more are dropped and counted


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
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ZsadEdgeError(f"--mqtt wants mqtt://host[:port]/topic or mqtts://... (TLS), got {url!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ZsadEdgeError(f"--mqtt: bad port in {url!r}") from None
        return cls(
            host=parts.hostname,
            port=port,
            topic=unquote(parts.path.lstrip("/")) or DEFAULT_TOPIC,
            tls=tls or any(tls_files.values()),
            username=username or (unquote(parts.username) if parts.username else None),
            password=os.environ.get(MQTT_PASSWORD_ENV) or (unquote(parts.password) if parts.password else None),
            **tls_files,
        )


class MqttSink(QueuedSink):
    """Publishes each anomalous frame's event at QoS 1 to `topic` (`{source}` in it is replaced by the
    source's name). `written` counts messages handed to the client, `delivered` those the broker
    acknowledged; paho resends unacknowledged ones after a reconnect."""

    kind = "mqtt"

    def __init__(self, target: MqttTarget, client_id: str = "", **options) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise ZsadEdgeError(f"--mqtt needs paho-mqtt: {MQTT_EXTRA}") from None
        self.target = target
        self.delivered = 0
        self._connected = threading.Event()
        self._refusal: str | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        client.max_queued_messages_set(MAX_UNSENT)
        if target.username:
            client.username_pw_set(target.username, target.password)
        if target.tls:
            client.tls_set(ca_certs=target.ca_file, certfile=target.cert_file, keyfile=target.key_file)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        where = f"MQTT broker {target.host}:{target.port}"
        try:
            client.connect(target.host, target.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise ZsadEdgeError(f"cannot reach the {where}: {exc}") from None
        client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S) or self._refusal:
            client.loop_stop()
            raise ZsadEdgeError(f"the {where} did not accept the connection: {self._refusal or 'no answer'}")
        self.client = client
        self._published = 0  # handed to paho; `delivered` catches up as the broker acknowledges
        super().__init__(**options)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
        self._connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho's network thread, possibly holding paho's own locks: never take a lock here that is
        # held around publish(), or the two threads wait for each other
        self.delivered += 1

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        topic = self.target.topic.replace("{source}", frame.source)
        info = self.client.publish(topic, json.dumps(event), qos=1)
        if info.rc not in (0, 4):  # success, or no connection (paho queues and resends it)
            raise ConnectionError(f"MQTT publish failed: {info.rc!r}")
        self._published += 1

    def finish(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.delivered < self._published and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()

    def counts(self) -> dict:
        return {**super().counts(), "delivered": self.delivered}


class WebhookSink(QueuedSink):
    """POSTs each anomalous frame's event as JSON to a URL; a refused or failed request (no answer
    within `timeout_s`, or a status other than 2xx) is counted as failed."""

    kind = "webhook"

    def __init__(self, url: str, timeout_s: float = 5.0, **options) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ZsadEdgeError(f"--webhook wants an http:// or https:// URL, got {url!r}")
        self.url, self.timeout_s = url, timeout_s
        super().__init__(**options)

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        request = urllib.request.Request(
            self.url, data=json.dumps(event).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # raises on a non-2xx status
            response.read()
