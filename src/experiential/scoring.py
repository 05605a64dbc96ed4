"""Score answer options: the probability a model gives each option after a response prefix.

Used to measure learning (P(target) before/after), the in-context gap of multiple-choice experiences,
and retention on probe questions. Options are scored as continuations of the assistant's response
prefix (default ``"The answer is"``), tokenized *with their leading space* (``" A"``, not ``"A"``):
after "is" a tokenizer emits the letter with its space, and scoring the bare letter measures a token
the model would almost never produce.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .experience import Message
from .tokens import Sequence_, collate, context_ids, response_ids, response_logits

DEFAULT_PREFIX = "The answer is"
LETTER_OPTIONS = (" A", " B", " C", " D")


@torch.no_grad()
def option_logprobs(model: Any, tok: Any, prompts: Sequence[list[Message]],
                    options: Sequence[str] = LETTER_OPTIONS, prefix: str = DEFAULT_PREFIX,
                    batch_size: int = 8) -> torch.Tensor:
    """Log-probabilities ``[n_prompts, n_options]`` of each option's tokens after ``prefix``.

    Multi-token options are scored as the sum of their token log-probabilities. The result is not
    renormalised; use :func:`option_probs` for a distribution over the options.
    """
    pre, opt_ids = split_options(tok, prefix, options)
    device = next(model.parameters()).device
    if all(len(o) == 1 for o in opt_ids):
        # One forward per prompt: the row after the prefix holds every single-token option.
        first = torch.tensor([o[0] for o in opt_ids])
        seqs = [Sequence_(context_ids(tok, msgs) + pre, [opt_ids[0][0]]) for msgs in prompts]
        # Batch prompts of similar length together (MMLU prompts range from 50 to 700 tokens, and
        # a batch costs as much as its longest row); results go back in input order.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].context))
        out = torch.empty(len(seqs), len(first))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = collate([seqs[j] for j in idx], tok.pad_token_id).to(device)
            out[idx] = torch.log_softmax(response_logits(model, batch), -1).cpu()[:, first]
        return out
    seqs = []
    for msgs in prompts:
        ctx = context_ids(tok, msgs)
        for o in opt_ids:
            seqs.append(Sequence_(ctx + pre, o))
    out = torch.empty(len(seqs))
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        batch = collate(chunk, tok.pad_token_id).to(device)
        logp = torch.log_softmax(response_logits(model, batch), dim=-1)
        tok_lp = logp.gather(1, batch.response_tokens[:, None]).squeeze(1)
        counts = batch.response_mask.sum(1).tolist()
        out[i:i + len(chunk)] = torch.stack([t.sum() for t in tok_lp.split(counts)]).cpu()
    return out.view(len(prompts), len(options))


def option_probs(model: Any, tok: Any, prompts: Sequence[list[Message]],
                 options: Sequence[str] = LETTER_OPTIONS, prefix: str = DEFAULT_PREFIX,
                 batch_size: int = 8) -> torch.Tensor:
    """Probabilities over the options, renormalised to sum to 1 per prompt."""
    return option_logprobs(model, tok, prompts, options, prefix, batch_size).softmax(-1)


def split_options(tok: Any, prefix: str, options: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prefix and of each option as it follows the prefix.

    Each option is tokenized together with the prefix and must extend the prefix's tokens exactly;
    otherwise the tokenizer merged the boundary and the score would be for different text.
    """
    pre = response_ids(tok, prefix) if prefix else []
    opt_ids = []
    for o in options:
        full = response_ids(tok, prefix + o)
        if full[:len(pre)] != pre or len(full) == len(pre):
            raise ValueError(f"option {o!r} does not tokenize as a continuation of {prefix!r}; "
                             "score it with a separating space or a different prefix")
        opt_ids.append(full[len(pre):])
    return pre, opt_ids
