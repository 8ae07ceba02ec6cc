"""Running under systemd with `Type=notify` and a watchdog: the station says READY=1 once its first
frame can be taken, WATCHDOG=1 while its frame loop turns, STOPPING=1 when it stops.

The watchdog ping is sent only while the station's prepare loop has turned within half the
watchdog interval. That loop turns at least every IDLE_S with nothing to do and once per batch
otherwise, and it waits for the model and the post-processing when they fall behind: a hung
model call, a hung post-processing step or a hung source stops the pings, and systemd restarts
the service (WatchdogSec=, Restart=on-watchdog). Nothing here needs a library: the protocol is
one datagram per message to the socket in $NOTIFY_SOCKET.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages where $NOTIFY_SOCKET names a socket; does nothing elsewhere."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address  # @: an abstract socket
        usec = environ.get("WATCHDOG_USEC", "")
        for_us = environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and for_us else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:  # systemd went away (shutdown): nothing to tell
            log.debug("sd_notify: %s", exc)


class Watchdog:
    """Pings systemd's watchdog every watchdog_s / 4 while `heartbeat()` (a monotonic time) is
    younger than watchdog_s / 2; also sends READY=1 at start and STOPPING=1 at close."""

    def __init__(
        self,
        notifier: Notifier,
        heartbeat: Callable[[], float],
        status: Callable[[], str] = lambda: "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier, self.heartbeat, self.status, self.clock = notifier, heartbeat, status, clock
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self.notifier.send("READY=1", f"STATUS={self.status()}")
        if self.notifier.watchdog_s:
            self._thread.start()
        return self

    def alive(self) -> bool:
        """The frame loop turned recently enough for systemd to be told so."""
        return self.clock() - self.heartbeat() < self.notifier.watchdog_s / 2

    def tick(self) -> bool:
        """One look: ping when alive. Returns whether it pinged."""
        if not self.alive():
            return False
        self.notifier.send("WATCHDOG=1", f"STATUS={self.status()}")
        self.pings += 1
        return True

    def close(self) -> None:
        self._stop.set()
        self.notifier.send("STOPPING=1")

    def _run(self) -> None:
        interval = self.notifier.watchdog_s / 4
        while not self._stop.wait(interval):
            if not self.tick():
                log.error("the frame loop has not turned for %.1f s; the watchdog is left to expire",
                          self.clock() - self.heartbeat())  # fmt: skip
