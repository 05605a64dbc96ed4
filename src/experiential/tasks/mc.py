"""Multiple-choice questions: one format everywhere (prompts, scoring, probes, reports)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

LETTERS = "ABCDE"


@dataclass
class MCQuestion:
    question: str
    choices: list[str]
    answer: int
    """0-based index of the correct choice."""
    subject: str = ""
    id: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def letter(self) -> str:
        return LETTERS[self.answer]


def format_mc(q: MCQuestion) -> str:
    """The prompt text: question, lettered options, and the instruction to answer with a letter."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))
    return f"{q.question}\n{options}\nAnswer with the letter of the correct option."


def sample_questions(questions: Sequence[MCQuestion], n: int, seed: int = 0,
                     exclude_subjects: Iterable[str] = ()) -> list[MCQuestion]:
    """A deterministic sample of ``n`` questions (all if fewer) outside the excluded subjects."""
    excluded = set(exclude_subjects)
    pool = [q for q in questions if q.subject not in excluded]
    rng = random.Random(seed)
    return rng.sample(pool, min(n, len(pool)))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for an accuracy of ``k`` out of ``n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
