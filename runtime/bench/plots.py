"""`--plot`: one PNG per stage comparing the baseline's and the new run's samples (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ZsadEdgeError

PLOT_EXTRA = "pip install 'zsad-edge[plot]'"


def plot_comparison(baseline: dict, new: dict, folder: Path) -> list[Path]:
    """Box plots per stage, one pair (baseline, new) per configuration both records hold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ZsadEdgeError(f"--plot needs matplotlib: {PLOT_EXTRA}") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = [key for key in new["configs"] if key in baseline["configs"]]
    stages = {stage for key in keys for stage in new["configs"][key]["samples_ms"]}
    written = []
    for stage in sorted(stages):
        present = [key for key in keys if stage in baseline["configs"][key]["samples_ms"]]
        data, labels = [], []
        for key in present:
            data += [baseline["configs"][key]["samples_ms"][stage], new["configs"][key]["samples_ms"][stage]]
            labels += [f"{key}\nbaseline", f"{key}\nnew"]
        figure, axes = plt.subplots(figsize=(max(4.0, 1.6 * len(data)), 4.0))
        axes.boxplot(data, showfliers=True)
        axes.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        axes.set_ylabel("ms")
        axes.set_title(stage)
        figure.tight_layout()
        path = folder / f"{stage}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
