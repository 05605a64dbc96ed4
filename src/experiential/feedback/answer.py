"""Answer checking for numeric tasks (GSM8K): find the final number, compare, say what was wrong.

A chain-of-thought answer ends its number in many ways: ``#### 18``, "The answer is $1,200.",
``\\boxed{18}``, "so she has 18 eggs left". :func:`extract_final_number` tries those in order of
how deliberate they are (an explicit marker beats the last number in the text) and normalises
commas, currency, percent signs, units and trailing zeros, so "$1,200.00" and "1200" compare equal.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ..experience import Experience
from .base import Task, experience

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_MARKERS = [
    re.compile(r"####\s*(" + _NUM + ")"),
    re.compile(r"\\boxed\{\s*\\?\$?\s*(" + _NUM + r")[^}]*\}"),
    re.compile(r"(?:final answer|the answer)\s*(?:is|:|=|would be|will be)?\s*[:=]?\s*\**\s*"
               r"(?:[A-Za-z ]{0,20}?)?(" + _NUM + ")", re.IGNORECASE),
]
_ANY = re.compile(_NUM)


def normalize_number(text: str) -> str | None:
    """``"$1,200.00"`` -> ``"1200"``, ``"-3.50"`` -> ``"-3.5"``; None when it is not a number."""
    t = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_final_number(answer: str) -> str | None:
    """The final numeric answer in a chain-of-thought text, normalised, or None if there is none.

    Explicit markers first (``####``, ``\\boxed{}``, "the answer is"), taking the last such marker;
    otherwise the last number in the text.
    """
    if not answer:
        return None
    for pattern in _MARKERS:
        hits = pattern.findall(answer)
        for hit in reversed(hits):
            n = normalize_number(hit)
            if n is not None:
                return n
    for hit in reversed(_ANY.findall(answer)):
        n = normalize_number(hit)
        if n is not None:
            return n
    return None


class AnswerChecker:
    """Compare the final number of an attempt with ``task.reference`` and write the feedback.

    ``reference`` may be the bare number or a GSM8K solution ending in ``#### N``. With
    ``include_solution`` the feedback for a wrong answer quotes the reference solution (minus its
    ``####`` line) so the experience says *why*, not only *that*. Metadata carries ``correct``,
    ``predicted`` and ``expected`` so the same pass computes accuracy.
    """

    def __init__(self, include_solution: bool = False, reveal_answer: bool = True):
        self.include_solution = include_solution
        self.reveal_answer = reveal_answer

    def review(self, task: Task, attempt: str) -> Experience:
        if task.reference is None:
            raise ValueError(f"task {task.id or ''} has no reference answer to check against")
        expected = extract_final_number(task.reference)
        if expected is None:
            raise ValueError(f"the reference answer has no number: {task.reference[-80:]!r}")
        predicted = extract_final_number(attempt)
        correct = predicted == expected
        meta = dict(source="answer_check", correct=correct, predicted=predicted,
                    expected=expected)
        if not attempt.strip():
            return experience(task, attempt, "The attempt is empty: there is no answer to check."
                              + self._tail(task), **meta)
        if predicted is None:
            return experience(task, attempt, "Your answer does not end in a number, so it cannot "
                              "be checked; finish with the final number."
                              + self._tail(task), **meta)
        if correct:
            return experience(task, attempt, f"Your final answer {predicted} is correct.", **meta)
        return experience(task, attempt, f"Your final answer {predicted} is wrong."
                          + self._tail(task), **meta)

    def _tail(self, task: Task) -> str:
        parts = []
        if self.include_solution and task.reference and "####" in task.reference:
            solution = task.reference.rsplit("####", 1)[0].strip()
            solution = re.sub(r"<<[^>]*>>", "", solution)  # GSM8K calculator annotations
            parts.append(f" A correct solution: {solution}")
        if self.reveal_answer:
            parts.append(f" The correct answer is {extract_final_number(task.reference or '')}.")
        return "".join(parts)
