"""Signed bundles: `keygen`, `sign`, `--trusted-keys` on every command that opens a bundle, checked
both ways against the minisign tool, and every way a bundle can fail the check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, write_image
from needs import require_program

from zsad_edge.runtime.signing import SIGNATURE_FILE, TRUSTED_KEYS_ENV

pytestmark = pytest.mark.needs_module("minisign")


def _cli(*arguments, env=None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != TRUSTED_KEYS_ENV}
    environment.update(env or {})
    command = [sys.executable, "-m", "zsad_edge.runtime.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=environment, timeout=300)


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    """Two key pairs (the line owner's and someone else's), and a trusted folder with the owner's."""
    root = tmp_path_factory.mktemp("keys")
    made = {}
    for name in ("owner", "other"):
        result = _cli("keygen", "--out", root / name / "key")
        assert result.returncode == 0, result.stderr
        made[name] = json.loads(result.stdout)
    trusted = root / "trusted"
    trusted.mkdir()
    shutil.copy(root / "owner" / "key.pub", trusted / "owner.pub")
    return {"root": root, "trusted": trusted, **made}


@pytest.fixture
def signed(tiny_built, keys, tmp_path) -> Path:
    bundle = Path(shutil.copytree(tiny_built.path, tmp_path / "weld"))
    result = _cli("sign", bundle, "--key", keys["root"] / "owner" / "key")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key_id"] == keys["owner"]["key_id"]
    return bundle


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "part.png"
    write_image(path, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return path


def test_a_signed_bundle_runs_where_its_key_is_trusted_and_info_says_who_signed(signed, keys, image, tmp_path):
    ran = _cli("detect", signed, image, "--out", tmp_path / "out", "--trusted-keys", keys["trusted"])
    assert ran.returncode == 0, ran.stderr
    info = json.loads(_cli("info", signed, "--trusted-keys", keys["trusted"]).stdout)["signature"]
    assert info["state"] == "verified" and info["key_id"] == keys["owner"]["key_id"]
    assert "zsad-edge bundle weld manifest sha256" in info["comment"]
    by_environment = _cli("info", signed, env={TRUSTED_KEYS_ENV: str(keys["trusted"])})
    assert json.loads(by_environment.stdout)["signature"]["state"] == "verified"
    untrusted = json.loads(_cli("info", signed).stdout)["signature"]
    assert untrusted["state"] == "not checked (no trusted keys set)"


def test_bundles_that_fail_the_check_are_refused_before_any_graph_opens(signed, keys, image, tmp_path, tiny_built):
    def detect(bundle, *extra):
        return _cli("detect", bundle, image, "--out", tmp_path / "out", "--trusted-keys", keys["trusted"], *extra)

    unsigned = Path(shutil.copytree(tiny_built.path, tmp_path / "unsigned"))
    _one_error_line(detect(unsigned), "is not signed", "zsad-edge sign")
    by_other = Path(shutil.copytree(signed, tmp_path / "by_other"))
    assert _cli("sign", by_other, "--key", keys["root"] / "other" / "key").returncode == 0
    _one_error_line(detect(by_other), f"signed by key {keys['other']['key_id']}", "not among the trusted keys")

    changed = Path(shutil.copytree(signed, tmp_path / "changed"))
    manifest = changed / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"image_threshold": ', '"image_threshold": 1', 1))  # one number changed
    _one_error_line(detect(changed), keys["owner"]["key_id"], "changed after signing")

    graph = Path(shutil.copytree(signed, tmp_path / "graph"))
    data = graph / "heads.onnx.data"
    stat = data.stat()
    with open(data, "r+b") as handle:  # one byte, same size, same mtime: only a hash can tell
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _one_error_line(detect(graph, "--no-verify"), "heads.onnx.data does not match its manifest sha256")

    truncated = Path(shutil.copytree(signed, tmp_path / "truncated"))
    signature = truncated / SIGNATURE_FILE
    signature.write_bytes(signature.read_bytes()[:60])
    _one_error_line(detect(truncated), "signature", "damaged")


def test_a_graph_changed_behind_a_verification_stamp_is_still_found(signed, keys, image, tmp_path):
    assert _cli("detect", signed, image, "--out", tmp_path / "first").returncode == 0  # leaves a stamp
    data = signed / "heads.onnx.data"
    stat = data.stat()
    with open(data, "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = _cli("detect", signed, image, "--out", tmp_path / "second", "--trusted-keys", keys["trusted"])
    _one_error_line(result, "heads.onnx.data does not match")


def test_bad_key_files_are_one_line(signed, keys, tmp_path, image):
    wrong_type = tmp_path / "wrong"
    wrong_type.mkdir()
    shutil.copy(keys["root"] / "owner" / "key", wrong_type / "secret.pub")  # a secret key where a public one belongs
    result = _cli("detect", signed, image, "--out", tmp_path / "o", "--trusted-keys", wrong_type)
    _one_error_line(result, "secret.pub is not a minisign public key")
    corrupt = tmp_path / "corrupt.key"
    corrupt.write_text("untrusted comment: x\nnot base64 at all\n")
    _one_error_line(_cli("sign", signed, "--key", corrupt), "corrupt.key is not a minisign secret key")
    _one_error_line(_cli("sign", signed, "--key", keys["root"] / "owner" / "key.pub"), "not a minisign secret key")
    _one_error_line(_cli("detect", signed, image, "--out", tmp_path / "o", "--trusted-keys", tmp_path / "none"),
                    "trusted keys folder")  # fmt: skip
    _one_error_line(_cli("keygen", "--out", keys["root"] / "owner" / "key"), "exists")


def test_an_encrypted_key_takes_its_password_from_the_environment(signed, tmp_path):
    password = {"ZSAD_EDGE_KEY_PASSWORD": "correct horse"}
    assert _cli("keygen", "--out", tmp_path / "locked", env=password).returncode == 0
    _one_error_line(_cli("sign", signed, "--key", tmp_path / "locked"), "is encrypted", "ZSAD_EDGE_KEY_PASSWORD")
    wrong = {"ZSAD_EDGE_KEY_PASSWORD": "battery staple"}
    _one_error_line(_cli("sign", signed, "--key", tmp_path / "locked", env=wrong), "wrong password")
    assert _cli("sign", signed, "--key", tmp_path / "locked", env=password).returncode == 0


def test_calibrating_a_signed_bundle_needs_resign_and_fit_normal_leaves_it_signed(
    signed, keys, normal_folder, tmp_path
):
    before = (signed / "manifest.json").read_bytes()
    _one_error_line(_cli("calibrate", signed, normal_folder), "is signed", "--resign KEY")
    assert (signed / "manifest.json").read_bytes() == before  # refused before any work
    resigned = _cli("calibrate", signed, normal_folder, "--resign", keys["root"] / "owner" / "key")
    assert resigned.returncode == 0, resigned.stderr
    assert (signed / "manifest.json").read_bytes() != before
    info = json.loads(_cli("info", signed, "--trusted-keys", keys["trusted"]).stdout)["signature"]
    assert info["state"] == "verified"
    bank = tmp_path / "bank.npz"
    fitted = _cli("fit-normal", signed, normal_folder, "--out", bank, "--trusted-keys", keys["trusted"])
    assert fitted.returncode == 0, fitted.stderr  # the bank is a file of its own: the bundle is unchanged
    assert (
        json.loads(_cli("info", signed, "--trusted-keys", keys["trusted"]).stdout)["signature"]["state"] == "verified"
    )


def test_the_minisign_tool_verifies_our_signatures_and_we_verify_its(signed, keys, image, tmp_path):
    minisign = require_program("minisign")
    ours = subprocess.run(
        [minisign, "-Vm", signed / "manifest.json", "-p", keys["root"] / "owner" / "key.pub"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ours.returncode == 0 and "Signature and comment signature verified" in ours.stderr + ours.stdout
    tool = tmp_path / "tool"
    tool.mkdir()
    made = subprocess.run([minisign, "-G", "-W", "-p", tool / "tool.pub", "-s", tool / "tool.key"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    signing = subprocess.run([minisign, "-S", "-s", tool / "tool.key", "-m", signed / "manifest.json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert signing.returncode == 0, signing.stderr
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(tool / "tool.pub", trusted)
    ran = _cli("detect", signed, image, "--out", tmp_path / "out", "--trusted-keys", trusted)
    assert ran.returncode == 0, ran.stderr
    tool_id = (tool / "tool.pub").read_text().splitlines()[0].rsplit(" ", 1)[1]
    info = json.loads(_cli("info", signed, "--trusted-keys", trusted).stdout)["signature"]
    assert info["key_id"] == tool_id and info["state"] == "verified"  # the id as minisign prints it
