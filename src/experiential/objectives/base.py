"""What every objective shares: paired student/teacher sequences over the same response tokens.

An objective turns experiences into :class:`Pair` s (``prepare``) and pairs into a loss (``loss``).
Replay anchors are pairs too: the teacher's context is the student's own, so the teacher is simply
the frozen original model and the divergence keeps the student where it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import torch

from ..config import ELConfig
from ..experience import Experience
from ..letter_prior import LetterTarget, apply_letter_targets
from ..tokens import Batch, Sequence_, collate, response_logits


@dataclass
class Pair:
    """A response scored under two contexts. ``kind`` is ``experience`` or ``anchor``."""

    student: Sequence_
    teacher: Sequence_
    experience_id: str
    kind: str = "experience"
    response_text: str = ""
    prompt_text: str = ""
    """The prompt, for reports (set for anchors the model wrote itself)."""
    focus: list[bool] | None = None
    """Response tokens the loss uses (:mod:`experiential.focus`); None: all of them."""
    letter_target: LetterTarget | None = None
    """The answer-letter distribution the teacher gives here instead of its own
    (:mod:`experiential.letter_prior`); None: the teacher's own."""

    def __post_init__(self) -> None:
        if self.student.response != self.teacher.response:
            raise ValueError("student and teacher must score the same response tokens")
        if self.focus is not None and (len(self.focus) != len(self.student.response)
                                       or not any(self.focus)):
            raise ValueError("focus must mark at least one of the response tokens, one flag each")


class Objective(Protocol):
    name: str
    distils_teacher: bool
    """Whether the loss uses the teacher's distributions (what the letter checks and the letter
    prior act on); ``sft`` learns the revision's tokens and has none."""

    def prepare(self, model: Any, tok: Any, experiences: Sequence[Experience],
                cfg: ELConfig) -> list[Pair]:
        """Build the pairs to learn from (may generate text with the model)."""

    def loss(self, model: Any, pairs: Sequence[Pair], cfg: ELConfig, teacher: "TeacherModel",
             pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean per-token loss over the pairs' response tokens, and metrics."""


class TeacherModel:
    """The frozen original model: the LoRA-wrapped student with its adapter disabled, or (full
    fine-tuning) a separate frozen copy.

    Because the teacher never changes, its logits for a given sequence never change either: they
    are cached per sequence (up to ``cache_mb``), so after the first pass an EL step costs about
    what an SFT step costs.
    """

    def __init__(self, model: Any, frozen_copy: Any | None = None, cache_mb: float = 0.0):
        self.model, self.frozen_copy = model, frozen_copy
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._budget = int(cache_mb * 2**20)
        self._used = 0

    def clear_cache(self) -> None:
        self._cache.clear()
        self._used = 0

    def pair_logits(self, pairs: Sequence["Pair"], pad_id: int, device: Any) -> torch.Tensor:
        """Teacher logits at the response positions of each pair, concatenated in pair order
        (the order :func:`~experiential.tokens.response_logits` uses for the student batch),
        with each pair's :attr:`Pair.letter_target` in place of the teacher's own letters."""
        keys = [tuple(p.teacher.ids) for p in pairs]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            batch = collate([pairs[i].teacher for i in missing], pad_id).to(device)
            logits = self.logits(batch)
            for i, chunk in zip(missing, logits.split(
                    [len(pairs[i].teacher.response) for i in missing])):
                fresh[i] = chunk
                size = chunk.numel() * chunk.element_size()
                if self._used + size <= self._budget:
                    self._cache[keys[i]] = chunk
                    self._used += size
        rows = torch.cat([fresh[i] if i in fresh else self._cache[k].to(device)
                          for i, k in enumerate(keys)])  # a new tensor: the cache is untouched
        return apply_letter_targets(rows, pairs)

    @contextmanager
    def active(self) -> Iterator[Any]:
        if self.frozen_copy is not None:
            yield self.frozen_copy
        elif hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        with self.active() as m:
            was_training = m.training
            m.eval()
            try:
                return response_logits(m, batch)
            finally:
                m.train(was_training)


def student_batch(pairs: Sequence[Pair], pad_id: int, device: Any) -> Batch:
    return collate([p.student for p in pairs], pad_id).to(device)


def focus_mask(pairs: Sequence[Pair], device: Any) -> torch.Tensor:
    """``[n_response_tokens]`` bool, in the flattened order of :func:`response_logits`: the
    tokens each pair's loss uses."""
    return torch.tensor([f for p in pairs for f in (p.focus or [True] * len(p.student.response))],
                        dtype=torch.bool, device=device)
