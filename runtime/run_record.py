"""How results were made: the run record every JSON, summary and served reply carries, so an
operator can trace a verdict to its bundle, backend, precision and thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from .bundle import Manifest, manifest_digest
from .signing import signature_state, trusted_keys_from_environment
from .stages.memory_bank import MemoryBank


class Recorded(Protocol):
    """What a run record is read from: a Detector, or a Triton ensemble's post-processing model."""

    manifest: Manifest
    scoring: dict[str, Any]
    memory_bank: MemoryBank | None

    @property
    def backend(self) -> str: ...

    @property
    def providers(self) -> list[str]: ...


def run_record(detector: Recorded, bundle: Path, precision: str, memory_bank: Path | None) -> dict:
    """How results were made, for every JSON: an operator must be able to trace a verdict."""
    scoring = detector.scoring
    from_bank = detector.memory_bank is not None and bool(detector.memory_bank.scoring)
    return {
        "bundle": str(bundle),
        "digest": manifest_digest(bundle),
        "signature": signer(bundle),
        "method": detector.manifest.method.get("name"),
        "backend": detector.backend,
        "precision": precision,
        "providers": detector.providers,
        "memory_bank": str(memory_bank) if memory_bank else None,
        "thresholds": {
            "image": scoring["image_threshold"],
            "map": scoring["map_threshold"],
            "calibrated": bool(scoring.get("calibrated", False)),
            "source": "memory bank" if from_bank else "bundle",
        },
    }


def signer(bundle: Path) -> dict:
    """Who signed the bundle and whether this process checked it ("verified" under trusted keys)."""
    state = signature_state(bundle, trusted_keys_from_environment())
    return {"key_id": state.get("key_id"), "state": state["state"]}
