"""Sinks that put each verdict into the line's controller: OPC UA (asyncua) and Modbus TCP (pymodbus).

A PLC acts on the part in front of the camera now: these sinks write every frame's verdict (not
only anomalies), in order, and never store and forward (a verdict for a part that has left the
station is of no use to a controller; a missed write is counted, the connection state is
reported, and the next part reconnects). Both are checked before the first frame: the server is
connected to and each configured node or address is tried.

OPC UA: each of `verdict` (Boolean), `score` (Double), `part_id` (String), `time` (DateTime) and
`count` (a running part counter, any integer type) may be mapped to a node id; values are
written with the node's own data type. Modbus TCP: a holding register gets the score (x1000,
0..65535), a reject coil is pulsed for `pulse_ms` for each anomalous part, and an optional
holding register counts parts (mod 65536) so the PLC can tell a new verdict from an old one.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ZsadEdgeError
from ..pipeline import DetectionResult
from .credentials import expand, masked, split_userinfo
from .sinks import Connection, QueuedSink
from .sources import Frame

log = logging.getLogger(__name__)
PLC_EXTRA = "pip install 'zsad-edge[plc]'"
OPCUA_FIELDS = ("verdict", "score", "part_id", "time", "count")
CONNECT_TIMEOUT_S = 5.0
SCORE_SCALE = 1000  # a Modbus register holds 0..65535: the score in thousandths


def part_id(frame: Frame, event: dict) -> str:
    """The part id the event carries (from a file name), else SOURCE#FRAME."""
    return str(event.get("part_id") or f"{frame.source}#{frame.index}")


def parse_mapping(items: list[str], known: tuple[str, ...], flag: str) -> dict[str, str]:
    """FIELD=VALUE pairs (`verdict=ns=2;s=Line1.Verdict`) into a dict; unknown fields refused."""
    mapping = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or name not in known or not value:
            raise ZsadEdgeError(f"{flag} wants FIELD=VALUE with FIELD one of {', '.join(known)}, got {item!r}")
        mapping[name] = value
    return mapping


@dataclass(frozen=True)
class OpcUaServer:
    """An OPC UA server from opc.tcp://[user:password@]host:port[/path]: the credentials apart from
    the URL, which is shown masked."""

    url: str
    user: str | None
    password: str | None
    shown: str

    @classmethod
    def parse(cls, url: str, flag: str) -> "OpcUaServer":
        try:
            import asyncua  # noqa: F401  (checked here: one line naming the extra, not a traceback later)
        except ImportError:
            raise ZsadEdgeError(f"{flag} needs asyncua: {PLC_EXTRA}") from None
        url = expand(url, flag)
        bare, user, password = split_userinfo(url)
        if urlsplit(bare).scheme != "opc.tcp":
            raise ZsadEdgeError(f"{flag} wants opc.tcp://host:port[/path], got {masked(url)!r}")
        return cls(bare, user, password, masked(url))

    def connect(self, timeout_s: float):
        """A connected asyncua (sync) client; raises what asyncua raises when it cannot connect."""
        from asyncua.sync import Client

        client = Client(self.url, timeout=timeout_s)
        try:
            if self.user:
                client.set_user(self.user)
                client.set_password(self.password or "")
            client.connect()
        except BaseException:
            # The sync client runs its own non-daemon event-loop thread; after a failed connect
            # only we can stop it. Left running, every failed reconnect would leak a thread and
            # the process could never exit.
            client.tloop.stop()
            raise
        return client


class PlcSink(QueuedSink):
    """A controller sink: every frame, in order, a write per frame; failures counted and reported."""

    def __init__(self, target: str, **options) -> None:
        self.connection = Connection(self.kind, target)
        self.parts = 0
        super().__init__(only_anomalies=False, **options)

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        try:
            if not self.connection.connected:
                self.reconnect()
            self.write(frame, event)
        except (OSError, ConnectionError, ValueError) as exc:
            self.connection.down(masked(str(exc)))
            raise ConnectionError(masked(str(exc))) from None
        self.connection.up()

    def state(self) -> dict:
        return {"connected": self.connection.connected}

    def reconnect(self) -> None:
        """Open the connection again after a failure (raise OSError or ConnectionError when it fails)."""

    def write(self, frame: Frame, event: dict) -> None:
        """Write one verdict; raise OSError, ConnectionError or ValueError when it fails."""


