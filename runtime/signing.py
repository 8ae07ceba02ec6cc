"""Signed bundles: only bundles the line's owner released run on a station.

A bundle's manifest names every file by its sha256, so signing the manifest signs the bundle:
`zsad-edge sign` writes `manifest.json.minisig` beside it, in minisign's format (Ed25519, BLAKE2b
prehash), so `minisign -Vm manifest.json -p KEY.pub` verifies it on any machine, and a signature
made by the minisign tool verifies here. Keys are minisign keys too (`zsad-edge keygen`, or
`minisign -G`).

Where trusted keys are set (`--trusted-keys DIR` on a command, or ZSAD_EDGE_TRUSTED_KEYS, a folder
of `*.pub` files), every bundle is checked when its manifest is read, before any graph is opened:
an unsigned bundle, a bundle signed by a key not in the folder, and a manifest changed after
signing are refused with one line naming the key id; the files are then checked against the
manifest's hashes (always, even with --no-verify), so a changed graph is refused too.
Without trusted keys nothing is checked (and nothing is refused): signing is opt-in per station.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from .contract import MANIFEST_FILE
from .errors import BundleError, ZsadEdgeError
from .image_io import write_bytes_atomic

SIGNATURE_FILE = MANIFEST_FILE + ".minisig"
TRUSTED_KEYS_ENV = "ZSAD_EDGE_TRUSTED_KEYS"
PASSWORD_ENV = "ZSAD_EDGE_KEY_PASSWORD"
SIGN_EXTRA = "pip install 'zsad-edge[sign]'"
KEY_ID_SLICE = slice(2, 10)  # minisign: 2 bytes algorithm, 8 bytes key id, then the key or signature


class SignatureError(BundleError):
    """A bundle's signature is missing, unknown, damaged or does not match its manifest."""


def import_minisign():
    """py-minisign (import name `minisign`); another PyPI package installs under the same name."""
    try:
        import minisign
    except ImportError:
        raise ZsadEdgeError(f"signed bundles need py-minisign: {SIGN_EXTRA}") from None
    if not hasattr(minisign, "KeyPair"):
        raise ZsadEdgeError(
            "the installed `minisign` module is not py-minisign (another PyPI package uses that name): "
            f"pip uninstall minisign, then {SIGN_EXTRA}"
        )
    return minisign


def key_id(encoded: bytes | str) -> str:
    """A key's or signature's id as minisign prints it (the little-endian number, in hex)."""
    return base64.b64decode(encoded)[KEY_ID_SLICE][::-1].hex().upper()


def _public_key_id(public_key) -> str:
    return key_id(public_key.to_base64())


def _signature_key_id(signature) -> str:
    return key_id(bytes(signature).splitlines()[1])


def generate_key(out: Path, password: str | None = None) -> str:
    """Write a minisign secret key to `out` (mode 0600) and its public key to `out.pub`; the key id.

    Without a password the secret key is stored unencrypted (as `minisign -G -W`): keep it off
    the stations, where only the public key belongs.
    """
    minisign = import_minisign()
    public_path = out.with_name(out.name + ".pub")
    for path in (out, public_path):
        if path.exists():
            raise ZsadEdgeError(f"{path} exists: choose another --out (a key is never overwritten)")
    pair = minisign.KeyPair.generate()
    with pair.secret_key as secret:
        if password:
            secret.encrypt(password)
        secret_bytes = bytes(secret) + b"\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as handle:
        handle.write(secret_bytes)
    identity = _public_key_id(pair.public_key)
    pair.public_key.untrusted_comment = f"minisign public key {identity}"
    write_bytes_atomic(public_path, bytes(pair.public_key) + b"\n")
    return identity


def open_secret_key(path: Path, password: str | None):
    """A minisign secret key, decrypted, ready to sign (a context manager that wipes it after)."""
    minisign = import_minisign()
    try:
        secret = minisign.SecretKey.from_file(path)
    except OSError as exc:
        raise ZsadEdgeError(f"cannot read the key {path}: {exc.strerror}") from None
    except (minisign.Error, ValueError, binascii.Error) as exc:
        raise ZsadEdgeError(f"{path} is not a minisign secret key ({exc}): give the KEY file, not KEY.pub") from None
    if secret.is_encrypted():
        if not password:
            raise ZsadEdgeError(f"{path} is encrypted: put its password in {PASSWORD_ENV}")
        try:
            secret.decrypt(password)
        except minisign.Error:
            raise ZsadEdgeError(f"wrong password for {path} (from {PASSWORD_ENV})") from None
    return secret


