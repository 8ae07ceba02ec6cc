"""Bundle integrity: atomic writes, hashes, schema versions, malformed manifests."""

import json
import shutil

import pytest

from zsad_edge.export.build import BuildConfig, build_bundle
from zsad_edge.export.demo import demo_config
from zsad_edge.export.graphs.bundle_writer import staged_bundle
from zsad_edge.export.models.clip import ClipSpec
from zsad_edge.runtime.bundle import SCHEMA_VERSION, load_manifest
from zsad_edge.runtime.contract import MANIFEST_FILE
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import BundleError, ModelLoadError, ParityError, ZsadEdgeError


@pytest.fixture
def bundle_copy(tiny_built, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(tiny_built.path, target)
    return target


def _edit_manifest(bundle, **changes):
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_manifest_lists_every_file_with_its_hash(tiny_built):
    manifest = load_manifest(tiny_built.path)
    on_disk = {p.name for p in tiny_built.path.iterdir()} - {MANIFEST_FILE}
    assert set(manifest.files) == on_disk
    assert {"image_encoder.onnx", "image_encoder.onnx.data", "heads.onnx", "text_embeddings.npy"} <= on_disk
    assert manifest.components["image_encoder"].external_data == ["image_encoder.onnx.data"]
    assert manifest.components["image_encoder"].inputs[0].shape == ["batch", 3, 224, 224]
    assert (
        manifest.clip["weights"]["kind"] == "random" and "never for inspection" in manifest.clip["weights"]["warning"]
    )


def test_tampered_file_is_refused(bundle_copy):
    with open(bundle_copy / "image_encoder.onnx.data", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="image_encoder.onnx.data does not match its manifest sha256"):
        Detector.from_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "heads.onnx").unlink()
    with pytest.raises(BundleError, match="bundle file missing: .*heads.onnx"):
        Detector.from_bundle(bundle_copy)


def test_newer_schema_is_refused_with_upgrade_hint(bundle_copy):
    _edit_manifest(bundle_copy, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(BundleError, match="newer than this runtime supports.*upgrade zsad-edge"):
        Detector.from_bundle(bundle_copy)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"schema_version": 1}', "malformed"),
        ("[]", "no schema_version"),
    ],
)
def test_malformed_manifests_are_named(bundle_copy, content, message):
    (bundle_copy / MANIFEST_FILE).write_text(content)
    with pytest.raises(BundleError, match=message):
        load_manifest(bundle_copy)


def test_not_a_bundle_and_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="bundle folder not found"):
        Detector.from_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="not a zsad-edge bundle"):
        Detector.from_bundle(tmp_path)


def test_graph_and_manifest_size_mismatch_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["preprocess"]["input_size"] = [240, 240]
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"expects images of \[224, 224\].*\[240, 240\]: mismatched"):
        Detector.from_bundle(bundle_copy)


def test_unknown_method_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, method={"name": "future_method", "params": {}})
    with pytest.raises(BundleError, match="future_method"):
        Detector.from_bundle(bundle_copy)


def test_failed_build_leaves_nothing_behind(tmp_path):
    config = demo_config(tmp_path / "out", overwrite=False)
    config.parity_tolerance = 0.0  # every graph differs from torch by rounding, so the gate trips
    with pytest.raises(ParityError, match="disagrees with PyTorch"):
        build_bundle(config)
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(ZsadEdgeError, match="--overwrite"):
        with staged_bundle(target, overwrite=False):
            pass
    with staged_bundle(target, overwrite=True) as staging:
        (staging / "new").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_heads_are_required(tmp_path):
    config = demo_config(tmp_path / "x", overwrite=False)
    config.random_heads = False
    with pytest.raises(ModelLoadError, match="--heads-checkpoint PATH"):
        build_bundle(config)


def test_reference_rebuild_needs_the_recorded_checkpoint(bundle_copy, tmp_path):
    from zsad_edge.export.build import reference_from_bundle

    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["clip"]["weights"] = {"kind": "checkpoint", "file": "clip.pt", "sha256": "0" * 64}
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="built from checkpoint clip.pt: pass it again with --clip-checkpoint"):
        reference_from_bundle(bundle_copy)
    (tmp_path / "other.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is not the checkpoint the bundle was built from"):
        reference_from_bundle(bundle_copy, clip_checkpoint=tmp_path / "other.pt")


def test_existing_output_is_refused_before_any_slow_work(tmp_path, monkeypatch):
    """An FNN build spends minutes on text encoding: an existing folder must be refused before that."""
    import zsad_edge.export.build as build_module

    def must_not_load(spec):
        raise AssertionError("CLIP was loaded before the output folder was checked")

    monkeypatch.setattr(build_module, "load_clip", must_not_load)
    (tmp_path / "b").mkdir()
    with pytest.raises(ZsadEdgeError, match="output folder exists"):
        build_bundle(
            BuildConfig(clip=ClipSpec("zsad-tiny-vit", random_init=True), method="fnn", out_dir=tmp_path / "b")
        )


def test_an_unchanged_bundle_is_not_hashed_again_and_a_changed_file_is(tiny_built, tmp_path, monkeypatch):
    """Fast restarts: a stamp beside the bundle, keyed by (size, mtime, inode) and the expected hash."""
    import zsad_edge.runtime.bundle as bundle_module

    bundle = tmp_path / "stamped"
    shutil.copytree(tiny_built.path, bundle)
    hashed = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    load_manifest(bundle)
    first = sorted(hashed)
    assert first and bundle_module.stamp_path(bundle).is_file() and not (bundle / ".stamped.verified.json").exists()
    hashed.clear()
    load_manifest(bundle)
    assert hashed == []  # nothing re-read
    heads = next(name for name in first if name.startswith("heads"))
    (bundle / heads).write_bytes((bundle / heads).read_bytes() + b"\0")
    with pytest.raises(BundleError, match=f"{heads} does not match its manifest sha256"):
        load_manifest(bundle)
    assert hashed == [heads]  # only the changed file
