"""MMLU answer-probability shift (the published experiment 1).

Pick questions the model gets wrong; record P over A/B/C/D; build experiences of four kinds:
(a) ``letter``: the correct letter; (b) ``letter_explanation``: the letter plus an explanation;
(c) ``explanation``: the explanation without the letter; (d) ``control``: a wrong letter presented
as correct. Apply one EL update per kind over all the chosen questions (each kind from the same
starting model), re-measure, and report mean P(true answer) before/after for a-c and P(claimed
letter) for d, with the in-context gap and retention on unrelated MMLU questions.

Published (Llama-3.2-1B): 10.8% -> 50.4% / 35.2% / 45.3%; control 33.2% -> 73.4%.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ELConfig
from ..experience import Experience
from .mc import LETTERS, MCQuestion, format_mc
from .stages import Stages, provenance, provenance_markdown, write_json

KINDS = ("letter", "letter_explanation", "explanation", "control")
PUBLISHED = {"model": "Llama-3.2-1B", "before": 0.108, "letter": 0.504,
             "letter_explanation": 0.352, "explanation": 0.453,
             "control_before": 0.332, "control": 0.734}

Explainer = Callable[[MCQuestion], str]


def content_explanation(q: MCQuestion) -> str:
    """A stand-in explanation that names the right option's content but not its letter."""
    return f"The right option is the one that says \"{q.choices[q.answer]}\"."


STAND_IN = "built-in stand-in (no critic): quotes the right option's text, names no letter"
content_explanation.source = STAND_IN  # type: ignore[attr-defined]


def explainer_source(explainer: Explainer) -> str:
    """Where an explainer's explanations come from, for the report (critic backend and model,
    a file, or the built-in stand-in): the explanations decide what kinds (b) and (c) teach."""
    return getattr(explainer, "source", None) or \
        f"custom explainer {getattr(explainer, '__qualname__', type(explainer).__name__)}"


