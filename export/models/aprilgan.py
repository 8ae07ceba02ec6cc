"""APRIL-GAN zero-shot heads: the PyTorch reference of the anomaly map and image score.

Per tap: normalise(Linear(patch tokens)) @ T * 100 -> [B, 2, g, g] -> bilinear upsample to the
input size (align_corners=True) -> softmax over the two classes -> abnormal channel; the map is
the sum over taps. Image score: softmax(100 * normalise(image embedding) @ T)[abnormal].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zsad_edge.runtime.errors import ModelLoadError
from zsad_edge.runtime.interpolation import align_corners_matrix

LOGIT_SCALE = 100.0
OFFICIAL_CHECKPOINT_KEY = "trainable_linearlayer"
# zsad-edge training adds its record of how the heads were trained under this key.
TRAINING_RECORD_KEY = "zsad_edge"
# Where the official code bases keep the heads' state dict in their checkpoints.
CHECKPOINT_LAYOUTS = {OFFICIAL_CHECKPOINT_KEY: "APRIL-GAN", "linear_layers": "CLIP-AD SDP+"}
ACCEPTED_LAYOUTS = (
    "{'trainable_linearlayer': state_dict} (APRIL-GAN, zsad-edge training), "
    "{'linear_layers': state_dict} (CLIP-AD SDP+), or a bare state dict of fc.{i}.weight/bias"
)


class AprilGanHeads(nn.Module):
    """One Linear(width -> embed_dim) per tap plus the frozen class text vectors T [embed_dim, 2].

    The ModuleList is named `fc` so that the official APRIL-GAN checkpoints (`fc.{i}.weight`)
    load without renaming.
    """

    def __init__(
        self,
        num_taps: int,
        width: int,
        embed_dim: int,
        text_features: torch.Tensor,
        input_size: tuple[int, int],
        patch_grid: tuple[int, int],
    ) -> None:
        super().__init__()
        if tuple(text_features.shape) != (embed_dim, 2):
            raise ValueError(f"text features must be [{embed_dim}, 2], got {tuple(text_features.shape)}")
        self.fc = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(num_taps)])
        self.register_buffer("text_features", text_features.float().clone())
        self.patch_grid = tuple(patch_grid)
        # Bilinear (align_corners=True) upsampling as two constant matrices: X -> A_h @ X @ A_w^T.
        # Same numbers as F.interpolate, but exported as two small MatMuls, which onnxruntime
        # and TensorRT run faster than a Resize of every tap to full resolution.
        rows = align_corners_matrix(patch_grid[0], input_size[0])
        cols_t = align_corners_matrix(patch_grid[1], input_size[1]).T.copy()
        self.register_buffer("upsample_rows", torch.from_numpy(rows.copy()), persistent=False)
        self.register_buffer("upsample_cols_t", torch.from_numpy(cols_t), persistent=False)

    def tap_probabilities(self, taps: torch.Tensor) -> torch.Tensor:
        """taps [B, n_taps, N, width] -> abnormal probability per tap at input size [B, n_taps, H, W].

        Computed in an equivalent, cheaper form: a softmax over two classes is the sigmoid of the
        logit difference, and bilinear upsampling is linear, so upsampling the single difference
        channel of all taps at once and taking the sigmoid equals upsampling both logits per tap
        and taking the softmax (tests check this against the direct formula and F.interpolate).
        Training uses these per-tap maps for its per-tap focal + dice loss.
        """
        batch = taps.shape[0]
        # One plain linear layer per tap: each exports as a MatMul with a 2-D weight, which
        # onnxruntime's INT8 quantizer can take (a stacked [T, width, E] weight it cannot).
        tokens = F.normalize(torch.stack([linear(taps[:, i]) for i, linear in enumerate(self.fc)], dim=1), dim=-1)
        class_difference = self.text_features[:, 1] - self.text_features[:, 0]  # [E]
        logit_difference = LOGIT_SCALE * tokens @ class_difference  # [B, T, N]
        logit_difference = logit_difference.reshape(batch, len(self.fc), *self.patch_grid)
        return torch.sigmoid(self.upsample_rows @ logit_difference @ self.upsample_cols_t)

    def forward(self, image_embedding: torch.Tensor, taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding [B, E], taps [B, n_taps, N, width] -> (anomaly_map [B, H, W], image_score [B])."""
        anomaly_map = self.tap_probabilities(taps).sum(dim=1)
        image = F.normalize(image_embedding, dim=-1)
        image_score = (LOGIT_SCALE * image @ self.text_features).softmax(dim=-1)[:, 1]
        return anomaly_map, image_score


