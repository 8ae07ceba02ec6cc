"""One way to connect to an MQTT broker (paho-mqtt), for the MQTT sink and the part trigger:
credentials and TLS from the target, automatic reconnects, and a clear error at start when the
broker is unreachable or refuses the credentials."""

from __future__ import annotations

import threading
from typing import Any, Callable

from ..errors import ZsadEdgeError
from .credentials import masked

MQTT_EXTRA = "pip install 'zsad-edge[station]'"
CONNECT_TIMEOUT_S = 10.0


def connect_mqtt(
    target: Any,
    flag: str,
    on_connect: Callable[[Any], None] | None = None,
    on_message: Callable[..., None] | None = None,
    client_id: str = "",
) -> Any:
    """A paho client connected to `target` (a messaging.MqttTarget) with its network loop running.

    on_connect(client) runs after every successful (re)connection (subscribe there, so a
    subscription survives a broker restart); on_message is paho's message callback. `flag` names
    the option in errors (--mqtt, --part-trigger).
    """
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise ZsadEdgeError(f"{flag} needs paho-mqtt: {MQTT_EXTRA}") from None
    answered = threading.Event()
    refusal: list[str] = []

    def connected(client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            refusal.append(str(reason_code))
        elif on_connect is not None:
            on_connect(client)
        answered.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set(ca_certs=target.ca_file, certfile=target.cert_file, keyfile=target.key_file)
    client.on_connect = connected
    if on_message is not None:
        client.on_message = on_message
    where = f"MQTT broker {target.host}:{target.port}"
    try:
        client.connect(target.host, target.port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise ZsadEdgeError(f"cannot reach the {where}: {masked(str(exc))}") from None
    client.loop_start()
    if not answered.wait(CONNECT_TIMEOUT_S) or refusal:
        client.loop_stop()
        raise ZsadEdgeError(f"the {where} did not accept the connection: {refusal[0] if refusal else 'no answer'}")
    return client
