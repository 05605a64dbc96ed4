"""GSM8K pipeline mechanics on a tiny model: every stage runs (EL and TRL's GRPOTrainer), the
report has the published numbers beside ours, and a rerun resumes without recomputing."""

import json

from conftest import build_tiny_model, build_tiny_tokenizer

from experiential.config import ELConfig
from experiential.experience import Experience
from experiential.feedback.base import Task, experience
from experiential.tasks import gsm8k
from experiential.tasks.data import load_gsm8k


class EchoCritic:
    """A real (if simple) feedback source: says which template the metadata asks for."""

    def review(self, task: Task, attempt: str) -> Experience:
        kind = "elegance" if task.metadata["sloppy"] else \
            ("right" if task.metadata["correct"] else "why wrong")
        return experience(task, attempt, f"critic says: {kind}", template=kind)


def test_feedback_composes_checker_verdict_and_critic():
    p = load_gsm8k("train")[0]
    task = gsm8k.task_for(p, "train")
    fb = gsm8k.GSM8KFeedback(EchoCritic())
    wrong = fb.review(task, "The answer is 1.")
    assert wrong.feedback == "Your final answer 1 is wrong. critic says: why wrong"
    right = fb.review(task, f"The answer is {p.final}.")
    assert right.feedback.endswith("critic says: right") and right.metadata["correct"]
    rambling = fb.review(task, "Let me think. " * 200 + f"The answer is {p.final}.")
    assert rambling.metadata["sloppy"] and rambling.feedback.endswith("elegance")
    plain = gsm8k.GSM8KFeedback(None).review(task, "The answer is 1.")
    assert "A correct solution:" in plain.feedback  # no critic: the reference solution


def test_pipeline_runs_every_stage_and_resumes(tmp_path):
    tok = build_tiny_tokenizer()
    loads = []

    def load(_name):
        loads.append(1)
        return build_tiny_model(len(tok)), tok

    cfg = gsm8k.GSM8KConfig(eval_limit=3, train_n=4, max_new_tokens=6, batch_size=4,
                            grpo_steps=1, grpo_prompts_per_step=2, grpo_num_generations=2)
    el = ELConfig(max_steps=1, batch_size=4, micro_batch_size=4, anchor_weight=0,
                  retention=False, progress=False)
    report = gsm8k.run("tiny", tmp_path, cfg, el, load=load)
    assert loads == [1, 1]  # base model once, a fresh copy for GRPO
    for name in ("eval_base", "attempts", "experiences", "el", "grpo"):
        assert (tmp_path / "stages" / f"{name}.json").is_file()
    assert report["base"]["n"] == 3 and report["el"]["n"] == 3 and report["grpo"]["n"] == 3
    assert report["grpo_train"]["steps"] == 1
    exps = json.loads((tmp_path / "stages" / "experiences.json").read_text())
    assert len(exps) == 4 and all("correct" in e["metadata"] for e in exps)
    md = (tmp_path / "report.md").read_text()
    assert "30.4%" in md and "39.8%" in md and "41.6%" in md
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert (tmp_path / "el_adapter" / "adapter_config.json").is_file()

    loads.clear()
    again = gsm8k.run("tiny", tmp_path, cfg, el, load=load)
    assert loads == [] and again["base"] == report["base"]
