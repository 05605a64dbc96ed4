"""Feedback sources: turn a task and an attempt into an experience with rich text feedback.

=========  ====================================================================================
source     feedback
=========  ====================================================================================
tests      :class:`code.TestFeedback`: the tests that ran, pass/fail, the trimmed traceback
io         :class:`code.IOFeedback`: each test input and what the function returned
answer     :class:`answer.AnswerChecker`: final number vs the reference (GSM8K)
critic     :class:`critic.Critic`: an LLM (OpenAI-compatible endpoint or local model) explains
human      :func:`human.ask_feedback`: a person types it (``experiential feedback``; HTTP: serve)
=========  ====================================================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import FeedbackSource, Task, experience, review_all

SOURCES = ("tests", "io", "answer", "critic")

__all__ = ["FeedbackSource", "Task", "experience", "review_all", "make_source", "load_attempts",
           "SOURCES"]


def make_source(name: str, *, timeout: float = 10.0, show_expected: bool = False,
                include_solution: bool = False, critic_url: str | None = None,
                critic_model: str | None = None, critic_local: str | None = None,
                critic_template: str = "auto") -> FeedbackSource:
    """A feedback source by name, with the options that apply to it."""
    if name == "tests":
        from .code import TestFeedback

        return TestFeedback(timeout=timeout)
    if name == "io":
        from .code import IOFeedback

        return IOFeedback(show_expected=show_expected, timeout=timeout)
    if name == "answer":
        from .answer import AnswerChecker

        return AnswerChecker(include_solution=include_solution)
    if name == "critic":
        from .critic import Critic, LocalBackend, OpenAIBackend

        if critic_url:
            return Critic(OpenAIBackend(critic_url, critic_model or "gpt-4o-mini"),
                          template=critic_template)
        if critic_local:
            return Critic(LocalBackend(critic_local), template=critic_template)
        raise ValueError("the critic needs --critic-url (OpenAI-compatible endpoint) or "
                         "--critic-local (a local model, e.g. `critic`)")
    raise ValueError(f"unknown feedback source {name!r}; choose one of {', '.join(SOURCES)}")


def load_attempts(path: str | Path) -> tuple[list[Task], list[str]]:
    """Tasks and attempts from JSONL: ``{"prompt", "attempt", "reference"?, "tests"?,
    "entry_point"?, "id"?, "metadata"?}`` per line. Errors name the line."""
    tasks, attempts = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row: dict[str, Any] = json.loads(line)
                if not isinstance(row, dict) or "prompt" not in row:
                    raise ValueError("each line needs at least 'prompt' and 'attempt'")
                tasks.append(Task(prompt=row["prompt"], reference=row.get("reference"),
                                  tests=row.get("tests"), entry_point=row.get("entry_point"),
                                  id=str(row["id"]) if "id" in row else None,
                                  metadata=dict(row.get("metadata") or {})))
                attempts.append(str(row.get("attempt") or ""))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}, line {i}: {e}") from None
    return tasks, attempts
