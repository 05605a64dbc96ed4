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
import math
import random
import statistics
import sys
import time
from pathlib import Path

# The stop rule before 2026-11-26 (it never ended a single-letter update early).
OLD_STOP = {"stop_kl": 0.02, "stop_kl_fraction": 0.1}
SETTINGS = {
    # the ELConfig defaults: at most 16 passes (16 steps for one experience), lr ramped over 4
    # steps, stopped once the divergence on the experience has fallen below 0.05 and 0.15 of
    # its first value, but not before 12 passes
    "default": {},
    # the default until 2026-11-27: every experience learned, none declined as letter-led
    "no_decline": {"decline_letter_led": False},
    # the same stop rule allowed to end the update at any step (the default for a few hours of
    # 2026-11-26: it ends updates near the peak of their drift on unrelated prompts)
    "stop_anytime": {"stop_min_epochs": 0},
    "no_controls": {"augment": "none", "anchor_weight": 0.0},
    "anchors_only": {"augment": "none"},
    "rotation_only": {"anchor_weight": 0.0},
    # Earlier defaults: 8 passes without warmup (until 2026-11-25), then 12 passes with a 4-step
    # warmup (until 2026-11-26), and 16 passes; step 8 and step 12 of the 16-step runs are
    # measured too (one run gives both rows: with a constant rate, step k of a run is the last
    # step of a k-step run). Records were renamed when the default changed (field
    # "renamed_from").
    "epochs8_nowarmup": {"epochs": 8, "warmup_steps": 0, **OLD_STOP},
    "epochs12": {"epochs": 12, **OLD_STOP},
    "epochs16_nowarmup": {"epochs": 16, "warmup_steps": 0, **OLD_STOP,
                          "checkpoints": {8: "epochs8_nowarmup"}},
    "lr5e-4": {"learning_rate": 5e-4},
    # a higher cap on passes: the stop rule still ends the update, so only updates that ran the
    # default's 16 passes without the rule holding run longer (up to step 16 they are the
    # default's run: same seed, batches and constant rate)
    "epochs24": {"epochs": 24},
    # distil only the answer letter of "The answer is X.", not the words before it: with
    # explanation feedback the largest divergence is at " answer" (bench/response_divergence.py)
    "answer_span": {"distill_span": "answer"},
    # the teacher's answer-letter distribution averaged over the question's rotations by content,
    # with the student's letter preference in place of its own (experiential.letter_prior): the
    # explanation teacher's extra mass on B (bench/letter_prior.py) is what its updates' drift
    # on unrelated questions follows
    "student_letters": {"letter_prior": "student_log"},
    # the same in probability summed over the rotations: under the log split the letter
    # feedback's near one-hot teacher puts equal mass on every letter over the rotations, so a
    # student matching it would lose its letter preference on that question
    "student_letter_mass": {"letter_prior": "student_mass"},
    # Adam's first step moves every LoRA weight by about lr whatever its gradient: without a ramp
    # the anchors' KL jumps to ~0.4 after step 1. 16 steps, and 12 on the way.
    "warmup4_epochs16": {"epochs": 16, **OLD_STOP, "checkpoints": {12: "epochs12"}},
}
# Every setting above but the default was measured before decline_letter_led became the default
# (2026-11-27), without it: they keep it off, and pair with no_decline (paired_with_default).
SETTINGS = {name: over if name == "default" else {"decline_letter_led": False, **over}
            for name, over in SETTINGS.items()}
