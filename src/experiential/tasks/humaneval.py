"""HumanEval Monte Carlo cross-validation (the published experiment 2).

Repeat ``repeats`` times: split the tasks 50/50 at random; on the train half take the model's
zero-shot attempts, get feedback (the tests plus the traceback, printed input/output pairs, or a
critic that reads the reference solution and the test results), apply one EL update from the base
model; measure pass@1 on the held-out half before and after.
Report the mean and standard deviation of the improvement per feedback type.

The base model's greedy completions do not depend on the split, so they are generated once for all
tasks (stage ``base``): they are both the train-half attempts and the held-out "before" numbers.

Published (Llama-3.2-1B-Instruct): +15.37 points (tests + traceback), +17.6 points (I/O pairs).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ELConfig
from ..experience import Experience
from .data import load_humaneval
from .stages import (Stages, bar_plot, provenance, provenance_markdown, source_identity,
                     write_json)

PUBLISHED = {"model": "Llama-3.2-1B-Instruct", "tests": 15.37, "io": 17.6}
PROMPT = ("Complete the following Python function. Reply with the whole function in one "
          "```python code block.\n\n```python\n{prompt}```")


@dataclass
class HumanEvalConfig:
    limit: int | None = None
    """First N tasks (all 164 by default)."""
    repeats: int = 5
    seed: int = 0
    feedback: Sequence[str] = ("tests", "io")
    """``tests``: test source + pass/fail + traceback; ``io``: printed input/output pairs;
    ``critic``: a critic's explanation given the reference solution and the test results."""
    max_new_tokens: int = 384
    batch_size: int = 8
    timeout: float = 10.0
    """Wall-clock seconds per sandboxed test run."""
    workers: int | None = None
    """Parallel sandbox runs (default: all cores)."""
    extra: dict[str, Any] = field(default_factory=dict)


def messages(task: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT.format(prompt=task["prompt"])}]


def to_task(row: dict[str, Any]):  # noqa: ANN201 - feedback.base.Task
    from ..feedback.base import Task

    return Task(prompt=messages(row), reference=row.get("canonical_solution"), tests=row["test"],
                entry_point=row["entry_point"], id=row["task_id"],
                metadata={"task_id": row["task_id"], "code_prompt": row["prompt"]})


FEEDBACK_TYPES = ("tests", "io", "critic")
_STYLE = " Address the student directly as \"you\", in 2-5 sentences, with no preamble."
CRITIC_TEMPLATES = {
    "code_failed": "Problem:\n{problem}\n\nStudent's answer:\n{attempt}\n\n{reference_block}"
    "Test results of the student's code:\n{results}\n\nThe student's code fails the tests. "
    "Explain what is wrong in it and how to fix it. Do not paste the reference solution; name "
    "the change instead." + _STYLE,
    "code_passed": "Problem:\n{problem}\n\nStudent's answer:\n{attempt}\n\n{reference_block}"
    "Test results of the student's code:\n{results}\n\nThe student's code passes every test. "
    "Say so, and briefly say why it is right." + _STYLE,
}


class CodeCritic:
    """The ``critic`` feedback type: run the tests, then ask the critic (a
    :class:`~experiential.feedback.critic.Critic`) with the reference solution and the test
    results, so it can say what is wrong and how to fix it, or that the code passes. The verdict
    comes from the tests, not the critic, as the answer checker's does for GSM8K."""

    def __init__(self, critic: Any, timeout: float = 10.0):
        from ..feedback.code import TestFeedback

        self.tests = TestFeedback(timeout=timeout)
        self.critic = critic
        for name, text in CRITIC_TEMPLATES.items():
            critic.templates.setdefault(name, text)

    def review(self, task: Any, attempt: str) -> Experience:
        from ..feedback.base import Task, experience
        from ..feedback.code import code_prompt
        from ..feedback.critic import CriticError

        tested = self.tests.review(task, attempt)
        if tested.metadata.get("status") == "empty":  # nothing to review (as Critic.review)
            tested.metadata["source"] = "code_critic"
            return tested
        template = "code_passed" if tested.metadata.get("passed") else "code_failed"
        # The reference as a whole function: HumanEval's canonical solution is only the body.
        full = code_prompt(task) + task.reference if task.reference else None
        ask = Task(task.prompt, full, task.tests, task.entry_point, task.id, task.metadata)
        reply = self.critic.complete(self.critic.messages(
            ask, attempt, template, results=tested.feedback.strip())).strip()
        if not reply:
            raise CriticError(f"the critic returned an empty reply for task {task.id or '?'}")
        return experience(task, attempt, reply, **{
            **tested.metadata, "source": "code_critic", "template": template,
            "critic_model": self.critic.backend.model_name})


