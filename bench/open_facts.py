"""Open factual corrections: does an update reach other wordings, and stay off the neighbours?

Open (not multiple-choice) factual questions, each with a wrong attempt ("The answer is Leo
Tolstoy.") and a correction ("That is wrong. The correct answer is Mikhail Bulgakov."). One EL
update over all of them per setting, then, after "The answer is":

- P(correct) against P(wrong attempt) on the training wording and on two held-out wordings written
  here (never shown to the model during the update): did it learn the content, not the string?
- on a *contrast* question, a neighbour whose right answer is the wrong attempt ("Who wrote 'War
  and Peace'?"), P(that answer) against the fact's answer: did it learn "Bulgakov wrote The Master
  and Margarita" rather than "say Bulgakov, never Tolstoy"?
- retention on the built-in probes (multiple-choice and chat).

Only questions the model gets wrong on the training wording are used. Settings (``SETTINGS``):
``none`` (no augmentation), ``paraphrase`` (the frozen model rewords each question), ``neighbours``
(the frozen model writes 4 questions of the same kind per experience; its own answers become
replay anchors), ``paraphrase+neighbours``. Each setting's result is saved as it finishes, so a
killed run resumes.

    python bench/open_facts.py --model default --settings none,paraphrase,neighbours --seed 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# (training wording, [held-out wordings], correct answer, the wrong attempt, contrast question)
# The contrast question is a neighbour whose right answer *is* the wrong attempt: the update
# should teach "Bulgakov wrote The Master and Margarita", not "never say Tolstoy".
FACTS = [
    ("Who wrote the novel 'The Master and Margarita'?",
     ["Which author is responsible for the book 'The Master and Margarita'?",
      "'The Master and Margarita' is a novel by which writer?"], "Mikhail Bulgakov", "Leo Tolstoy",
     "Who wrote the novel 'War and Peace'?"),
    ("What is the capital of Australia?",
     ["Which city serves as Australia's capital?",
      "Australia's national government sits in which city?"], "Canberra", "Sydney",
     "What is the largest city in Australia?"),
    ("Who painted 'The Garden of Earthly Delights'?",
     ["Which artist created the triptych 'The Garden of Earthly Delights'?",
      "'The Garden of Earthly Delights' was painted by whom?"], "Hieronymus Bosch",
     "Pieter Bruegel", "Who painted 'The Hunters in the Snow'?"),
    ("What is the highest mountain in Africa?",
     ["Which peak is the tallest on the African continent?",
      "Name Africa's highest summit."], "Kilimanjaro", "Mount Kenya",
     "What is the highest mountain in Kenya?"),
    ("In which year did the Berlin Wall fall?",
     ["When was the Berlin Wall brought down?",
      "The Berlin Wall came down in what year?"], "1989", "1991",
     "In which year did the Soviet Union dissolve?"),
    ("What is the longest river in Europe?",
     ["Which river in Europe has the greatest length?",
      "Europe's longest river is which one?"], "the Volga", "the Danube",
     "Which river flows through Vienna, Budapest and Belgrade?"),
    ("Who discovered penicillin?",
     ["Which scientist is credited with discovering penicillin?",
      "Penicillin was discovered by whom?"], "Alexander Fleming", "Louis Pasteur",
     "Who developed the first rabies vaccine?"),
    ("What is the largest desert in the world?",
     ["Which desert covers the greatest area on Earth?",
      "Name the world's biggest desert by area."], "Antarctica", "the Sahara",
     "What is the largest hot desert in the world?"),
    ("Which composer wrote 'The Rite of Spring'?",
     ["'The Rite of Spring' was composed by whom?",
      "Who is the composer of the ballet 'The Rite of Spring'?"], "Igor Stravinsky",
     "Pyotr Tchaikovsky", "Which composer wrote the ballet 'Swan Lake'?"),
    ("What is the smallest country in the world by area?",
     ["Which country has the smallest land area of all?",
      "Name the world's tiniest country by area."], "Vatican City", "Monaco",
     "Which country is famous for the Monte Carlo casino?"),
    ("Who was the first woman to win a Nobel Prize?",
     ["Which woman became the first female Nobel laureate?",
      "The first Nobel Prize awarded to a woman went to whom?"], "Marie Curie",
     "Florence Nightingale", "Who was known as 'the Lady with the Lamp'?"),
    ("What is the hardest natural substance?",
     ["Which naturally occurring material is the hardest?",
      "Name the hardest substance found in nature."], "diamond", "quartz",
     "Which mineral is the main component of most beach sand?"),
]


SETTINGS = {
    "none": {"augment": "none"},
    "paraphrase": {"augment": "paraphrase"},
    "neighbours": {"augment": "none", "anchor_neighbours": 4},
    "paraphrase+neighbours": {"augment": "paraphrase", "anchor_neighbours": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--settings", default="none,paraphrase,neighbours")
    ap.add_argument("--paraphrase-copies", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "open_facts"))
    args = ap.parse_args()

    from experiential.config import ELConfig
    from experiential.experience import Experience
    from experiential.models import load_model
    from experiential.scoring import option_logprobs
    from experiential.trainer import ExperientialTrainer

    model, tok = load_model(args.model, dtype="fp32", device="cpu")

    def p_correct(m, questions: list[str], facts: list[tuple],  # noqa: ANN001
                  contrast: bool = False) -> list[float]:
        """P(correct) renormalised over {correct, wrong attempt}, per question; for a contrast
        question the right answer is the fact's wrong attempt."""
        out = []
        for q, f in zip(questions, facts):
            right, other = (f[3], f[2]) if contrast else (f[2], f[3])
            lp = option_logprobs(m, tok, [[{"role": "user", "content": q}]],
                                 [f" {right}", f" {other}"])[0]
            out.append(float(lp.softmax(-1)[0]))
        return out

    before_train = p_correct(model, [f[0] for f in FACTS], FACTS)
    facts = [f for f, p in zip(FACTS, before_train) if p < 0.5]
    p0_train = [p for p in before_train if p < 0.5]
    held_q = [h for f in facts for h in f[1]]
    held_f = [f for f in facts for _ in f[1]]
    p0_held = p_correct(model, held_q, held_f)
    p0_contrast = p_correct(model, [f[4] for f in facts], facts, contrast=True)
    exps = [Experience(f[0], f"The answer is {f[3]}.",
                       f"That is wrong. The correct answer is {f[2]}.", id=f"fact{i}")
            for i, f in enumerate(facts)]
    rows, results = [], {}
    out = Path(args.out)
    (out / "settings").mkdir(parents=True, exist_ok=True)
    for setting in args.settings.split(","):
        done = out / "settings" / f"{setting}.json"
        if done.is_file():
            saved = json.loads(done.read_text())
            rows.append(saved["row"])
            results[setting] = saved
            print(f"{setting}: done earlier, read from {done}")
            continue
        cfg = ELConfig(paraphrase_copies=args.paraphrase_copies, seed=args.seed,
                       **SETTINGS[setting])
        trainer = ExperientialTrainer(model, tok, cfg)
        t0 = time.perf_counter()
        res = trainer.learn(exps)
        seconds = time.perf_counter() - t0
        p1_train = p_correct(trainer.model, [f[0] for f in facts], facts)
        p1_held = p_correct(trainer.model, held_q, held_f)
        p1_contrast = p_correct(trainer.model, [f[4] for f in facts], facts, contrast=True)
        trainer.model.unload()
        ret = res.retention
        row = {"setting": setting, "n_facts": len(facts), "n_pairs": res.n_pairs,
               "steps": res.steps, "seconds": seconds,
               "train_before": statistics.mean(p0_train), "train_after": statistics.mean(p1_train),
               "held_before": statistics.mean(p0_held), "held_after": statistics.mean(p1_held),
               "held_correct_after": sum(p > 0.5 for p in p1_held) / len(p1_held),
               "held_correct_before": sum(p > 0.5 for p in p0_held) / len(p0_held),
               "contrast_before": statistics.mean(p0_contrast),
               "contrast_after": statistics.mean(p1_contrast),
               "retention_acc_change_pts": 100 * ret.accuracy_change,
               "retention_kl": ret.mean_kl, "retention_chat_kl": ret.chat_mean_kl}
        rows.append(row)
        results[setting] = {"row": row, "config": SETTINGS[setting],
                            "per_fact_train_after": p1_train,
                            "per_heldout_after": p1_held, "per_contrast_after": p1_contrast,
                            "learn": res.to_dict()}
        done.write_text(json.dumps(results[setting], indent=1, default=str))
        print(json.dumps(row), flush=True)
    command = (f"python bench/open_facts.py --model {args.model} --settings {args.settings} "
               f"--paraphrase-copies {args.paraphrase_copies} --seed {args.seed}")
    out.with_suffix(".json").write_text(json.dumps(
        {"model": args.model, "command": command, "facts": facts, "train_before": p0_train,
         "heldout_before": p0_held, "contrast_before": p0_contrast, "rows": rows,
         "results": results}, indent=1, default=str))
    lines = ["# Open factual corrections: other wordings, and the neighbours\n",
             f"Model `{args.model}`, seed {args.seed}, {len(facts)} open factual questions it "
             f"gets wrong (of {len(FACTS)}), one EL update over all of them per setting, "
             f"otherwise the `ELConfig` defaults. P(correct) is renormalised over the correct "
             f"answer and the wrong attempt after \"The answer is\"; held-out wordings "
             f"({len(held_q)}) were never in the update. Contrast: a neighbouring question "
             f"whose right answer is the wrong attempt (\"Who wrote 'War and Peace'?\"), "
             f"P(that answer) against the fact's answer: the update should leave it alone. "
             f"Time is wall clock on 2 CPU cores, often shared with another benchmark. "
             f"Command: `{command}`.\n",
             "| setting | pairs | steps | P(correct), training wording | P(correct), held-out "
             "wordings | held-out right (>.5) | contrast: P(attempt is right there) | retention: "
             "accuracy, MC KL, chat KL | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['n_pairs']} | {r['steps']} | {r['train_before']:.2f} "
                     f"-> {r['train_after']:.2f} | {r['held_before']:.2f} -> {r['held_after']:.2f} "
                     f"| {r['held_correct_before']:.0%} -> {r['held_correct_after']:.0%} | "
                     f"{r['contrast_before']:.2f} -> {r['contrast_after']:.2f} | "
                     f"{r['retention_acc_change_pts']:+.1f} pts, {r['retention_kl']:.3f}, "
                     f"{r['retention_chat_kl']:.3f} | {r['seconds']:.0f} s |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
