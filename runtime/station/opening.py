"""From a `[name=]URI` source spec to the source that reads it: a video file, an image (drop)
folder, a camera, a network stream or a GStreamer pipeline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import ZsadEdgeError
from .credentials import masked
from .drop_folder import DropFolder
from .sources import NETWORK_SCHEMES, CaptureSource, FrameSource, VideoFileSource

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mpg", ".ts"})
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def split_spec(spec: str, index: int) -> tuple[str, str]:
    """(name, URI) of `[name=]URI`; an unnamed source is `source<index>`. A URL's own `=` (a query)
    is never taken for the name's."""
    name, separator, uri = spec.partition("=")
    if separator and _NAME.fullmatch(name):
        return name, uri
    return f"source{index}", spec


def open_source(
    spec: str,
    index: int,
    follow: bool = False,
    loop: bool = False,
    realtime: bool = False,
    folder_options: dict[str, Any] | None = None,
    **options: Any,
) -> FrameSource:
    """A source from `[name=]URI`. folder_options go to a drop folder (state_folder, processed, ...);
    options (queue size, stride, max fps, stall time) to every kind. Unknown forms are refused by name."""
    name, uri = split_spec(spec, index)
    if uri.isdigit() or uri.startswith(("/dev/video", "gst:", *NETWORK_SCHEMES)):  # before file names:
        return CaptureSource(name, uri, **options)  # http://cam/stream.avi is a stream, not a file
    path = Path(uri)
    if path.is_dir():
        return DropFolder(name, path, follow=follow, **(folder_options or {}), **options)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(name, path, loop=loop, realtime=realtime, **options)
    raise ZsadEdgeError(
        f"unknown source {masked(spec)!r}: expected a video file ({', '.join(sorted(VIDEO_SUFFIXES))}), an "
        "image folder, a camera number or /dev/videoN, an rtsp:// or http(s):// URL, or gst:PIPELINE"
    )
