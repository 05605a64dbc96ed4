"""GSM8K with chain of thought (the published experiment 3), with a GRPO baseline.

Stages (each resumable, see :mod:`experiential.tasks.stages`):

1. ``eval_base``: greedy chain-of-thought answers on a fixed test subset, accuracy with a 95% CI.
2. ``attempts``: the model's answers to ``train_n`` sampled training problems.
3. ``experiences``: feedback on each attempt. The answer checker decides right/wrong; the feedback
   is a critic's text when a critic is given (wrong -> why; right but long-winded -> how to be more
   elegant; right -> say so), else the checker's verdict plus the reference solution.
4. ``el``: one EL update on those experiences (effective batch 128 by default), then ``eval_el``.
5. ``grpo``: TRL's ``GRPOTrainer`` from the same base model on the same problems with a correctness
   reward, then ``eval_grpo``.

Published (Llama-3.2-1B-Instruct): 30.4% -> 39.8% with EL, 41.6% with GRPO.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ELConfig
from ..experience import Experience
from ..feedback.answer import AnswerChecker, extract_final_number, normalize_number
from ..feedback.base import FeedbackSource, Task, experience
from .data import GSM8KProblem, load_gsm8k
from .mc import wilson_interval
from .stages import (Stages, bar_plot, provenance, provenance_markdown, source_identity,
                     write_json)

PUBLISHED = {"model": "Llama-3.2-1B-Instruct", "base": 0.304, "el": 0.398, "grpo": 0.416}
PROMPT = ("{question}\n\nSolve the problem step by step, then finish with \"The answer is N.\" "
          "where N is the final number.")


@dataclass
class GSM8KConfig:
    eval_limit: int | None = 64
    """First N test problems (the same subset before and after); None for all 1,319."""
    train_n: int = 256
    seed: int = 0
    max_new_tokens: int = 256
    batch_size: int = 8
    """Generation batch size."""
    include_solution: bool = True
    """Without a critic, the feedback on a wrong answer quotes the reference solution."""
    sloppy_ratio: float = 1.5
    """A right answer longer than this times the reference solution asks the critic for elegance."""
    grpo: bool = True
    grpo_steps: int | None = None
    """GRPO optimizer steps (default: one pass over the training problems)."""
    grpo_prompts_per_step: int = 2
    grpo_num_generations: int = 4
    grpo_learning_rate: float = 1e-5


def messages(p: GSM8KProblem) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT.format(question=p.question)}]


def task_for(p: GSM8KProblem, split: str) -> Task:
    return Task(prompt=messages(p), reference=p.answer, id=f"gsm8k-{split}/{p.index}")


def evaluate(model: Any, tok: Any, problems: Sequence[GSM8KProblem], cfg: GSM8KConfig
             ) -> dict[str, Any]:
    """Greedy answers, checked against the reference: accuracy, CI, every output, speed."""
    from ..generation import generate_ids

    start = time.perf_counter()
    ids = generate_ids(model, tok, [messages(p) for p in problems],
                       max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                       progress=True)
    seconds = time.perf_counter() - start
    rows, n_tokens = [], 0
    for p, group in zip(problems, ids):
        text = tok.decode(group[0], skip_special_tokens=True)
        n_tokens += len(group[0])
        pred = extract_final_number(text)
        rows.append({"index": p.index, "output": text, "predicted": pred,
                     "correct": pred == normalize_number(p.final)})
    k = sum(r["correct"] for r in rows)
    return {"n": len(rows), "correct": k, "accuracy": k / max(1, len(rows)),
            "ci95": list(wilson_interval(k, len(rows))), "seconds": seconds,
            "generated_tokens": n_tokens, "tokens_per_s": n_tokens / max(seconds, 1e-9),
            "outputs": rows}


class GSM8KFeedback:
    """The experiment's feedback: checker verdict, then the critic's words when there is a critic.

    The critic (any :class:`~experiential.feedback.base.FeedbackSource`, e.g. ``Critic``) is asked
    with the task's reference solution and ``metadata['correct']`` / ``['sloppy']`` set, so its
    template can pick "why wrong" / "more elegant" / "right"."""

    def __init__(self, critic: FeedbackSource | None = None, *, include_solution: bool = True,
                 sloppy_ratio: float = 1.5):
        self.checker = AnswerChecker(include_solution=include_solution and critic is None)
        self.critic = critic
        self.sloppy_ratio = sloppy_ratio

    def review(self, task: Task, attempt: str) -> Experience:
        checked = self.checker.review(task, attempt)
        if self.critic is None:
            return checked
        meta = dict(checked.metadata)
        solution = (task.reference or "").rsplit("####", 1)[0]
        meta["sloppy"] = bool(meta["correct"]) and len(attempt) > self.sloppy_ratio * len(solution)
        critique = self.critic.review(
            Task(task.prompt, task.reference, id=task.id, metadata=meta), attempt)
        verdict = checked.feedback.split(".")[0] + "."
        return experience(task, attempt, f"{verdict} {critique.feedback}",
                          **{**meta, **critique.metadata, "source": "answer_check+critic"})


def stage_args(model_name: str, cfg: GSM8KConfig, el: ELConfig,
               critic: FeedbackSource | None) -> dict[str, Any]:
    """What the stages depend on (the generation batch size does not, so it may change)."""
    return {"model": model_name, "config": {k: v for k, v in asdict(cfg).items()
                                            if k != "batch_size"},
            "el": {k: v for k, v in el.to_dict().items() if k != "progress"},
            "critic": source_identity(critic)}


def run(model_name: str, out_dir: str | Path, cfg: GSM8KConfig, el: ELConfig, *,
        data_dir: str | None = None, critic: FeedbackSource | None = None,
        load: Callable[[str], tuple[Any, Any]] | None = None, allow_download: bool = False,
        restart: bool = False, command: str | None = None) -> dict[str, Any]:
    """Run every stage not yet done, then write ``report.json``, ``report.md``, ``report.png``.
    ``allow_download``: load GSM8K from the hub if no local copy; ``restart``: redo every stage;
    ``command``: the command line, recorded in the report."""
    from ..feedback.base import review_all
    from ..generation import generate
    from ..models import load_model
    from ..trainer import ExperientialTrainer

    load = load or (lambda m: load_model(m))
    test = load_gsm8k("test", data_dir, allow_download=allow_download)
    test = test[: cfg.eval_limit] if cfg.eval_limit else test
    train = random.Random(cfg.seed).sample(
        load_gsm8k("train", data_dir, allow_download=allow_download), cfg.train_n)
    st = Stages(out_dir, stage_args(model_name, cfg, el, critic), restart=restart)
    loaded: list[Any] = []

    def base_model() -> tuple[Any, Any]:
        """Loaded on first use, so a rerun with every stage done loads nothing."""
        if not loaded:
            loaded.extend(load(model_name))
        return loaded[0], loaded[1]

    base = st.run("eval_base", lambda: evaluate(*base_model(), test, cfg))

    def attempts() -> list[str]:
        model, tok = base_model()
        return [o[0] for o in generate(model, tok, [messages(p) for p in train],
                                       max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.batch_size, progress=True)]

    train_attempts = st.run("attempts", attempts)

    def feedback() -> list[dict[str, Any]]:
        source = GSM8KFeedback(critic, include_solution=cfg.include_solution,
                               sloppy_ratio=cfg.sloppy_ratio)
        exps = review_all(source, [task_for(p, "train") for p in train], train_attempts)
        return [e.to_dict() for e in exps]

    exps = [Experience.from_dict(d) for d in st.run("experiences", feedback)]

    def el_stage() -> dict[str, Any]:
        model, tok = base_model()
        trainer = ExperientialTrainer(model, tok, el)
        res = trainer.learn(exps)
        trainer.save(Path(out_dir) / "el_adapter")
        result = {"learn": res.to_dict(), "eval": evaluate(trainer.model, tok, test, cfg)}
        if hasattr(trainer.model, "unload"):
            trainer.model.unload()
        return result

    el_result = st.run("el", el_stage)
    grpo_result = None
    if cfg.grpo:
        grpo_result = st.run("grpo", lambda: grpo_baseline(model_name, train, test, cfg, el,
                                                           Path(out_dir), load))
    train_acc = sum(e.metadata.get("correct", False) for e in exps) / max(1, len(exps))
    report = {"experiment": "gsm8k", "model": model_name, **provenance(model_name, command),
              "config": asdict(cfg),
              "el_config": el.to_dict(), "published": PUBLISHED,
              "critic": getattr(critic, "name", None) or (type(critic).__name__ if critic else None),
              "train_attempt_accuracy": train_acc,
              "base": _summary(base), "el": _summary(el_result["eval"]),
              "el_learn": {k: el_result["learn"].get(k) for k in
                           ("steps", "seconds", "gap_before", "gap_after", "retention")},
              "grpo": _summary(grpo_result["eval"]) if grpo_result else None,
              "grpo_train": {k: v for k, v in grpo_result.items() if k != "eval"}
              if grpo_result else None}
    write_json(Path(out_dir) / "report.json", report)
    (Path(out_dir) / "report.md").write_text(markdown(report))
    rows = [("base", report["base"]), ("EL", report["el"])] + \
        ([("GRPO", report["grpo"])] if report["grpo"] else [])
    bar_plot(Path(out_dir) / "report.png", f"GSM8K test accuracy ({report['model']}, "
             f"n={report['base']['n']})", [r[0] for r in rows],
             {"ours": [r[1]["accuracy"] for r in rows],
              f"published ({PUBLISHED['model']})":
                  [PUBLISHED["base"], PUBLISHED["el"], PUBLISHED["grpo"]][: len(rows)]},
             "accuracy")
    return report


def _summary(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: ev[k] for k in ("n", "correct", "accuracy", "ci95", "seconds", "tokens_per_s")}


def grpo_baseline(model_name: str, train: Sequence[GSM8KProblem], test: Sequence[GSM8KProblem],
                  cfg: GSM8KConfig, el: ELConfig, out: Path,
                  load: Callable[[str], tuple[Any, Any]]) -> dict[str, Any]:
    """TRL's GRPOTrainer from a fresh copy of the base model, same LoRA shape as EL, reward 1 for
    a correct final number else 0; then the same evaluation."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load(model_name)
    ds = Dataset.from_list([{"prompt": messages(p), "final": normalize_number(p.final)}
                            for p in train])

    def correctness(completions: list[Any], final: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(extract_final_number(t) == f) for t, f in zip(texts, final)]

    per_step = cfg.grpo_prompts_per_step * cfg.grpo_num_generations
    steps = cfg.grpo_steps or max(1, len(train) // cfg.grpo_prompts_per_step)
    args = GRPOConfig(
        output_dir=str(out / "grpo_run"), per_device_train_batch_size=per_step,
        num_generations=cfg.grpo_num_generations, max_completion_length=cfg.max_new_tokens,
        learning_rate=cfg.grpo_learning_rate, max_steps=steps, logging_steps=1,
        save_strategy="no", report_to="none", seed=cfg.seed, bf16=False,
        use_cpu=not torch.cuda.is_available(), temperature=1.0, disable_tqdm=False)
    lora = LoraConfig(r=el.lora_r, lora_alpha=el.lora_alpha, lora_dropout=el.lora_dropout,
                      target_modules=el.lora_target_modules, task_type="CAUSAL_LM")
    start = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=correctness, args=args, train_dataset=ds,
                          processing_class=tok, peft_config=lora)
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.eval()
    rewards = [h.get("reward") for h in trainer.state.log_history if "reward" in h]
    return {"steps": steps, "seconds": seconds, "rewards": rewards,
            "eval": evaluate(trainer.model, tok, test, cfg)}