def feedback_source(kind: str, cfg: HumanEvalConfig, critic: Any = None):  # noqa: ANN201
    from ..feedback.code import IOFeedback, TestFeedback

    if kind == "tests":
        return TestFeedback(timeout=cfg.timeout)
    if kind == "io":
        return IOFeedback(timeout=cfg.timeout)
    if kind == "critic":
        if critic is None:
            raise ValueError("feedback type critic needs a critic: pass --critic-url (an "
                             "OpenAI-compatible endpoint) or --critic-local (a local model, e.g. "
                             "`critic`)")
        return CodeCritic(critic, timeout=cfg.timeout)
    raise ValueError(f"unknown feedback type {kind!r}; choose from {', '.join(FEEDBACK_TYPES)}")


def check(rows: Sequence[dict[str, Any]], completions: Sequence[str],
          cfg: HumanEvalConfig) -> list[bool]:
    """Pass/fail of each completion against its task's tests, run in parallel in the sandbox."""
    from ..feedback.base import review_all

    exps = review_all(feedback_source("tests", cfg), [to_task(r) for r in rows], completions,
                      workers=cfg.workers or 2)
    return [bool(e.metadata.get("passed")) for e in exps]


def complete(model: Any, tok: Any, rows: Sequence[dict[str, Any]], cfg: HumanEvalConfig
             ) -> list[str]:
    from ..generation import generate

    return [o[0] for o in generate(model, tok, [messages(r) for r in rows],
                                   max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                   progress=True)]


def split(n: int, seed: int, repeat: int) -> tuple[list[int], list[int]]:
    """A random 50/50 split of task indices, fixed by (seed, repeat)."""
    order = list(range(n))
    random.Random(f"{seed}/{repeat}").shuffle(order)
    half = n // 2
    return sorted(order[:half]), sorted(order[half:])


def stage_args(model_name: str, cfg: HumanEvalConfig, el: ELConfig,
               critic: Any = None) -> dict[str, Any]:
    """What the stages depend on (generation batch size and sandbox workers do not)."""
    return {"model": model_name, "config": {k: v for k, v in asdict(cfg).items()
                                            if k not in ("batch_size", "workers")},
            "el": {k: v for k, v in el.to_dict().items() if k != "progress"},
            "critic": source_identity(critic) if "critic" in cfg.feedback else None}