SETTINGS.update({
    # replay anchors from the probes' distribution: the four-option MMLU *dev* questions of at
    # most 192 prompt tokens (251; disjoint from the test-split probes), answered by the frozen
    # model, plus the built-in chat anchors: 8 per step cycle through 257 prompts, not 30
    "dev_anchors": {"anchor_set": "mmlu_dev"},
    # both levers on explanation feedback: answer_span raised its transfer (0.52 -> 0.82 on 8,
    # without the decline rule), dev_anchors halved its retention KL and cost (12 questions);
    # paired with dev_anchors, from which it differs in the span alone
    "dev_anchors_answer": {"anchor_set": "mmlu_dev", "distill_span": "answer",
                           "against": "dev_anchors"},
    # answer-only distillation's higher explanation transfer seemed to come with its letter's
    # larger weight against the anchors (answer_hold): the same with the anchors weighted 3x
    # (9 against the default 3), paired with dev_anchors_answer, from which it differs in that alone
    "dev_anchors_answer_w9": {"anchor_set": "mmlu_dev", "distill_span": "answer",
                              "anchor_weight": 9.0, "against": "dev_anchors_answer"},
    # where the update may change the model: LoRA on the MLP projections only, or on attention
    # only (the default adapts every linear layer); model editing finds factual associations in
    # the MLPs, and an update confined there might spread less to unrelated questions
    "mlp_only": {"lora_target_modules": ["gate_proj", "up_proj", "down_proj"]},
    "attn_only": {"lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    # distil only the answer letter, and hold the response's other words at the frozen model's
    # own distribution: answer_span's explanation transfer without its letter updates' cost?
    # (answer_span's loss was the letter's divergence alone, against anchors weighted for a
    # whole response's mean; here the mean is over the whole response again)
    "answer_hold": {"distill_span": "answer_hold"},
    # which of dev_anchors' two differences from the built-in anchors lowers the explanation
    # updates' KL: 24 of its MMLU dev questions (seed 0) and the 6 chat prompts, as many
    # anchors as the built-in set (24 everyday questions + 6), so only their kind differs
    "dev_anchors24": {"anchor_set": "mmlu_dev24", "against": "dev_anchors"},
    # the same kind of anchors without benchmark data: 24 exam-style questions written for the
    # library (the first 24 of experiential.probes.exam_questions()) + the 6 chat prompts,
    # paired with dev_anchors24, from which it differs in where the 24 questions come from alone
    "exam_anchors": {"anchor_set": "exam", "against": "dev_anchors24"},
    # all 208 of them (+ the 6 chat prompts), as many and as varied as dev_anchors' 251: does a
    # large built-in set hold the chat probes as the 251 dev questions did? Paired with dev_anchors
    "exam_anchors_all": {"anchor_set": "exam_all", "against": "dev_anchors"},
    # the default, then 8 steps on the replay anchors alone (ELConfig.consolidate_steps), with
    # the question and retention also scored after 2 and 4 of them: the update's own steps are
    # the default's (same seed and batches), so each record pairs with the default's exactly
    "consolidate8": {"consolidate_steps": 8, "against": "default",
                     "consolidation_checkpoints": {2: "consolidate2", 4: "consolidate4"}},
    # the default again, with retention also scored after steps 4, 8 and 12: how the footprint
    # grows with the gain along one update, to compare settings that move less at the same gain
    # (its own final record should reproduce the default's)
    "default_curve": {"checkpoints": {4: "default_step4", 8: "default_step8",
                                      12: "default_step12"}, "against": "default"},
})
KINDS = ("letter", "explanation", "control")
DEFAULT_OUT = Path(__file__).parent / "results" / "specificity"


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
    ap.add_argument("--first", type=int, default=0,
                    help="run only the first K of the --n questions (same questions and retention "
                         "probes as the full run; e.g. extra settings on a subset)")
    ap.add_argument("--ids", default="",
                    help="run only these of the --n questions, comma-separated MMLU ids, each "
                         "optionally prefixed by a feedback kind ('letter:anatomy/114'), e.g. "
                         "another setting on the updates the default left short")
    ap.add_argument("--reuse",
                    help="a setting that differs from --settings only in decline_letter_led=False: "
                         "for updates the decline rule keeps, copy that setting's record (the "
                         "rule acts before any step, and a kept single experience is the same "
                         "update), instead of training again; declined ones are measured")
    ap.add_argument("--retention-n", type=int, default=200)
    ap.add_argument("--retention-max-tokens", type=int, default=192,
                    help="probe questions longer than this (prompt tokens) are not sampled: the "
                         "long reading passages would double the cost of scoring after every "
                         "update (0: no limit)")
    ap.add_argument("--settings", default="default")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--summarize-only", action="store_true",
                    help="write the report from the records so far (e.g. after stopping a run)")
    ap.add_argument("--embed-into",
                    help="also copy the tables into this report, between its '<!-- results: "
                         "bench/results/specificity.md -->' and '<!-- /results -->' markers "
                         "(default: reports/specificity.md when --out is the default)")
    args = ap.parse_args()
    if args.embed_into is None and Path(args.out) == DEFAULT_OUT:
        args.embed_into = str(Path(__file__).parents[1] / "reports" / "specificity.md")
    only = {x.strip() for x in args.ids.split(",") if x.strip()}  # "id" or "kind:id"
    bad = [x for x in only if ":" in x and x.split(":")[0] not in KINDS]
    if bad:
        ap.error(f"--ids: unknown feedback kind in {', '.join(bad)} (kinds: {', '.join(KINDS)})")
    if args.summarize_only:
        summarize(Path(args.out), args)
        return
    for setting in args.settings.split(",") if args.reuse else []:
        check_reuse(args.reuse, setting)  # before the model loads

    import torch

    from experiential.config import ELConfig
    from experiential.context import teacher_messages
    from experiential.experience import Experience
    from experiential.models import load_model
    from experiential.retention import compare, probe_logprobs
    from experiential.scoring import option_probs
    from experiential.tasks.mc import format_mc
    from experiential.tasks.mmlu_shift import control_letter
    from experiential.trainer import ExperientialTrainer, LearnResult

    out = Path(args.out)
    (out / "records").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    chosen, p_before, probes = questions_and_probes(model, tok, args)
    unknown = {x.split(":")[-1] for x in only} - {q.id for q in chosen[:args.first or None]}
    if unknown:
        raise SystemExit(f"--ids: not among the chosen questions: {', '.join(sorted(unknown))}")
    msgs = lambda q: [{"role": "user", "content": format_mc(q)}]  # noqa: E731
    baseline = probe_logprobs(model, tok, probes)
    anchor_sets: dict[str, list] = {}
    n_dev: list[int] = []  # how many of mmlu_dev's pairs (the first) are dev questions

    def anchor_set(name: str) -> list:
        """Replay anchors answered by the base model (call before a trainer wraps it)."""
        if name not in anchor_sets:
            from experiential.anchors import (build_anchor_pairs, default_anchor_prompts,
                                              exam_anchor_prompts, mmlu_dev_anchor_pairs)

            if name == "mmlu_dev":
                anchor_sets[name], n = mmlu_dev_anchor_pairs(model, tok, data_dir=args.data_dir)
                n_dev.append(n)
                print(f"anchors: {n} MMLU dev questions + the built-in chat prompts",
                      flush=True)
            elif name == "mmlu_dev24":  # as many dev questions as the built-in set has
                every = anchor_set("mmlu_dev")
                picked = sorted(random.Random(0).sample(range(n_dev[0]), 24))
                anchor_sets[name] = [every[i] for i in picked] + every[n_dev[0]:]
                print(f"anchors: 24 of the {n_dev[0]} MMLU dev questions + the built-in chat "
                      "prompts", flush=True)
            elif name in ("exam", "exam_all"):  # the first 24 of the built-in exam set, or all
                anchor_sets[name] = build_anchor_pairs(
                    model, tok, *exam_anchor_prompts(24 if name == "exam" else None))
            else:
                anchor_sets[name] = build_anchor_pairs(model, tok, *default_anchor_prompts())
        return anchor_sets[name]

    for setting in args.settings.split(","):
        over = dict(SETTINGS[setting])
        # A checkpoint is another setting measured mid-run: the learning-rate schedule does not
        # depend on the run's length, so with the same seed and batches step k of this run *is*
        # the last step of a k-step run.
        checkpoints: dict[int, str] = over.pop("checkpoints", {})
        # the same after the k-th consolidation step (its step number depends on where the
        # update's own steps ended); keyed apart from the update's own steps
        checkpoints.update({-k: name for k, name in
                            over.pop("consolidation_checkpoints", {}).items()})
        which_anchors = over.pop("anchor_set", "builtin")
        over.pop("against", None)
        el = ELConfig(progress=False).replace(**over)
        for q, p_s in list(zip(chosen, p_before))[:args.first or None]:
            attempt = int(p_s.argmax())
            wrong = control_letter(q.id, q.answer, attempt)
            for kind in args.kinds.split(","):
                if only and q.id not in only and f"{kind}:{q.id}" not in only:
                    continue
                path = lambda name: out / "records" / f"{name}__{kind}__{q.id.replace('/', '_')}.json"  # noqa: E731
                todo = {k: name for k, name in checkpoints.items() if not path(name).is_file()}
                if path(setting).is_file() and not todo:
                    continue
                fb, target = feedback(kind, q, wrong)
                exp = Experience(format_mc(q), f"The answer is {'ABCD'[attempt]}.", fb)
                if args.reuse and reuse_kept(args.reuse, path, setting, el, exp, model, tok):
                    continue
                p_teacher = option_probs(model, tok, [teacher_messages(exp, el.context_design)])[0]
                trainer = ExperientialTrainer(
                    model, tok, el, probes=probes, probe_baseline=baseline,
                    anchor_pairs=anchor_set(which_anchors) if el.anchor_weight else [])
                t0 = time.time()
                trajectory: list[dict] = []
                scoring = [0.0]  # seconds spent scoring earlier checkpoints (not the update's)

                def record(name: str, step: int, p_after, retention: dict,  # noqa: ANN001
                           res: LearnResult | None = None, at_step: int | None = None) -> dict:
                    """``step``: the update's own steps; ``at_step``: the callback's step
                    number, past them for a consolidation checkpoint (default: ``step``)."""
                    at_step = step if at_step is None else at_step
                    gap = float(p_teacher[target] - p_s[target])
                    gain = float(p_after[target] - p_s[target])
                    rec = {"setting": name, "kind": kind, "id": q.id, "target": target,
                           "attempt": attempt, "feedback": fb,
                           "probs_before": [round(float(x), 4) for x in p_s],
                           "probs_teacher": [round(float(x), 4) for x in p_teacher],
                           "probs_after": [round(float(x), 4) for x in p_after],
                           "p_before": float(p_s[target]), "p_teacher": float(p_teacher[target]),
                           "p_after": float(p_after[target]), "gap": gap, "gain": gain,
                           "transfer": gain / gap if abs(gap) > 1e-6 else None,
                           "retention": retention, "steps": step,
                           "trajectory": [t for t in trajectory if t["step"] <= at_step],
                           "seconds": time.time() - t0 - scoring[0],
                           "command": "python bench/specificity.py " + " ".join(sys.argv[1:])}
                    if at_step > step:
                        rec["consolidation_steps"] = at_step - step
                    if name != setting:
                        rec["measured_at"] = f"step {at_step} of the {setting} run"
                    if res is not None and res.declined:
                        rec["declined"] = res.to_dict()["declined"]
                    if res is not None:
                        # per pair (the question and its rotations): the stop rule sees only
                        # their mean, which can close while the question's own wording lags
                        rec["pair_divergence"] = [
                            {"experience_id": b.experience_id, "before": round(b.divergence, 4),
                             "after": round(a.divergence, 4)}
                            for b, a in zip(res.gaps_before, res.gaps_after)]
                    path(name).write_text(json.dumps(rec, indent=1))
                    print(f"{name:>13} {kind:>11} {q.id:<40} P {rec['p_before']:.2f} -> "
                          f"{rec['p_after']:.2f} (teacher {rec['p_teacher']:.2f}) in {step} steps, "
                          f"retention {retention['accuracy_change'] * 100:+.1f} pts KL "
                          f"{retention['mean_kl']:.3f}, {rec['seconds']:.0f}s", flush=True)
                    return rec

                def on_step(state, m) -> None:  # noqa: ANN001
                    p_now = option_probs(m, tok, [msgs(q)])[0]
                    trajectory.append({"step": state.step, "p_target": float(p_now[target]),
                                       "divergence": state.divergence,
                                       "anchor_divergence": state.anchor_divergence,
                                       "consolidating": state.consolidating})
                    # a checkpoint after the k-th consolidation step is keyed -k
                    key = -sum(t["consolidating"] for t in trajectory) \
                        if state.consolidating else state.step
                    if key in todo:
                        t1 = time.time()
                        ret = compare(baseline, probe_logprobs(m, tok, probes), probes)
                        own = state.step + key if key < 0 else state.step
                        record(todo.pop(key), own, p_now, ret.to_dict(), at_step=state.step)
                        scoring[0] += time.time() - t1

                res = trainer.learn([exp], callback=on_step)
                p_after = option_probs(trainer.model, tok, [msgs(q)])[0]
                if res.retention is None:  # declined (decline_letter_led): nothing was learned
                    res.retention = compare(baseline, baseline, probes)
                last = res.steps + len(res.consolidation_divergences)
                for name in todo.values():  # stopped before the checkpoint: same final state
                    record(name, res.steps, p_after, res.retention.to_dict(), res, at_step=last)
                if not path(setting).is_file():
                    record(setting, res.steps, p_after, res.retention.to_dict(), res, at_step=last)
                trainer.model.unload()
    summarize(out, args)