def markdown(report: dict[str, Any]) -> str:
    pub = report["published"]

    def cell(r: dict[str, Any] | None) -> str:
        if not r:
            return "not run"
        lo, hi = r["ci95"]
        return f"{r['accuracy']:.1%} ({r['correct']}/{r['n']}, 95% CI {lo:.1%}-{hi:.1%})"

    cfg = report["config"]
    lines = [
        "# GSM8K with chain of thought: EL and a GRPO baseline\n",
        *provenance_markdown(report),
        f"Ours: `{report['model']}`, greedy, {cfg['max_new_tokens']} new tokens, first "
        f"{report['base']['n']} test problems (same subset for every row); "
        f"{cfg['train_n']} training problems (seed {cfg['seed']}), on which the base model's "
        f"attempts were {report['train_attempt_accuracy']:.1%} correct. Feedback: "
        f"{report['critic'] or 'answer checker + reference solution'}. "
        f"Published: {pub['model']}.\n",
        "| model | ours: test accuracy | published |", "|---|---|---|",
        f"| base | {cell(report['base'])} | {pub['base']:.1%} |",
        f"| after EL | {cell(report['el'])} | {pub['el']:.1%} |",
        f"| after GRPO | {cell(report['grpo'])} | {pub['grpo']:.1%} |",
    ]
    learn = report.get("el_learn") or {}
    ret = learn.get("retention") or {}
    if ret:
        lines.append(f"\nEL retention on the built-in probes: accuracy change "
                     f"{ret.get('accuracy_change', float('nan')) * 100:+.1f} points, mean KL "
                     f"{ret.get('mean_kl', float('nan')):.3f}. EL steps: {learn.get('steps')}, "
                     f"{learn.get('seconds', 0):.0f} s.")
    if report.get("grpo_train"):
        g = report["grpo_train"]
        lines.append(f"GRPO: {g['steps']} steps, {g['seconds']:.0f} s.")
    lines.append(f"\nGeneration speed (base eval): {report['base']['tokens_per_s']:.1f} tokens/s.")
    return "\n".join(lines) + "\n"
