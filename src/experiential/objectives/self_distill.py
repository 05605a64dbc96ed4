"""``self_distill``: the same model, shown the experience, teaches the model that sees only the task.

Both contexts score the same response tokens: the attempt itself, or fresh samples from the
student (on-policy). At every response position the student's next-token distribution is pulled
towards the teacher's, so the feedback text becomes a dense, per-token signal.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from ..config import ELConfig
from ..context import student_messages, teacher_messages
from ..experience import Experience
from ..focus import answer_focus
from ..generation import generate_ids
from ..tokens import Sequence_, context_ids, response_ids, response_logits
from .base import Pair, TeacherModel, focus_mask, student_batch
from .divergence import token_divergence


def make_pairs(tok: Any, exp: Experience, responses: Sequence[str | list[int]],
               cfg: ELConfig) -> list[Pair]:
    """Pairs for one experience; each response is text (tokenized on its own) or token ids.

    With ``cfg.distill_span`` ``"answer"`` or ``"answer_hold"`` each pair's focus is its final
    answer's tokens; a response that states no answer keeps all of them (``focus`` stays None)."""
    s_ctx = context_ids(tok, student_messages(exp))
    t_ctx = context_ids(tok, teacher_messages(exp, cfg.context_design, cfg.context_template))
    pairs = []
    for r in responses:
        resp = response_ids(tok, r) if isinstance(r, str) else list(r)
        text = r if isinstance(r, str) else tok.decode(resp, skip_special_tokens=True)
        if not resp:
            continue
        longest = max(len(s_ctx), len(t_ctx)) + len(resp)
        if longest > cfg.max_length:
            raise ValueError(f"experience {exp.id}: {longest} tokens with the experience context, "
                             f"over max_length={cfg.max_length}")
        focus = answer_focus(tok, resp) if cfg.distill_span != "response" else None
        pairs.append(Pair(Sequence_(s_ctx, resp), Sequence_(t_ctx, resp), exp.id,
                          response_text=text, focus=focus))
    return pairs


def distill_loss(model: Any, pairs: Sequence[Pair], cfg: ELConfig, teacher: TeacherModel,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token divergence of the student from the teacher on the tokens in each pair's focus
    (all response tokens unless :attr:`Pair.focus` says otherwise), ``[n_tokens]``, plus each
    token's row index into ``pairs``. With ``distill_span="answer_hold"`` every response token
    is kept, and those outside the focus are held (:func:`hold_unfocused`)."""
    device = next(model.parameters()).device
    s_batch = student_batch(pairs, pad_id, device)
    t_logits = teacher.pair_logits(pairs, pad_id, device)
    focused = any(p.focus is not None for p in pairs)
    if focused and cfg.distill_span == "answer_hold":
        t_logits = hold_unfocused(t_logits, pairs, teacher, pad_id, device)
    s_logits = response_logits(model, s_batch)
    per_token = token_divergence(s_logits, t_logits, cfg)
    rows = s_batch.response_mask.nonzero()[:, 0]
    if focused and cfg.distill_span != "answer_hold":
        keep = focus_mask(pairs, device)
        per_token, rows = per_token[keep], rows[keep]
    return per_token, rows


def hold_unfocused(t_logits: torch.Tensor, pairs: Sequence[Pair], teacher: TeacherModel,
                   pad_id: int, device: Any) -> torch.Tensor:
    """The teacher's logits on each pair's focus, and elsewhere the frozen model's own in the
    student's context: the words around the answer are held where they were, as replay anchors
    hold unrelated prompts, instead of being left free (``"answer"``) or pulled towards how the
    teacher, having read the feedback, would phrase them (``"response"``)."""
    own = teacher.pair_logits([Pair(p.student, p.student, p.experience_id, kind="anchor")
                               for p in pairs], pad_id, device)
    return torch.where(focus_mask(pairs, device)[:, None], t_logits, own)


def objective_loss(model: Any, pairs: Sequence[Pair], cfg: ELConfig, teacher: TeacherModel,
                   pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean per-token divergence, and as ``divergence`` (what the stop rule reads) its mean
    over the focus alone: with ``answer_hold`` the held tokens start at zero and would dilute it."""
    per_token, _ = distill_loss(model, pairs, cfg, teacher, pad_id)
    shown = per_token  # a pair without a focus counts every token, here as in the loss
    if cfg.distill_span == "answer_hold":
        shown = per_token[focus_mask(pairs, per_token.device)]
    return per_token.mean(), {"divergence": float(shown.mean().detach())}


def warn_unfocused(pairs: Sequence[Pair], cfg: ELConfig) -> None:
    """Say how many responses stated no answer, so ``distill_span="answer"`` never silently
    becomes whole-response distillation."""
    if cfg.distill_span == "response":
        return
    missing = [p for p in pairs if p.focus is None]
    if missing:
        warnings.warn(f"distill_span={cfg.distill_span!r}: {len(missing)} of {len(pairs)} "
                      f"responses state no answer (none of 'answer is', 'answer:', '####', "
                      f"'\\boxed{{'); those are distilled over the whole response, e.g. "
                      f"{missing[0].response_text[-80:]!r}",
                      stacklevel=3)


class SelfDistill:
    name = "self_distill"
    distils_teacher = True

    def prepare(self, model: Any, tok: Any, experiences: Sequence[Experience],
                cfg: ELConfig) -> list[Pair]:
        if cfg.response == "attempt":
            empty = [e.id for e in experiences if not e.attempt.strip()]
            if empty:
                raise ValueError(f"response='attempt' needs an attempt; empty in {empty[:5]} "
                                 "(use response='samples' to distil on fresh samples)")
            responses = [[e.attempt] for e in experiences]
        else:
            responses = generate_ids(model, tok, [student_messages(e) for e in experiences],
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 num_return_sequences=cfg.num_samples, seed=cfg.seed,
                                 progress=cfg.progress)
        pairs: list[Pair] = []
        for exp, texts in zip(experiences, responses):
            pairs += make_pairs(tok, exp, texts, cfg)
        warn_unfocused(pairs, cfg)
        return pairs

    def loss(self, model: Any, pairs: Sequence[Pair], cfg: ELConfig, teacher: TeacherModel,
             pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        return objective_loss(model, pairs, cfg, teacher, pad_id)