class OpcUaSink(PlcSink):
    """Writes each verdict to the configured OPC UA nodes (opc.tcp://[user:password@]host:port/path)."""

    kind = "opcua"

    def __init__(self, url: str, nodes: dict[str, str], timeout_s: float = CONNECT_TIMEOUT_S, **options) -> None:
        self.server = OpcUaServer.parse(url, "--opcua")
        if not nodes:
            raise ZsadEdgeError(f"--opcua needs at least one --opcua-node FIELD=NODEID ({', '.join(OPCUA_FIELDS)})")
        from asyncua import ua

        self._ua, self.timeout_s, self.node_ids = ua, timeout_s, nodes
        self.client = None
        self.nodes: dict[str, tuple[object, object]] = {}  # field -> (node, its variant type)
        try:
            self._connect()
        except Exception as exc:  # noqa: BLE001  (asyncua raises many kinds; all mean "cannot start")
            raise ZsadEdgeError(f"--opcua {self.server.shown}: {type(exc).__name__}: {masked(str(exc))}") from None
        super().__init__(f"the OPC UA server {self.server.shown}", **options)

    def _connect(self) -> None:
        client = self.server.connect(self.timeout_s)
        try:
            self.nodes = {}
            for name, node_id in self.node_ids.items():
                node = client.get_node(node_id)
                self.nodes[name] = (node, node.read_data_type_as_variant_type())
        except Exception:
            client.disconnect()
            raise
        self.client = client

    def reconnect(self) -> None:
        self._close_client()
        try:
            self._connect()
        except Exception as exc:  # noqa: BLE001
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

    def write(self, frame: Frame, event: dict) -> None:
        self.parts += 1
        values = {
            "verdict": bool(event["is_anomalous"]),
            "score": float(event["score"]),
            "part_id": part_id(frame, event),
            "time": datetime.datetime.fromtimestamp(frame.captured_at, datetime.timezone.utc),
            "count": self.parts,
        }
        ua = self._ua
        try:
            for name, (node, variant_type) in self.nodes.items():
                node.write_value(ua.DataValue(ua.Variant(values[name], variant_type)))
        except Exception as exc:  # noqa: BLE001  (a lost session, a refused write: the part's verdict did not land)
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

    def finish(self) -> None:
        self._close_client()

    def _close_client(self) -> None:
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:  # noqa: BLE001  (already gone)
                log.debug("opcua: disconnect failed", exc_info=True)
            self.client = None


@dataclass(frozen=True)
class ModbusLayout:
    """Where the verdict goes: register and coil addresses (0-based) of one device (unit id)."""

    score_register: int | None = 0
    reject_coil: int | None = 0
    count_register: int | None = None
    unit: int = 1
    pulse_ms: float = 200.0

    @classmethod
    def parse(cls, items: list[str], unit: int, pulse_ms: float) -> "ModbusLayout":
        fields = ("score_register", "reject_coil", "count_register")
        given = parse_mapping(items, fields, "--modbus-map")
        try:
            addresses = {name: int(value) for name, value in given.items()}
        except ValueError:
            raise ZsadEdgeError(f"--modbus-map addresses are integers, got {given}") from None
        if any(not 0 <= value <= 65535 for value in addresses.values()) or not 0 <= unit <= 255 or pulse_ms < 0:
            raise ZsadEdgeError("--modbus-map addresses must be 0..65535, the unit 0..255, the pulse >= 0 ms")
        return cls(**{**{"score_register": 0, "reject_coil": 0}, **addresses}, unit=unit, pulse_ms=pulse_ms)


class ModbusSink(PlcSink):
    """Writes each verdict to a Modbus TCP device (host[:port], 502 by default)."""

    kind = "modbus"

    def __init__(self, address: str, layout: ModbusLayout, timeout_s: float = CONNECT_TIMEOUT_S, **options) -> None:
        try:
            from pymodbus.client import ModbusTcpClient
            from pymodbus.exceptions import ModbusException
        except ImportError:
            raise ZsadEdgeError(f"--modbus needs pymodbus: {PLC_EXTRA}") from None
        self._modbus_error = ModbusException
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "502")
        if not host or not port.isdigit():
            raise ZsadEdgeError(f"--modbus wants HOST[:PORT], got {address!r}")
        self.layout = layout
        self.client = ModbusTcpClient(host, port=int(port), timeout=timeout_s, retries=0)
        where = f"the Modbus device {host}:{port} (unit {layout.unit})"
        if not self.client.connect():
            raise ZsadEdgeError(f"--modbus: cannot reach {where}")
        try:
            self._check(self.client.read_holding_registers(layout.score_register or 0, count=1, device_id=layout.unit))
        except (ConnectionError, OSError, ModbusException) as exc:
            self.client.close()
            raise ZsadEdgeError(f"--modbus: {where} did not answer a read: {exc}") from None
        super().__init__(where, **options)

    def reconnect(self) -> None:
        self.client.close()
        if not self.client.connect():
            raise ConnectionError("cannot connect")

    def write(self, frame: Frame, event: dict) -> None:
        try:
            self._write(event)
        except self._modbus_error as exc:  # pymodbus's own errors (no connection, a timeout)
            raise ConnectionError(str(exc)) from None

    def _write(self, event: dict) -> None:
        layout, client = self.layout, self.client
        self.parts += 1
        if layout.score_register is not None:
            value = int(min(max(round(float(event["score"]) * SCORE_SCALE), 0), 65535))
            self._check(client.write_register(layout.score_register, value, device_id=layout.unit))
        if layout.count_register is not None:
            self._check(client.write_register(layout.count_register, self.parts % 65536, device_id=layout.unit))
        if layout.reject_coil is not None and event["is_anomalous"]:
            self._check(client.write_coil(layout.reject_coil, True, device_id=layout.unit))
            time.sleep(layout.pulse_ms / 1000)
            self._check(client.write_coil(layout.reject_coil, False, device_id=layout.unit))

    def finish(self) -> None:
        self.client.close()

    @staticmethod
    def _check(response) -> None:
        if response.isError():
            raise ConnectionError(f"the device refused: {response}")
