"""The engine bundle contract: manifest schema, file hashing and verification.

Export writes bundles through these types and the runtime reads them through the same types, so
the contract lives in one place. A bundle is trusted only after its schema version and every
file's sha256 check out: a half-copied folder or a hand-edited graph is refused with a message
that says what to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .contract import MANIFEST_FILE
from .errors import BundleError
from .image_io import write_bytes_atomic
from .manifest_schema import check_manifest
from .preprocess import PreprocessSpec
from .signing import SIGNATURE_FILE, trusted_keys_from_environment, verify_manifest_signature

SCHEMA_VERSION = 1
REBUILD_HINT = "rebuild it with `python export/build_engines.py`"
BASE_PRECISION = "fp32"


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed so multi-GB external weight files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; a string dimension is dynamic (e.g. "batch")."""

    name: str
    shape: list[int | str]
    dtype: str


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph; `files` lists the .onnx and any external-data side files."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    opset: int | None = None
    external_data: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "ComponentSpec":
        return cls(
            file=data["file"],
            inputs=[TensorSpec(**t) for t in data["inputs"]],
            outputs=[TensorSpec(**t) for t in data["outputs"]],
            precision=data.get("precision", "fp32"),
            opset=data.get("opset"),
            external_data=list(data.get("external_data", [])),
        )


