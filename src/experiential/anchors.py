"""Replay anchors: unrelated prompts on which the student is held to the original model.

An anchor is a pair whose teacher context equals the student context, so the teacher is simply the
frozen original model; the response is the original model's own answer. Mixed into every step, the
anchors penalise any drift the experiences would cause elsewhere (the "answer A to everything"
failure), while the experiences' own prompts are free to move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .experience import Message
from .generation import generate
from .objectives.base import Pair
from .scoring import option_probs
from .tokens import Sequence_, context_ids, response_ids


def default_anchor_prompts() -> tuple[list[list[Message]], list[list[Message]]]:
    """(multiple-choice prompts, open chat prompts) of the built-in anchor set."""
    from .probes import ANCHOR_CHAT, ANCHOR_MC
    from .tasks.mc import format_mc

    mc = [[{"role": "user", "content": format_mc(q)}] for q in ANCHOR_MC]
    chat = [[{"role": "user", "content": p}] for p in ANCHOR_CHAT]
    return mc, chat


def load_anchor_prompts(path: str | Path) -> list[list[Message]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                p = json.loads(line).get("prompt")
                if isinstance(p, str):
                    p = [{"role": "user", "content": p}]
                if not isinstance(p, list):
                    raise ValueError(f"{path}, line {i}: expected a 'prompt' string or messages")
                out.append(p)
    return out


def build_anchor_pairs(model: Any, tok: Any, mc_prompts: Sequence[list[Message]],
                       chat_prompts: Sequence[list[Message]], *, max_new_tokens: int = 24,
                       progress: bool = False) -> list[Pair]:
    """Anchor pairs with the original model's own responses: ``"The answer is X"`` with X its most
    likely letter for multiple-choice prompts, a short greedy answer for chat prompts."""
    pairs: list[Pair] = []
    if mc_prompts:
        from .tasks.mc import LETTERS

        probs = option_probs(model, tok, mc_prompts)
        for msgs, p in zip(mc_prompts, probs):
            pairs.append(_pair(tok, msgs, f"The answer is {LETTERS[int(p.argmax())]}."))
    if chat_prompts:
        outs = generate(model, tok, chat_prompts, max_new_tokens=max_new_tokens, progress=progress)
        for msgs, o in zip(chat_prompts, outs):
            if o[0].strip():
                pairs.append(_pair(tok, msgs, o[0]))
    return pairs


def _pair(tok: Any, msgs: list[Message], response: str) -> Pair:
    ctx = context_ids(tok, msgs)
    resp = response_ids(tok, response)
    return Pair(Sequence_(ctx, resp), Sequence_(ctx, resp), experience_id="anchor", kind="anchor",
                response_text=response)
