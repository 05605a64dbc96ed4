"""``revise_then_distill``: hindsight revision, then distillation.

The model shown the experience first writes a revised answer (greedy by default). The student,
which sees only the task, is then trained on that revision: with the teacher's token distributions
(``revise_then_distill``) or, as the special case without a teacher, plain cross-entropy (``sft``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import ELConfig
from ..context import teacher_messages
from ..experience import Experience
from ..generation import generate_ids
from ..tokens import response_logits
from .base import Pair, TeacherModel, focus_mask, student_batch
from .self_distill import make_pairs, objective_loss, warn_unfocused


def revise(model: Any, tok: Any, experiences: Sequence[Experience],
           cfg: ELConfig) -> list[list[int]]:
    """Revised answers (token ids) written by the model with the experience in context (called before any
    update, so the model is still the original). Greedy unless ``response='samples'``."""
    msgs = [teacher_messages(e, cfg.context_design, cfg.context_template) for e in experiences]
    outs = generate_ids(model, tok, msgs, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature if cfg.response == "samples" else 0.0,
                    seed=cfg.seed, progress=cfg.progress)
    return [o[0] for o in outs]


class ReviseThenDistill:
    name = "revise_then_distill"
    distils_teacher = True

    def prepare(self, model: Any, tok: Any, experiences: Sequence[Experience],
                cfg: ELConfig) -> list[Pair]:
        revisions = revise(model, tok, experiences, cfg)
        pairs: list[Pair] = []
        for exp, text in zip(experiences, revisions):
            pairs += make_pairs(tok, exp, [text], cfg)
        warn_unfocused(pairs, cfg)
        return pairs

    def loss(self, model: Any, pairs: Sequence[Pair], cfg: ELConfig, teacher: TeacherModel,
             pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        return objective_loss(model, pairs, cfg, teacher, pad_id)


class SFT(ReviseThenDistill):
    """Cross-entropy on the revision under the student's context: no teacher distributions."""

    name = "sft"
    distils_teacher = False

    def loss(self, model: Any, pairs: Sequence[Pair], cfg: ELConfig, teacher: TeacherModel,
             pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        s_batch = student_batch(pairs, pad_id, device)
        keep = focus_mask(pairs, device)
        logits = response_logits(model, s_batch)[keep]
        nll = torch.nn.functional.cross_entropy(logits, s_batch.response_tokens[keep])
        return nll, {"nll": float(nll.detach())}
