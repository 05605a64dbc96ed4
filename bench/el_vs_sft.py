"""Benchmark: one EL update step vs one plain LoRA SFT step, same model, same tokens, same run.

EL (``self_distill``) does a no-grad teacher forward on the experience context plus the student's
forward/backward; SFT does the student's forward/backward on the same prompt + attempt tokens.
``el-nocache`` recomputes the teacher every step; ``el`` caches the frozen teacher's logits (the
first, warm-up step fills the cache); ``el+anchor`` adds 4 replay anchors per step. Each
mode runs in its own subprocess so its peak RSS is its own. Prints a markdown table and writes
``bench/results/el_vs_sft.json``.

    python bench/el_vs_sft.py --model default --steps 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUESTION = ("Which element has atomic number 74?\nA. Molybdenum\nB. Tungsten\nC. Tantalum\n"
            "D. Rhenium\nAnswer with the letter of the correct option.")


def experiences(n: int):
    from experiential.experience import Experience

    return [Experience(QUESTION + f"\n(Item {i}.)", "The answer is C. Tantalum has atomic number "
                       "74 and is a hard, blue-grey transition metal.",
                       "Atomic number 74 is tungsten (W); tantalum is 73. The correct answer is B.",
                       id=f"e{i}") for i in range(n)]


def run_mode(mode: str, model_name: str, steps: int, batch: int) -> dict:
    import torch

    from experiential.config import ELConfig
    from experiential.models import load_model
    from experiential.trainer import ExperientialTrainer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tok = load_model(model_name, dtype="fp32", device="cpu")
    objective = "self_distill" if mode != "sft" else "sft"
    cfg = ELConfig(objective=objective, anchor_weight=1.0 if mode == "el+anchor" else 0.0,
                   teacher_cache_mb=0 if mode == "el-nocache" else 4096,
                   anchor_per_step=4, retention=False, stop_kl=None, progress=False,
                   batch_size=batch, micro_batch_size=batch, max_steps=1)
    trainer = ExperientialTrainer(model, tok, cfg)
    exps = experiences(batch)
    # SFT trains on the attempt tokens (no revision step) so both modes see identical tokens.
    from experiential.objectives.self_distill import make_pairs

    pairs = [p for e in exps for p in make_pairs(tok, e, [e.attempt], cfg)]
    anchors = trainer.anchor_pairs() if mode == "el+anchor" else []
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    from experiential.objectives.self_distill import distill_loss

    times = []
    trainer.model.train()
    for step in range(steps + 1):  # the first step is a warm-up
        t = time.perf_counter()
        loss, _ = trainer.objective.loss(trainer.model, pairs, cfg, trainer.teacher,
                                         tok.pad_token_id)
        loss.backward()
        if anchors:
            per_token, _ = distill_loss(trainer.model, anchors[:4], cfg, trainer.teacher,
                                        tok.pad_token_id)
            per_token.mean().backward()
        opt.step()
        opt.zero_grad()
        if step:
            times.append(time.perf_counter() - t)
    tokens = sum(len(p.student) for p in pairs)
    return {"mode": mode, "step_seconds": statistics.median(times), "steps": steps,
            "student_tokens_per_step": tokens,
            "tokens_per_second": tokens / statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "el_vs_sft.json"))
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.model, args.steps, args.batch)))
        return
    rows = []
    for mode in ("sft", "el-nocache", "el", "el+anchor"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--model", args.model,
                              "--steps", str(args.steps), "--batch", str(args.batch)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    sft = rows[0]["step_seconds"]
    for r in rows:
        r["ratio_vs_sft"] = r["step_seconds"] / sft
    result = {"model": args.model, "batch": args.batch, "rows": rows,
              "target": "EL <= 1.6x SFT"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"model {args.model}, batch {args.batch} experiences, median of {args.steps} steps\n")
    print("| mode | s/step | ratio vs SFT | student tokens/s | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['step_seconds']:.2f} | {r['ratio_vs_sft']:.2f}x | "
              f"{r['tokens_per_second']:.0f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
