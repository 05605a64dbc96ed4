"""End-to-end demo: the model answers, gets feedback, learns from it, and answers again.

The question is one the embedded Qwen2.5-Coder-0.5B-Instruct gets wrong (it favours C, tantalum).
The feedback is a reviewer's text; nothing else tells the model the answer. The demo prints what
changed on that question, on an unrelated control question, and on the retention probe set.
"""

from __future__ import annotations

import os
from pathlib import Path

QUESTION = ("Which element has atomic number 74?\nA. Molybdenum\nB. Tungsten\nC. Tantalum\n"
            "D. Rhenium\nAnswer with the letter of the correct option.")
FEEDBACK = "Atomic number 74 is tungsten (W); tantalum is 73. The correct answer is B."
CONTROL = ("What is the capital of France?\nA. London\nB. Berlin\nC. Paris\nD. Madrid\n"
           "Answer with the letter of the correct option.")


def run_demo(model_name: str = "default", *, steps: int | None = None, seed: int = 0,
             out: str | os.PathLike = "runs/demo") -> int:
    import torch

    from .config import ELConfig
    from .experience import Experience
    from .generation import generate
    from .models import load_model
    from .scoring import option_probs
    from .trainer import ExperientialTrainer

    torch.manual_seed(seed)
    print(f"loading {model_name} ...", flush=True)
    model, tok = load_model(model_name)
    msgs = [{"role": "user", "content": QUESTION}]
    control = [{"role": "user", "content": CONTROL}]

    def show(label: str, m: object) -> None:
        answer = generate(m, tok, [msgs], max_new_tokens=24)[0][0].strip()
        p = option_probs(m, tok, [msgs, control])
        print(f"\n[{label}] answer: {answer!r}")
        print(f"[{label}] P(A/B/C/D) on the question: "
              + " ".join(f"{l}={float(x):.2f}" for l, x in zip("ABCD", p[0])))
        print(f"[{label}] P(A/B/C/D) on an unrelated control (Paris is C): "
              + " ".join(f"{l}={float(x):.2f}" for l, x in zip("ABCD", p[1])))

    print("\n=== question ===\n" + QUESTION)
    show("before", model)
    attempt = generate(model, tok, [msgs], max_new_tokens=24, response_prefix="The answer is")[0][0]
    exp = Experience(QUESTION, attempt.strip(), FEEDBACK, {"target": "B"})
    print(f"\n=== experience ===\nattempt:  {exp.attempt!r}\nfeedback: {exp.feedback!r}")
    print("\n=== learning (self-distillation into a LoRA adapter) ===", flush=True)
    cfg = ELConfig(seed=seed)
    trainer = ExperientialTrainer(model, tok, cfg.replace(max_steps=steps) if steps else cfg)
    result = trainer.learn([exp])
    for g in result.gaps_before:
        print("in-context gap: " + g.describe())
    show("after", trainer.model)
    path = trainer.save(Path(out))
    print("\n=== summary ===\n" + result.summary())
    print(f"\nscore it yourself: experiential score --adapter {path} \"$(cat <<'EOF'\n"
          f"{QUESTION}\nEOF\n)\"")
    return 0
