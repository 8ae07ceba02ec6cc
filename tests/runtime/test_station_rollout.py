"""Live bundle rollout: a running station takes a new bundle version between two batches (exact
counts, every later event naming the new digest), refuses a damaged one (the old one keeps
running), waits for a half-copied one, and memory stays flat over many swaps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from station_helpers import Burst, Recorder, free_port, start_watch, write_video

from zsad_edge.runtime.bundle import manifest_digest
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.run_record import run_record
from zsad_edge.runtime.station.events import read_events
from zsad_edge.runtime.station.rollout import BundleVersion, Rollout
from zsad_edge.runtime.station.station import Station

WAIT_S = 120


def _version(source: Path, folder: Path, image_threshold: float | None = None) -> Path:
    """A copy of a bundle; another threshold makes it another version (another manifest digest)."""
    shutil.copytree(source, folder)
    if image_threshold is not None:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["scoring"]["image_threshold"] = image_threshold
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _switch(link: Path, target: Path) -> None:
    """Point the bundle path at another version in one rename, as a release does."""
    staged = link.with_name(link.name + ".new")
    staged.symlink_to(target)
    os.replace(staged, link)


def _open(folder: Path):
    detector = Detector.from_bundle(folder, backend="cpu")
    return detector, run_record(detector, folder, "fp32", None)


@contextmanager
def _running(link: Path, every_s: float = 0.02, settle_s: float = 0.3):
    """A station with rollout on a live source that runs until the block ends (no test races the
    source's end); stopped and joined at the end of the block."""
    detector, record = _open(link)
    recorder = Recorder()
    station = Station(detector, [Burst("cam", 10**9, every_s=every_s)], on_event=recorder, record=record)
    rollout = Rollout(link, _open, station, check_s=0.1, settle_s=settle_s)
    station.start()
    rollout.start()
    try:
        yield station, rollout, recorder
        station.stop()
        assert station.join(WAIT_S)
    finally:
        rollout.close()
        station.close()


def _until_changed(recorder) -> None:
    """Until the swap and ten frames of the new model."""
    recorder.wait_for("bundle_changed")
    _wait_for_frames(recorder, 10, after="bundle_changed")


def _wait_for_frames(recorder, count, after):
    """Until `count` frame events follow the last event of kind `after`."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        last = max(i for i, e in enumerate(recorder.events) if e["event"] == after)
        if sum(e["event"] == "frame" for e in recorder.events[last:]) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} frames after {after}")


def test_a_new_version_is_swapped_in_between_batches_and_every_later_event_names_it(tiny_built, tmp_path):
    v1 = _version(tiny_built.path, tmp_path / "v1")
    v2 = _version(tiny_built.path, tmp_path / "v2", image_threshold=-1e9)  # flags every frame
    link = tmp_path / "current"
    link.symlink_to(v1)
    with _running(link) as (station, rollout, recorder):
        deadline = time.monotonic() + WAIT_S
        while len(recorder.of("frame")) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        _switch(link, v2)
        _until_changed(recorder)
    (changed,) = recorder.of("bundle_changed")
    assert changed["old"] == manifest_digest(v1) and changed["new"] == manifest_digest(v2)
    assert changed["bundle"] == str(v2)
    at = recorder.events.index(changed)
    before = [e for e in recorder.events[:at] if e["event"] == "frame"]
    after = [e for e in recorder.events[at:] if e["event"] == "frame"]
    assert before and after
    assert {e["bundle_digest"] for e in before} == {manifest_digest(v1)}
    assert {e["bundle_digest"] for e in after} == {manifest_digest(v2)}
    assert all(e["is_anomalous"] for e in after)  # the new thresholds judge them
    counts = station.stats.per_source()["cam"]
    frames = recorder.of("frame")
    assert len(frames) + counts["dropped"] == counts["captured"]  # frames in = events out + counted drops
    assert len({e["frame"] for e in frames}) == len(frames)  # none twice
    assert station.current.digest == manifest_digest(v2) and rollout.counts == {"changed": 1, "rejected": 0}


def test_a_damaged_version_is_refused_and_the_running_one_stays(tiny_built, tmp_path):
    v1 = _version(tiny_built.path, tmp_path / "v1")
    bad = _version(tiny_built.path, tmp_path / "bad", image_threshold=5.0)
    with open(bad / "heads.onnx.data", "r+b") as handle:
        handle.seek(64)
        handle.write(b"\x00\x01\x02\x03")
    good = _version(tiny_built.path, tmp_path / "good", image_threshold=6.0)
    link = tmp_path / "current"
    link.symlink_to(v1)
    with _running(link) as (station, rollout, recorder):
        _switch(link, bad)
        recorder.wait_for("bundle_rejected")
        rejected_at = len(recorder.events)
        time.sleep(1.0)  # the same bad version is not tried again
        _switch(link, good)
        _until_changed(recorder)
    (rejected,) = recorder.of("bundle_rejected")
    assert "heads.onnx.data does not match its manifest sha256" in rejected["reason"]
    assert rejected["bundle"] == str(bad) and rejected["running"] == manifest_digest(v1)
    changed_at = recorder.events.index(recorder.of("bundle_changed")[0])
    kept = [e for e in recorder.events[rejected_at:changed_at] if e["event"] == "frame"]
    assert kept and {e["bundle_digest"] for e in kept} == {manifest_digest(v1)}
    assert recorder.of("bundle_changed")[0]["new"] == manifest_digest(good)
    counts = station.stats.per_source()["cam"]
    assert len(recorder.of("frame")) + counts["dropped"] == counts["captured"]
    assert rollout.counts == {"changed": 1, "rejected": 1}


def test_a_version_copied_in_slowly_is_waited_for_not_refused(tiny_built, tmp_path):
    bundle = _version(tiny_built.path, tmp_path / "bundle")  # the path is the folder itself, rewritten in place
    with _running(bundle, settle_s=2.0) as (station, rollout, recorder):  # 10x the writer's pauses
        new = json.loads((bundle / "manifest.json").read_text())
        new["scoring"]["image_threshold"] = 7.0
        graph = (bundle / "heads.onnx.data").read_bytes()
        (bundle / "manifest.json").write_text(json.dumps(new))  # the manifest first, as a careless copy does
        with open(bundle / "heads.onnx.data", "wb") as handle:  # then a graph in chunks, 0.2 s apart
            for start in range(0, len(graph), len(graph) // 4 + 1):
                handle.write(graph[start : start + len(graph) // 4 + 1])
                handle.flush()
                time.sleep(0.2)
        _until_changed(recorder)
    assert recorder.of("bundle_rejected") == []
    assert recorder.of("bundle_changed")[0]["new"] == manifest_digest(bundle)


def test_a_rollout_may_change_the_method_and_the_input_size(method_bundles, tmp_path):
    from zsad_edge.export.build import BuildConfig, build_bundle
    from zsad_edge.export.models.clip import ClipSpec

    v1 = _version(method_bundles["aprilgan"], tmp_path / "v1")  # APRIL-GAN at 224 px
    clip = ClipSpec("zsad-tiny-vit", random_init=True, image_size=160)
    v2 = build_bundle(BuildConfig(clip=clip, method="sdp", out_dir=tmp_path / "v2")).path  # SDP at 160 px
    link = tmp_path / "current"
    link.symlink_to(v1)
    with _running(link) as (station, rollout, recorder):
        _switch(link, v2)
        _until_changed(recorder)
    assert station.current.record["method"] == "sdp"
    assert tuple(station.detector.manifest.preprocess.input_size) == (160, 160)
    after = recorder.events[recorder.events.index(recorder.of("bundle_changed")[0]) :]
    assert all(e["bundle_digest"] == manifest_digest(v2) for e in after if e["event"] == "frame")
    counts = station.stats.per_source()["cam"]
    assert len(recorder.of("frame")) + counts["dropped"] == counts["captured"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.slow
def test_memory_stays_flat_over_ten_swaps(tiny_built, tmp_path):
    versions = [_version(tiny_built.path, tmp_path / f"v{i}", image_threshold=float(i)) for i in range(11)]
    link = tmp_path / "current"
    link.symlink_to(versions[0])
    with _running(link, every_s=0.01) as (station, rollout, recorder):
        rss = []
        for index, version in enumerate(versions[1:], start=1):
            _switch(link, version)
            recorder.wait_for("bundle_changed", index)
            rss.append(_rss_mb())
    assert rollout.counts["changed"] == 10
    assert rss[-1] <= 1.10 * rss[0], rss


def test_bundle_version_sees_a_switch_and_a_missing_manifest(tiny_built, tmp_path):
    v1 = _version(tiny_built.path, tmp_path / "v1")
    link = tmp_path / "current"
    link.symlink_to(v1)
    first = BundleVersion.of(link)
    assert first is not None and first.folder == v1.resolve()
    (v1 / "manifest.json").rename(v1 / "manifest.moved")
    assert BundleVersion.of(link) is None
    assert BundleVersion.of(tmp_path / "nothing") is None
    assert {name for name, _, _ in first.files} >= {"manifest.json", "heads.onnx", "image_encoder.onnx"}


def _metric_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return [line for line in reply.read().decode().splitlines() if line.startswith("zsad_bundle_info{")]


def _logged(out: Path, kind: str) -> list[dict]:
    path = out / "events.jsonl"
    return [e for e in read_events(path) if e["event"] == kind] if path.is_file() else []


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert condition(), f"no {what}"


@pytest.mark.slow
@pytest.mark.needs_module("minisign", "prometheus_client")
def test_a_signed_station_takes_a_signed_version_refuses_an_unsigned_one_and_says_which_runs(tiny_built, tmp_path):
    from zsad_edge.runtime.signing import generate_key, sign_bundle

    key = tmp_path / "keys" / "owner"
    key_id = generate_key(key)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(key.with_name("owner.pub"), trusted)
    v1 = _version(tiny_built.path, tmp_path / "v1")
    v2 = _version(tiny_built.path, tmp_path / "v2", image_threshold=3.0)
    unsigned = _version(tiny_built.path, tmp_path / "unsigned", image_threshold=4.0)
    for version in (v1, v2):
        sign_bundle(version, key)
    link = tmp_path / "current"
    link.symlink_to(v1)
    video, out, port = write_video(tmp_path / "line.avi", frames=10), tmp_path / "out", free_port()
    proc = start_watch(link, f"line1={video}", "--loop", "--out", out, "--metrics-port", port, "--status-s", 0,
                       "--trusted-keys", trusted, "--rollout-check-s", 0.2, "--rollout-settle-s", 0.3)  # fmt: skip
    _until(lambda: len(_logged(out, "frame")) >= 5, "frames")
    (line,) = _metric_lines(port)
    assert f'digest="{manifest_digest(v1)}"' in line and f'signer="{key_id}"' in line and 'signature="verified"' in line
    _switch(link, unsigned)
    _until(lambda: _logged(out, "bundle_rejected"), "bundle_rejected")
    assert "is not signed" in _logged(out, "bundle_rejected")[0]["reason"]
    _switch(link, v2)
    _until(lambda: _logged(out, "bundle_changed"), "bundle_changed")
    _until(lambda: f'digest="{manifest_digest(v2)}"' in _metric_lines(port)[0], "the new digest on /metrics")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollout"] == {"changed": 1, "rejected": 1}
    assert summary["run"]["digest"] == manifest_digest(v2) and summary["run"]["signature"]["key_id"] == key_id
    frames = _logged(out, "frame")
    assert len(frames) + summary["dropped"] == summary["sources"]["line1"]["captured"]
    assert frames[-1]["bundle_digest"] == manifest_digest(v2)