def explanations_from_file(path: str | Path) -> Explainer:
    """An explainer reading ``{"question_id", "explanation"}`` lines (a critic's saved output).
    A question without an explanation is an error, not a silent fallback."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                table[row["question_id"]] = row["explanation"]

    def explain(q: MCQuestion) -> str:
        if q.id not in table:
            raise KeyError(f"{path} has no explanation for question {q.id}")
        return table[q.id]

    explain.source = f"file {path}"  # type: ignore[attr-defined]
    return explain


CRITIC_TEMPLATE = (
    "Question:\n{problem}\n\nStudent's answer: {attempt}\n\nThe correct option is: {reference}"
    "\n\nThe student's answer is wrong. In 2-4 sentences, explain why the correct option is right "
    "and why the student's choice is wrong. Refer to options by their content only: do not write "
    "any option letter (A, B, C or D).")


def critic_explainer(critic: Any) -> Explainer:
    """Explanations written by a critic (any object with ``complete(messages) -> str`` and
    ``messages(task, attempt, template)``, i.e. :class:`experiential.feedback.critic.Critic`),
    given the correct option; the letter is kept out so kind (c) is an explanation only."""
    from ..feedback.base import Task

    critic.templates.setdefault("mmlu_explain", CRITIC_TEMPLATE)

    def explain(q: MCQuestion) -> str:
        task = Task(prompt=format_mc(q).rsplit("\nAnswer with", 1)[0],
                    reference=q.choices[q.answer], id=q.id)
        wrong = q.metadata.get("attempt", "")
        return redact_letters(critic.complete(critic.messages(task, wrong, "mmlu_explain")), q)

    explain.source = critic_source(critic)  # type: ignore[attr-defined]
    return explain


def critic_source(critic: Any) -> str:
    """``critic: OpenAI-compatible endpoint <url>, model <name>`` or ``critic: local model <name>
    (<full name>)``."""
    backend = getattr(critic, "backend", None)
    if getattr(backend, "base_url", None):
        return f"critic: OpenAI-compatible endpoint {backend.base_url}, model {backend.model_name}"
    from ..models import describe_model

    name = getattr(backend, "model_name", None) or type(critic).__name__
    model = describe_model(name)
    return f"critic: local model {name}" + (f" ({model['name']})" if "embedded" in model else "")


_LETTER_REF = re.compile(r"\b((?:option|answer|choice)\s+(?:is\s+)?)\(?([A-D])\)?(?!\w)", re.IGNORECASE)


def redact_letters(text: str, q: MCQuestion) -> str:
    """Replace "option D" / "answer is (D)" with the option's content: a small critic does not
    always obey "no letters", and kind (c) must not carry the letter."""
    def content(m: re.Match[str]) -> str:
        i = LETTERS.index(m.group(2).upper())
        return f"{m.group(1)}\"{q.choices[i]}\"" if i < len(q.choices) else m.group(0)

    return _LETTER_REF.sub(content, text).strip()


def control_letter(qid: str, answer: int, attempt: int, n: int = 4) -> int:
    """The control's claimed letter: wrong, and not the model's own attempt either (claiming the
    attempt is right would teach what the model already said). Deterministic per question."""
    candidates = [i for i in range(n) if i not in (answer, attempt)]
    return random.Random(qid).choice(candidates)


def feedback_for(kind: str, q: MCQuestion, wrong: int, explanation: str) -> tuple[str, int]:
    """(feedback text, target index) for one kind of experience."""
    if kind == "letter":
        return f"The correct answer is {q.letter}.", q.answer
    if kind == "letter_explanation":
        return f"{explanation} The correct answer is {q.letter}.", q.answer
    if kind == "explanation":
        return explanation, q.answer
    if kind == "control":
        return f"The correct answer is {LETTERS[wrong]}.", wrong
    raise ValueError(kind)


ANCHOR_SETS = ("builtin", "exam", "mmlu_dev")


@dataclass
class ShiftConfig:
    n_questions: int = 8
    seed: int = 0
    subjects: Sequence[str] | None = None
    kinds: Sequence[str] = KINDS
    retention_n: int = 48
    anchors: str = "builtin"
    """Replay anchors: ``builtin`` (the library's everyday questions and chat prompts, or
    ``ELConfig.anchor_prompts``), ``exam`` (the library's 208 exam-style questions and the chat
    prompts: ``ELConfig.anchor_prompts="exam"``) or ``mmlu_dev`` (the four-option MMLU dev
    questions of at most :data:`experiential.anchors.MC_ANCHOR_MAX_TOKENS` prompt tokens,
    answered by the base model, plus the built-in chat prompts: anchors from the probes'
    distribution, :func:`experiential.anchors.mmlu_dev_anchor_pairs`)."""

    def __post_init__(self) -> None:
        if self.anchors not in ANCHOR_SETS:
            raise ValueError(f"anchors={self.anchors!r}: choose one of {', '.join(ANCHOR_SETS)}")


def stage_args(model_name: str, cfg: ShiftConfig, el: ELConfig, explanations: str | None,
               questions: Sequence[MCQuestion] | None = None) -> dict[str, Any]:
    """What the stages depend on: the model, the question selection, the EL config and the
    explanation source (when a kind uses explanations)."""
    return {"model": model_name, "seed": cfg.seed, "n_questions": cfg.n_questions,
            "subjects": list(cfg.subjects) if cfg.subjects else None, "kinds": list(cfg.kinds),
            "retention_n": cfg.retention_n, "explanations": explanations,
            "anchors": cfg.anchors,
            "questions": [q.id for q in questions] if questions is not None else None,
            "el": {k: v for k, v in el.to_dict().items() if k != "progress"}}


def sem(values: Sequence[float]) -> float:
    """Standard error of the mean (0 for fewer than two values)."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def run(model_name: str, out_dir: str | Path, cfg: ShiftConfig, el: ELConfig, *,
        data_dir: str | None = None, explainer: Explainer | None = None,
        questions: list[MCQuestion] | None = None, probes: list[MCQuestion] | None = None,
        load: Callable[[str], tuple[Any, Any]] | None = None, allow_download: bool = False,
        restart: bool = False, command: str | None = None) -> dict[str, Any]:
    """Run the experiment and write ``report.json`` and ``report.md`` under ``out_dir``.
    Stages are resumable: finished kinds are read back from ``stages/<kind>.json``, the
    explanations from ``stages/explanations.json``. ``allow_download``: load MMLU from the hub
    if no local copy; ``restart``: redo every stage; ``command``: recorded in the report."""
    import torch

    from ..context import teacher_messages
    from ..models import load_model
    from ..scoring import option_probs
    from ..trainer import ExperientialTrainer
    from .data import load_mmlu
    from .mc import sample_questions

    if cfg.anchors != "builtin" and el.anchor_prompts:
        raise ValueError(f"anchors={cfg.anchors!r} and ELConfig.anchor_prompts="
                         f"{el.anchor_prompts!r} both choose the replay anchors; pass one")
    out = Path(out_dir)
    t0 = time.time()
    explainer = explainer or content_explanation
    wants_explanations = any(k in ("letter_explanation", "explanation") for k in cfg.kinds)
    source = explainer_source(explainer) if wants_explanations else None
    given = questions
    if questions is None:
        questions = [q for q in load_mmlu("test", list(cfg.subjects) if cfg.subjects else None,
                                          data_dir=data_dir, allow_download=allow_download)
                     if len(q.choices) == 4]
    pool = load_mmlu("test", data_dir=data_dir, allow_download=allow_download) \
        if probes is None else []
    st = Stages(out, stage_args(model_name, cfg, el, source, given), restart=restart)
    model, tok = (load or (lambda m: load_model(m)))(model_name)

    def select() -> dict[str, list]:
        chosen, p_before = questions_it_gets_wrong(model, tok, questions, cfg.n_questions,
                                                   cfg.seed)
        return {"ids": [q.id for q in chosen], "p_before": [p.tolist() for p in p_before]}

    # A stage like the others, so a resumed run does not rescore the pool to find them again.
    selection = st.run("selection", select)
    by_id = {q.id: q for q in questions}
    chosen = [by_id[i] for i in selection["ids"]]
    p_before = [torch.tensor(p) for p in selection["p_before"]]
    if probes is None:
        used = {q.subject for q in chosen}
        probes = sample_questions(pool, cfg.retention_n, cfg.seed + 1, exclude_subjects=used)
        probes = [q for q in probes if len(q.choices) == 4]
    for q, p in zip(chosen, p_before):
        q.metadata["attempt"] = q.choices[int(p.argmax())]  # what the model chose, for a critic
    explanations: dict[str, str] = {}
    if wants_explanations:
        explanations = st.run("explanations", lambda: {q.id: explainer(q) for q in chosen})
    anchor_pairs, n_dev = None, 0
    if cfg.anchors == "exam":
        el = el.replace(anchor_prompts="exam")
    if cfg.anchors == "mmlu_dev" and el.anchor_weight > 0:
        from ..anchors import mmlu_dev_anchor_pairs

        # the base model's answers: every stage starts from it (the adapter is unloaded after)
        anchor_pairs, n_dev = mmlu_dev_anchor_pairs(model, tok, data_dir=data_dir,
                                                    allow_download=allow_download)
    results: dict[str, Any] = {}
    for kind in cfg.kinds:

        def stage(kind: str = kind) -> dict[str, Any]:
            nonlocal model
            exps, targets = [], []
            for q, p in zip(chosen, p_before):
                attempt = int(p.argmax())
                wrong = control_letter(q.id, q.answer, attempt)
                fb, target = feedback_for(kind, q, wrong, explanations.get(q.id, ""))
                exps.append(Experience(format_mc(q), f"The answer is {LETTERS[attempt]}.", fb,
                                       {"question_id": q.id, "kind": kind, "target": target}))
                targets.append(target)
            # The base model with the feedback in context: what the update could reach.
            p_teacher = option_probs(model, tok, [teacher_messages(
                e, el.context_design, el.context_template) for e in exps])
            trainer = ExperientialTrainer(model, tok, el, probes=probes,
                                          anchor_pairs=anchor_pairs)
            res = trainer.learn(exps)
            p_after = option_probs(trainer.model, tok, [_msgs(q) for q in chosen])
            if hasattr(trainer.model, "unload"):
                model = trainer.model.unload()
            idx = torch.arange(len(chosen))
            tgt = torch.tensor(targets)
            before = torch.stack(p_before)
            before_t, teacher_t, after_t = before[idx, tgt], p_teacher[idx, tgt], p_after[idx, tgt]
            return {
                "mean_p_target_before": float(before_t.mean()),
                "mean_p_target_teacher": float(teacher_t.mean()),
                "mean_p_target_after": float(after_t.mean()),
                "target_is_argmax_after": float((p_after.argmax(-1) == tgt).float().mean()),
                "gap_before": res.to_dict()["gap_before"], "gap_after": res.to_dict()["gap_after"],
                "retention": res.retention.to_dict() if res.retention else None,
                "steps": res.steps, "seconds": res.seconds,
                # left out by decline_letter_led: their teacher would teach a letter as such
                "declined": {e.metadata["question_id"]: res.declined[e.id].describe()
                             for e in exps if e.id in res.declined},
                "per_question": [
                    {"id": q.id, "target": t, "before": float(before_t[i]),
                     "teacher": float(teacher_t[i]), "after": float(after_t[i]),
                     "p_before": _dist(before[i]), "p_teacher": _dist(p_teacher[i]),
                     "p_after": _dist(p_after[i]), "feedback": e.feedback}
                    for i, (q, t, e) in enumerate(zip(chosen, targets, exps))]}

        results[kind] = st.run(kind, stage)
        per = results[kind]["per_question"]
        results[kind]["sem_p_target_before"] = sem([x["before"] for x in per])
        results[kind]["sem_p_target_after"] = sem([x["after"] for x in per])
    report = {"experiment": "mmlu_shift", "model": model_name, **provenance(model_name, command),
              "n_questions": len(chosen), "seed": cfg.seed, "config": el.to_dict(),
              "anchors": cfg.anchors, "anchor_questions": n_dev,
              "explanation_source": source, "published": PUBLISHED,
              "results": results, "seconds": time.time() - t0,
              "questions": [q.id for q in chosen]}
    write_json(out / "report.json", report)
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "report.png")
    return report