def run(model_name: str, out_dir: str | Path, cfg: HumanEvalConfig, el: ELConfig, *,
        data_dir: str | None = None, critic: Any = None,
        load: Callable[[str], tuple[Any, Any]] | None = None, allow_download: bool = False,
        restart: bool = False, command: str | None = None) -> dict[str, Any]:
    """Run every stage not yet done; write ``report.json``, ``report.md``, ``report.png``.
    ``critic``: a :class:`~experiential.feedback.critic.Critic` for the ``critic`` feedback type;
    ``allow_download``: load HumanEval from the hub if no local copy; ``restart``: redo every
    stage; ``command``: the command line, recorded in the report."""
    from ..feedback.base import review_all
    from ..models import load_model
    from ..trainer import ExperientialTrainer

    for kind in cfg.feedback:  # a typo or a missing critic fails now, not after the base stage
        feedback_source(kind, cfg, critic)
    rows = load_humaneval(data_dir, allow_download=allow_download)
    rows = rows[: cfg.limit] if cfg.limit else rows
    st = Stages(out_dir, stage_args(model_name, cfg, el, critic), restart=restart)
    loaded: list[Any] = []

    def base_model() -> tuple[Any, Any]:
        if not loaded:
            loaded.extend((load or (lambda m: load_model(m)))(model_name))
        return loaded[0], loaded[1]

    def base_stage() -> dict[str, Any]:
        completions = complete(*base_model(), rows, cfg)
        return {"completions": completions, "passed": check(rows, completions, cfg)}

    base = st.run("base", base_stage)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cfg.feedback}
    for kind in cfg.feedback:
        for r in range(cfg.repeats):
            train_idx, test_idx = split(len(rows), cfg.seed, r)

            def stage(kind: str = kind, r: int = r, train_idx: list[int] = train_idx,
                      test_idx: list[int] = test_idx) -> dict[str, Any]:
                model, tok = base_model()
                source = feedback_source(kind, cfg, critic)
                exps = review_all(source, [to_task(rows[i]) for i in train_idx],
                                  [base["completions"][i] for i in train_idx],
                                  workers=cfg.workers or 2)
                trainer = ExperientialTrainer(model, tok, el.replace(seed=el.seed + r))
                res = trainer.learn(exps)
                held = [rows[i] for i in test_idx]
                after_completions = complete(trainer.model, tok, held, cfg)
                after = check(held, after_completions, cfg)
                if hasattr(trainer.model, "unload"):
                    trainer.model.unload()
                before = [base["passed"][i] for i in test_idx]
                return {"repeat": r, "train": [rows[i]["task_id"] for i in train_idx],
                        "test": [rows[i]["task_id"] for i in test_idx],
                        "pass1_before": sum(before) / len(before),
                        "pass1_after": sum(after) / len(after),
                        "train_pass1": sum(bool(e.metadata.get("passed")) for e in exps)
                        / len(exps),
                        "learn": {k: res.to_dict().get(k) for k in
                                  ("steps", "seconds", "gap_before", "gap_after", "retention")},
                        "experiences": [e.to_dict() for e in exps],
                        "after_completions": after_completions, "after_passed": after}

            runs[kind].append(st.run(f"{kind}_repeat{r}", stage))
    results = {}
    for kind, rs in runs.items():
        gains = [100 * (x["pass1_after"] - x["pass1_before"]) for x in rs]
        results[kind] = {
            "gain_points_mean": statistics.mean(gains),
            "gain_points_std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
            "pass1_before_mean": statistics.mean(x["pass1_before"] for x in rs),
            "pass1_after_mean": statistics.mean(x["pass1_after"] for x in rs),
            "per_repeat": [{k: x[k] for k in ("repeat", "pass1_before", "pass1_after",
                                               "train_pass1", "learn")} for x in rs]}
    report = {"experiment": "humaneval_mccv", "model": model_name,
              **provenance(model_name, command), "n_tasks": len(rows),
              "critic": source_identity(critic) if "critic" in cfg.feedback else None,
              "config": asdict(cfg), "el_config": el.to_dict(), "published": PUBLISHED,
              "base_pass1_all": sum(base["passed"]) / len(rows), "results": results}
    write_json(Path(out_dir) / "report.json", report)
    (Path(out_dir) / "report.md").write_text(markdown(report))
    kinds = list(results)
    bar_plot(Path(out_dir) / "report.png",
             f"HumanEval held-out pass@1 gain ({model_name}, {cfg.repeats} splits)", kinds,
             {"ours": [results[k]["gain_points_mean"] for k in kinds],
              f"published ({PUBLISHED['model']})": [PUBLISHED.get(k) for k in kinds]},
             "pass@1 gain (points)",
             errors={"ours": [results[k]["gain_points_std"] for k in kinds]})
    return report


def markdown(report: dict[str, Any]) -> str:
    pub, cfg = report["published"], report["config"]
    lines = ["# HumanEval Monte Carlo cross-validation\n", *provenance_markdown(report),
             f"Ours: `{report['model']}`, {report['n_tasks']} tasks, {cfg['repeats']} random 50/50 "
             f"splits (seed {cfg['seed']}), greedy, {cfg['max_new_tokens']} new tokens; base "
             f"pass@1 on all tasks {report['base_pass1_all']:.1%}. One EL update per split from "
             f"the base model on the train half's zero-shot attempts. Published: {pub['model']}.\n",
             "| feedback | held-out pass@1 before -> after (mean) | gain, points (mean ± std) "
             "| published gain |", "|---|---|---|---|"]
    names = {"tests": "tests + traceback", "io": "printed input/output pairs",
             "critic": f"critic ({report.get('critic')}) given the reference and test results"}
    for kind, r in report["results"].items():
        p = pub.get(kind)
        lines.append(f"| {names.get(kind, kind)} | {r['pass1_before_mean']:.1%} -> "
                     f"{r['pass1_after_mean']:.1%} | {r['gain_points_mean']:+.2f} ± "
                     f"{r['gain_points_std']:.2f} | {'+%.2f' % p if p is not None else '-'} |")
    lines.append("\nPer split (before -> after, retention accuracy change / mean KL):\n")
    for kind, r in report["results"].items():
        for x in r["per_repeat"]:
            ret = (x["learn"] or {}).get("retention") or {}
            lines.append(f"- {kind}, split {x['repeat']}: {x['pass1_before']:.1%} -> "
                         f"{x['pass1_after']:.1%}; retention "
                         f"{ret.get('accuracy_change', float('nan')) * 100:+.1f} pts, KL "
                         f"{ret.get('mean_kl', float('nan')):.3f}")
    return "\n".join(lines) + "\n"


def experiences_of(report_dir: str | Path, kind: str, repeat: int) -> list[Experience]:
    """The experiences one split learned from (to inspect what the model was taught)."""
    import json

    stage = Path(report_dir) / "stages" / f"{kind}_repeat{repeat}.json"
    return [Experience.from_dict(d) for d in json.loads(stage.read_text())["experiences"]]
