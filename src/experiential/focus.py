"""Which response tokens an update distils: all of them, or only the final answer.

Distilling over the whole response is the default: on a chain of thought or a function every token
can carry what the feedback says. But on a short answer such as "The answer is D." the mean
divergence can sit where the feedback is not about. Measured on Qwen2.5-Coder-0.5B with
explanation-only feedback (``bench/response_divergence.py``): the largest per-token divergence is at
" answer", where the teacher, having read the explanation, wants to start a different response
(" correct" .54), not at the letter; the update then spends its steps there and the stop rule
closes that divergence while the letter barely moves. ``distill_span="answer"`` keeps only the
tokens of the final answer (after the last "answer is", "answer:", ``####`` or ``\\boxed{``), so
the update is about the answer the feedback judged.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

# The last answer statement in a response; the answer runs from here to the end of its line.
# "answer" counts only as "answer is/:/=" ("... helps answer it." states no answer).
_MARKER = re.compile(r"####|\\boxed\{|\banswer\s*(?:is|would be|will be|[:=])\s*[:=]?",
                     re.IGNORECASE)
_LEAD = " \t*(\"'$"
_TRAIL = " \t*.)!}\"'"


def answer_span(text: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the final answer in ``text``, or None if it states none.

    ``"Because ... The answer is D."`` -> the span of ``D``; ``"... #### 42"`` -> ``42``.
    """
    last = None
    for last in _MARKER.finditer(text):
        pass
    if last is None:
        return None
    start = last.end()
    line_end = text.find("\n", start)
    end = len(text) if line_end < 0 else line_end
    while start < end and text[start] in _LEAD:
        start += 1
    while end > start and text[end - 1] in _TRAIL:
        end -= 1
    return (start, end) if end > start else None


def token_focus(tok: Any, response: Sequence[int], span: tuple[int, int]) -> list[bool]:
    """Which response tokens overlap the character ``span`` of ``tok.decode(response)``.

    Token ``k`` covers the characters its decoding adds to the prefix ``response[:k]``; decoding
    prefixes (not single tokens) keeps multi-token characters and leading spaces right.
    """
    ends = [len(tok.decode(list(response[:k + 1]), skip_special_tokens=True))
            for k in range(len(response))]
    starts = [0] + ends[:-1]
    return [s < span[1] and e > span[0] for s, e in zip(starts, ends)]


def answer_focus(tok: Any, response: Sequence[int]) -> list[bool] | None:
    """The focus mask of the response's final answer tokens, or None if it states no answer."""
    text = tok.decode(list(response), skip_special_tokens=True)
    span = answer_span(text)
    if span is None:
        return None
    mask = token_focus(tok, response, span)
    return mask if any(mask) else None
