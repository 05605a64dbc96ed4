"""Resumable stages and report files shared by the reproductions.

A long run on a CPU can be killed at any time; every expensive stage writes its result as JSON under
``<out>/stages/`` the moment it finishes, and a rerun of the same command reads it back instead of
recomputing. Delete a stage file to redo that stage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence


class Stages:
    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        (self.out / "stages").mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.json"

    def done(self, name: str) -> bool:
        return self.path(name).is_file()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """The stage's saved result, or ``fn()`` saved atomically then returned."""
        p = self.path(name)
        if p.is_file():
            print(f"[stage {name}] done earlier, read from {p}", flush=True)
            return json.loads(p.read_text())
        print(f"[stage {name}] running", flush=True)
        result = fn()
        write_json(p, result)
        return result


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def bar_plot(path: str | Path, title: str, labels: Sequence[str],
             series: dict[str, Sequence[float | None]], ylabel: str,
             errors: dict[str, Sequence[float | None]] | None = None) -> Path | None:
    """A grouped bar chart (ours beside published) as PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 3.6))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        vals = [float("nan") if v is None else v for v in values]
        errs = None
        if errors and name in errors:
            errs = [0.0 if e is None else e for e in errors[name]]
        ax.bar(xs, vals, width, label=name, yerr=errs, capsize=3 if errs else 0)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
