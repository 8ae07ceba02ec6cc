"""Archives on Ray (`--ray`): a private Ray instance started by the command (2 CPUs, loopback only)
gives exactly the local run's files, metrics and thresholds, in input order; a dead actor is
replaced and its batch run again; SIGINT keeps what is complete; a missing cluster is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, write_image

from zsad_edge.runtime.archive.ray_data import RayOptions, ray_outcomes
from zsad_edge.runtime.archive.rows import local_outcomes, rows_of
from zsad_edge.runtime.cli.detect import detect_work
from zsad_edge.runtime.detector import DetectorSpec
from zsad_edge.runtime.stopping import NEVER

pytestmark = [pytest.mark.needs_module("ray"), pytest.mark.slow]
RAY = ["--ray", "--ray-cpus", "2"]
DIE_MARKER_ENV = "ZSAD_EDGE_TEST_DIE_ONCE"


def _cli(*arguments) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "zsad_edge.runtime.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Twenty parts of several sizes in two folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("archive") / "parts"
    rng = np.random.default_rng(11)
    for index in range(20):
        size = (48 + 4 * (index % 5), 64 + 2 * (index % 3), 3)
        write_image(
            root / ("a" if index < 10 else "b") / f"part{index:02d}.png", (rng.random(size) * 255).astype(np.uint8)
        )
    (root / "b" / "broken.png").write_bytes(b"not a png")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("elapsed_ms", "run")}


def test_detect_on_ray_writes_what_the_local_run_writes_in_input_order(tiny_built, archive, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert _cli("detect", tiny_built.path, archive, "--out", local, "--backend", "cpu").returncode == 1  # one skipped
    ran = _cli("detect", tiny_built.path, archive, "--out", remote, "--backend", "cpu", *RAY, "--batch-size", 3)
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr
    mine, theirs = _files(local), _files(remote)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        if name.endswith(".png"):
            assert mine[name] == theirs[name], name  # overlays byte for byte
        elif name.endswith(".json") and name != "summary.json":
            assert _without_timing(json.loads(mine[name])) == _without_timing(json.loads(theirs[name])), name
    a, b = json.loads(mine["summary.json"]), json.loads(theirs["summary.json"])
    assert list(a["results"]) == list(b["results"])  # the same (input) order
    assert {k: _without_timing(v) for k, v in a["results"].items()} == {
        k: _without_timing(v) for k, v in b["results"].items()
    }
    assert a["failures"] == b["failures"] and b["scored"] == 20 and b["run"]["ray"]["address"] == "local"


def test_eval_and_calibrate_on_ray_give_the_local_numbers(tiny_built, quirky_set, tmp_path):
    reports = []
    for extra in ([], RAY):
        out = tmp_path / f"report{len(reports)}.json"
        _cli("eval", tiny_built.path, quirky_set, "--out", out, "--backend", "cpu", *extra)
        reports.append(json.loads(out.read_text()))
    local, remote = (r["categories"]["parts"] for r in reports)
    assert local["skipped"] == remote["skipped"] and local["images"] == remote["images"]
    for metric, value in local["metrics"]["runtime"].items():
        other = remote["metrics"]["runtime"][metric]
        assert (np.isnan(value) and np.isnan(other)) or abs(value - other) <= 1e-9, metric
    thresholds = []
    for extra in ([], RAY):
        bundle = tmp_path / f"bundle{len(thresholds)}"
        subprocess.run(["cp", "-r", str(tiny_built.path), str(bundle)], check=True)
        calibrated = _cli("calibrate", bundle, quirky_set / "train" / "good", "--backend", "cpu", *extra)
        assert calibrated.returncode == 0, calibrated.stderr
        thresholds.append(json.loads((bundle / "manifest.json").read_text())["scoring"])
    assert thresholds[0] == thresholds[1]


def _listening(kind: str) -> set[str]:
    """Local addresses of the listening TCP sockets (/proc/net/tcp or tcp6), as hex."""
    with open(f"/proc/net/{kind}") as handle:
        rows = [line.split() for line in handle.readlines()[1:]]
    return {row[1] for row in rows if row[3] == "0A"}


def _is_loopback(address: str) -> bool:
    host = address.split(":")[0]
    if len(host) == 8:  # IPv4, little-endian hex
        return host.endswith("7F")
    return host in ("00000000000000000000000001000000", "0000000000000000FFFF00000100007F")  # ::1, ::ffff:127.0.0.1


def dying_detect_work(detector, images, rows, context):
    """detect_work, except that the first call anywhere kills its actor process (once: a marker file)."""
    marker = Path(os.environ[DIE_MARKER_ENV])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return detect_work(detector, images, rows, context)


def test_a_local_instance_on_loopback_replaces_a_dead_actor_and_completes(tiny_built, archive, tmp_path, monkeypatch):
    before = _listening("tcp") | _listening("tcp6")
    marker = tmp_path / "died"
    monkeypatch.setenv(DIE_MARKER_ENV, str(marker))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), *sys.path])
    )  # the workers import this
    paths = sorted(archive.rglob("part*.png"))
    rows = rows_of(paths, [p.stem for p in paths])
    spec = DetectorSpec(tiny_built.path, backend="cpu")
    record = {"thresholds": spec.open().scoring}
    options = RayOptions(cpus=2, batch_size=2)
    remote, opened = [], []
    for outcome in ray_outcomes(rows, spec, dying_detect_work, record, options, NEVER):
        if not opened:  # while the local instance runs: every listener it opened is on loopback
            opened = sorted((_listening("tcp") | _listening("tcp6")) - before)
        remote.append(outcome)
    assert opened and all(_is_loopback(address) for address in opened), opened
    assert marker.exists()  # an actor did die
    local = list(local_outcomes(spec.open(), rows, detect_work, record, 2, NEVER))
    assert [row["index"] for row, _, _ in remote] == list(range(len(rows)))
    for (_, _, mine), (_, _, theirs) in zip(local, remote):
        assert [name for name, _ in mine] == [name for name, _ in theirs]
        assert _without_timing(json.loads(mine[-1][1])) == _without_timing(json.loads(theirs[-1][1]))


def test_sigint_keeps_the_complete_results_and_resume_finishes(tiny_built, tmp_path):
    archive = tmp_path / "long"  # far more images than a fast machine scores between the third result and the signal
    for index in range(240):
        write_image(archive / f"part{index:03d}.png", np.full((32, 48, 3), index % 251, np.uint8))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "zsad_edge.runtime.cli", "detect", str(tiny_built.path), str(archive), "--out",
               str(out), "--backend", "cpu", *RAY]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 300
    while len(list(out.rglob("part*.json"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"].startswith("stopped by SIGINT") and 3 <= summary["scored"] < 240
    written = sorted(out.rglob("part*.json"))
    assert len(written) == summary["scored"]
    for path in written:
        assert "score" in json.loads(path.read_text())  # each one whole
    resumed = _cli("detect", tiny_built.path, archive, "--out", out, "--backend", "cpu", "--resume")  # here, or on Ray
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((out / "summary.json").read_text())
    assert final["scored"] == 240 and final["resumed"] == summary["scored"]


def test_an_unreachable_cluster_and_bad_options_are_one_line(tiny_built, archive, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cases = {
        f"no Ray cluster at 127.0.0.1:{port}": ["--ray", f"127.0.0.1:{port}"],
        "--ray wants local, auto or HOST:PORT": ["--ray", "nonsense"],
        "--ray-cpus and --ray-actors must be at least 1": ["--ray", "--ray-cpus", "0"],
    }
    for message, arguments in cases.items():
        result = _cli("detect", tiny_built.path, archive, "--out", tmp_path / "o", "--backend", "cpu", *arguments)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_an_actor_the_cluster_cannot_hold_is_refused_not_waited_for():
    from types import SimpleNamespace

    from zsad_edge.runtime.archive.ray_data import _pool_size
    from zsad_edge.runtime.errors import ZsadEdgeError

    cpu_only = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    with pytest.raises(ZsadEdgeError, match="each actor asks for 1 GPU, and the Ray cluster has 0 in all"):
        _pool_size(cpu_only, RayOptions(gpus_per_actor=1))
    with pytest.raises(ZsadEdgeError, match="each actor asks for 4 CPU"):
        _pool_size(cpu_only, RayOptions(cpus_per_actor=4))
    assert _pool_size(cpu_only, RayOptions()) == 2 and _pool_size(cpu_only, RayOptions(actors=1)) == 1