def _dist(p: Any) -> dict[str, float]:
    """A letter distribution as ``{"A": .., "B": .., ...}`` (readable in report.json)."""
    return {LETTERS[i]: round(float(x), 6) for i, x in enumerate(p)}


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Ours before/after beside the published before/after, per kind of experience."""
    from .stages import bar_plot

    results = report["results"]
    kinds = list(results)
    bar_plot(path, f"MMLU P(target) ({report['model']}, {report['n_questions']} questions)", kinds,
             {"ours before": [results[k]["mean_p_target_before"] for k in kinds],
              "ours after": [results[k]["mean_p_target_after"] for k in kinds],
              f"published before ({PUBLISHED['model']})":
                  [PUBLISHED["control_before" if k == "control" else "before"] for k in kinds],
              "published after": [PUBLISHED[k] for k in kinds]}, "mean P(target)")


def questions_it_gets_wrong(model: Any, tok: Any, questions: Sequence[MCQuestion], n: int,
                            seed: int) -> tuple[list[MCQuestion], list[Any]]:
    """The first ``n`` questions, in a seeded shuffle, whose most likely letter is wrong, with
    the model's letter probabilities for each. Scores in chunks and stops once ``n`` are found."""
    from ..scoring import option_probs

    pool = list(questions)
    random.Random(seed).shuffle(pool)
    chosen, probs_out = [], []
    for i in range(0, len(pool), 16):
        chunk = pool[i:i + 16]
        probs = option_probs(model, tok, [_msgs(q) for q in chunk])
        for q, p in zip(chunk, probs):
            if int(p.argmax()) != q.answer and len(chosen) < n:
                chosen.append(q)
                probs_out.append(p)
        if len(chosen) >= n:
            break
    return chosen, probs_out


