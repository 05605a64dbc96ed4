"""What the student and the teacher see.

The student sees the task alone. The teacher is the same model shown the *experience context*: the task
plus what came back. How that context is written decides what self-distillation can learn, so it is a
named, swappable design, and ``learn`` reports the in-context gap it yields.

Measured on Qwen2.5-Coder-0.5B-Instruct (facial-nerve MMLU question, true answer A): the feedback
appended to the question as a reviewer's hint gives P(A)=.96; the failed attempt "D" shown *before* the
feedback gives only .40 (D .45): the attempt primes itself. So the default design, ``hint``, shows the
feedback and not the attempt (as TRL's SDPO teacher prompt does); designs that show the attempt put it
after the feedback and label it as the answer the feedback is about.
"""

from __future__ import annotations

from typing import Callable

from .experience import Experience, Message

# Each design maps (task text, attempt, feedback) to the text of the teacher's last user message.
DESIGNS: dict[str, str] = {
    # The feedback as a hint after the question; the failed attempt is not shown.
    "hint": "{prompt}\n\nHint from a reviewer: {feedback}",
    # The feedback first, then the attempt it refers to, clearly labelled.
    "feedback_then_attempt": (
        "{prompt}\n\nA reviewer's feedback on an earlier answer: {feedback}\n"
        "(The earlier answer was: {attempt})"),
    # The attempt first, then the feedback: the published layout; primes the failed attempt.
    "attempt_then_feedback": (
        "{prompt}\n\nAn earlier answer was:\n{attempt}\n\nFeedback on that answer: {feedback}"),
}
# Designs that put the feedback in a system message rather than the user turn.
SYSTEM_DESIGNS: dict[str, str] = {
    "system_note": "Note from a reviewer who checked this task: {feedback}",
}
DEFAULT_DESIGN = "hint"


def student_messages(exp: Experience) -> list[Message]:
    """The student's view: the prompt alone."""
    return exp.messages


def teacher_messages(exp: Experience, design: str = DEFAULT_DESIGN,
                     template: str | None = None) -> list[Message]:
    """The teacher's view: the prompt with the experience (feedback, maybe the attempt) in context.

    ``template`` overrides ``design``: a format string over ``{prompt}``, ``{attempt}`` and
    ``{feedback}`` that replaces the last user message.
    """
    msgs = exp.messages
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs) - 1)
    fields = {"prompt": msgs[last_user]["content"], "attempt": exp.attempt.strip(),
              "feedback": exp.feedback.strip()}
    if template is None and design in SYSTEM_DESIGNS:
        note = SYSTEM_DESIGNS[design].format(**fields)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + note}
        else:
            msgs.insert(0, {"role": "system", "content": note})
        return msgs
    if template is None:
        if design not in DESIGNS:
            raise ValueError(f"unknown experience-context design {design!r}; choose one of "
                             f"{sorted(DESIGNS) + sorted(SYSTEM_DESIGNS)} or pass a template")
        template = DESIGNS[design]
    msgs[last_user] = {"role": msgs[last_user]["role"], "content": template.format(**fields)}
    return msgs


def all_designs() -> list[str]:
    return sorted(DESIGNS) + sorted(SYSTEM_DESIGNS)


TeacherView = Callable[[Experience], list[Message]]
