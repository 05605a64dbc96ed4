"""Reflection: the teacher first reasons about the feedback, then scores the response.

An explanation that does not name the answer gave Qwen2.5-Coder-0.5B almost no in-context gap (the
feedback is in its context, but the model does not draw the conclusion at the answer position).
Reflection asks the model, shown the task and the feedback, to write a few sentences on what the
feedback implies for the answer *before* it answers; the teacher's context is then the task, the
feedback and that reflection. The student still sees the task alone, so whatever the reflection makes
explicit is what gets distilled. Whether it helps is measured per feedback kind
(``bench/context_designs.py``), and it is off by default (``ELConfig.reflect``).

Reflection is the model's own text, so it can also talk itself out of the feedback; the gap report
in ``learn`` shows that per experience.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from .experience import Experience

REFLECT_TEMPLATE = (
    "{prompt}\n\nA reviewer who checked this task said: {feedback}\n\n"
    "Do not answer the task yet. In two or three sentences, say what the reviewer's feedback "
    "tells you about the correct answer.")
REFLECTION_LABEL = "What this feedback means:"


def reflection_prompt(exp: Experience, template: str = REFLECT_TEMPLATE) -> list[dict[str, str]]:
    """The chat messages that ask for a reflection on ``exp``'s feedback."""
    msgs = exp.messages
    last = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs) - 1)
    msgs[last] = {"role": "user", "content": template.format(
        prompt=msgs[last]["content"], feedback=exp.feedback.strip(), attempt=exp.attempt.strip())}
    return msgs


def reflect(model: Any, tok: Any, experiences: Sequence[Experience], *,
            max_new_tokens: int = 128, batch_size: int = 8,
            template: str = REFLECT_TEMPLATE) -> list[Experience]:
    """Copies of ``experiences`` whose feedback is followed by the model's own reflection on it.

    Greedy, so the same model and experiences give the same reflections. The reflection is also
    kept in ``metadata["reflection"]`` so a report can show what the teacher told itself.
    """
    from .generation import generate

    if not experiences:
        return []
    texts = generate(model, tok, [reflection_prompt(e, template) for e in experiences],
                     max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = []
    for exp, (text,) in zip(experiences, texts):
        text = text.strip()
        if not text:  # nothing to add; keep the experience as it was, never drop it
            out.append(exp)
            continue
        out.append(replace(exp, feedback=f"{exp.feedback.strip()}\n{REFLECTION_LABEL} {text}",
                           metadata=exp.metadata | {"reflection": text}))
    return out