@dataclass
class Manifest:
    """Everything the runtime needs to run a bundle without torch or open_clip.

    method: {"name": ..., "params": {...}}; clip: architecture and weights origin;
    scoring: thresholds used for `mask` and `is_anomalous`; parity: export-time measurements.
    precisions: reduced-precision variants beside the fp32 graphs, by name ("int8", "fp16", ...):
    {"components": {name: ComponentSpec}, "plan": how it was converted, "drift": measured vs fp32,
    "tolerance": the gate it passed}.
    A variant replaces only the components it lists; the rest run in fp32.
    """

    method: dict[str, Any]
    clip: dict[str, Any]
    preprocess: PreprocessSpec
    taps: list[int]
    patch_grid: list[int]
    components: dict[str, ComponentSpec]
    scoring: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    precisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    producer: str = "zsad-edge"
    schema_version: int = SCHEMA_VERSION

    def component_digest(self, name: str) -> str:
        """One sha256 over a component's graph and weight files: its identity for caches and banks."""
        component = self.components[name]
        joined = "".join(self.files[f] for f in [component.file, *component.external_data])
        return hashlib.sha256(joined.encode("ascii")).hexdigest()

    def with_precision(self, precision: str) -> "Manifest":
        """This manifest with a variant's components in place of the fp32 ones ("fp32": unchanged)."""
        if precision == BASE_PRECISION:
            return self
        if precision not in self.precisions:
            available = ", ".join([BASE_PRECISION, *self.precisions])
            raise BundleError(
                f"bundle has no {precision!r} variant (available: {available}); add it with "
                f"`python export/build_engines.py add-precision BUNDLE --precision {precision} "
                "--calibration-images NORMAL_IMAGES`"
            )
        return replace(self, components={**self.components, **self.precisions[precision]["components"]})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> "Manifest":
        try:
            return cls(
                method=data["method"],
                clip=data["clip"],
                preprocess=PreprocessSpec.from_dict(data["preprocess"]),
                taps=list(data["taps"]),
                patch_grid=list(data["patch_grid"]),
                components={name: ComponentSpec.from_dict(c) for name, c in data["components"].items()},
                scoring=dict(data["scoring"]),
                files=dict(data["files"]),
                parity=dict(data.get("parity", {})),
                precisions={
                    name: {
                        **variant,
                        "components": {c: ComponentSpec.from_dict(spec) for c, spec in variant["components"].items()},
                    }
                    for name, variant in data.get("precisions", {}).items()
                },
                producer=data.get("producer", "unknown"),
                schema_version=int(data["schema_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest {source} is malformed ({type(exc).__name__}: {exc}); {REBUILD_HINT}") from None


def hash_bundle_files(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file in the bundle except the manifest, keyed by relative POSIX path."""
    return {
        path.relative_to(bundle_dir).as_posix(): sha256_file(path)
        for path in sorted(bundle_dir.rglob("*"))
        if path.is_file() and path.name not in (MANIFEST_FILE, SIGNATURE_FILE)
    }


def load_manifest(bundle_dir: str | Path, verify_hashes: bool = True, check_signature: bool | None = None) -> Manifest:
    """Read and validate a bundle's manifest; with verify_hashes, check every listed file.

    check_signature (default: as verify_hashes): where trusted keys are set (signing.py), refuse a
    manifest without a trusted signature, and then verify every file's hash, unconditionally and
    without the stamp (whoever can rewrite a graph can rewrite a stamp beside it).
    """
    try:
        return _load_manifest(
            Path(bundle_dir), verify_hashes, verify_hashes if check_signature is None else check_signature
        )
    except PermissionError as exc:
        raise BundleError(
            f"cannot read the bundle {bundle_dir}: permission denied on {exc.filename}; "
            f"give the user running zsad-edge read access (chmod -R a+rX {bundle_dir})"
        ) from None


def _load_manifest(bundle_dir: Path, verify_hashes: bool, check_signature: bool) -> Manifest:
    manifest_path = bundle_dir / MANIFEST_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}; {REBUILD_HINT}")
    if not manifest_path.is_file():
        raise BundleError(f"not a zsad-edge bundle (no {MANIFEST_FILE}): {bundle_dir}; {REBUILD_HINT}")
    manifest_bytes = manifest_path.read_bytes()
    trusted = trusted_keys_from_environment() if check_signature else None
    if trusted is not None:
        verify_manifest_signature(bundle_dir, manifest_bytes, trusted)
    try:
        raw = json.loads(manifest_bytes.decode("utf-8-sig"))  # -sig: Notepad saves a BOM
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"manifest is not valid JSON ({exc}): {manifest_path}; {REBUILD_HINT}") from None
    if not isinstance(raw, dict) or "schema_version" not in raw:
        raise BundleError(f"manifest has no schema_version: {manifest_path}; {REBUILD_HINT}")
    version = raw["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema {version} is newer than this runtime supports ({SCHEMA_VERSION}): "
            f"upgrade zsad-edge, or {REBUILD_HINT} with this version"
        )
    if version < SCHEMA_VERSION:
        raise BundleError(f"bundle schema {version} is older than this runtime's ({SCHEMA_VERSION}); {REBUILD_HINT}")
    check_manifest(raw, str(manifest_path), REBUILD_HINT)
    manifest = Manifest.from_dict(raw, manifest_path)
    if verify_hashes or trusted is not None:
        verify_files(bundle_dir, manifest, use_stamp=trusted is None)
    return manifest


def manifest_digest(bundle: Path) -> str:
    """The sha256 of the bundle's manifest: it names every file by its own sha256, so it names the bundle."""
    return hashlib.sha256((Path(bundle) / MANIFEST_FILE).read_bytes()).hexdigest()


def write_manifest(bundle_dir: Path, manifest: Manifest) -> None:
    """Replace manifest.json in one rename: a reader sees the old or the new manifest, never half."""
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    write_bytes_atomic(Path(bundle_dir) / MANIFEST_FILE, text.encode("utf-8"))


def stamp_path(bundle_dir: Path) -> Path:
    """The verification stamp of a bundle: beside it (never inside, where it would change the bundle)."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.parent / f".{bundle_dir.name}.verified.json"


def _file_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def verify_files(bundle_dir: Path, manifest: Manifest, use_stamp: bool = True) -> None:
    """Refuse missing or modified files: a tampered graph must never run silently.

    Hashing a ViT-L bundle reads about 1.2 GB, so files verified before are remembered in a stamp
    beside the bundle, keyed by (size, mtime, inode) and the expected sha256: an unchanged file is
    not hashed again, any changed one is. The stamp is best effort (a read-only folder just hashes).
    """
    stamp_file = stamp_path(bundle_dir)
    try:
        stamp = json.loads(stamp_file.read_text(encoding="utf-8")) if use_stamp else {}
    except (OSError, ValueError):
        stamp = {}
    verified = {}
    for relative, expected in manifest.files.items():
        path = bundle_dir / relative
        if not path.is_file():
            raise BundleError(f"bundle file missing: {path}; {REBUILD_HINT}")
        key = [*_file_key(path), expected]
        if stamp.get(relative) != key:
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"bundle file {relative} does not match its manifest sha256 "
                    f"(expected {expected[:12]}..., found {actual[:12]}...): tampered or partly copied; {REBUILD_HINT}"
                )
        verified[relative] = key
    if verified != stamp:
        try:
            write_bytes_atomic(stamp_file, json.dumps(verified).encode("utf-8"))
        except OSError:
            pass  # nowhere to keep it: the next start hashes again
    variants = [
        (f"{precision}/{name}", c)
        for precision, v in manifest.precisions.items()
        for name, c in v["components"].items()
    ]
    for name, component in [*manifest.components.items(), *variants]:
        for relative in [component.file, *component.external_data]:
            if relative not in manifest.files:
                raise BundleError(f"component {name!r} file {relative} is not hashed in the manifest; {REBUILD_HINT}")
