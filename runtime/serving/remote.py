"""`RemoteDetector`: a bundle served by `zsad-edge serve` (or a Triton repository made by
`zsad-edge triton-repo`), called as if it were a local `Detector`.

A thin box next to the cameras needs no model: `RemoteDetector("grpc://server:8001", "bundle")`
returns the same `DetectionResult`s the local detector would (the server sends the full map, not
a preview). Files are sent as their encoded bytes (the server decodes them as `read_image`
does); arrays as uint8 pixels (other depths are refused: send the file instead). The images of a
batch go as concurrent requests, so Triton's dynamic batcher can put them in one model call.

Errors: an unreachable or restarting server raises `ServerUnavailableError` (the station backs off
and retries); an image the server cannot score raises `ImageReadError` with the server's line.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from ..errors import ImageReadError, ServerUnavailableError, ZsadEdgeError
from ..image_io import check_image
from ..pipeline import DetectionResult, ImageInput
from ..station.credentials import masked
from .tensors import IMAGE_BYTES, PIXELS, RESULT_OUTPUTS, reply_error, reply_record, result_from_reply

CLIENT_EXTRA = "pip install 'zsad-edge[remote]'"
PROBE = np.zeros((8, 8, 3), np.uint8)  # scored once at start: the server, the model and the record
# what Triton and gRPC say when the server is not there (yet, or any more)
UNAVAILABLE = (
    "UNAVAILABLE", "connection refused", "failed to connect", "Socket closed", "not ready", "DEADLINE_EXCEEDED",
)  # fmt: skip
MODEL_LOADING = ("NOT_FOUND", "unknown model", "is not found")
SERVER_ERROR_LINE = re.compile(r"(?:ZsadEdgeError|ImageReadError): (.+)")


class Transport:
    """tritonclient's gRPC or HTTP module for grpc://HOST:PORT (or HOST:PORT) or http://HOST:PORT,
    with one client per calling thread (tritonclient's HTTP client must not be shared by threads)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        (self.module, self.address), self.timeout_s = _module(url), timeout_s
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.module.__name__.endswith("grpc"):
                client = self.module.InferenceServerClient(self.address)
            else:
                client = self.module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def infer_options(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout_s} if self.module.__name__.endswith("grpc") else {}

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def _module(url: str) -> tuple[Any, str]:
    """The tritonclient module for the URL's scheme, and HOST:PORT."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.scheme not in ("grpc", "http") or not parts.hostname or not parts.port:
        raise ZsadEdgeError(f"--server wants grpc://HOST:PORT or http://HOST:PORT, got {masked(url)!r}")
    try:
        if parts.scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise ZsadEdgeError(f"a remote detector needs tritonclient: {CLIENT_EXTRA}") from None
    return module, f"{parts.hostname}:{parts.port}"


class RemoteDetector:
    """`detector(image)` and `detector.detect_batch(images)` answered by a served bundle.

    Besides the call signature it offers what a station uses of a detector: `load`, `prepare`,
    `run`, `results` (the run is the server call), `scoring` and the server's run `record`.
    concurrency: requests in flight at once, shared by every thread that uses this detector (16
    threads calling one detector of concurrency 1 would send one request at a time).
    """

    result_stages: tuple = ()  # the server runs them (CLIP-SAM): results arrive refined

    def __init__(self, url: str, model: str, version: str = "", timeout_s: float = 30.0, concurrency: int = 8) -> None:
        self.url, self.model, self.version, self.timeout_s = url, model, str(version), timeout_s
        self._transport = Transport(url, timeout_s)
        self._pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="remote-detector")
        reply = self._infer(PIXELS, PROBE[None], outputs=(*RESULT_OUTPUTS, "record"))
        self.record: dict[str, Any] = reply_record(reply)
        self.scoring: dict[str, Any] = dict(self.record.get("scoring", {}))

    def __call__(self, image: ImageInput) -> DetectionResult:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[ImageInput]) -> list[DetectionResult]:
        return self.run([self._payload(image) for image in images])

    def load(self, images: Sequence[ImageInput]) -> list[Any]:
        """What a station's prepare step hands on: arrays checked, files kept as paths (sent encoded)."""
        return [image if isinstance(image, (str, os.PathLike)) else check_image(image) for image in images]

    def prepare(self, loaded: Sequence[Any]) -> list[tuple[str, np.ndarray]]:
        return [self._payload(image) for image in loaded]

    def run(self, prepared: Sequence[tuple[str, np.ndarray]]) -> list[DetectionResult]:
        """One request per image, all in flight at once; results in the images' order."""
        replies = list(self._pool.map(lambda item: self._infer(*item), prepared))
        return [self._result(reply) for reply in replies]

    def results(self, inferred: list[DetectionResult]) -> list[DetectionResult]:
        return inferred

    def refine(self, results: list[DetectionResult], loaded: Sequence[Any]) -> list[DetectionResult]:
        return results

    def synchronize(self) -> None:
        """Nothing queued here: the server call returned."""

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._transport.close()

    def _payload(self, image: ImageInput) -> tuple[str, np.ndarray]:
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise ImageReadError(f"image not found: {path}")
            return IMAGE_BYTES, np.array([[path.read_bytes()]], dtype=np.object_)
        image = check_image(image)
        if image.dtype != np.uint8:
            raise ImageReadError(f"a remote detector sends uint8 pixels, got {image.dtype}: send the image file")
        return PIXELS, (image[:, :, None] if image.ndim == 2 else image)[None]

    def _infer(self, name: str, data: np.ndarray, outputs: Sequence[str] = RESULT_OUTPUTS) -> dict[str, np.ndarray]:
        module = self._transport.module
        request = module.InferInput(name, list(data.shape), "BYTES" if data.dtype == np.object_ else "UINT8")
        request.set_data_from_numpy(data)
        wanted = [module.InferRequestedOutput(output) for output in outputs]
        try:
            reply = self._transport.client().infer(
                self.model, [request], model_version=self.version, outputs=wanted, **self._transport.infer_options()
            )
        except Exception as exc:  # noqa: BLE001  (tritonclient and its transports raise many kinds)
            raise self._translated(exc) from None
        return {output: reply.as_numpy(output) for output in outputs}

    def _result(self, reply: dict[str, np.ndarray]) -> DetectionResult:
        error = reply_error(reply)
        if error:
            raise ImageReadError(f"the server could not score an image: {error}")
        return result_from_reply(reply)

    def _translated(self, exc: Exception) -> ZsadEdgeError:
        text = str(exc)
        # A model that answered before and is now unknown: a restarted server still loading it.
        reloading = hasattr(self, "record") and any(word in text for word in MODEL_LOADING)
        unreachable = isinstance(exc, (ConnectionError, TimeoutError, OSError)) or any(w in text for w in UNAVAILABLE)
        if unreachable or reloading:
            return ServerUnavailableError(f"the server {masked(self.url)} is unavailable: {_first_line(text)}")
        found = SERVER_ERROR_LINE.search(text)
        if found:
            return ImageReadError(f"the server could not score an image: {found.group(1).strip()}")
        line = _first_line(text)
        return ZsadEdgeError(f"the server {masked(self.url)} refused the request for {self.model!r}: {line}")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)[:300]
