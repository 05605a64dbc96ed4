"""Which answer letter an EL update's teacher favours regardless of content, before any update.

Updates from explanation-only feedback (and the wrong-letter control) move unrelated questions'
letter mass toward B although the option rotations put the question's content under every letter
(``reports/specificity.md``, section 1). If the teacher, reading "That is not right", spreads the
mass it takes from the attempt unevenly over the letters, the distilled distribution carries a
letter preference that no rotation cancels. This scores the teacher's and the student's
distributions over " A".." D" after "The answer is" on every pair an update distils (the question
and its rotations, as ``ELConfig()`` builds them), on the base model, and reports per letter the
mean teacher-minus-student mass: over all pairs, and over the letters that are neither the pair's
target nor its attempt (where only a preference for the letter itself can put mass).
It reads the questions' attempts and feedback from the specificity benchmark's records.

    python bench/letter_prior.py --kinds explanation,control,letter
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RECORDS = Path(__file__).parent / "results" / "specificity" / "records"
OUT = Path(__file__).parent / "results" / "letter_prior.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kinds", default="explanation,control,letter")
    ap.add_argument("--setting", default="default", help="whose records to read")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    from experiential.augment import augment
    from experiential.config import ELConfig
    from experiential.context import student_messages, teacher_messages
    from experiential.experience import Experience
    from experiential.models import load_model
    from experiential.scoring import option_probs
    from experiential.tasks.data import load_mmlu
    from experiential.tasks.mc import format_mc

    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    questions = {q.id: q for q in load_mmlu("test", data_dir=args.data_dir)}
    cfg = ELConfig(progress=False)
    summary: dict[str, dict] = {}
    for kind in args.kinds.split(","):
        records = [json.loads(p.read_text())
                   for p in sorted(RECORDS.glob(f"{args.setting}__{kind}__*.json"))]
        all_diff, residual = [[0.0] * 4 for _ in range(2)]
        n_pairs, n_residual = 0, [0] * 4
        for r in records:
            q = questions[r["id"]]
            exp = Experience(format_mc(q), f"The answer is {'ABCD'[r['attempt']]}.", r["feedback"],
                             id=r["id"])
            variants = augment([exp], "rotate_options", cfg.augment_copies)
            s = option_probs(model, tok, [student_messages(v) for v in variants])
            t = option_probs(model, tok, [teacher_messages(v, cfg.context_design)
                                          for v in variants])
            for v, ps, pt in zip(variants, s, t):
                shift = v.metadata.get("rotation", 0)  # option i moved to (i + shift) % 4
                target, attempt = (r["target"] + shift) % 4, (r["attempt"] + shift) % 4
                n_pairs += 1
                for letter in range(4):
                    d = float(pt[letter] - ps[letter])
                    all_diff[letter] += d
                    if letter not in (target, attempt):
                        residual[letter] += d
                        n_residual[letter] += 1
        summary[kind] = {
            "questions": len(records), "pairs": n_pairs,
            "teacher_minus_student_all_pairs": [round(x / max(n_pairs, 1), 4) for x in all_diff],
            "teacher_minus_student_other_letters": [round(x / max(n, 1), 4)
                                                    for x, n in zip(residual, n_residual)],
            "other_letter_counts": n_residual}
        print(kind, json.dumps(summary[kind]), flush=True)
    out = {"model": args.model, "setting": args.setting, "letters": "ABCD", "kinds": summary,
           "command": "python bench/letter_prior.py --kinds " + args.kinds}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
