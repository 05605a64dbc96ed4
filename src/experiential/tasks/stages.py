"""Resumable stages and report files shared by the reproductions.

A long run on a CPU can be killed at any time; every expensive stage writes its result as JSON under
``<out>/stages/`` the moment it finishes, and a rerun of the same command reads it back instead of
recomputing. Delete a stage file to redo that stage.

A stage is only worth reading back if it was made with the same arguments, so ``stages/args.json``
records the arguments that determine the stages (model, seed, sizes, config, feedback source) and a
rerun with different ones stops with :class:`StaleStagesError` instead of mixing old and new
results; ``restart=True`` (``--restart``) deletes the old stages first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


class StaleStagesError(ValueError):
    """The output directory holds stages made with other arguments; the message names them."""


class Stages:
    def __init__(self, out_dir: str | Path, args: Mapping[str, Any] | None = None, *,
                 restart: bool = False):
        """``args``: what the stages depend on (checked against ``stages/args.json``, recorded
        when absent). ``restart``: delete earlier stages first."""
        self.out = Path(out_dir)
        stages = self.out / "stages"
        if restart and stages.is_dir():
            shutil.rmtree(stages)
            # What the critic said for those stages goes with them (the CLI merges into it).
            (self.out / "critic_transcript.jsonl").unlink(missing_ok=True)
            print(f"[stages] --restart: deleted the earlier stages in {stages}", flush=True)
        stages.mkdir(parents=True, exist_ok=True)
        if args is not None:
            self.check_args(args)

    def check_args(self, args: Mapping[str, Any]) -> None:
        """Stop if earlier stages were made with other arguments; else record these."""
        now = json.loads(json.dumps(args, sort_keys=True, default=str))
        path = self.out / "stages" / "args.json"
        if path.is_file():
            before = json.loads(path.read_text())
            old, new = _flat(before), _flat(now)
            differ = [k for k in sorted(old.keys() | new.keys())
                      if old.get(k, _NONE) != new.get(k, _NONE)]
            if differ:
                shown = "; ".join(f"{k}: {_short(old.get(k, _NONE))} -> "
                                  f"{_short(new.get(k, _NONE))}" for k in differ[:8])
                shown += "; ..." if len(differ) > 8 else ""
                raise StaleStagesError(
                    f"{self.out}/stages holds stages made with other arguments ({shown}). Use a "
                    f"new output directory (-o), or pass --restart to delete the old stages and "
                    f"run them again.")
            return
        if any(p.name != "args.json" for p in (self.out / "stages").glob("*.json")):
            print(f"[stages] note: {self.out}/stages has stages from a run that did not record its "
                  "arguments; they are reused as they are (pass --restart to redo them)",
                  file=sys.stderr, flush=True)
        write_json(path, now)

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


_NONE = "<absent>"


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys, so an error names ``el.learning_rate``, not ``el``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v: Any) -> str:
    text = v if v is _NONE else json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def source_identity(source: Any) -> str | None:
    """A feedback source or critic as a stable string (its backend's identity when it has one)."""
    if source is None:
        return None
    backend = getattr(source, "backend", None)
    return getattr(backend, "identity", None) or getattr(source, "name", None) or \
        type(source).__name__


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


def provenance(model_name: str, command: str | None) -> dict[str, Any]:
    """Where a report's numbers come from: the resolved model (full name and GGUF hash for an
    embedded one, else its path or hub id) and the command line that made the report."""
    from ..models import describe_model

    return {"model_resolved": describe_model(model_name), "command": command}


def provenance_markdown(report: Mapping[str, Any]) -> list[str]:
    """The lines at the top of a report.md that say which model and which command."""
    lines = []
    if report.get("command"):
        lines.append(f"Command: `{report['command']}`\n")
    m = report.get("model_resolved") or {}
    if m.get("gguf_sha256"):
        lines.append(f"Model: {m['name']} (embedded `{m['argument']}`, GGUF sha256 "
                     f"`{m['gguf_sha256']}`)\n")
    elif m:
        lines.append(f"Model: `{m.get('path') or m.get('hub_id')}`\n")
    return lines
