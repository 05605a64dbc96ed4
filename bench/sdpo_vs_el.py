"""EL against TRL's SDPOTrainer (our closest peer) on the MMLU letter-feedback experiment.

The same MMLU questions the model gets wrong, the same feedback text, the same LoRA shape, learning
rate and number of optimizer steps, and the same retention probes as ``experiential repro mmlu``
(``tasks/mmlu_shift.py``), so the SDPO row sits beside a finished EL stage of that run (read with
``--el-stage``; the question ids are checked to match).

What differs is the method, as each ships: SDPO (``trl.experimental.sdpo``, TRL 1.16) samples
``--num-generations`` answers per question on policy, scores them with a reward (here 1 if the answer
letter is the target, which the letter feedback gives away anyway), and distils a teacher prompted
with the feedback (and any successful rollout) into the student on those samples; its defaults are
kept except the ones named below. EL distils the frozen model shown the feedback as a hint into the
student, on the experience's own attempt, with option rotation and replay anchors.

    python bench/sdpo_vs_el.py --model default --n 8 --steps 16 \
        --el-stage reports/mmlu/stages/letter.json
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

_LETTER = re.compile(r"answer is:?\s*\**\(?([A-D])\b|^\s*\**\(?([A-D])[).:\s*]|^\s*([A-D])$")


def answer_letter(text: str) -> str | None:
    """The option letter a completion commits to ("The answer is B.", "B. Paris", "(C)")."""
    m = _LETTER.search(text.strip())
    return next((g for g in m.groups() if g), None) if m else None


def rewards(history: list[dict[str, Any]]) -> list[float]:
    """Mean reward per logged step (SDPOTrainer logs it as ``self_distillation/reward_mean``)."""
    key = "self_distillation/reward_mean"
    return [float(h[key]) for h in history if key in h]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=24)
    ap.add_argument("--kind", default="letter", choices=["letter", "control"])
    ap.add_argument("--retention-n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--el-stage", help="a finished repro-mmlu stage JSON on the same questions")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sdpo_vs_el"))
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from experiential.config import ELConfig
    from experiential.models import load_model
    from experiential.retention import compare, probe_logprobs
    from experiential.scoring import option_probs
    from experiential.tasks.data import load_mmlu
    from experiential.tasks.mc import LETTERS, format_mc, sample_questions
    from experiential.tasks.mmlu_shift import (control_letter, feedback_for,
                                               questions_it_gets_wrong)

    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    pool = [q for q in load_mmlu("test", data_dir=args.data_dir) if len(q.choices) == 4]
    chosen, p_before = questions_it_gets_wrong(model, tok, pool, args.n, args.seed)
    used = {q.subject for q in chosen}
    probes = [q for q in sample_questions(load_mmlu("test", data_dir=args.data_dir),
                                          args.retention_n, args.seed + 1, exclude_subjects=used)
              if len(q.choices) == 4]
    el_stage = None
    if args.el_stage:
        el_stage = json.loads(Path(args.el_stage).read_text())
        ids = [r["id"] for r in el_stage["per_question"]]
        if ids != [q.id for q in chosen]:
            raise SystemExit(f"{args.el_stage} is on other questions ({ids[:3]}...) than this run "
                             f"({[q.id for q in chosen][:3]}...): use the same --n and --seed")
    rows, targets = [], []
    for q, p in zip(chosen, p_before):
        wrong = control_letter(q.id, q.answer, int(p.argmax()))
        fb, target = feedback_for(args.kind, q, wrong, "")
        rows.append({"prompt": [{"role": "user", "content": format_mc(q)}],
                     "privileged_context": fb, "target": LETTERS[target]})
        targets.append(target)
    baseline = probe_logprobs(model, tok, probes)

    def letter_reward(completions: list[Any], target: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(answer_letter(t) == g) for t, g in zip(texts, target)]

    el = ELConfig()  # the LoRA shape and learning rate EL uses by default
    changed = dict(per_device_train_batch_size=len(rows) * args.num_generations,
                   num_generations=args.num_generations,
                   max_completion_length=args.max_completion_length,
                   learning_rate=el.learning_rate, max_steps=args.steps,
                   include_environment_feedback=True, seed=args.seed, temperature=1.0)
    tmp = tempfile.mkdtemp(prefix="sdpo_")
    cfg = SDPOConfig(output_dir=tmp, logging_steps=1, save_strategy="no", report_to="none",
                     bf16=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
                     **changed)
    lora = LoraConfig(r=el.lora_r, lora_alpha=el.lora_alpha, lora_dropout=el.lora_dropout,
                      target_modules=el.lora_target_modules, task_type="CAUSAL_LM")
    start = time.perf_counter()
    trainer = SDPOTrainer(model=model, reward_funcs=letter_reward, args=cfg,
                          train_dataset=Dataset.from_list(rows), processing_class=tok,
                          peft_config=lora)
    trainer.train()
    seconds = time.perf_counter() - start
    trained = trainer.model.eval()
    p_after = option_probs(trained, tok, [r["prompt"] for r in rows])
    retention = compare(baseline, probe_logprobs(trained, tok, probes), probes)
    idx, tgt = torch.arange(len(rows)), torch.tensor(targets)
    before_t, after_t = torch.stack(p_before)[idx, tgt], p_after[idx, tgt]
    history = trainer.state.log_history
    sdpo = {"mean_p_target_before": float(before_t.mean()),
            "mean_p_target_after": float(after_t.mean()),
            "target_is_argmax_after": float((p_after.argmax(-1) == tgt).float().mean()),
            "retention": retention.to_dict(), "steps": args.steps, "seconds": seconds,
            "rewards": rewards(history),
            "sdpo_config_changed_from_defaults": changed,
            "per_question": [{"id": q.id, "target": t, "before": float(b), "after": float(a)}
                             for q, t, b, a in zip(chosen, targets, before_t, after_t)]}
    command = (f"python bench/sdpo_vs_el.py --model {args.model} --n {args.n} --steps "
               f"{args.steps} --num-generations {args.num_generations} --kind {args.kind}"
               + (f" --el-stage {args.el_stage}" if args.el_stage else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "kind": args.kind, "n_questions": len(chosen),
              "seed": args.seed, "command": command, "sdpo": sdpo, "el": el_stage,
              "log_history": history}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"# EL vs TRL SDPOTrainer: MMLU {args.kind} feedback\n",
             f"Model `{args.model}`, {len(chosen)} MMLU test questions it gets wrong (seed "
             f"{args.seed}), LoRA r={el.lora_r} all-linear, lr {el.learning_rate}, "
             f"{args.steps} optimizer steps each; retention on {retention.n} MMLU questions "
             f"from other subjects. Command: `{command}`.\n",
             "| method | P(target) before -> after | target is argmax after | retention: "
             "accuracy change, mean KL | wall clock |", "|---|---|---|---|---|"]
    for name, r in (("EL (experiential; the --el-stage run)", el_stage), ("TRL SDPOTrainer", sdpo)):
        if r:
            ret = r["retention"]
            lines.append(f"| {name} | {r['mean_p_target_before']:.3f} -> "
                         f"{r['mean_p_target_after']:.3f} | {r['target_is_argmax_after']:.0%} | "
                         f"{ret['accuracy_change'] * 100:+.1f} pts, {ret['mean_kl']:.3f} | "
                         f"{r['seconds']:.0f} s |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
