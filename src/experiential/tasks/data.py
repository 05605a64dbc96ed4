"""Benchmark data, read in place from a local directory; the Hugging Face hub only on request.

Resolution order: an explicit path, ``$EXPERIENTIAL_DATA``, then ``shared/data`` beside the repository
(``../shared/data`` relative to the repo root) or below the working directory.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mc import MCQuestion


class DataNotFoundError(FileNotFoundError):
    """No local copy of a benchmark; the message says how to point at one."""


def find_data_dir(path: str | os.PathLike | None = None) -> Path:
    candidates = []
    if path:
        candidates.append(Path(path))
    if os.environ.get("EXPERIENTIAL_DATA"):
        candidates.append(Path(os.environ["EXPERIENTIAL_DATA"]))
    repo = Path(__file__).resolve().parents[3]
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                   Path.cwd() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise DataNotFoundError(
        "benchmark data not found (looked in: " + ", ".join(str(c) for c in candidates) + "). "
        "Set EXPERIENTIAL_DATA or pass --data-dir to a directory with gsm8k/, humaneval/, mmlu/; "
        "or pass allow_download=True to fetch from the Hugging Face hub.")


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
        path = find_data_dir(data_dir) / "gsm8k" / f"{split}.jsonl"
        rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    except DataNotFoundError:
        if not allow_download:
            raise
        from datasets import load_dataset

        rows = list(load_dataset("openai/gsm8k", "main", split=split))
    return [GSM8KProblem(r["question"], r["answer"], _final(r["answer"]), i)
            for i, r in enumerate(rows)]


def load_humaneval(data_dir: str | None = None, *,
                   allow_download: bool = False) -> list[dict[str, Any]]:
    try:
        path = find_data_dir(data_dir) / "humaneval" / "HumanEval.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except DataNotFoundError:
        if not allow_download:
            raise
        from datasets import load_dataset

        return list(load_dataset("openai/openai_humaneval", split="test"))


def mmlu_subjects(split: str = "test", data_dir: str | None = None) -> list[str]:
    d = find_data_dir(data_dir) / "mmlu" / split
    return sorted(p.name[: -len(f"_{split}.csv")] for p in d.glob(f"*_{split}.csv"))


def load_mmlu(split: str = "test", subjects: list[str] | None = None,
              data_dir: str | None = None, *, allow_download: bool = False) -> list[MCQuestion]:
    """MMLU questions (the CSVs have a header ``question,choice0..3,answer``; answer is 0-3)."""
    root = _resolve(data_dir, allow_download)
    if root is None:
        from datasets import load_dataset

        ds = load_dataset("cais/mmlu", "all", split=split)
        return [MCQuestion(r["question"], list(r["choices"]), int(r["answer"]), r["subject"],
                           f"{r['subject']}/{i}") for i, r in enumerate(ds)
                if subjects is None or r["subject"] in subjects]
    out = []
    for subject in subjects or mmlu_subjects(split, str(root)):
        with open(root / "mmlu" / split / f"{subject}_{split}.csv", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if row[:2] == ["question", "choice0"]:
                    continue
                out.append(MCQuestion(row[0], row[1:5], int(row[5]), subject, f"{subject}/{i}"))
    return out


def _resolve(path: str | None, allow_download: bool) -> Path | None:
    try:
        return find_data_dir(path)
    except DataNotFoundError:
        if allow_download:
            return None
        raise
