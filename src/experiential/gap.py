"""The in-context gap: how much more the teacher (experience in context) believes than the student.

It is the ceiling on what self-distillation can transfer, so ``learn`` reports it before training and
again after (the residual gap). For each pair we find the response position where the teacher's
favourite token gains most over the student, and report that token with both probabilities: the
user sees *what* is being distilled (e.g. ``" A"``) and can check it is what the feedback says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from .config import ELConfig
from .objectives.base import Pair, TeacherModel, focus_mask, student_batch
from .objectives.divergence import token_divergence
from .tokens import response_logits


@dataclass
class Gap:
    experience_id: str
    divergence: float
    """Mean per-token divergence (the configured one) between teacher and student, over the
    tokens the loss uses (:attr:`Pair.focus`)."""
    position: int
    """Response token index, among those the loss uses, where the teacher's top token gains most
    over the student."""
    token: str
    p_teacher: float
    p_student: float
    response_token: str
    """The response's own token at that position (what the attempt said)."""

    @property
    def gap(self) -> float:
        return self.p_teacher - self.p_student

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gap": self.gap}

    def describe(self) -> str:
        eid = self.experience_id
        short = eid[:12] + (eid[eid.index("~"):] if "~" in eid else "")
        return (f"{short:<17} at token {self.position} "
                f"({self.response_token!r}): teacher favours {self.token!r} "
                f"P_teacher={self.p_teacher:.2f} P_student={self.p_student:.2f} "
                f"gap={self.gap:+.2f} divergence={self.divergence:.3f}")


@torch.no_grad()
def measure_gaps(model: Any, tok: Any, pairs: Sequence[Pair], cfg: ELConfig,
                 teacher: TeacherModel, batch_size: int = 4) -> list[Gap]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gaps: list[Gap] = []
    try:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            s_batch = student_batch(chunk, tok.pad_token_id, device)
            t_logits = teacher.pair_logits(chunk, tok.pad_token_id, device)
            s_logits = response_logits(model, s_batch)
            div = token_divergence(s_logits, t_logits, cfg)
            t_p, s_p = t_logits.softmax(-1), s_logits.softmax(-1)
            top = t_p.argmax(-1)
            rows = torch.arange(len(top))
            gain = t_p[rows, top] - s_p[rows, top]
            resp_tokens = s_batch.response_tokens
            focus = focus_mask(chunk, device)
            for pair, all_idx in zip(chunk, torch.split(rows, [len(p.student.response)
                                                               for p in chunk])):
                idx = all_idx[focus[all_idx]]  # the tokens the loss uses
                j = int(idx[gain[idx].argmax()])
                gaps.append(Gap(
                    experience_id=pair.experience_id, divergence=float(div[idx].mean()),
                    position=j - int(all_idx[0]), token=tok.decode([int(top[j])]),
                    p_teacher=float(t_p[j, top[j]]), p_student=float(s_p[j, top[j]]),
                    response_token=tok.decode([int(resp_tokens[j])])))
    finally:
        model.train(was_training)
    return gaps


def summarize(gaps: Sequence[Gap]) -> dict[str, float]:
    if not gaps:
        return {}
    n = len(gaps)
    return {"mean_gap": sum(g.gap for g in gaps) / n,
            "mean_divergence": sum(g.divergence for g in gaps) / n,
            "mean_p_teacher": sum(g.p_teacher for g in gaps) / n,
            "mean_p_student": sum(g.p_student for g in gaps) / n}
