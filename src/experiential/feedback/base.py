"""What every feedback source shares: the task it is given and the one method it has.

A source takes a :class:`Task` and a model's ``attempt`` and returns an :class:`Experience` whose
``feedback`` is rich text (a traceback, printed input/output pairs, a critique). Bad input (an empty
attempt, code that does not parse, a non-numeric answer) gives an experience whose feedback says so,
never an exception that would sink a batch; :func:`review_all` keeps that promise for many attempts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from ..experience import Experience, Prompt


@dataclass
class Task:
    """A task as feedback sources see it.

    ``prompt`` is what the model saw. The rest is optional and source-specific: ``reference`` is a
    gold answer or reference solution (answer checking, a critic given the solution), ``tests`` is
    test code (HumanEval's ``check`` function), ``entry_point`` the function the tests call.
    """

    prompt: Prompt
    reference: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class FeedbackSource(Protocol):
    """Anything with ``review(task, attempt) -> Experience``."""

    def review(self, task: Task, attempt: str) -> Experience: ...


def experience(task: Task, attempt: str, feedback: str, **metadata: Any) -> Experience:
    """Build the experience a source returns: task metadata first, the source's on top."""
    meta = {**task.metadata, **metadata}
    if task.id is not None:
        meta.setdefault("task_id", task.id)
    # An empty attempt is still an experience (the feedback says it was empty); Experience itself
    # allows an empty attempt string.
    return Experience(prompt=task.prompt, attempt=attempt or "", feedback=feedback, metadata=meta)


def review_all(source: FeedbackSource, tasks: Sequence[Task], attempts: Iterable[str], *,
               workers: int = 1) -> list[Experience]:
    """Review many attempts; a source error becomes that experience's feedback, not a crash.

    Sources that run work elsewhere (a subprocess, an HTTP endpoint) gain from ``workers > 1``.
    """
    attempts = list(attempts)
    if len(attempts) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks but {len(attempts)} attempts")

    def one(pair: tuple[Task, str]) -> Experience:
        task, attempt = pair
        try:
            return source.review(task, attempt)
        except Exception as e:  # noqa: BLE001 - the batch must survive one bad item
            return experience(task, attempt, f"Feedback could not be produced: "
                              f"{type(e).__name__}: {e}", source=type(source).__name__,
                              feedback_error=True)

    pairs = list(zip(tasks, attempts))
    if workers <= 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, pairs))
