"""The line's controller in the loop: every verdict written to a real OPC UA server (asyncua) and a
real Modbus TCP device (pymodbus), part ids taken from drop-folder file names."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT
from station_helpers import ModbusDevice, OpcUaServer, free_port, write_video

from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.station.drop_folder import DropFolder
from zsad_edge.runtime.station.plc import ModbusLayout, ModbusSink, OpcUaSink
from zsad_edge.runtime.station.station import watch

pytestmark = pytest.mark.needs_module("asyncua", "pymodbus")


@pytest.fixture
def parts(tmp_path):
    """A drop folder of 8 parts named by serial number, of two kinds (so verdicts differ)."""
    folder = tmp_path / "drop"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for index in range(8):
        image = np.full((48, 64, 3), 120, np.uint8) if index % 2 else (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"cam1_SN{1000 + index}.png"), image)
    return folder


@pytest.fixture
def mixed_detector(tiny_detector, parts):
    """The tiny detector with its threshold between the two kinds of part: some flagged, some not."""
    scores = [e["score"] for e in watch(tiny_detector, [DropFolder("probe", parts)])]
    tiny_detector.image_threshold = float(np.median(scores))
    yield tiny_detector
    tiny_detector.image_threshold = tiny_detector.scoring["image_threshold"]


def _run(detector, parts, sink):
    source = DropFolder("cam1", parts, part_id=r"SN(?P<part>\d+)")
    events = [e for e in watch(detector, [source], sinks=[sink]) if e["event"] == "frame"]
    sink.close()
    return events


def test_every_verdict_reaches_the_opcua_server_with_its_part_id(mixed_detector, parts):
    server = OpcUaServer()
    try:
        fields = {"verdict": "Verdict", "score": "Score", "part_id": "PartId", "time": "Time", "count": "Count"}
        sink = OpcUaSink(server.url, {field: server.nodes[name] for field, name in fields.items()})
        events = _run(mixed_detector, parts, sink)
        assert [e["part_id"] for e in events] == [str(1000 + i) for i in range(8)]
        assert 0 < sum(e["is_anomalous"] for e in events) < 8
        assert server.value("Count") == 8 and sink.counts()["written"] == 8 and sink.counts()["failed"] == 0
        last = events[-1]
        assert server.value("PartId") == "1007" and server.value("Verdict") == last["is_anomalous"]
        assert server.value("Score") == pytest.approx(last["score"]) and server.value("Time").year >= 2024
        with pytest.raises(ZsadEdgeError, match="--opcua"):
            OpcUaSink(server.url, {"verdict": "ns=2;s=Line1.NoSuchNode"})
    finally:
        server.close()
    with pytest.raises(ZsadEdgeError, match=r"--opcua opc.tcp://\*\*\*@127.0.0.1"):
        OpcUaSink(f"opc.tcp://op:Plc-Pw-1@127.0.0.1:{free_port()}/x", {"verdict": "ns=2;s=V"}, timeout_s=1)


def test_modbus_gets_the_score_the_part_count_and_a_reject_pulse_per_anomalous_part(mixed_detector, parts):
    device = ModbusDevice()
    try:
        layout = ModbusLayout(score_register=2, reject_coil=3, count_register=4, pulse_ms=5)
        sink = ModbusSink(f"127.0.0.1:{device.port}", layout)
        events = _run(mixed_detector, parts, sink)
        anomalous = sum(e["is_anomalous"] for e in events)
        assert 0 < anomalous < 8 and sink.counts()["written"] == 8
        assert device.coil_writes(3) == [True, False] * anomalous  # one pulse per rejected part
        assert device.register_writes(2) == [min(max(round(e["score"] * 1000), 0), 65535) for e in events]
        assert device.register_writes(4) == list(range(1, 9))
    finally:
        device.close()
    with pytest.raises(ZsadEdgeError, match="--modbus: cannot reach"):
        ModbusSink(f"127.0.0.1:{free_port()}", ModbusLayout(), timeout_s=1)


def test_watch_drives_both_controllers_from_the_command_line(tiny_built, tmp_path):
    server, device = OpcUaServer(), ModbusDevice()
    try:
        video = write_video(tmp_path / "line.avi", frames=3)
        proc = subprocess.run(
            [sys.executable, "-m", "zsad_edge.runtime.cli", "watch", str(tiny_built.path), f"line={video}",
             "--out", str(tmp_path / "out"), "--status-s", "0",
             "--opcua", server.url, "--opcua-node", f"count={server.nodes['Count']}",
             "--opcua-node", f"verdict={server.nodes['Verdict']}",
             "--modbus", f"127.0.0.1:{device.port}", "--modbus-map", "count_register=7", "--modbus-pulse-ms", "1"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["sinks"]["opcua"]["written"] == summary["sinks"]["modbus"]["written"] == 3
        assert server.value("Count") == 3 and device.register_writes(7) == [1, 2, 3]
    finally:
        server.close()
        device.close()


@pytest.mark.needs_program("mosquitto")
def test_part_ids_come_from_the_controllers_trigger_messages(tiny_detector, tmp_path):
    import time

    import paho.mqtt.client as mqtt
    from station_helpers import start_mosquitto

    from zsad_edge.runtime.station.part_trigger import MqttPartTrigger
    from zsad_edge.runtime.station.sources import VideoFileSource
    from zsad_edge.runtime.station.station import Station

    broker, port = start_mosquitto(tmp_path)
    trigger = MqttPartTrigger(f"mqtt://127.0.0.1:{port}/line1/part", max_age_s=3600)  # however slow the machine
    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    plc.connect("127.0.0.1", port)
    plc.loop_start()
    try:
        before = time.time()
        for payload in ("A-100", '{"part_id": "B-200", "source": "cam2"}', "{broken"):
            plc.publish("line1/part", payload, qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while trigger.received + trigger.unreadable < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        now = time.time()
        assert (trigger.received, trigger.unreadable) == (2, 1)
        assert trigger.part_for("cam1", now) == "A-100" and trigger.part_for("cam2", now) == "B-200"
        assert trigger.part_for("cam1", before - 1) is None  # captured before any trigger: no part id
        events = []
        sources = [VideoFileSource(name, write_video(tmp_path / f"{name}.avi", frames=2)) for name in ("cam1", "cam2")]
        station = Station(tiny_detector, sources, part_ids=trigger.part_for,
                          on_event=lambda event, receipt=None: events.append(event)).start()  # fmt: skip
        assert station.join(60)
        parts = {(e["source"], e["part_id"]) for e in events if e["event"] == "frame"}
        assert parts == {("cam1", "A-100"), ("cam2", "B-200")}  # every frame carries its part
    finally:
        plc.loop_stop()
        trigger.close()
        broker.kill()


def test_part_ids_come_from_an_opcua_node_the_plc_writes(tiny_detector, tmp_path):
    import time

    from zsad_edge.runtime.station.part_trigger import open_part_trigger
    from zsad_edge.runtime.station.sources import VideoFileSource
    from zsad_edge.runtime.station.station import Station

    server = OpcUaServer()
    try:
        node = server.server.get_node(server.nodes["PartId"])
        node.write_value("P-1")
        trigger = open_part_trigger(server.url, server.nodes["PartId"])
        trigger.max_age_s = 3600  # a trigger never goes stale during this test, however slow the machine
        deadline = time.monotonic() + 10
        while trigger.received < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        node.write_value("P-2")  # the next part arrives
        while trigger.received < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert trigger.part_for("cam1", time.time()) == "P-2"
        events = []
        source = VideoFileSource("cam1", write_video(tmp_path / "v.avi", frames=2))
        station = Station(tiny_detector, [source], part_ids=trigger.part_for,
                          on_event=lambda event, receipt=None: events.append(event))  # fmt: skip
        assert station.start().join(60)
        assert [e["part_id"] for e in events if e["event"] == "frame"] == ["P-2", "P-2"]
        with pytest.raises(ZsadEdgeError, match="needs --part-trigger-node"):
            open_part_trigger(server.url)
        trigger.check_s = 0.2
        server.close()  # the PLC restarts
        server = OpcUaServer(port=server.port)
        server.server.get_node(server.nodes["PartId"]).write_value("P-3")
        deadline = time.monotonic() + 60
        while trigger.part_for("cam1", time.time()) != "P-3" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trigger.part_for("cam1", time.time()) == "P-3" and trigger.reconnects >= 1  # subscribed again
        trigger.close()
    finally:
        server.close()
