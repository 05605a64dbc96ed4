"""Configuration of an EL update, as a dataclass that also reads from YAML or JSON.

Defaults are chosen by measurement on Qwen2.5-Coder-0.5B-Instruct (see ``reports/specificity.md``):
the objective, the experience-context design, the divergence, the anchor on replay prompts that keeps
unrelated behaviour in place, and the gap-driven early stop.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


@dataclass
class ELConfig:
    # -- what is learned ---------------------------------------------------------------------
    objective: Literal["self_distill", "revise_then_distill", "sft"] = "self_distill"
    """``self_distill``: student (task only) matches teacher (task + experience) token
    distributions. ``revise_then_distill``: the teacher first writes a revised answer, then the
    student is distilled on it. ``sft``: cross-entropy on the revised answer (no teacher)."""
    context_design: str = "hint"
    """Experience-context design for the teacher (see :mod:`experiential.context`)."""
    context_template: Optional[str] = None
    """Overrides ``context_design``: a format string over {prompt}, {attempt}, {feedback}."""
    reflect: bool = False
    """Before distilling, the frozen model writes a short reflection on what the feedback implies,
    and the teacher sees it after the feedback (:mod:`experiential.reflection`). Off by default:
    see ``bench/results/context_designs.md`` for the gap it gives per feedback kind."""
    reflect_max_new_tokens: int = 128
    response: Literal["attempt", "samples"] = "attempt"
    """Response tokens both models score: the attempt itself, or fresh samples from the student
    (on-policy: for ``self_distill`` the student resamples after every pass over the data)."""
    num_samples: int = 2
    """Samples per experience when ``response='samples'``."""
    divergence: Divergence = "forward_kl"
    """``forward_kl``: KL(teacher || student), mass-covering; ``reverse_kl``: KL(student ||
    teacher), mode-seeking; ``jsd``: generalised Jensen-Shannon with weight ``jsd_beta``."""
    jsd_beta: float = 0.5
    topk: Optional[int] = None
    """Distil on the student's top-k tokens (plus a tail bucket) instead of the full vocabulary."""
    distill_span: Literal["response", "answer", "answer_hold"] = "response"
    """Response tokens the loss uses: all of them, or only the final answer's (after the last
    "answer is", "answer:", ``####`` or ``\\boxed{``; :mod:`experiential.focus`). A response
    stating no answer keeps all its tokens, with a warning. ``answer_hold`` distils the answer
    from the teacher and holds every other response token at the frozen model's own
    distribution (teacher = the original model in the student's context, as for anchors), with
    the loss averaged over the whole response. Off by default: on 8 single MMLU
    experiences (``reports/specificity.md``) ``answer`` raised the transfer of explanation-only
    feedback from 0.52 to 0.82 of the gap, but letter-feedback updates lost 3.2 points more
    retention accuracy than over the whole response; ``answer_hold`` behaved like the default on
    6 explanation and 3 letter questions (transfer 0.57 against 0.54 and 0.82)."""
    max_new_tokens: int = 256
    """Generation length for samples and revisions."""
    temperature: float = 1.0

    # -- specificity: learn what the feedback is about and nothing else ----------------------
    anchor_weight: float = 3.0
    """Weight of KL(original || student) on replay prompts (teacher = the frozen original model).
    0 disables anchoring."""
    anchor_per_step: int = 8
    """Replay prompts mixed into each optimisation step."""
    anchor_neighbours: int = 0
    """Per experience, the frozen model writes this many questions of the same kind about other
    things, and its own answers to them become replay anchors (half of each step's anchors):
    they keep the update from spreading to neighbouring questions (:mod:`experiential.anchors`).
    Prompts in an experience's ``metadata["neighbours"]`` are always used this way."""
    anchor_prompts: Optional[str] = None
    """JSONL of replay anchors: ``{"prompt": ...}`` (open) or ``{"question", "choices"}``
    (multiple choice); or ``"exam"``: the built-in exam set (208 exam-style four-option questions
    written for the library, :func:`experiential.probes.exam_questions`, and the chat prompts);
    default: the built-in everyday set (24 everyday questions and 6 chat prompts)."""
    augment: str = "rotate_options"
    """``rotate_options``: for multiple-choice prompts, also learn the experience with its options
    rotated (letters in feedback and attempt follow), so no answer letter is learned as such.
    ``paraphrase``: also learn it under rewordings of its task written by the frozen model
    (:mod:`experiential.paraphrase`). ``none``, either, or both joined by ``+``."""
    augment_copies: int = 3
    """Rotated variants per multiple-choice experience (for 4 options, 3 puts the content under
    every letter)."""
    letter_prior: Literal["teacher", "student_log", "student_mass"] = "teacher"
    """Whose preference among answer letters the teacher passes on at a multiple-choice answer.
    ``student_log`` / ``student_mass``: with every rotation of a question in the update
    (``rotate_options``), the teacher's letters are given the student's own preference, matched
    in log space (averaged over the rotations by content) or in probability summed over the
    rotations (:mod:`experiential.letter_prior`), so the update cannot move letters as such.
    On 8 single MMLU explanation experiences ``student_log`` removed the updates' drift toward B
    on unrelated questions and halved their retention KL, leaving letter-feedback updates as
    they were (``reports/specificity.md``); off by default: measured on 15 explanation and 8
    letter updates only, and its gain was on updates ``decline_letter_led`` now leaves out.
    ``student_mass`` cost 3 letter updates a fifth of their transfer and moved unrelated
    questions toward the student's favourite letter."""
    decline_letter_led: bool = True
    """Leave out of the update each multiple-choice experience whose teacher, over the question's
    rotations (every option under every letter), raises one letter as such more than it raises
    any option's content (:class:`experiential.letter_prior.LetterSplit`): what it would distil
    is mostly a preference for that letter. No label is needed. It acts where it can: with
    ``rotate_options`` in ``augment`` and an objective with a teacher (not ``sft``); elsewhere
    nothing is checked or declined. On the 50 MMLU explanation experiences of
    ``reports/specificity.md`` it declines 10 of the 13 whose teacher had no gap on the true
    answer and 1 of the 37 that had one (none of 50 letter and 50 wrong-letter experiences); the
    option content the teacher raised most was the true answer in all 50, and declining cut the
    explanation updates' retention cost from 2.0 to 1.2 accuracy points (paired +0.8 ± 0.3) at
    the same transfer (0.69 against 0.67). Declined experiences are listed in the result
    (``LearnResult.declined``) and its summary; :meth:`ExperientialTrainer.declines` gives the
    decision without a step. With ``paraphrase`` too, an experience's rewordings are judged
    with it (their splits averaged) and kept or left out with it."""
    paraphrase_copies: int = 2
    """Rewordings per experience when ``augment`` includes ``paraphrase``."""
    stop_kl: Optional[float] = 0.05
    """Stop early once the mean per-token divergence on the experiences, averaged over the last
    pass over them, falls below this (the student has closed the in-context gap) *and* below
    ``stop_kl_fraction`` of the first pass's, after at least ``stop_min_epochs`` passes. None: run
    all steps. Single MMLU letter experiences need 7 to 19 steps to close their gap (at most 16
    for 47 of 50); with at most 16 passes and this rule the 8 benchmark questions where 12 fixed
    steps transferred 0.84 of the gap transfer 0.97 (``reports/specificity.md``; the thresholds
    were read off those questions' step-by-step curves; on all 50 benchmark questions, 38 of them
    held out: transfer 0.96)."""
    stop_kl_fraction: float = 0.15
    """The relative half of the stop rule. On a long response (a 300-token function) the feedback
    changes a few tokens, so the mean per-token divergence starts near 0.006 and an absolute
    threshold alone stopped HumanEval updates after one step; a one-letter answer starts near
    0.3-0.6, where both halves matter."""
    stop_min_epochs: float = 12
    """The stop rule may end the update only after this many passes (0: from the first; at or
    above ``epochs``: never). Stopped as soon as the gap closed, single MMLU letter updates ended
    near the peak of their drift on unrelated prompts (retention KL .105 on 8 benchmark
    questions against .065 for 12 fixed steps, and a letter gaining .10 of the probes' mass in
    ``tests/test_learning_qwen.py``); the replay anchors pull that drift back in the steps after
    the target settles. With 12: those 8 questions transfer 0.97 at KL .085."""

    consolidate_steps: int = 0
    """After the update's own steps (the last one, or where the stop rule ended it), this many
    optimizer steps on the replay anchors alone, with the same optimizer and learning rate: once
    the experiences are learned nothing pulls on them, and the anchors pull back what the update
    moved on unrelated prompts. The optimizer's momentum carries the update's own direction into
    the first of these steps (on an MMLU explanation experience still rising at its last step,
    P(target) went on rising for four of them, and so did the drift, before the anchors pulled
    it back). Needs ``anchor_weight > 0``. 0: none."""

    # -- optimisation -----------------------------------------------------------------------
    learning_rate: float = 3e-4
    epochs: float = 16
    """Passes over the experience pairs (after augmentation), at most: ``ceil(epochs * n_pairs /
    min(batch_size, n_pairs))`` steps, fewer when the stop rule (``stop_kl``) ends the update.
    One experience (3 rotated pairs) gets 12 to 16 steps; twenty 90 to 120. One pass over twenty
    MMLU experiences moved P(true answer) only .24 -> .27 on Qwen2.5-Coder-0.5B
    (``reports/mmlu``), so the default counts passes, not steps. On single MMLU letter
    experiences (``bench/specificity.py``, 8 questions) fixed runs of 8, 12 and 16 steps
    transferred 0.62, 0.84 and 0.98 of the in-context gap; 16 cost about a point of retention
    accuracy against 12, so the stop rule ends each update between 12 and 16. On 50 questions 3
    slow updates were still rising at 16 passes; a cap of 24 finished them (transfer 0.96 ->
    0.98 over the 50) but one then biased unrelated questions .18 toward a letter the feedback
    never named, and every 16-pass letter update already had the true answer as its argmax."""
    max_steps: Optional[int] = None
    """If set, exactly this many optimizer steps, whatever ``epochs`` says (as in
    ``transformers.TrainingArguments``). Each step sees ``batch_size`` pairs, accumulated in chunks
    of ``micro_batch_size``."""
    batch_size: int = 8
    micro_batch_size: int = 4
    weight_decay: float = 0.0
    warmup_steps: int = 4
    """Linear learning-rate ramp over the first steps. Adam's first step moves every LoRA weight by
    about the learning rate whatever its gradient: without the ramp the anchors' KL jumped to .28-.54
    after step 1 on every benchmark question, with it to .09-.22 (the final retention is alike)."""
    max_grad_norm: float = 1.0
    seed: int = 0
    max_length: int = 1024
    """Longest context + response, in tokens; longer experiences are an error, never truncated."""

    # -- the model and the update -----------------------------------------------------------
    lora: bool = True
    """LoRA via PEFT (default) or full fine-tuning."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: Any = "all-linear"
    teacher_cache_mb: float = 4096
    """Memory for caching the frozen teacher's response logits (they never change); past the
    budget the teacher is recomputed every step."""
    dtype: str = "auto"
    device: str = "auto"

    # -- reporting --------------------------------------------------------------------------
    retention: bool = True
    """Score the retention probe set before and after, report accuracy change and KL."""
    retention_probes: Optional[str] = None
    """JSONL of probe questions; default: the built-in probe set (disjoint from the anchors)."""
    retention_chat: bool = True
    """Also score open chat prompts: per-token KL(original || updated) on the original model's
    own answers (about 10 s on a 0.5B model on CPU)."""
    retention_chat_prompts: Optional[str] = None
    """JSONL of ``{"prompt": ...}`` for the chat part; default: the built-in chat probes."""
    progress: bool = True

    def __post_init__(self) -> None:
        from .objectives import OBJECTIVES  # the objectives import this module

        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of "
                             f"{sorted(OBJECTIVES)}")
        if self.divergence not in ("forward_kl", "reverse_kl", "jsd"):
            raise ValueError(f"unknown divergence {self.divergence!r}")
        from .augment import parse_augment

        parse_augment(self.augment)
        if self.distill_span not in ("response", "answer", "answer_hold"):
            raise ValueError(f"distill_span must be 'response', 'answer' or 'answer_hold', "
                             f"got {self.distill_span!r}")
        if self.letter_prior not in ("teacher", "student_log", "student_mass"):
            raise ValueError(f"letter_prior must be 'teacher', 'student_log' or 'student_mass', "
                             f"got {self.letter_prior!r}")
        if self.letter_prior != "teacher" and "rotate_options" not in parse_augment(self.augment):
            raise ValueError(f"letter_prior={self.letter_prior!r} needs every rotation of a "
                             "question: add 'rotate_options' to augment")
        if self.letter_prior != "teacher" and not self.distils_teacher:
            raise ValueError(f"letter_prior={self.letter_prior!r} changes a teacher's "
                             f"distribution; the {self.objective} objective has no teacher")
        if self.distill_span == "answer_hold" and not self.distils_teacher:
            raise ValueError("distill_span='answer_hold' holds the other tokens at the frozen "
                             f"model's distribution; the {self.objective} objective has no "
                             "teacher (use 'answer')")
        if self.response not in ("attempt", "samples"):
            raise ValueError(f"response must be 'attempt' or 'samples', got {self.response!r}")
        if self.consolidate_steps < 0:
            raise ValueError(f"consolidate_steps must be >= 0, got {self.consolidate_steps}")
        if self.consolidate_steps and self.anchor_weight <= 0:
            raise ValueError("consolidate_steps steps on the replay anchors alone; with "
                             "anchor_weight=0 there are none (set anchor_weight > 0)")
        if self.stop_min_epochs < 0:
            raise ValueError(f"stop_min_epochs must be >= 0, got {self.stop_min_epochs}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        for name in ("max_steps", "batch_size", "micro_batch_size", "max_length", "num_samples",
                     "reflect_max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.jsd_beta < 1.0:
            raise ValueError("jsd_beta must be in (0, 1)")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")

    @property
    def distils_teacher(self) -> bool:
        """Whether the objective learns the teacher's distributions (not ``sft``)."""
        from .objectives import OBJECTIVES  # the objectives import this module

        return OBJECTIVES[self.objective].distils_teacher

    @property
    def divergence_alpha(self) -> float:
        """The ``alpha`` of TRL's ``compute_divergence``: 0 forward KL, 1 reverse KL, else JSD."""
        return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(self.divergence, self.jsd_beta)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ELConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "ELConfig":
        """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "ELConfig":
        return dataclasses.replace(self, **changes)


def field_docs() -> dict[str, str]:
    """Config field docstrings (for ``--help``), read from this module's source."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ELConfig))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and \
                isinstance(getattr(b, "value", None), ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())  # type: ignore[union-attr]
    return docs

