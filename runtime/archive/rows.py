"""The unit of archive scoring: a row (an image path, its position, a command's tag), read and
scored in batches by `score_rows`, here (`local_outcomes`) or in a Ray actor (ray_data.py).

A command supplies `work(detector, images, rows, context) -> payloads`: what it keeps of each
scored image (detect: the files to write; calibrate: the numbers it needs). It runs where the
detector runs; its payloads travel back to the command, which writes or sums them in input order.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ImageReadError
from ..image_io import check_image
from ..stopping import StopRequest

Row = dict[str, Any]  # {"index": position in the command's list, "path": image file, "tag": the command's}
Work = Callable[[Any, list[np.ndarray], list[Row], Any], list[Any]]
Read = Callable[[str], np.ndarray]  # a file -> its image; default: the detector's own (reduced decode)
Outcome = tuple[Row, bool, Any]  # (row, scored, payload or the line saying why the image was not read)


def rows_of(paths: Sequence, tags: Sequence[str] | None = None) -> list[Row]:
    return [{"index": i, "path": str(path), "tag": tags[i] if tags else ""} for i, path in enumerate(paths)]


def score_rows(detector, rows: Sequence[Row], work: Work, context: Any, read: Read | None = None) -> list[Outcome]:
    """Read each row's image; `work` on the readable ones in one batch; an outcome per row, in order."""
    read = read or detector.read
    outcomes: list[Outcome | None] = [None] * len(rows)
    readable, images = [], []
    for position, row in enumerate(rows):
        try:
            images.append(check_image(read(row["path"])))
            readable.append(position)
        except ImageReadError as exc:
            outcomes[position] = (row, False, str(exc))
    if images:
        payloads = work(detector, images, [rows[p] for p in readable], context)
        for position, payload in zip(readable, payloads):
            outcomes[position] = (rows[position], True, payload)
    return outcomes  # type: ignore[return-value]


def local_outcomes(
    detector,
    rows: Sequence[Row],
    work: Work,
    context: Any,
    batch_size: int,
    stop: StopRequest,
    read: Read | None = None,
) -> Iterator[Outcome]:
    """The rows scored in this process, `batch_size` images per model call, until a stop request."""
    for start in range(0, len(rows), batch_size):
        if stop.requested:
            return
        yield from score_rows(detector, rows[start : start + batch_size], work, context, read)
