"""Token-level divergences between student and teacher next-token distributions.

Thin wrappers over TRL's self-distillation helpers (``trl.experimental.sdpo.loss_utils``), so the
maths is the maintained, tested one: ``alpha`` 0 is KL(teacher || student), 1 is KL(student ||
teacher), in between the generalised Jensen-Shannon divergence; top-k keeps a tail bucket so the
divergence still approximates the full-vocabulary one.
"""

from __future__ import annotations

import warnings

import torch

with warnings.catch_warnings():  # TRL warns that trl.experimental is experimental; we pin TRL
    warnings.simplefilter("ignore")
    from trl.experimental.sdpo.loss_utils import (
        compute_full_logit_self_distillation_loss,
        compute_topk_self_distillation_loss,
    )

from ..config import ELConfig


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     cfg: ELConfig) -> torch.Tensor:
    """Per-token divergence ``[n_tokens]`` between ``[n_tokens, vocab]`` logit rows."""
    if cfg.topk:
        return compute_topk_self_distillation_loss(
            student_logits, teacher_logits, distillation_topk=cfg.topk,
            distillation_alpha=cfg.divergence_alpha, distillation_add_tail=True)
    return compute_full_logit_self_distillation_loss(
        student_logits, teacher_logits, distillation_alpha=cfg.divergence_alpha)
