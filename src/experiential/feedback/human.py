"""Feedback from people at the terminal: show an answer, read what they type, make an experience."""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from ..experience import Experience, Prompt


def ask_feedback(prompt: Prompt, answer: str, *, input_fn: Callable[[str], str] = input,
                 output: TextIO = sys.stdout) -> Experience | None:
    """Print the answer, read feedback (several lines; an empty line ends it) and return the
    experience, or None when the person typed nothing (nothing to learn from)."""
    print(f"\n--- answer ---\n{answer}\n--- your feedback (empty line to finish, nothing to skip) ---",
          file=output, flush=True)
    lines: list[str] = []
    while True:
        try:
            line = input_fn("> " if not lines else ". ")
        except EOFError:
            break
        if not line.strip():
            break
        lines.append(line)
    text = "\n".join(lines).strip()
    if not text:
        return None
    return Experience(prompt=prompt, attempt=answer, feedback=text, metadata={"source": "human"})