def _msgs(q: MCQuestion) -> list[dict[str, str]]:
    return [{"role": "user", "content": format_mc(q)}]


def markdown(report: dict[str, Any]) -> str:
    pub = report["published"]
    lines = ["# MMLU answer-probability shift\n", *provenance_markdown(report),
             f"Ours: `{report['model']}`, {report['n_questions']} MMLU test questions it gets "
             f"wrong, seed {report['seed']}, one EL update per kind over all of them. "
             f"Published: {pub['model']}.\n"]
    if report.get("anchors") == "exam":
        lines.append("Replay anchors: the built-in exam set (208 exam-style questions written for "
                     "the library, answered by the base model) and the built-in chat prompts.\n")
    if report.get("anchor_questions"):
        lines.append(f"Replay anchors: {report['anchor_questions']} MMLU dev questions (answered "
                     f"by the base model) and the built-in chat prompts.\n")
    if report.get("explanation_source"):
        lines.append(f"Explanations (kinds letter_explanation, explanation): "
                     f"{report['explanation_source']}.\n")
    lines += ["| experience kind | ours: P(target) before -> after (± s.e.m.) | in-context gap "
              "(teacher - student) | retention: accuracy change, mean KL | published |",
              "|---|---|---|---|---|"]
    for kind, r in report["results"].items():
        ret = r.get("retention") or {}
        published = (f"{pub['control_before']:.1%} -> {pub['control']:.1%}" if kind == "control"
                     else f"{pub['before']:.1%} -> {pub[kind]:.1%}")
        lines.append(
            f"| {kind} | {r['mean_p_target_before']:.1%} ± {_pts(r, 'before')} -> "
            f"{r['mean_p_target_after']:.1%} ± {_pts(r, 'after')} | "
            f"{r['gap_before'].get('mean_gap', float('nan')):+.3f} | "
            f"{ret.get('accuracy_change', float('nan')) * 100:+.1f} pts, "
            f"{ret.get('mean_kl', float('nan')):.3f} | {published} |")
    declined = [f"{kind}: {', '.join(r['declined'])}" for kind, r in report["results"].items()
                if r.get("declined")]
    if declined:
        lines.append("\nLeft out of the update (`decline_letter_led`: the teacher's shift was led "
                     "by a letter, not by an option's content; their P(target) after is the "
                     "update's effect on them as unseen questions): " + "; ".join(declined) + ".")
    return "\n".join(lines) + "\n"


def _pts(r: dict[str, Any], when: str) -> str:
    """The standard error of the mean P(target), in percentage points."""
    value = r.get(f"sem_p_target_{when}")
    return "?" if value is None else f"{100 * value:.1f}"
