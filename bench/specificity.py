"""Single-experience EL on MMLU questions the model gets wrong, per specificity setting.

For each question and feedback kind (``letter``: the true letter; ``explanation``: the right option's
content without its letter; ``control``: a wrong letter presented as correct) one EL update from the
base model on that one experience, then: P(target) before/after on the question, the teacher's
P(target) (in-context, before training), transfer = gain / in-context gap, and retention on
``--retention-n`` MMLU questions from other subjects (accuracy change, mean KL). Every update is a
resumable record under ``--out``/records/, so a killed run continues where it stopped.

    python bench/specificity.py --model default --n 50 --retention-n 200 \
        --settings default,no_controls,anchors_only,rotation_only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SETTINGS = {
    "default": {},
    "no_controls": {"augment": "none", "anchor_weight": 0.0},
    "anchors_only": {"augment": "none"},
    "rotation_only": {"anchor_weight": 0.0},
}
KINDS = ("letter", "explanation", "control")


def feedback(kind: str, q, wrong: int) -> tuple[str, int]:  # noqa: ANN001
    if kind == "letter":
        return f"The correct answer is {q.letter}.", q.answer
    if kind == "explanation":
        return f"That is not right. The correct answer is \"{q.choices[q.answer]}\".", q.answer
    return f"The correct answer is {'ABCD'[wrong]}.", wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--retention-n", type=int, default=200)
    ap.add_argument("--settings", default="default")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "specificity"))
    ap.add_argument("--summarize-only", action="store_true",
                    help="write the report from the records so far (e.g. after stopping a run)")
    args = ap.parse_args()
    if args.summarize_only:
        summarize(Path(args.out), args)
        return

    import torch

    from experiential.config import ELConfig
    from experiential.context import teacher_messages
    from experiential.experience import Experience
    from experiential.models import load_model
    from experiential.retention import probe_logprobs
    from experiential.scoring import option_probs
    from experiential.tasks.data import load_mmlu
    from experiential.tasks.mc import format_mc, sample_questions
    from experiential.tasks.mmlu_shift import control_letter, questions_it_gets_wrong
    from experiential.trainer import ExperientialTrainer

    out = Path(args.out)
    (out / "records").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    pool = [q for q in load_mmlu("test", data_dir=args.data_dir) if len(q.choices) == 4]
    chosen, p_before = questions_it_gets_wrong(model, tok, pool, args.n, args.seed)
    used = {q.subject for q in chosen}
    probes = sample_questions(pool, args.retention_n, args.seed + 1, exclude_subjects=used)
    baseline = probe_logprobs(model, tok, probes)
    anchors = None
    for setting in args.settings.split(","):
        el = ELConfig(progress=False).replace(**SETTINGS[setting])
        for q, p_s in zip(chosen, p_before):
            attempt = int(p_s.argmax())
            wrong = control_letter(q.id, q.answer, attempt)
            for kind in args.kinds.split(","):
                rec_path = out / "records" / f"{setting}__{kind}__{q.id.replace('/', '_')}.json"
                if rec_path.is_file():
                    continue
                fb, target = feedback(kind, q, wrong)
                exp = Experience(format_mc(q), f"The answer is {'ABCD'[attempt]}.", fb)
                p_teacher = option_probs(model, tok, [teacher_messages(exp, el.context_design)])[0]
                trainer = ExperientialTrainer(model, tok, el, probes=probes,
                                              probe_baseline=baseline,
                                              anchor_pairs=anchors if el.anchor_weight else [])
                if el.anchor_weight and anchors is None:
                    anchors = trainer.anchor_pairs()
                t0 = time.time()
                res = trainer.learn([exp])
                p_after = option_probs(trainer.model, tok,
                                       [[{"role": "user", "content": format_mc(q)}]])[0]
                trainer.model.unload()
                gap = float(p_teacher[target] - p_s[target])
                gain = float(p_after[target] - p_s[target])
                rec = {"setting": setting, "kind": kind, "id": q.id, "target": target,
                       "p_before": float(p_s[target]), "p_teacher": float(p_teacher[target]),
                       "p_after": float(p_after[target]), "gap": gap, "gain": gain,
                       "transfer": gain / gap if abs(gap) > 1e-6 else None,
                       "retention": res.retention.to_dict(), "steps": res.steps,
                       "seconds": time.time() - t0}
                rec_path.write_text(json.dumps(rec, indent=1))
                print(f"{setting:>13} {kind:>11} {q.id:<40} P {rec['p_before']:.2f} -> "
                      f"{rec['p_after']:.2f} (teacher {rec['p_teacher']:.2f}), retention "
                      f"{res.retention.accuracy_change * 100:+.1f} pts KL "
                      f"{res.retention.mean_kl:.3f}, {rec['seconds']:.0f}s", flush=True)
    summarize(out, args)


def summarize(out: Path, args: argparse.Namespace) -> None:
    recs = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    table = {}
    for r in recs:
        table.setdefault((r["setting"], r["kind"]), []).append(r)
    rows = []
    for (setting, kind), rs in sorted(table.items()):
        mean = lambda k: statistics.mean(x[k] for x in rs)  # noqa: E731
        gaps = sum(x["gap"] for x in rs)
        rows.append({
            "setting": setting, "kind": kind, "n": len(rs), "p_before": mean("p_before"),
            "p_teacher": mean("p_teacher"), "p_after": mean("p_after"),
            # pooled transfer: total gain over total gap (per-question ratios explode on tiny gaps)
            "transfer": sum(x["gain"] for x in rs) / gaps if abs(gaps) > 1e-6 else None,
            "retention_acc_change_pts": 100 * statistics.mean(
                x["retention"]["accuracy_change"] for x in rs),
            "retention_worst_acc_change_pts": 100 * min(
                x["retention"]["accuracy_change"] for x in rs),
            "retention_kl": statistics.mean(x["retention"]["mean_kl"] for x in rs),
            "retention_n": rs[0]["retention"]["n"], "seconds": mean("seconds")})
    command = (f"python bench/specificity.py --model {args.model} --n {args.n} --retention-n "
               f"{args.retention_n} --settings {args.settings} --kinds {args.kinds} "
               f"--seed {args.seed}")
    (out.parent / (out.name + ".json")).write_text(json.dumps(
        {"model": args.model, "command": command, "rows": rows, "records": recs}, indent=1))
    lines = ["# Single-experience EL: transfer and retention per specificity setting\n",
             f"Model `{args.model}`, MMLU test questions it gets wrong (seed {args.seed}); one EL "
             f"update per question and feedback kind from the base model. Retention on "
             f"{rows[0]['retention_n'] if rows else '?'} MMLU questions from other subjects. "
             f"Transfer = total gain / total in-context gap. Command: `{command}`.\n",
             "| setting | feedback | n | P(target) before -> after | teacher | transfer | "
             "retention: accuracy change (mean / worst), mean KL | s/update |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr = f"{r['transfer']:.2f}" if r["transfer"] is not None else "-"
        lines.append(f"| {r['setting']} | {r['kind']} | {r['n']} | {r['p_before']:.3f} -> "
                     f"{r['p_after']:.3f} | {r['p_teacher']:.3f} | {tr} | "
                     f"{r['retention_acc_change_pts']:+.2f} / "
                     f"{r['retention_worst_acc_change_pts']:+.1f} pts, "
                     f"{r['retention_kl']:.4f} | {r['seconds']:.0f} |")
    (out.parent / (out.name + ".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out.parent / (out.name + ".png"), rows)


def plot(path: Path, rows: list[dict]) -> None:
    from experiential.tasks.stages import bar_plot

    labels = [f"{r['setting']}\n{r['kind']}" for r in rows]
    bar_plot(path, "Single-experience EL: P(target) and retention", labels,
             {"P(target) before": [r["p_before"] for r in rows],
              "teacher (in context)": [r["p_teacher"] for r in rows],
              "P(target) after": [r["p_after"] for r in rows],
              "retention KL": [r["retention_kl"] for r in rows]}, "probability / nats")


if __name__ == "__main__":
    main()
