"""Where on the response an EL update's divergence sits, before any update.

The specificity benchmark distils on the attempt "The answer is X." (five tokens) and its stop rule
reads the mean divergence over them. This scores, on the base model, the per-token divergence of
the student from the teacher (the configured one: forward KL over the vocabulary) for chosen
benchmark questions, with the explanation feedback as the benchmark words it and reworded (and the
letter feedback, for comparison), plus the teacher's and student's P(true letter) at the letter
position (renormalised over " A".." D"), and the teacher's top tokens where the divergence is
largest.
It reads the questions' attempts from the benchmark's records, so run that first.

    python bench/response_divergence.py college_chemistry/20 high_school_statistics/203
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WORDINGS = {"benchmark": 'That is not right. The correct answer is "{text}".',
            "reworded": 'That is not right. It is "{text}".',
            "letter": "The correct answer is {letter}."}  # the benchmark's letter feedback
RECORDS = Path(__file__).parent / "results" / "specificity" / "records"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("ids", nargs="+", help="MMLU test ids with default explanation records")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                         "response_divergence.json"))
    args = ap.parse_args()

    import torch

    from experiential.config import ELConfig
    from experiential.experience import Experience
    from experiential.models import load_model
    from experiential.objectives.base import TeacherModel, student_batch
    from experiential.objectives.divergence import token_divergence
    from experiential.objectives.self_distill import make_pairs
    from experiential.scoring import DEFAULT_PREFIX, LETTER_OPTIONS, split_options
    from experiential.tasks.data import load_mmlu
    from experiential.tasks.mc import format_mc
    from experiential.tokens import response_logits

    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    questions = {q.id: q for q in load_mmlu("test", data_dir=args.data_dir)}
    cfg = ELConfig(progress=False)
    # the letters as they follow "The answer is" (checked to extend it token for token)
    letters = [ids[0] for ids in split_options(tok, DEFAULT_PREFIX, LETTER_OPTIONS)[1]]
    rows = []
    for qid in args.ids:
        record = RECORDS / f"default__explanation__{qid.replace('/', '_')}.json"
        if qid not in questions or not record.is_file():
            raise SystemExit(f"{qid}: no such MMLU test question or no record at {record}")
        q, attempt = questions[qid], json.loads(record.read_text())["attempt"]
        for name, wording in WORDINGS.items():
            exp = Experience(format_mc(q), f"The answer is {'ABCD'[attempt]}.",
                             wording.format(text=q.choices[q.answer], letter=q.letter))
            pair = make_pairs(tok, exp, [exp.attempt], cfg)[0]
            with torch.no_grad():
                s = response_logits(model, student_batch([pair], tok.pad_token_id, "cpu"))
                t = TeacherModel(model).pair_logits([pair], tok.pad_token_id, "cpu")
                per_token = token_divergence(s, t, cfg)
            tokens = [tok.decode([i]) for i in pair.student.response]
            at = next(i for i, x in enumerate(pair.student.response) if x in letters)
            worst = int(per_token.argmax())  # what the teacher wants where it differs most
            top = t[worst].softmax(-1).topk(3)
            r = {"id": qid, "wording": name, "feedback": exp.feedback, "tokens": tokens,
                 "divergence": [round(float(v), 4) for v in per_token],
                 "mean": round(float(per_token.mean()), 4),
                 "p_true_student": round(float(s[at, letters].softmax(-1)[q.answer]), 4),
                 "p_true_teacher": round(float(t[at, letters].softmax(-1)[q.answer]), 4),
                 "teacher_top_where_most": {
                     "token": tokens[worst], "top": [[tok.decode([int(i)]), round(float(p), 4)]
                                                     for p, i in zip(top.values, top.indices)]}}
            rows.append(r)
            print(f"{qid:<30} {name:<9} mean {r['mean']:.2f}  " +
                  "  ".join(f"{x!r} {v:.2f}" for x, v in zip(tokens, r["divergence"])) +
                  f"  | P(true) student {r['p_true_student']:.2f} teacher "
                  f"{r['p_true_teacher']:.2f}; teacher instead of "
                  f"{r['teacher_top_where_most']['token']!r}: " +
                  ", ".join(f"{x!r} {p:.2f}" for x, p in r["teacher_top_where_most"]["top"]),
                  flush=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
