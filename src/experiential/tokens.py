"""Token layout shared by every objective: ``[context tokens][response tokens]``.

The response is tokenized on its own and appended to each context, so the student and the teacher
score *exactly the same* response token ids even though their contexts differ. Logits at position
``i`` predict token ``i + 1``; :class:`Batch` carries the mask of logit positions that predict a
response token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .experience import Message


def context_ids(tok: Any, messages: list[Message]) -> list[int]:
    """Token ids of a chat rendered up to (and including) the assistant turn header."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def response_ids(tok: Any, text: str, *, end_of_turn: bool = False) -> list[int]:
    """Token ids of a response, optionally closed with the end-of-turn (eos) token."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if end_of_turn and tok.eos_token_id is not None:
        ids = ids + [tok.eos_token_id]
    return ids


@dataclass
class Sequence_:
    """One context + response pair."""

    context: list[int]
    response: list[int]

    @property
    def ids(self) -> list[int]:
        return self.context + self.response

    def __len__(self) -> int:
        return len(self.context) + len(self.response)


@dataclass
class Batch:
    """Left-padded ids so every response ends in the last column. ``response_mask[b, j]`` is True
    where the ``j``-th of the last ``keep`` logit positions predicts a response token; a
    student/teacher pair built from the same responses has the same True count per row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor  # [batch, keep]

    @property
    def keep(self) -> int:
        return self.response_mask.shape[1]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.position_ids.to(device), self.response_mask.to(device))

    @property
    def response_tokens(self) -> torch.Tensor:
        """The response token ids, flattened in the same order as :func:`response_logits`."""
        return self.input_ids[:, -self.keep:][self.response_mask]


def collate(seqs: Sequence[Sequence_], pad_id: int) -> Batch:
    width = max(len(s) for s in seqs)
    keep = max(len(s.response) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), keep), dtype=torch.bool)
    for b, s in enumerate(seqs):
        n = len(s)
        ids[b, width - n:] = torch.tensor(s.ids, dtype=torch.long)
        attn[b, width - n:] = 1
        r = len(s.response)
        resp[b, keep - r:] = True
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    return Batch(ids, attn, pos, resp)


def response_logits(model: Any, batch: Batch) -> torch.Tensor:
    """Logits at response-predicting positions, flattened to ``[n_response_tokens, vocab]``.

    Logits at position ``i`` predict token ``i + 1``, so the logits for the last ``keep`` tokens sit
    at positions ``-keep-1 .. -2``. Only those rows go through the vocabulary projection
    (``logits_to_keep``): with a 150k vocabulary that projection is a quarter of a small model's
    forward cost.
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False,
                logits_to_keep=batch.keep + 1)
    logits = out.logits[:, :-1]
    return logits[batch.response_mask].float()