def sign_manifest(bundle: Path, secret) -> str:
    """Sign the bundle's manifest as it is on disk; writes manifest.json.minisig atomically; the key id."""
    from .bundle import manifest_digest

    comment = f"zsad-edge bundle {Path(bundle).resolve().name} manifest sha256 {manifest_digest(bundle)}"
    signature = secret.sign((Path(bundle) / MANIFEST_FILE).read_bytes(), trusted_comment=comment)
    identity = _public_key_id(secret.get_public_key())
    signature.untrusted_comment = f"signature from zsad-edge secret key {identity}"
    write_bytes_atomic(Path(bundle) / SIGNATURE_FILE, bytes(signature) + b"\n")
    return identity


def sign_bundle(bundle: Path, key: Path, password: str | None = None) -> str:
    """Sign a verified bundle (only what the manifest describes is signed); the key id."""
    from .bundle import load_manifest

    load_manifest(bundle, verify_hashes=True, check_signature=False)
    with open_secret_key(key, password) as secret:
        return sign_manifest(bundle, secret)


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a station accepts, by key id, and the folder they came from."""

    folder: Path
    keys: dict

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "TrustedKeys":
        minisign = import_minisign()
        folder = Path(folder)
        if not folder.is_dir():
            raise ZsadEdgeError(f"trusted keys folder {folder} not found: a folder of minisign *.pub files")
        keys = {}
        for path in sorted(folder.glob("*.pub")):
            try:
                public = minisign.PublicKey.from_file(path)
            except (OSError, minisign.Error, ValueError, binascii.Error) as exc:
                raise ZsadEdgeError(f"{path} is not a minisign public key ({exc}): remove or replace it") from None
            keys[_public_key_id(public)] = public
        if not keys:
            raise ZsadEdgeError(f"no public keys (*.pub) in the trusted keys folder {folder}")
        return cls(folder, keys)


def trusted_keys_from_environment() -> TrustedKeys | None:
    """The trusted keys this process was given (ZSAD_EDGE_TRUSTED_KEYS), or None: no checking."""
    folder = os.environ.get(TRUSTED_KEYS_ENV)
    return TrustedKeys.from_folder(folder) if folder else None


def require_trusted_keys(folder: Path) -> None:
    """`--trusted-keys DIR`: check it now, and hand it on to every bundle this process and its
    children open (a served model's Triton stub, a station's next bundle version) as the variable."""
    TrustedKeys.from_folder(folder)
    os.environ[TRUSTED_KEYS_ENV] = str(Path(folder).resolve())


def read_signature(bundle: Path):
    """The bundle's signature, None where it has none; a damaged file is a SignatureError."""
    minisign = import_minisign()
    path = Path(bundle) / SIGNATURE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return minisign.Signature.from_bytes(data)
    except (minisign.Error, ValueError, binascii.Error) as exc:
        raise SignatureError(
            f"the signature of {bundle} ({SIGNATURE_FILE}) is damaged ({exc}): sign the bundle again"
        ) from None


def verify_manifest_signature(bundle: Path, manifest_bytes: bytes, trusted: TrustedKeys) -> str:
    """Refuse a bundle whose manifest is not signed by a trusted key; returns the signer's key id."""
    minisign = import_minisign()
    signature = read_signature(bundle)
    if signature is None:
        raise SignatureError(
            f"bundle {bundle} is not signed (no {SIGNATURE_FILE}) and trusted keys are set ({trusted.folder}): "
            "sign it with `zsad-edge sign`"
        )
    identity = _signature_key_id(signature)
    public = trusted.keys.get(identity)
    if public is None:
        raise SignatureError(
            f"bundle {bundle} is signed by key {identity}, which is not among the trusted keys in {trusted.folder}"
        )
    try:
        public.verify(manifest_bytes, signature)
    except minisign.VerifyError:
        raise SignatureError(
            f"bundle {bundle}: its manifest does not match the signature of key {identity} "
            "(changed after signing): refused"
        ) from None
    return identity


def signature_state(bundle: Path, trusted: TrustedKeys | None) -> dict:
    """For `info` and run records: signed or not, by which key, and whether a trusted key verifies it."""
    try:
        signature = read_signature(bundle)
    except SignatureError as exc:
        return {"signed": True, "state": "damaged", "reason": str(exc)}
    except ZsadEdgeError:  # py-minisign not installed: say so rather than fail `info`
        signed = (Path(bundle) / SIGNATURE_FILE).is_file()
        return {"signed": signed, "state": f"unknown ({SIGN_EXTRA} to check)" if signed else "unsigned"}
    if signature is None:
        return {"signed": False, "state": "unsigned"}
    state = {"signed": True, "key_id": _signature_key_id(signature), "comment": signature.trusted_comment}
    if trusted is None:
        return {**state, "state": "not checked (no trusted keys set)"}
    try:
        verify_manifest_signature(bundle, (Path(bundle) / MANIFEST_FILE).read_bytes(), trusted)
    except SignatureError as exc:
        return {**state, "state": "refused", "reason": str(exc)}
    return {**state, "state": "verified"}
