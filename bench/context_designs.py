"""In-context gap per experience-context design and feedback kind (issue: specificity, item 3).

For MMLU questions the model gets wrong, the student (question only) and the teacher (question +
experience, written with each design) score " A".." D" after "The answer is". The gap is
P_teacher(target) - P_student(target), where the target is what the feedback points to: the true
answer for ``letter`` and ``content`` feedback, the claimed wrong letter for the ``control``.
The gap is the ceiling on what self-distillation can transfer, so this table chooses the default
design. Forward passes only: no training.

    python bench/context_designs.py --model default --n 50 --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FEEDBACK_KINDS = {
    # the true letter
    "letter": lambda q, wrong: f"The correct answer is {q.letter}.",
    # the right option's content, no letter (an explanation-like hint without the letter)
    "content": lambda q, wrong: (f"That is not right. The correct answer is "
                                 f"\"{q.choices[q.answer]}\"."),
    # a wrong letter presented as correct
    "control": lambda q, wrong: f"The correct answer is {'ABCD'[wrong]}.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=50, help="questions the model gets wrong")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir")
    ap.add_argument("--reflect", action="store_true",
                    help="also score hint+reflect: the model first reflects on the feedback")
    ap.add_argument("--reflect-tokens", type=int, default=128)
    ap.add_argument("--explanations", help="JSON {question id: critic explanation}: adds the "
                    "'critic' kind for those questions (e.g. reports/mmlu/stages/explanations.json)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "context_designs"))
    args = ap.parse_args()

    import torch

    from experiential.context import all_designs, teacher_messages
    from experiential.experience import Experience
    from experiential.models import load_model
    from experiential.scoring import option_probs
    from experiential.tasks.data import load_mmlu
    from experiential.tasks.mc import format_mc
    from experiential.reflection import reflect
    from experiential.tasks.mmlu_shift import (control_letter, questions_it_gets_wrong,
                                               redact_letters)

    t0 = time.time()
    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    pool = [q for q in load_mmlu("test", data_dir=args.data_dir) if len(q.choices) == 4]
    chosen, student = questions_it_gets_wrong(model, tok, pool, args.n, args.seed)
    explanations = (json.loads(Path(args.explanations).read_text(encoding="utf-8"))
                    if args.explanations else {})
    items = []  # (question, student probs, kind, target, experience)
    for q, p_s in zip(chosen, student):
        attempt_letter = int(p_s.argmax())
        wrong = control_letter(q.id, q.answer, attempt_letter)
        kinds = dict(FEEDBACK_KINDS)
        if q.id in explanations:  # a real critic's explanation, letters redacted
            kinds["critic"] = lambda q, wrong: redact_letters(explanations[q.id], q)
        for kind, make in kinds.items():
            target = q.answer if kind != "control" else wrong
            exp = Experience(format_mc(q), f"The answer is {'ABCD'[attempt_letter]}.",
                             make(q, wrong))
            items.append((q, p_s, kind, target, exp))
    designs = all_designs()
    reflected = {}
    if args.reflect:
        done = reflect(model, tok, [it[4] for it in items], max_new_tokens=args.reflect_tokens)
        reflected = {id(it[4]): r for it, r in zip(items, done)}
    rows = []
    for q, p_s, kind, target, exp in items:
        views = [teacher_messages(exp, d) for d in designs]
        names = list(designs)
        if args.reflect:
            views.append(teacher_messages(reflected[id(exp)], "hint"))
            names.append("hint+reflect")
        p_t = option_probs(model, tok, views)
        for d, pt in zip(names, p_t):
            rows.append({"id": q.id, "subject": q.subject, "kind": kind, "design": d,
                         "target": target, "p_student": float(p_s[target]),
                         "p_teacher": float(pt[target]),
                         "teacher_argmax_is_target": int(pt.argmax()) == target,
                         **({"reflection": reflected[id(exp)].metadata.get("reflection")}
                            if d == "hint+reflect" else {})})
    table: dict[str, dict[str, dict[str, float]]] = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for d in dict.fromkeys(r["design"] for r in rows):
            sel = [r for r in rows if r["kind"] == kind and r["design"] == d]
            table.setdefault(kind, {})[d] = {
                "p_student": sum(r["p_student"] for r in sel) / len(sel),
                "p_teacher": sum(r["p_teacher"] for r in sel) / len(sel),
                "gap": sum(r["p_teacher"] - r["p_student"] for r in sel) / len(sel),
                "teacher_picks_target": sum(r["teacher_argmax_is_target"] for r in sel) / len(sel),
                "n": len(sel)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "n_questions": len(chosen), "seed": args.seed,
              "seconds": time.time() - t0, "command": "python bench/context_designs.py "
              f"--model {args.model} --n {args.n} --seed {args.seed}"
              + (f" --reflect --reflect-tokens {args.reflect_tokens}" if args.reflect else "")
              + (f" --explanations {args.explanations}" if args.explanations else ""),
              "table": table,
              "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# In-context gap by design and feedback kind\n",
             f"Model `{args.model}`, {len(chosen)} MMLU test questions it gets wrong (seed "
             f"{args.seed}), options scored after \"The answer is\". Command: "
             f"`{result['command']}`.\n",
             "| feedback | design | n | P_student(target) | P_teacher(target) | gap | teacher picks target |",
             "|---|---|---|---|---|---|---|"]
    for kind, per in table.items():
        for d, v in sorted(per.items(), key=lambda kv: -kv[1]["gap"]):
            lines.append(f"| {kind} | {d} | {v['n']} | {v['p_student']:.3f} | {v['p_teacher']:.3f} | "
                         f"{v['gap']:+.3f} | {v['teacher_picks_target']:.0%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    del torch


if __name__ == "__main__":
    main()
