"""Retention: does an update leave unrelated behaviour alone?

Ten LoRA steps distilling one "the answer is A" experience once taught a model to answer A to an
unrelated question (Paris: P(A) .31 -> .93). So every update scores a probe set of unrelated
multiple-choice questions before and after, and reports the accuracy change and the mean KL between
the original and the updated answer distributions. A few open chat prompts are scored too: the
mean per-token KL(original || updated) on the original model's own greedy answers, so drift in
free-form behaviour shows even where no multiple-choice letter moves. Both probe sets are disjoint
from the replay anchors used in training, so retention is measured on prompts the update never saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .scoring import option_logprobs

if TYPE_CHECKING:
    from .tasks.mc import MCQuestion


@dataclass
class Retention:
    n: int
    accuracy_before: float
    accuracy_after: float
    mean_kl: float
    """Mean KL(before || after) of the answer-letter distributions, in nats."""
    max_kl: float
    letter_mass_before: list[float]
    """Mean probability per letter before: a shift here is the "answer A" failure."""
    letter_mass_after: list[float]
    chat_n: int = 0
    """Open chat prompts scored (0: none)."""
    chat_mean_kl: float | None = None
    """Mean over chat prompts of the per-token KL(original || updated), in nats, on the original
    model's own greedy answer to each prompt."""
    chat_max_kl: float | None = None
    p_correct_before: float | None = None
    """Mean probability of the right letter before: the expected accuracy. Unlike the argmax
    accuracy, it does not jump when a near-tie flips, so a small real change shows through."""
    p_correct_after: float | None = None
    per_probe_kl: list[float] | None = None
    """KL per probe question, in the probe order (which questions moved, for reports)."""

    @property
    def accuracy_change(self) -> float:
        return self.accuracy_after - self.accuracy_before

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"accuracy_change": self.accuracy_change}

    def describe(self) -> str:
        fmt = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
        return (f"retention on {self.n} unrelated questions: accuracy "
                f"{self.accuracy_before:.1%} -> {self.accuracy_after:.1%} "
                f"({self.accuracy_change * 100:+.1f} points"
                + (f"; mean P(right letter) {self.p_correct_before:.3f} -> "
                   f"{self.p_correct_after:.3f}" if self.p_correct_before is not None else "")
                + f"), mean KL {self.mean_kl:.4f} nats "
                f"(max {self.max_kl:.3f}); letter mass {fmt(self.letter_mass_before)} -> "
                f"{fmt(self.letter_mass_after)}"
                + (f"; on {self.chat_n} chat prompts: mean per-token KL {self.chat_mean_kl:.4f} "
                   f"(max {self.chat_max_kl:.3f})" if self.chat_n else ""))


def probe_logprobs(model: Any, tok: Any, questions: Sequence["MCQuestion"],
                   batch_size: int = 8) -> torch.Tensor:
    """Renormalised log-probabilities over each question's letters, ``[n, n_letters]``."""
    from .tasks.mc import LETTERS, format_mc

    n_opts = max(len(q.choices) for q in questions)
    if any(len(q.choices) != n_opts for q in questions):
        raise ValueError("probe questions must all have the same number of choices")
    options = [f" {c}" for c in LETTERS[:n_opts]]
    prompts = [[{"role": "user", "content": format_mc(q)}] for q in questions]
    return option_logprobs(model, tok, prompts, options, batch_size=batch_size).log_softmax(-1)


def compare(before: torch.Tensor, after: torch.Tensor,
            questions: Sequence["MCQuestion"]) -> Retention:
    answers = torch.tensor([q.answer for q in questions])
    kl = (before.exp() * (before - after)).sum(-1)
    return Retention(
        n=len(questions),
        accuracy_before=float((before.argmax(-1) == answers).float().mean()),
        accuracy_after=float((after.argmax(-1) == answers).float().mean()),
        mean_kl=float(kl.mean()), max_kl=float(kl.max()),
        letter_mass_before=[round(float(x), 4) for x in before.exp().mean(0)],
        letter_mass_after=[round(float(x), 4) for x in after.exp().mean(0)],
        p_correct_before=float(before.exp().gather(1, answers[:, None]).mean()),
        p_correct_after=float(after.exp().gather(1, answers[:, None]).mean()),
        per_probe_kl=[round(float(k), 5) for k in kl])


def chat_probe_pairs(model: Any, tok: Any, prompts: Sequence[str | list],
                     max_new_tokens: int = 32) -> list[Any]:
    """The original model's greedy answers to open prompts, as pairs scored in the same context
    (call with the original model: its answers are what the updated model should keep)."""
    from .anchors import build_anchor_pairs

    msgs = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    pairs = build_anchor_pairs(model, tok, [], msgs, max_new_tokens=max_new_tokens)
    for p in pairs:
        p.kind = "probe"
    return pairs


@torch.no_grad()
def chat_drift(model: Any, tok: Any, pairs: Sequence[Any], original: Any) -> list[float]:
    """Per pair, the mean per-token KL(original || updated) over the response tokens.
    ``original`` is a :class:`~experiential.objectives.base.TeacherModel` (the frozen model)."""
    from .objectives.base import student_batch
    from .tokens import response_logits

    if not pairs:
        return []
    device = next(model.parameters()).device
    batch = student_batch(pairs, tok.pad_token_id, device)
    was_training = model.training
    model.eval()
    try:
        updated = response_logits(model, batch).log_softmax(-1)
    finally:
        model.train(was_training)
    before = original.logits(batch).log_softmax(-1)  # not cached: used once
    kl = (before.exp() * (before - updated)).sum(-1)
    return [float(k.mean()) for k in kl.split([len(p.student.response) for p in pairs])]


def with_chat(ret: Retention, drifts: Sequence[float]) -> Retention:
    if drifts:
        ret.chat_n = len(drifts)
        ret.chat_mean_kl = sum(drifts) / len(drifts)
        ret.chat_max_kl = max(drifts)
    return ret


def load_chat_probes(path: str | Path | None = None) -> list[str | list]:
    """The built-in open chat probes, or a JSONL of ``{"prompt": ...}`` (text or messages)."""
    if path is None:
        from .probes import PROBE_CHAT

        return list(PROBE_CHAT)
    from .anchors import load_anchor_prompts

    return list(load_anchor_prompts(path))


def load_probes(path: str | Path | None = None) -> list["MCQuestion"]:
    """The built-in probe set, or a JSONL of ``{question, choices, answer}`` objects."""
    from .tasks.mc import MCQuestion

    if path is None:
        from .probes import PROBE_MC

        return list(PROBE_MC)
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                d = json.loads(line)
                try:
                    out.append(MCQuestion(question=d["question"], choices=list(d["choices"]),
                                          answer=int(d["answer"]), subject=d.get("subject", ""),
                                          id=str(d.get("id", i))))
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path}, line {i}: probe needs question, choices, answer "
                                     f"({e})") from None
    return out
