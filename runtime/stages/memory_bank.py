"""APRIL-GAN few-shot memory bank: raw tap tokens of k normal images and nearest-neighbour search.

Per tap, a query patch's distance is 1 - its highest cosine similarity to any bank token of that
tap; distances are summed over taps on the patch grid. The search is a chunked matrix product so
that k = 16 shots at 518 px (4 taps x 21,904 bank tokens x 1,024 dims) never materialises the full
similarity matrix and runs in BLAS.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..image_io import write_bytes_atomic
from ..manifest_schema import scoring_problems

CHUNK_TOKENS = 4096


def l2_normalise(tokens: np.ndarray) -> np.ndarray:
    return tokens / np.maximum(np.linalg.norm(tokens, axis=-1, keepdims=True), 1e-12)


@dataclass
class MemoryBank:
    """Normalised tap tokens [n_taps, k * N, width] of k normal images, tied to one encoder graph.

    scoring: thresholds and the range of the combined map's peak on normal images, set by
    `zsad-edge calibrate --memory-bank`; they depend on the bank, so they live in its file and
    override the manifest's scoring while the bank is attached.
    """

    tokens: np.ndarray
    shots: int
    encoder_sha256: str
    scoring: dict | None = None

    @classmethod
    def from_taps(cls, taps: np.ndarray, encoder_sha256: str) -> "MemoryBank":
        """taps: the encoder's output [k, n_taps, N, width] for k normal images."""
        shots, n_taps, patches, width = taps.shape
        tokens = l2_normalise(taps.astype(np.float32)).transpose(1, 0, 2, 3).reshape(n_taps, shots * patches, width)
        return cls(np.ascontiguousarray(tokens), shots, encoder_sha256)

    def distances(self, taps: np.ndarray) -> np.ndarray:
        """[B, n_taps, N, width] queries -> [B, N] summed (1 - max cosine) over taps."""
        if taps.shape[1] != self.tokens.shape[0] or taps.shape[3] != self.tokens.shape[2]:
            raise BundleError(
                f"memory bank holds {self.tokens.shape[0]} taps of width {self.tokens.shape[2]}, "
                f"the encoder gives {taps.shape[1]} of width {taps.shape[3]}: rebuild it with fit_normal"
            )
        queries = l2_normalise(taps.astype(np.float32))
        batch, n_taps, patches, _ = queries.shape
        total = np.zeros((batch, patches), dtype=np.float32)
        for tap in range(n_taps):
            flat = queries[:, tap].reshape(batch * patches, -1)
            best = np.full(batch * patches, -np.inf, dtype=np.float32)
            for start in range(0, self.tokens.shape[1], CHUNK_TOKENS):
                chunk = self.tokens[tap, start : start + CHUNK_TOKENS]
                np.maximum(best, (flat @ chunk.T).max(axis=1), out=best)
            total += (1.0 - best).reshape(batch, patches)
        return total

    def save(self, path: str | Path) -> None:
        """Write atomically as .npz; float16 would halve the size but shifts distances by ~1e-3."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            tokens=self.tokens,
            shots=self.shots,
            encoder_sha256=self.encoder_sha256,
            scoring=json.dumps(self.scoring),
        )
        write_bytes_atomic(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, encoder_sha256: str) -> "MemoryBank":
        """Load a bank and refuse one built with another encoder graph."""
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"memory bank not found: {path}; build it with detector.fit_normal(images)")
        rebuild = "rebuild it with `zsad-edge fit-normal`"
        try:
            with np.load(path, allow_pickle=False) as data:
                bank = cls(
                    data["tokens"], int(data["shots"]), str(data["encoder_sha256"]), json.loads(str(data["scoring"]))
                )
        except Exception as exc:  # zip, zlib, npy-format and JSON errors of a truncated or foreign file
            raise BundleError(
                f"memory bank {path} is unreadable ({type(exc).__name__}: {str(exc)[:120]}); {rebuild}"
            ) from None
        problems = [] if bank.scoring is None else scoring_problems(bank.scoring)
        if bank.tokens.ndim != 3 or not np.issubdtype(bank.tokens.dtype, np.floating):
            problems.append(
                f"tokens must be a float array [taps, tokens, width], got {bank.tokens.dtype} {list(bank.tokens.shape)}"
            )
        if problems:
            raise BundleError(f"memory bank {path} is invalid: {'; '.join(problems)}; {rebuild}")
        if bank.encoder_sha256 != encoder_sha256:
            raise BundleError(f"memory bank {path} was built with another image encoder; rebuild it with fit_normal")
        return bank


def default_map_max_range(n_taps: int) -> tuple[float, float]:
    """Uncalibrated bounds of the few-shot map peak: zero-shot term <= 1 per tap, few-shot distance <= 2 per tap."""
    return 0.0, 3.0 * n_taps
