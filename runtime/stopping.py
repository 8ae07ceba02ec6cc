"""Stopping long runs cleanly on SIGINT (Ctrl-C) and SIGTERM (systemd, docker stop).

The first signal asks the run to stop after the image in hand: detect and eval then write what
they have, calibrate and fit-normal abandon (their manifest or bank is written in one rename at
the very end, so the old one stays as it was). The command prints one line and exits with
128 + the signal number, the shell's convention: 130 for SIGINT, 143 for SIGTERM. A second
signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Iterable, Iterator, TypeVar

from .errors import ZsadEdgeError

T = TypeVar("T")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(ZsadEdgeError):
    """A run that abandons its work on a stop request; nothing was written."""

    def __init__(self, stop: "StopRequest", done: int, total: int, what: str, unit: str = "image(s)") -> None:
        super().__init__(f"stopped by {stop.signal_name} after {done} of {total} {unit}; {what}")
        self.exit_code = stop.exit_code


class StopRequest:
    """Installs the handlers for its `with` block and records the first signal.

    Outside the main thread (where Python cannot install handlers) it stays a flag nobody sets.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in HANDLED_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = number

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "request"

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """The items, until a stop is requested (checked before each one)."""
        for item in items:
            if self.requested:
                return
            yield item


NEVER = StopRequest()  # for library calls without a CLI: never requested
