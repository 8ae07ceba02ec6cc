"""Lean runtime: runs zsad-edge bundles with numpy, OpenCV and onnxruntime; never imports torch."""

from .detector import Detector
from .errors import ZsadEdgeError
from .pipeline import DetectionResult

__all__ = ["Detector", "DetectionResult", "ZsadEdgeError"]