def check_reuse(reuse: str, setting: str) -> None:
    """``--reuse`` copies records only between settings that differ in the decline rule alone,
    with it on in ``setting``."""
    over = {k: v for k, v in SETTINGS[reuse].items() if k != "decline_letter_led"}
    if over != SETTINGS[setting] or SETTINGS[reuse].get("decline_letter_led", True) \
            or not SETTINGS[setting].get("decline_letter_led", True):
        raise SystemExit(f"--reuse {reuse}: must be --settings {setting} with "
                         "decline_letter_led=False")


def reuse_kept(reuse: str, path, setting: str, el, exp, model, tok) -> bool:  # noqa: ANN001
    """Copy ``reuse``'s record of this update if ``setting``'s decline rule keeps the experience
    (the library's own check, :meth:`ExperientialTrainer.declines`); False if it declines it
    (:func:`check_reuse` has checked the two settings)."""
    from experiential.trainer import ExperientialTrainer

    trainer = ExperientialTrainer(model, tok, el, anchor_pairs=[])
    declined = trainer.declines([exp])
    trainer.model.unload()
    if declined or not path(reuse).is_file():
        return False
    rec = json.loads(path(reuse).read_text())
    rec.update(setting=setting, reused_from=reuse, command="python bench/specificity.py "
               + " ".join(sys.argv[1:]) + f" (kept by decline_letter_led: {reuse}'s record)")
    path(setting).write_text(json.dumps(rec, indent=1))
    print(f"{setting:>13} {rec['kind']:>11} {rec['id']:<40} kept: {reuse}'s record", flush=True)
    return True


