"""Reading anomaly-detection folders in MVTec AD layout, as they really come.

    ROOT[/CATEGORY]/train/good/*.png
    ROOT[/CATEGORY]/test/good/*.png, test/<defect>/*.png
    ROOT[/CATEGORY]/ground_truth/<defect>/<NAME>_mask.png   (MVTec)  or  <NAME>.png  (same name)

Masks may be in any format the image reader takes (KolektorSDD keeps `NAME_mask.bmp` beside
`NAME.jpg`). A mask pixel is a defect when its value exceeds `mask_threshold` times the mask's
full scale (255 for 8-bit, 65535 for 16-bit, 1.0 for float); the default 0 counts any non-zero
pixel, which is how soft 0-255 masks are binarised unless told otherwise.

Real sets deviate: masks named like their image, masks without an image, defective images
without a mask, grayscale images, names with '+' and '-'. The reader keeps every usable sample
and records each deviation as a `problem` line instead of failing, so a report can name what
it skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageReadError, ZsadEdgeError
from ..image_io import IMAGE_SUFFIXES, read_image

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One test image; `mask` is None for good images and for defective images lacking a mask."""

    image: Path
    defect: str
    mask: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.defect != GOOD


@dataclass
class Category:
    """The test split of one category plus what the reader had to skip or tolerate."""

    name: str
    root: Path
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)

    def train_images(self) -> list[Path]:
        """Normal training images (train/good), e.g. for calibration or few-shot memory banks."""
        return _images_in(self.root / "train" / GOOD)


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(masks: dict[str, list[Path]], image: Path) -> Path | None:
    """`NAME_mask.*` before `NAME.*`; among formats the image's own first, then PNG, then by name."""
    for stem in (f"{image.stem}_mask", image.stem):
        candidates = masks.get(stem, [])
        if candidates:
            return min(
                candidates, key=lambda p: (p.suffix.lower() != image.suffix.lower(), p.suffix.lower() != ".png", p.name)
            )
    return None


def _masks_by_stem(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in _images_in(folder):
        found.setdefault(path.stem, []).append(path)
    return found


def scan_category(root: Path, name: str | None = None) -> Category:
    """Scan one category folder (the one holding test/)."""
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise ZsadEdgeError(f"not an MVTec-layout folder (no test/ inside): {root}")
    ground_truth = root / "ground_truth"
    samples: list[Sample] = []
    problems: list[str] = []
    used_masks: set[Path] = set()
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        masks = {} if defect == GOOD else _masks_by_stem(ground_truth / defect)
        for image in _images_in(defect_dir):
            mask = None if defect == GOOD else _find_mask(masks, image)
            if defect != GOOD and mask is None:
                problems.append(f"no mask for {image.relative_to(root)}: left out of pixel metrics")
            if mask is not None:
                used_masks.add(mask)
            samples.append(Sample(image, defect, mask))
    if ground_truth.is_dir():
        orphans = [p for d in ground_truth.iterdir() if d.is_dir() for p in _images_in(d) if p not in used_masks]
        if orphans:
            problems.append(f"{len(orphans)} mask(s) in ground_truth/ have no test image (ignored)")
    if not samples:
        raise ZsadEdgeError(f"no test images under {test_dir}")
    return Category(name or root.name, root, samples, problems)


def scan_dataset(root: str | Path) -> list[Category]:
    """One category if ROOT holds test/, else every sub-folder that does (MVTec's 15 categories)."""
    root = Path(root)
    if not root.is_dir():
        raise ZsadEdgeError(f"dataset folder not found: {root}")
    if (root / "test").is_dir():
        return [scan_category(root)]
    categories = [scan_category(p) for p in sorted(root.iterdir()) if (p / "test").is_dir()]
    if not categories:
        raise ZsadEdgeError(f"no MVTec-layout category (a folder with test/) under {root}")
    return categories


def load_mask(sample: Sample, shape: tuple[int, int], threshold: float = 0.0) -> np.ndarray | None:
    """Boolean ground truth at the image's size: all False for good images; None when the mask is
    missing; an ImageReadError when its size differs from the image (the caller reports it).

    threshold: fraction of the mask's full scale a defect pixel must exceed (0: any non-zero).
    """
    if not sample.is_anomalous:
        return np.zeros(shape, dtype=bool)
    if sample.mask is None:
        return None
    mask = read_image(sample.mask)
    if mask.ndim == 3:
        mask = mask[:, :, :3].max(axis=2)
    if mask.shape != tuple(shape):
        raise ImageReadError(
            f"mask {sample.mask.name} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}"
        )
    full_scale = np.iinfo(mask.dtype).max if np.issubdtype(mask.dtype, np.integer) else 1.0
    return mask > threshold * full_scale


def sample_across_defects(samples: list[Sample], count: int | None, seed: int = 0) -> list[Sample]:
    """Up to `count` samples taken in turn from each defect type, each type shuffled with `seed`.

    The first N in sorted order would all be one defect type (80 blowholes on Magnetic Tile);
    None or a count >= len(samples) keeps them all, in order.
    """
    if count is None or count >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.defect, []).append(sample)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(groups.items())]
    chosen: list[Sample] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen
