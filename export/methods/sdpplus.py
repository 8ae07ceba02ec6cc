"""CLIP-AD SDP+: SDP plus APRIL-GAN-style linear heads on the original path's taps (trained)."""

from __future__ import annotations

from zsad_edge.runtime.contract import SDPPLUS

from . import register
from .sdp import Sdp


@register
class SdpPlus(Sdp):
    spec = SDPPLUS
    defaults = {**Sdp.defaults, "gaussian_sigma": {"mvtec": 8.0, "visa": 2.0}, "learning_rate": 1e-4, "epochs": 5}
