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

Per question it also splits the teacher-minus-student shift, averaged over the four rotations,
into the part that follows the option *content* (grouped by the option's text) and the part that
stays with the *letter* (grouped by letter), as ``ELConfig.decline_letter_led`` does inside an
update (``experiential.letter_prior.content_and_letter_shift``). No label is needed;
``--agreement`` reports, per kind, how many updates the rule would decline among those whose
teacher had no gap on the true answer and among the others, beside each update's retention
(from the records). Scored questions are kept in
``letter_prior_questions.jsonl``; a rerun scores only records not yet there.

    python bench/letter_prior.py --kinds explanation,control,letter
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
RECORDS = RESULTS / "specificity" / "records"
OUT = RESULTS / "letter_prior.json"
ROWS = RESULTS / "letter_prior_questions.jsonl"
NO_GAP = 0.05  # the report's "no gap": teacher minus student on the true answer below this


def score_question(model: Any, tok: Any, question: Any, record: dict, cfg: Any) -> dict:
    """The student's and the teacher's letter distributions on the question and its rotations."""
    from experiential.augment import augment
    from experiential.context import student_messages, teacher_messages
    from experiential.experience import Experience
    from experiential.scoring import option_probs
    from experiential.tasks.mc import format_mc

    exp = Experience(format_mc(question), f"The answer is {'ABCD'[record['attempt']]}.",
                     record["feedback"], id=record["id"])
    variants = augment([exp], "rotate_options", cfg.augment_copies)
    s = option_probs(model, tok, [student_messages(v) for v in variants])
    t = option_probs(model, tok, [teacher_messages(v, cfg.context_design) for v in variants])
    return {"id": record["id"], "target": record["target"], "attempt": record["attempt"],
            "rotations": [{"shift": v.metadata.get("rotation", 0),  # option i -> (i + shift) % 4
                           "student": [round(float(x), 6) for x in ps],
                           "teacher": [round(float(x), 6) for x in pt]}
                          for v, ps, pt in zip(variants, s, t)]}


def letter_means(rows: list[dict]) -> dict:
    """Teacher minus student mass per letter: over all pairs, and over the letters that are
    neither the pair's target nor its attempt."""
    all_diff, residual = [[0.0] * 4 for _ in range(2)]
    n_pairs, n_residual = 0, [0] * 4
    for row in rows:
        for rot in row["rotations"]:
            shift = rot["shift"]
            target, attempt = (row["target"] + shift) % 4, (row["attempt"] + shift) % 4
            n_pairs += 1
            for letter in range(4):
                d = rot["teacher"][letter] - rot["student"][letter]
                all_diff[letter] += d
                if letter not in (target, attempt):
                    residual[letter] += d
                    n_residual[letter] += 1
    return {"questions": len(rows), "pairs": n_pairs,
            "teacher_minus_student_all_pairs": [round(x / max(n_pairs, 1), 4) for x in all_diff],
            "teacher_minus_student_other_letters": [round(x / max(n, 1), 4)
                                                    for x, n in zip(residual, n_residual)],
            "other_letter_counts": n_residual}


def split_shift(row: dict) -> tuple[list[float], list[float]]:
    """Teacher minus student over the rotations, by option content (indexed by the option's
    letter in the original question) and by letter: the split ``decline_letter_led`` uses."""
    import torch

    from experiential.letter_prior import content_and_letter_shift

    rots = row["rotations"]
    content, letter = content_and_letter_shift(torch.tensor([r["teacher"] for r in rots]),
                                               torch.tensor([r["student"] for r in rots]),
                                               [r["shift"] for r in rots])
    return content.tolist(), letter.tolist()


def mean_se(xs: list[float]) -> str:
    if not xs:
        return "-"
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return f"{statistics.mean(xs):+.2f} ± {se:.2f} ({len(xs)})"


def agreement(rows: list[dict], records: dict[str, dict]) -> dict:
    """Per update: is the teacher's shift led by content or by a letter, against its gap on the
    true answer and its retention accuracy change (points)."""
    per = []
    for row in rows:
        r = records.get(row["id"])
        if r is None:
            continue
        content, letter = split_shift(row)
        c, l = max(range(4), key=content.__getitem__), max(range(4), key=letter.__getitem__)
        per.append({"id": row["id"], "gap": r["gap"], "no_gap": r["gap"] < NO_GAP,
                    "content_top": "ABCD"[c], "content_gain": round(content[c], 4),
                    "content_top_is_target": c == r["target"],
                    "letter_top": "ABCD"[l], "letter_gain": round(letter[l], 4),
                    "letter_led": letter[l] > content[c],
                    "retention_points": round(100 * r["retention"]["accuracy_change"], 2)})
    acc = {flag: [p["retention_points"] for p in per if p["letter_led"] == flag]
           for flag in (True, False)}
    return {
        "updates": len(per),
        "no_gap": sum(p["no_gap"] for p in per),
        "letter_led_among_no_gap": sum(p["letter_led"] and p["no_gap"] for p in per),
        "letter_led_among_gap": sum(p["letter_led"] and not p["no_gap"] for p in per),
        "content_top_is_target": sum(p["content_top_is_target"] for p in per),
        "content_top_is_target_among_gap": sum(p["content_top_is_target"]
                                               for p in per if not p["no_gap"]),
        "retention_letter_led": mean_se(acc[True]),
        "retention_content_led": mean_se(acc[False]),
        "retention_all": mean_se(acc[True] + acc[False]),
        "retention_if_letter_led_declined": (
            round(sum(acc[False]) / len(per), 2) if per else None),
        "per_update": per}


def library_decisions(model: Any, tok: Any, questions: dict, records: dict[str, dict],
                      cfg: Any) -> dict[str, bool]:
    """Per record, whether ``ELConfig(decline_letter_led=True)`` declines it inside an update
    (the split on the pairs the update distils, with the attempt as response)."""
    from experiential.augment import augment
    from experiential.experience import Experience
    from experiential.letter_prior import letter_splits
    from experiential.objectives import get_objective
    from experiential.objectives.base import TeacherModel
    from experiential.tasks.mc import format_mc

    teacher, objective, out = TeacherModel(model), get_objective(cfg.objective), {}
    for rid, r in records.items():
        exp = Experience(format_mc(questions[rid]), f"The answer is {'ABCD'[r['attempt']]}.",
                         r["feedback"], id=rid)
        variants = augment([exp], "rotate_options", cfg.augment_copies)
        pairs = objective.prepare(model, tok, variants, cfg)
        out[rid] = letter_splits(pairs, variants, tok, teacher, cfg.micro_batch_size)[rid].letter_led
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kinds", default="explanation,control,letter")
    ap.add_argument("--setting", default="no_decline",
                    help="whose records to read (no_decline: every update trained, the default "
                         "until decline_letter_led became the default)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--rows", default=str(ROWS), help="per-question scores, reused on a rerun")
    ap.add_argument("--agreement", action="store_true",
                    help="also report, per kind, whether content- or letter-led shifts separate "
                         "the updates without a gap (and their retention)")
    ap.add_argument("--check-library", action="store_true",
                    help="with --agreement: also run the library's decision on each record "
                         "and count where it differs from this script's")
    args = ap.parse_args()

    from experiential.config import ELConfig
    from experiential.models import load_model
    from experiential.tasks.data import load_mmlu

    rows_path = Path(args.rows)
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["setting"], row["kind"], row["id"])] = row
    cfg = ELConfig(progress=False)
    loaded: dict[str, Any] = {}

    def model_and_questions() -> tuple[Any, Any, dict]:
        """Loaded on first use: a rerun with every record already scored needs no model."""
        if not loaded:
            loaded["model"], loaded["tok"] = load_model(args.model, dtype="fp32", device="cpu")
            loaded["questions"] = {q.id: q for q in load_mmlu("test", data_dir=args.data_dir)}
        return loaded["model"], loaded["tok"], loaded["questions"]

    out_path = Path(args.out)
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    out.update({"model": args.model, "setting": args.setting, "letters": "ABCD"})
    out.setdefault("kinds", {})
    for kind in args.kinds.split(","):
        records = {r["id"]: r for r in (json.loads(p.read_text()) for p in
                                        sorted(RECORDS.glob(f"{args.setting}__{kind}__*.json")))}
        rows = []
        for rid, r in records.items():
            key = (args.setting, kind, rid)
            if key not in done:
                model, tok, questions = model_and_questions()
                row = {"setting": args.setting, "kind": kind} | score_question(
                    model, tok, questions[rid], r, cfg)
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done[key] = row
                print(kind, rid, "scored", flush=True)
            rows.append(done[key])
        out["kinds"][kind] = letter_means(rows)
        if args.agreement:
            out.setdefault("agreement", {})[kind] = agreement(rows, records)
            if args.check_library:
                lib = library_decisions(*model_and_questions(), records, cfg)
                here = {p["id"]: p["letter_led"]
                        for p in out["agreement"][kind]["per_update"]}
                out["agreement"][kind]["library_disagrees"] = sorted(
                    rid for rid in here if lib[rid] != here[rid])
            summary = {k: v for k, v in out["agreement"][kind].items() if k != "per_update"}
            print(kind, "agreement", json.dumps(summary), flush=True)
        print(kind, json.dumps(out["kinds"][kind]), flush=True)
    out["command"] = ("python bench/letter_prior.py --kinds " + ",".join(out["kinds"])
                      + (" --agreement" if "agreement" in out else ""))
    out_path.write_text(json.dumps(out, indent=1))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
