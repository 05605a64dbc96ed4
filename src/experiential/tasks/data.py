"""Benchmark data, read in place from a local directory; the Hugging Face hub only on request.

Resolution order: an explicit path (alone: a mistyped ``--data-dir`` must not silently fall back to
another copy), else ``$EXPERIENTIAL_DATA``, then ``shared/data`` beside the repository
(``../shared/data`` relative to the repo root) or below the working directory. Each benchmark is
looked up on its own, so its files may sit in any of those directories. ``allow_download=True``
(``--allow-download``) loads a benchmark that no local directory has from the hub instead.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mc import MCQuestion

_FIX = ("Pass --data-dir (or set $EXPERIENTIAL_DATA) to a directory that has it, or pass "
        "--allow-download (allow_download=True in Python) to load it from the Hugging Face hub.")


class DataNotFoundError(FileNotFoundError):
    """No local copy of a benchmark; the message says where it looked and how to point at one."""


def _candidates(path: str | os.PathLike | None) -> list[Path]:
    if path:
        return [Path(path)]
    candidates = []
    if os.environ.get("EXPERIENTIAL_DATA"):
        candidates.append(Path(os.environ["EXPERIENTIAL_DATA"]))
    repo = Path(__file__).resolve().parents[3]
    return candidates + [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                         Path.cwd() / "shared" / "data"]


def find_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The first candidate data directory that exists (see the module docstring)."""
    candidates = _candidates(path)
    for c in candidates:
        if c.is_dir():
            return c
    raise DataNotFoundError(
        "benchmark data not found (looked in: " + ", ".join(str(c) for c in candidates) + "). "
        "It should have gsm8k/, humaneval/, mmlu/. " + _FIX)


def find_data_file(relative: str, path: str | os.PathLike | None = None) -> Path:
    """``relative`` (a file or directory below a data directory) in the first candidate data
    directory that has it; the error lists every place it looked."""
    candidates = _candidates(path)
    for c in candidates:
        if (c / relative).exists():
            return c / relative
    raise DataNotFoundError(
        f"{relative} not found (looked in: " + ", ".join(str(c / relative) for c in candidates)
        + "). " + _FIX)


def _from_hub(dataset: str, config: str | None, split: str) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataNotFoundError("--allow-download needs the `datasets` package: "
                                "pip install 'experiential[repro]'") from None
    print(f"loading {dataset} ({split}) from the Hugging Face hub", file=sys.stderr, flush=True)
    return list(load_dataset(dataset, config, split=split))


@dataclass
class GSM8KProblem:
    question: str
    answer: str
    """The full reference solution, ending in ``#### N``."""
    final: str
    """The number after ``####``, without thousands separators."""
    index: int


def _final(answer: str) -> str:
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def load_gsm8k(split: str = "test", data_dir: str | None = None, *,
               allow_download: bool = False) -> list[GSM8KProblem]:
    try:
        path = find_data_file(f"gsm8k/{split}.jsonl", data_dir)
    except DataNotFoundError:
        if not allow_download:
            raise
        rows = _from_hub("openai/gsm8k", "main", split)
    else:
        rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    return [GSM8KProblem(r["question"], r["answer"], _final(r["answer"]), i)
            for i, r in enumerate(rows)]


def load_humaneval(data_dir: str | None = None, *,
                   allow_download: bool = False) -> list[dict[str, Any]]:
    try:
        path = find_data_file("humaneval/HumanEval.jsonl.gz", data_dir)
    except DataNotFoundError:
        if not allow_download:
            raise
        return _from_hub("openai/openai_humaneval", None, "test")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mmlu_subjects(split: str = "test", data_dir: str | None = None) -> list[str]:
    d = find_data_file(f"mmlu/{split}", data_dir)
    return sorted(p.name[: -len(f"_{split}.csv")] for p in d.glob(f"*_{split}.csv"))


def load_mmlu(split: str = "test", subjects: list[str] | None = None,
              data_dir: str | None = None, *, allow_download: bool = False) -> list[MCQuestion]:
    """MMLU questions (the CSVs have a header ``question,choice0..3,answer``; answer is 0-3)."""
    try:
        d = find_data_file(f"mmlu/{split}", data_dir)
    except DataNotFoundError:
        if not allow_download:
            raise
        return [MCQuestion(r["question"], list(r["choices"]), int(r["answer"]), r["subject"],
                           f"{r['subject']}/{i}")
                for i, r in enumerate(_from_hub("cais/mmlu", "all", split))
                if subjects is None or r["subject"] in subjects]
    out = []
    for subject in subjects or mmlu_subjects(split, str(d.parent.parent)):
        with open(d / f"{subject}_{split}.csv", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if row[:2] == ["question", "choice0"]:
                    continue
                out.append(MCQuestion(row[0], row[1:5], int(row[5]), subject, f"{subject}/{i}"))
    return out
