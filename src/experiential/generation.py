"""Batched generation with a KV cache, for answers, on-policy samples, revisions and replay."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .experience import Message
from .tokens import context_ids


def generate(model: Any, tok: Any, prompts: Sequence[list[Message]], *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, num_return_sequences: int = 1,
             batch_size: int = 8, response_prefix: str = "", seed: int | None = None,
             progress: bool = False) -> list[list[str]]:
    """Generate ``num_return_sequences`` continuations (text) for each chat prompt.

    Greedy when ``temperature == 0``. ``response_prefix`` is placed at the start of the assistant
    turn and is included in the returned text. Prompts are sorted by length before batching so a
    batch pads as little as possible; results come back in input order.
    """
    outs = generate_ids(model, tok, prompts, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p,
                        num_return_sequences=num_return_sequences, batch_size=batch_size,
                        response_prefix=response_prefix, seed=seed, progress=progress)
    return [[response_prefix + tok.decode(ids, skip_special_tokens=True) for ids in group]
            for group in outs]


@torch.no_grad()
def generate_ids(model: Any, tok: Any, prompts: Sequence[list[Message]], *,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 num_return_sequences: int = 1, batch_size: int = 8, response_prefix: str = "",
                 seed: int | None = None, progress: bool = False) -> list[list[list[int]]]:
    """Like :func:`generate` but returns the generated token ids (after ``response_prefix``),
    cut after the first stop token (which is kept, so a model distilled on them learns to stop).
    Objectives train on these ids directly: decoding and re-tokenizing does not round-trip."""
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    encoded = [context_ids(tok, list(p)) + (tok(response_prefix, add_special_tokens=False)
                                            ["input_ids"] if response_prefix else [])
               for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[list[int]]] = [[] for _ in encoded]
    stop_ids = stop_token_ids(tok)
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    for start in batches:
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attn[row, width - len(encoded[i]):] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=stop_ids, num_return_sequences=num_return_sequences)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
        new = out[:, width:].tolist()
        for row, i in enumerate(idx):
            chunk = new[row * num_return_sequences:(row + 1) * num_return_sequences]
            results[i] = [_cut(ids, stop_ids, tok.pad_token_id) for ids in chunk]
    return results


def _cut(ids: list[int], stop_ids: list[int], pad_id: int) -> list[int]:
    for j, t in enumerate(ids):
        if t in stop_ids:
            return ids[:j + 1]
    while ids and ids[-1] == pad_id:
        ids = ids[:-1]
    return ids


def stop_token_ids(tok: Any) -> list[int]:
    """End-of-sequence plus the chat end-of-turn token, when the tokenizer has one."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    for special in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(ids)