def questions_and_probes(model, tok, args: argparse.Namespace) -> tuple[list, list, list]:  # noqa: ANN001
    """The first ``--n`` questions the model gets wrong (with its letter
    probabilities) and the ``--retention-n`` probe questions from the other subjects, no longer than
    ``--retention-max-tokens``. bench/retention_noise.py uses the same probes."""
    from experiential.tasks.data import load_mmlu
    from experiential.tasks.mc import format_mc, sample_questions
    from experiential.tasks.mmlu_shift import questions_it_gets_wrong
    from experiential.tokens import context_ids

    pool = [q for q in load_mmlu("test", data_dir=args.data_dir) if len(q.choices) == 4]
    chosen, p_before = questions_it_gets_wrong(model, tok, pool, args.n, args.seed)
    used = {q.subject for q in chosen}
    if args.retention_max_tokens:
        short = [q for q in pool if len(context_ids(
            tok, [{"role": "user", "content": format_mc(q)}])) <= args.retention_max_tokens]
    else:
        short = pool
    probes = sample_questions(short, args.retention_n, args.seed + 1, exclude_subjects=used)
    return chosen, p_before, probes


def _sem(xs: list[float]) -> float:
    return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0


def summarize(out: Path, args: argparse.Namespace) -> None:
    recs = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    table: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        table.setdefault((r["setting"], r["kind"]), []).append(r)
    rows = []
    for (setting, kind), rs in sorted(table.items()):
        col = lambda k: [x[k] for x in rs]  # noqa: E731
        acc = [100 * x["retention"]["accuracy_change"] for x in rs]
        kl = [x["retention"]["mean_kl"] for x in rs]
        # KL on the open chat probes, prompts of another kind than the questions (older records
        # do not have it)
        chat = [x["retention"]["chat_mean_kl"] for x in rs
                if x["retention"].get("chat_mean_kl") is not None]
        # expected accuracy (mean P of the right letter): older records do not have it
        pc = [100 * (x["retention"]["p_correct_after"] - x["retention"]["p_correct_before"])
              for x in rs if x["retention"].get("p_correct_before") is not None]
        gaps = sum(col("gap"))
        rows.append({
            "setting": setting, "kind": kind, "n": len(rs),
            "p_before": statistics.mean(col("p_before")), "p_teacher": statistics.mean(
                col("p_teacher")), "p_after": statistics.mean(col("p_after")),
            "p_after_sem": _sem(col("p_after")),
            # pooled transfer: total gain over total gap (per-question ratios explode on tiny gaps)
            "transfer": sum(col("gain")) / gaps if abs(gaps) > 1e-6 else None,
            "target_argmax_after": statistics.mean(
                float(max(range(4), key=x["probs_after"].__getitem__) == x["target"])
                for x in rs) if all("probs_after" in x for x in rs) else None,
            "retention_acc_change_pts": statistics.mean(acc), "retention_acc_sem": _sem(acc),
            "retention_worst_acc_change_pts": min(acc),
            "retention_updates_losing_over_1pt": sum(a < -1.0 for a in acc) / len(acc),
            "retention_kl": statistics.mean(kl), "retention_kl_max": max(kl),
            "retention_chat_kl": statistics.mean(chat) if chat else None,
            "retention_chat_n": len(chat),
            "retention_p_correct_change_pts": statistics.mean(pc) if pc else None,
            "retention_p_correct_sem": _sem(pc) if pc else None, "retention_p_correct_n": len(pc),
            "steps": statistics.mean(col("steps")), "steps_range": (min(col("steps")),
                                                                   max(col("steps"))),
            # the "answer B to everything" failure: the largest gain of one letter's mean mass
            "retention_letter_gain": statistics.mean(max(
                a - b for a, b in zip(x["retention"]["letter_mass_after"],
                                      x["retention"]["letter_mass_before"])) for x in rs),
            "retention_n": rs[0]["retention"]["n"], "seconds": statistics.mean(col("seconds"))})
    # the records come from several invocations (settings, kinds, subsets); each keeps its own
    commands = sorted({r["command"] for r in recs if "command" in r})
    command = "; ".join(f"`{c}`" for c in commands) or "(not recorded)"
    (out.parent / (out.name + ".json")).write_text(json.dumps(
        {"model": args.model, "commands": commands, "rows": rows,
         "paired_with_default": paired_with_default(recs), "records": recs}, indent=1))
    lines = ["# Single-experience EL: transfer and retention per specificity setting\n",
             f"Model `{args.model}`, MMLU test questions it gets wrong (seed {args.seed}); one EL "
             f"update per question and feedback kind, each from the base model. Retention on "
             f"{rows[0]['retention_n'] if rows else '?'} MMLU questions from other subjects, "
             f"scored before and after every update. Transfer = total gain / total in-context "
             f"gap. ± is the standard error over updates. Commands: {command}.\n",
             "| setting | feedback | updates | steps | P(target) before -> after | teacher | "
             "transfer | target is argmax after | retention accuracy change: mean ± se, worst, "
             "share of updates losing > 1 pt | retention mean P(right letter) change | retention "
             "KL: mean, max | chat KL | largest letter-mass gain | s/update |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr = f"{r['transfer']:.2f}" if r["transfer"] is not None else "-"
        am = f"{r['target_argmax_after']:.0%}" if r["target_argmax_after"] is not None else "-"
        pc = "-" if r["retention_p_correct_change_pts"] is None else (
            f"{r['retention_p_correct_change_pts']:+.2f} ± {r['retention_p_correct_sem']:.2f} pts"
            + (f" (n={r['retention_p_correct_n']})" if r["retention_p_correct_n"] != r["n"]
               else ""))
        ck = "-" if r["retention_chat_kl"] is None else f"{r['retention_chat_kl']:.4f}" + (
            f" (n={r['retention_chat_n']})" if r["retention_chat_n"] != r["n"] else "")
        lines.append(f"| {r['setting']} | {r['kind']} | {r['n']} | {steps_cell(r)} | "
                     f"{r['p_before']:.3f} -> "
                     f"{r['p_after']:.3f} ± {r['p_after_sem']:.3f} | {r['p_teacher']:.3f} | {tr} "
                     f"| {am} | {r['retention_acc_change_pts']:+.2f} ± "
                     f"{r['retention_acc_sem']:.2f} pts, {r['retention_worst_acc_change_pts']:+.1f}"
                     f", {r['retention_updates_losing_over_1pt']:.0%} | {pc} | "
                     f"{r['retention_kl']:.4f}, {r['retention_kl_max']:.3f} | {ck} | "
                     f"{r['retention_letter_gain']:+.3f} | {r['seconds']:.0f} |")
    pairs = paired_with_default(recs)
    if pairs:
        lines += ["", "Paired on the same questions (setting minus the setting it is measured "
                  "against, mean ± se over questions): the per-question noise (which near-ties a "
                  "question's update happens to flip) cancels. Settings measured without the "
                  "decline rule are measured against `no_decline`, the default of their time.",
                  "", "| setting | against | feedback | questions | gain in P(target) | "
                  "retention accuracy | retention mean P(right letter) | retention KL | chat KL |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in pairs:
            n = f"{c['n']}" + (f" ({c['same_run']} the same run)" if c["same_run"] else "")
            lines.append(f"| {c['setting']} | {c['against']} | {c['kind']} | {n} | " + " | ".join(
                "-" if c[k] is None else f"{c[k][0]:+.4f} ± {c[k][1]:.4f}" if k == "chat_kl"
                else f"{c[k][0]:+.3f} ± {c[k][1]:.3f}" if k in ("gain", "kl")
                else f"{c[k][0]:+.2f} ± {c[k][1]:.2f} pts"
                for k in ("gain", "acc", "pc", "kl", "chat_kl"))
                + (f" (n={c['chat_n']})" if c["chat_kl"] and c["chat_n"] != c["n"] else "") + " |")
    curve = steps_to_transfer(recs)
    if curve:
        lines += ["", "Steps each update needed, from the per-step P(target) of whole runs (the "
                  "question scored after every step): the first step at which the update had "
                  "moved P(target) by the given share of its in-context gap.", "",
                  "| setting | feedback | updates | share of the gap | median steps | reached by "
                  "step 8 | by 12 | by 16 |", "|---|---|---|---|---|---|---|---|"]
        for c in curve:
            by = " | ".join("-" if c["by"][k] is None else f"{c['by'][k]:.0%}" for k in (8, 12, 16))
            lines.append(f"| {c['setting']} | {c['kind']} | {c['n']} | {c['share']:.0%} | "
                         f"{c['median']} | {by} |")
    (out.parent / (out.name + ".md")).write_text("\n".join(lines) + "\n")
    if getattr(args, "embed_into", ""):
        first_table = next(i for i, x in enumerate(lines) if x.startswith("| setting |"))
        embed(Path(args.embed_into), "\n".join(lines[first_table:]))
    print("\n".join(lines))
    plot(out.parent / (out.name + ".png"), rows, recs)


def embed(report: Path, tables: str) -> None:
    """Replace the text between the report's results markers with ``tables``."""
    start, end = "<!-- results: bench/results/specificity.md -->", "<!-- /results -->"
    text = report.read_text() if report.is_file() else ""
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    report.write_text(head + start + "\n" + tables.strip() + "\n" + end + rest.split(end, 1)[1])


def steps_cell(row: dict) -> str:
    """Mean steps, and their range when a stop rule made them differ between updates."""
    low, high = row["steps_range"]
    return f"{row['steps']:.1f}" + (f" ({low}-{high})" if low != high else "")


def against(setting: str) -> str:
    """The setting another is paired with: the one it names (``against``), else the default, or
    for those without the decline rule (all measured before it was the default) ``no_decline``,
    the default of their time."""
    if "against" in SETTINGS.get(setting, {}):
        return SETTINGS[setting]["against"]
    if setting == "no_decline" or SETTINGS.get(setting, {}).get("decline_letter_led", True):
        return "default"
    return "no_decline"


def paired_with_default(recs: list[dict]) -> list[dict]:
    """Per non-default setting and kind: the mean per-question difference from the setting it
    differs from in one thing (:func:`against`)."""
    by = {(r["setting"], r["kind"], r["id"]): r for r in recs}
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for r in recs:
        base = by.get((against(r["setting"]), r["kind"], r["id"]))
        if r["setting"] != "default" and base is not None:
            groups.setdefault((r["setting"], r["kind"]), []).append((r, base))

    def pc(r: dict) -> float:
        return 100 * (r["retention"]["p_correct_after"] - r["retention"]["p_correct_before"])

    out = []
    for (setting, kind), prs in sorted(groups.items()):
        diffs = {
            "gain": [a["gain"] - b["gain"] for a, b in prs],
            "acc": [100 * (a["retention"]["accuracy_change"] - b["retention"]["accuracy_change"])
                    for a, b in prs],
            "pc": [pc(a) - pc(b) for a, b in prs
                   if a["retention"].get("p_correct_before") is not None
                   and b["retention"].get("p_correct_before") is not None],
            "kl": [a["retention"]["mean_kl"] - b["retention"]["mean_kl"] for a, b in prs],
            "chat_kl": [a["retention"]["chat_mean_kl"] - b["retention"]["chat_mean_kl"]
                        for a, b in prs if a["retention"].get("chat_mean_kl") is not None
                        and b["retention"].get("chat_mean_kl") is not None]}
        # a default derived from this setting's run (``derived_from``) pairs a run with itself
        same = sum(a.get("probs_after", 0) == b.get("probs_after", 1)
                   and a["retention"]["mean_kl"] == b["retention"]["mean_kl"] for a, b in prs)
        out.append({"setting": setting, "against": against(setting), "kind": kind,
                    "n": len(prs), "same_run": same, "chat_n": len(diffs["chat_kl"]),
                    # older records lack expected accuracy: no pairs, no number
                    **{k: (statistics.mean(v), _sem(v)) if v else None for k, v in diffs.items()}})
    return out


def full_runs(recs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Per setting and kind, the records of whole runs (not checkpoints) with per-step
    P(target). A run the stop rule ended early keeps its last P(target) for the steps it did not
    take (the model no longer changes), so every run of a group has the group's longest length."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        if r.get("trajectory") and "measured_at" not in r:
            out.setdefault((r["setting"], r["kind"]), []).append(r)
    for rs in out.values():
        for i, r in enumerate(rs):  # the update's own steps (not consolidation steps after it)
            rs[i] = {**r, "trajectory": [t for t in r["trajectory"] if not t.get("consolidating")]}
        length = max(len(r["trajectory"]) for r in rs)
        for i, r in enumerate(rs):
            t = r["trajectory"]
            rs[i] = {**r, "trajectory": t + [{**t[-1], "step": k, "stopped": True}
                                             for k in range(len(t) + 1, length + 1)]}
    return out


def steps_to_transfer(recs: list[dict], shares: tuple[float, ...] = (0.5, 0.9)) -> list[dict]:
    """Per setting and feedback kind: how many steps the updates needed to move P(target) by a
    share of the in-context gap."""
    out = []
    for (setting, kind), rs in sorted(full_runs(recs).items()):
        length = min(len(r["trajectory"]) for r in rs)
        for share in shares:
            first = []
            for r in rs:
                goal = r["p_before"] + share * r["gap"]
                hit = [t["step"] for t in r["trajectory"] if t["p_target"] >= goal]
                first.append(hit[0] if hit else None)
            median = statistics.median(math.inf if f is None else f for f in first)
            out.append({"setting": setting, "kind": kind, "n": len(rs), "share": share,
                        "median": f"> {length}" if median == math.inf else median,
                        "by": {k: sum(f is not None and f <= k for f in first) / len(first)
                               if k <= length else None for k in (8, 12, 16)}})
    return out


def plot(path: Path, rows: list[dict], recs: list[dict]) -> None:
    """Left: mean P(target) before, with the feedback in context (teacher), and after the update.
    Middle: every update's gain against its retention KL on the unrelated questions. Right: the
    transfer after each step of whole runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4))
    labels = [f"{r['setting']}\n{r['kind']} (n={r['n']})" for r in rows]
    width = 0.27
    for k, (name, key) in enumerate((("before", "p_before"), ("teacher (in context)", "p_teacher"),
                                     ("after the update", "p_after"))):
        ax.bar([i + (k - 1) * width for i in range(len(rows))], [r[key] for r in rows], width,
               label=name, yerr=[r["p_after_sem"] for r in rows] if key == "p_after" else None,
               capsize=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7, rotation=40, ha="right")
    ax.set_ylabel("mean P(target)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("What the feedback says: P(target)", fontsize=10)
    for (setting, kind), marker in zip(sorted({(r["setting"], r["kind"]) for r in recs}),
                                       "osD^v<>ph"):
        xs = [r["gain"] for r in recs if (r["setting"], r["kind"]) == (setting, kind)]
        ys = [r["retention"]["mean_kl"] for r in recs if (r["setting"], r["kind"]) == (setting, kind)]
        bx.scatter(xs, ys, s=14, marker=marker, alpha=0.7, label=f"{setting} / {kind}")
    bx.axvline(0, color="grey", lw=0.5)
    bx.set_xlabel("gain in P(target) on the question")
    bx.set_ylabel("retention KL on unrelated questions (nats)")
    bx.legend(fontsize=8)
    bx.set_title("Every update: what moved vs what else moved", fontsize=10)
    for (setting, kind), rs in sorted(full_runs(recs).items()):
        n_steps = min(len(r["trajectory"]) for r in rs)
        mean = [sum(r["trajectory"][i]["p_target"] - r["p_before"] for r in rs) /
                sum(r["gap"] for r in rs) for i in range(n_steps)]
        cx.plot(range(1, n_steps + 1), mean, marker=".", label=f"{setting} / {kind} (n={len(rs)})")
    cx.axhline(0.9, color="grey", lw=0.5, ls="--")
    cx.set_xlabel("optimizer step")
    cx.set_ylabel("transfer so far (total gain / total gap)")
    cx.legend(fontsize=8)
    cx.set_title("Transfer step by step", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
