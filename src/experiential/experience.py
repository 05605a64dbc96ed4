"""Experiences: the unit of data EL learns from.

An experience is what happened when a model met a task: the ``prompt`` it saw, the ``attempt`` it
made, and the ``feedback`` that came back (a critique, a traceback, printed I/O, a user's correction).
No scalar reward and no gold answer are required; the feedback is free text.

JSONL in and out. Validation names the line and the field, and a bad line never discards the good
lines around it: :func:`load_jsonl` either raises on the first error (``errors="raise"``) or collects
every error and returns the valid experiences (``errors="collect"``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]

_ROLES = {"system", "user", "assistant", "tool"}
_FIELDS = {"id", "prompt", "attempt", "feedback", "metadata"}


class ExperienceError(ValueError):
    """An experience (or a JSONL line) that cannot be used, with the place and the field named."""

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None,
                 source: str | None = None):
        self.field, self.line, self.source = field, line, source
        where = []
        if source:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass
class Experience:
    """One token-space experience: ``(prompt, attempt, feedback, metadata)`` plus a stable id.

    ``prompt`` is either a plain string or a list of chat messages ``{"role", "content"}``; the
    model's chat template renders it. ``attempt`` is the model's answer. ``feedback`` is the text
    that came back. ``metadata`` is free-form and is kept, never interpreted by the trainer (except
    the optional ``"target"`` key, the answer the feedback points to, used only for reporting, and
    ``"neighbours"``, prompts near this one whose answers must not change: they become replay
    anchors, see :func:`experiential.anchors.neighbour_anchor_pairs`).
    """

    prompt: Prompt
    attempt: str
    feedback: str
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ExperienceError` naming the first field that is unusable."""
        if self.prompt is None:
            raise ExperienceError("missing prompt", field="prompt")
        if isinstance(self.prompt, str):
            if not self.prompt.strip():
                raise ExperienceError("prompt is empty", field="prompt")
        elif isinstance(self.prompt, list):
            if not self.prompt:
                raise ExperienceError("prompt has no messages", field="prompt")
            for i, m in enumerate(self.prompt):
                if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                        or m.get("role") not in _ROLES:
                    raise ExperienceError(
                        f"message {i} must be an object with 'role' in {sorted(_ROLES)} and a "
                        f"string 'content', got {m!r:.80}", field="prompt")
            if not any(m["content"].strip() for m in self.prompt):
                raise ExperienceError("prompt messages are all empty", field="prompt")
        else:
            raise ExperienceError(
                f"must be a string or a list of chat messages, got {type(self.prompt).__name__}",
                field="prompt")
        for name in ("attempt", "feedback"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ExperienceError(f"must be a string, got {type(value).__name__}", field=name)
        if not self.feedback.strip():
            raise ExperienceError("feedback is empty: an experience without feedback teaches "
                                  "nothing", field="feedback")
        if not isinstance(self.metadata, dict):
            raise ExperienceError(f"must be an object, got {type(self.metadata).__name__}",
                                  field="metadata")
        neighbours = self.metadata.get("neighbours", [])
        if not isinstance(neighbours, list) or not all(
                isinstance(q, str) and q.strip() for q in neighbours):
            raise ExperienceError("'neighbours' must be a list of non-empty prompt strings",
                                  field="metadata")
        if not isinstance(self.id, str) or not self.id:
            raise ExperienceError("must be a non-empty string", field="id")

    @property
    def messages(self) -> list[Message]:
        """The prompt as chat messages (a string prompt becomes one user message)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]

    @property
    def prompt_text(self) -> str:
        """The prompt flattened to text (the last user message for chat prompts)."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else self.prompt[-1]["content"]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "attempt": self.attempt,
                "feedback": self.feedback, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: Any) -> "Experience":
        if not isinstance(data, dict):
            raise ExperienceError(f"expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - _FIELDS
        if unknown:
            raise ExperienceError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}",
                                  field=sorted(unknown)[0])
        for name in ("prompt", "feedback"):
            if name not in data:
                raise ExperienceError(f"missing {name}", field=name)
        kwargs = {k: data[k] for k in _FIELDS if k in data and data[k] is not None}
        kwargs.setdefault("attempt", "")
        if "id" in kwargs and not isinstance(kwargs["id"], str):
            kwargs["id"] = str(kwargs["id"])
        return cls(**kwargs)


def load_jsonl(path: str | Path, *, errors: Literal["raise", "collect"] = "raise",
               max_tokens: int | None = None,
               count_tokens: Callable[[Experience], int] | None = None,
               ) -> tuple[list[Experience], list[ExperienceError]]:
    """Read experiences from a JSONL file.

    Returns ``(experiences, errors)``. With ``errors="raise"`` the first bad line raises
    :class:`ExperienceError` (naming file, line and field); with ``"collect"`` every bad line is
    reported in the returned list and every good line is kept. Blank lines are skipped. When
    ``max_tokens`` and ``count_tokens`` are given, an experience longer than ``max_tokens`` after
    tokenization is an error too (it would otherwise be silently truncated).
    """
    path = Path(path)
    good: list[Experience] = []
    bad: list[ExperienceError] = []
    seen: set[str] = set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                exp = _parse_line(raw, lineno, path)
                if exp is None:
                    continue
                if exp.id in seen:
                    raise ExperienceError(f"duplicate id {exp.id!r}", field="id")
                if max_tokens is not None and count_tokens is not None:
                    n = count_tokens(exp)
                    if n > max_tokens:
                        raise ExperienceError(
                            f"{n} tokens after tokenization, over the limit of {max_tokens} "
                            "(raise max_length or shorten the experience)", field="prompt")
            except ExperienceError as e:
                err = e if e.line is not None else ExperienceError(
                    str(e), field=e.field, line=lineno, source=str(path))
                if errors == "raise":
                    raise err from None
                bad.append(err)
                continue
            seen.add(exp.id)
            good.append(exp)
    return good, bad


def _parse_line(raw: bytes, lineno: int, path: Path) -> Experience | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExperienceError(f"not valid UTF-8 ({e.reason} at byte {e.start})",
                              line=lineno, source=str(path)) from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExperienceError(f"invalid JSON: {e.msg} (column {e.colno})", line=lineno,
                              source=str(path)) from None
    try:
        return Experience.from_dict(data)
    except ExperienceError as e:
        raise ExperienceError(str(e), field=e.field, line=lineno, source=str(path)) from None
    except TypeError as e:  # a field of an impossible shape
        raise ExperienceError(str(e), line=lineno, source=str(path)) from None


def save_jsonl(experiences: Iterable[Experience], path: str | Path) -> int:
    """Write experiences as JSONL (UTF-8, one object per line), atomically. Returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for exp in experiences:
            f.write(json.dumps(exp.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
