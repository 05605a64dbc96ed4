"""Paraphrase augmentation: learn an experience under several wordings of its task.

An update distilled on one exact prompt can attach to its surface form (its wording, its option
letters) instead of its content; then the model has learned a string, and a user who asks the same
thing in other words gets the old answer. For multiple-choice prompts option rotation removes the
letter (:mod:`experiential.augment`); for every prompt, paraphrase augmentation removes the wording:
the frozen original model rewrites the task in other words, and each rewrite becomes a variant of
the experience with the same attempt and feedback. Only what stays fixed across the wordings (the
content) explains the teacher's distribution on all of them.

The rewrites are the model's own, sampled with a fixed seed (the same model and experiences give the
same paraphrases). A rewrite that is empty, a copy of the original, or far longer than it is
discarded, and the count is reported in ``metadata``, never silently. For a multiple-choice prompt
only the question stem is rewritten; the options and the instruction stay as they were.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Sequence

from .augment import find_options
from .experience import Experience

PARAPHRASE_TEMPLATE = (
    "Rewrite the following text in different words. Keep its meaning and every detail needed to "
    "answer it. Do not answer it. Reply with the rewritten text only.\n\nText:\n{text}")
_LABEL = re.compile(r"^\s*(?:rewritten text|rewritten|paraphrase|text)\s*:\s*", re.IGNORECASE)


def split_stem(text: str) -> tuple[str, str]:
    """(the part to rewrite, the part to keep): for a multiple-choice prompt the question stem and
    the option block with what follows it; otherwise the whole text and nothing."""
    found = find_options(text)
    if found is None:
        return text, ""
    lines = text.split("\n")
    first = found[0][0]
    return "\n".join(lines[:first]), "\n" + "\n".join(lines[first:])


def clean(text: str, original: str) -> str | None:
    """The rewrite with labels and quotes stripped, or None if it is unusable."""
    text = _LABEL.sub("", text.strip()).strip().strip('"').strip()
    if not text or text.lower() == original.strip().lower():
        return None
    if len(text) > 3 * len(original) + 40:  # the model answered or rambled instead of rewriting
        return None
    return text


def paraphrase(model: Any, tok: Any, experiences: Sequence[Experience], copies: int, *,
               temperature: float = 0.7, seed: int = 0, batch_size: int = 8,
               template: str = PARAPHRASE_TEMPLATE) -> list[Experience]:
    """The experiences, each followed by up to ``copies`` variants whose task is reworded by
    ``model`` (the frozen original). Chat prompts have their last user message rewritten."""
    from .generation import generate

    if copies <= 0 or not experiences:
        return list(experiences)
    stems = [split_stem(_last_user(e)[1]) for e in experiences]
    longest = max(len(tok(s, add_special_tokens=False)["input_ids"]) for s, _ in stems)
    outs = generate(model, tok,
                    [[{"role": "user", "content": template.format(text=s)}] for s, _ in stems],
                    max_new_tokens=min(512, 2 * longest + 16), temperature=temperature,
                    num_return_sequences=copies, batch_size=batch_size, seed=seed)
    result: list[Experience] = []
    for exp, (stem, kept), texts in zip(experiences, stems, outs):
        variants = []
        for text in texts:
            new = clean(text, stem)
            if new is not None and new not in variants:
                variants.append(new)
        result.append(replace(exp, metadata=exp.metadata | {
            "paraphrases_kept": len(variants), "paraphrases_asked": copies}))
        for k, new in enumerate(variants, start=1):
            result.append(_with_prompt(exp, new + kept, k))
    return result


def _last_user(exp: Experience) -> tuple[int, str]:
    msgs = exp.messages
    i = max((j for j, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs) - 1)
    return i, msgs[i]["content"]


def _with_prompt(exp: Experience, text: str, k: int) -> Experience:
    if isinstance(exp.prompt, str):
        prompt: Any = text
    else:
        msgs = exp.messages
        i, _ = _last_user(exp)
        msgs[i] = {"role": msgs[i]["role"], "content": text}
        prompt = msgs
    return replace(exp, prompt=prompt, id=f"{exp.id}~para{k}",
                   metadata=exp.metadata | {"augmented_from": exp.id, "paraphrase": k})
