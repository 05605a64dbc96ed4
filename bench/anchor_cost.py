"""Time per EL update by replay-anchor set, measured in one process.

The specificity benchmark's records put the built-in exam anchors (208 questions + 6 chat
prompts) at about 1.7 times the built-in everyday set's seconds per update, but from runs on
different days. Here the same letter-feedback experience is learned with each anchor set in one
process, one set after the other, each update from the base model with a fresh trainer (a *cold*
teacher cache: every anchor's frozen-model logits computed once, when first drawn), then once
more with the same trainer (*warm*: a long-lived trainer, as in ``experiential serve``, has the
anchors' logits cached from earlier updates). Speeds are seconds per optimizer step, as a ratio
to the first set's in the same run.

    python bench/anchor_cost.py --model default --steps 8 --anchors builtin,exam
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ANCHOR_PROMPTS = {"builtin": None, "exam": "exam"}  # name -> ELConfig.anchor_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per update")
    ap.add_argument("--anchors", default="builtin,exam")
    ap.add_argument("--question", default="high_school_physics/71",
                    help="MMLU test question learned (with its true letter as feedback)")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "anchor_cost"))
    args = ap.parse_args()

    import torch

    from experiential import ELConfig, Experience, ExperientialTrainer
    from experiential.models import load_model
    from experiential.tasks.data import load_mmlu
    from experiential.tasks.mc import format_mc

    names = args.anchors.split(",")
    unknown = set(names) - set(ANCHOR_PROMPTS)
    if unknown:
        raise SystemExit(f"--anchors: unknown {sorted(unknown)}; known: {sorted(ANCHOR_PROMPTS)}")
    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    q = next((x for x in load_mmlu("test", data_dir=args.data_dir) if x.id == args.question), None)
    if q is None:
        raise SystemExit(f"--question {args.question}: not an MMLU test question id")
    exp = Experience(format_mc(q), "The answer is A.", f"The correct answer is {q.letter}.")

    rows = []
    for name in names:
        # the stop rule off and no retention scoring: every update runs --steps steps, and the
        # seconds are the update's alone
        cfg = ELConfig(progress=False, retention=False, decline_letter_led=False, stop_kl=None,
                       max_steps=args.steps, anchor_prompts=ANCHOR_PROMPTS[name])
        trainer = ExperientialTrainer(model, tok, cfg)
        t0 = time.perf_counter()
        anchors = trainer.anchor_pairs()  # built once per trainer, before its first update
        build = time.perf_counter() - t0
        prompt_tokens = statistics.mean(len(p.student.context) for p in anchors)
        for phase in ("cold", "warm"):
            stamps: list[float] = []
            start = time.perf_counter()
            trainer.learn([exp], callback=lambda state, m: stamps.append(time.perf_counter()))
            step_s = [b - a for a, b in zip([start, *stamps], stamps)]
            rows.append({"anchors": name, "phase": phase, "n_anchors": len(anchors),
                         "anchor_prompt_tokens": prompt_tokens, "build_seconds": build,
                         "steps": len(step_s), "seconds": sum(step_s),
                         "seconds_per_step": sum(step_s) / len(step_s),
                         "step_seconds": [round(s, 2) for s in step_s]})
            print({k: v for k, v in rows[-1].items() if k != "step_seconds"}, flush=True)
        model = trainer.model.unload()
    for r in rows:
        base = next(b for b in rows if b["anchors"] == names[0] and b["phase"] == r["phase"])
        r["ratio_vs_first"] = r["seconds_per_step"] / base["seconds_per_step"]

    command = (f"python bench/anchor_cost.py --model {args.model} --steps {args.steps} "
               f"--anchors {args.anchors} --question {args.question}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"model": args.model, "command": command, "threads": torch.get_num_threads(),
         "question": q.id, "rows": rows}, indent=1))
    lines = ["# Time per EL update by replay-anchor set\n",
             f"Model `{args.model}`, fp32, CPU ({torch.get_num_threads()} threads), one letter "
             f"experience (MMLU {q.id}), {args.steps} optimizer steps per update, {cfg.anchor_per_step} anchors per "
             f"step, stop rule off, no retention scoring; one process. Cold: a fresh trainer "
             f"(each anchor's frozen-model logits computed when first drawn); warm: a second "
             f"update with the same trainer. Command: `{command}`.\n",
             "| anchors | phase | anchor pairs | mean anchor prompt tokens | build s | s/step "
             f"| ratio vs {names[0]} |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['anchors']} | {r['phase']} | {r['n_anchors']} | "
              f"{r['anchor_prompt_tokens']:.0f} | {r['build_seconds']:.1f} | "
              f"{r['seconds_per_step']:.2f} | {r['ratio_vs_first']:.2f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