def load_head_weights(heads: AprilGanHeads, checkpoint: Path, build: dict | None = None) -> str:
    """Load trained head weights into `heads`; returns the checkpoint's sha256 for the manifest.

    Accepts the official APRIL-GAN and CLIP-AD layouts and a bare state dict (ACCEPTED_LAYOUTS);
    their state dicts all name the per-tap layers `fc.{i}`. build: the encoder settings heads
    must have been trained with ({"activation": ..., "clipad_mode": ...}); a zsad-edge training
    record that says otherwise is refused, since such heads read other tokens than they learnt on.
    """
    from zsad_edge.runtime.bundle import sha256_file

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModelLoadError(f"heads checkpoint not found: {checkpoint}")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read heads checkpoint {checkpoint}: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get(TRAINING_RECORD_KEY), dict):
        _check_training_record(state[TRAINING_RECORD_KEY], checkpoint, build or {})
    state = _heads_state(state, checkpoint)
    trained_taps = len({key.split(".")[1] for key in state if key.startswith("fc.")})
    if trained_taps != len(heads.fc):
        raise ModelLoadError(
            f"heads checkpoint {checkpoint} has heads for {trained_taps} taps, this build has {len(heads.fc)}: "
            "build with the taps the heads were trained on (--taps), or retrain the heads"
        )
    try:
        heads.load_state_dict(state, strict=False)
        missing = [k for k in heads.state_dict() if k.startswith("fc.") and k not in state]
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelLoadError(
            f"heads checkpoint {checkpoint} does not fit these taps/widths: {str(exc)[:300]}"
        ) from None
    if missing:
        raise ModelLoadError(f"heads checkpoint {checkpoint} lacks {missing[:4]} (wrong number of taps?)")
    return sha256_file(checkpoint)


def _check_training_record(record: dict, checkpoint: Path, build: dict) -> None:
    """Refuse heads trained on other encoder settings than this build's (activation, CLIP-AD mode,
    taps): such heads read other tokens than they learnt on."""
    trained = {
        "activation": record.get("activation", {}).get("name"),
        "clipad_mode": record.get("text", {}).get("clipad_mode"),
        "taps": record.get("taps"),
    }
    flags = {"activation": "--activation", "clipad_mode": "--clipad-mode", "taps": "--taps"}
    for name, value in trained.items():
        if value is not None and build.get(name) is not None and value != build[name]:
            as_flag = " ".join(map(str, value)) if isinstance(value, list) else value
            raise ModelLoadError(
                f"heads checkpoint {checkpoint} was trained with {name} {value!r}, this build uses "
                f"{build[name]!r}: build with {flags[name]} {as_flag}, or retrain the heads"
            )


def _heads_state(loaded: object, checkpoint: Path) -> dict:
    """The heads' state dict inside a loaded checkpoint, whichever accepted layout it has."""
    if isinstance(loaded, dict):
        for key in CHECKPOINT_LAYOUTS:
            if isinstance(loaded.get(key), dict):
                return loaded[key]
        if any(isinstance(k, str) and k.startswith("fc.") for k in loaded):
            return loaded
        keys = ", ".join(sorted(map(str, loaded))[:6]) or "none"
        raise ModelLoadError(
            f"heads checkpoint {checkpoint} has an unknown layout (top-level keys: {keys}); "
            f"accepted: {ACCEPTED_LAYOUTS}"
        )
    raise ModelLoadError(
        f"heads checkpoint {checkpoint} holds a {type(loaded).__name__}, not a dict; accepted: {ACCEPTED_LAYOUTS}"
    )


def randomize_heads(heads: AprilGanHeads, seed: int) -> dict:
    """Seeded random heads; the seed goes into the manifest so the reference can be rebuilt."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for linear in heads.fc:
            linear.weight.normal_(0.0, linear.in_features**-0.5, generator=generator)
            linear.bias.zero_()
    return {"kind": "random", "seed": seed}
