"""Atomic bundle writing: build into a hidden sibling folder, hash, then rename into place.

A crash or a parity failure mid-build leaves the previous bundle (if any) untouched and no
half-written folder under the requested name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zsad_edge.runtime.bundle import Manifest, hash_bundle_files, write_manifest
from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.image_io import apply_umask


def refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Fail before any slow work (FNN text encoding can take minutes) if the bundle may not be replaced."""
    if Path(out_dir).exists() and not overwrite:
        raise ZsadEdgeError(f"output folder exists: {out_dir} (pass --overwrite to replace it)")


@contextmanager
def staged_bundle(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on normal exit it replaces `out_dir`, on error it is removed."""
    out_dir = Path(out_dir)
    refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        yield staging
        apply_umask(staging)
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, retired / out_dir.name)
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def finalize_manifest(staging: Path, manifest: Manifest) -> None:
    """Hash every file in the staging folder into the manifest and write manifest.json last."""
    manifest.files = hash_bundle_files(staging)
    write_manifest(staging, manifest)
