"""The noise floor of the specificity report's retention numbers: updates that know nothing.

bench/specificity.py reports each EL update's accuracy change on 200 unrelated MMLU questions with
the mean KL between the updated and the original model on them. Explanation updates reach a KL of
about 0.01 and lose about 2 points: is that what *any* change of that size costs, or damage of
their own? Here a LoRA adapter of the EL default's shape (r=16, alpha=32, every linear layer) gets
random A and B (peft's ``init_lora_weights=False``: the layers' default uniform init), with B scaled
by one factor so the adapter's mean KL on the same probes is near a target. Its accuracy change is
what a change of that KL costs with no direction at all. Each factor comes from a quadratic fit
(KL ~ c^2 for small c) on a 40-probe subset, then every probe is scored; every full scoring is a
point (KL, accuracy change), whether or not it lands on the target.

    python bench/retention_noise.py --directions 4 --kl 0.005,0.012,0.08

Same probes as bench/specificity.py (same --n, --seed, --retention-n, --retention-max-tokens).
Writes bench/results/retention_noise.{json,md,png} (the table and plot also show every default EL
update in bench/results/specificity/records).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from specificity import DEFAULT_OUT, questions_and_probes  # noqa: E402

OUT = Path(__file__).parent / "results" / "retention_noise"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--directions", type=int, default=4, help="random adapters (seeds 0..K-1)")
    ap.add_argument("--kl", default="0.005,0.012,0.08", help="target mean KLs on the probes")
    ap.add_argument("--calibration-n", type=int, default=40)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--retention-n", type=int, default=200)
    ap.add_argument("--retention-max-tokens", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(OUT), help="one JSON per direction here; the tables beside it")
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args()
    if not args.summarize_only:
        run(args, Path(args.out))
    summarize(Path(args.out))


def run(args: argparse.Namespace, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from experiential.config import ELConfig
    from experiential.models import load_model
    from experiential.retention import Retention, compare, probe_logprobs

    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    _, _, probes = questions_and_probes(model, tok, args)
    baseline = probe_logprobs(model, tok, probes)
    cal = args.calibration_n
    el = ELConfig()
    targets = [float(x) for x in args.kl.split(",")]
    for d in range(args.directions):
        path = out / f"direction{d}.json"
        if path.is_file():
            continue
        torch.manual_seed(d)
        peft_model = get_peft_model(model, LoraConfig(
            r=el.lora_r, lora_alpha=el.lora_alpha, target_modules=el.lora_target_modules,
            init_lora_weights=False, task_type="CAUSAL_LM"))
        bs = {n: m.weight.detach().clone() for n, m in peft_model.named_modules()
              if n.endswith("lora_B.default")}
        modules = dict(peft_model.named_modules())

        def scale(c: float) -> None:
            with torch.no_grad():
                for n, b in bs.items():
                    modules[n].weight.copy_(b * c)

        def retention(c: float, k: int | None) -> tuple[Retention, torch.Tensor]:
            """At scale ``c``, on the first ``k`` probes (None: all)."""
            scale(c)
            after = probe_logprobs(peft_model, tok, probes[:k])
            return compare(baseline[:k], after, probes[:k]), after

        # KL(c) ~ a c^2: one calibration point fixes a; go up or down tenfold until it is usable
        c0, kl0 = 1e-3, 0.0
        for _ in range(8):
            kl0 = retention(c0, cal)[0].mean_kl
            if 1e-4 < kl0 < 0.5:
                break
            c0 *= 10 if kl0 <= 1e-4 else 0.1
        a = kl0 / c0 ** 2
        points = []
        for t in targets:
            t0 = time.time()
            c = math.sqrt(t / a)
            ret, after = retention(c, None)
            flips = int((after.argmax(-1) != baseline.argmax(-1)).sum())
            points.append({"target_kl": t, "scale": c, "mean_kl": ret.mean_kl,
                           "accuracy_change": ret.accuracy_change,
                           "p_correct_change": ret.p_correct_after - ret.p_correct_before,
                           "flips": flips, "letter_mass_before": ret.letter_mass_before,
                           "letter_mass_after": ret.letter_mass_after,
                           "seconds": time.time() - t0})
            print(f"direction {d} target KL {t}: KL {ret.mean_kl:.4f}, accuracy "
                  f"{ret.accuracy_change * 100:+.1f} pts, P(right) "
                  f"{points[-1]['p_correct_change'] * 100:+.2f} pts, {flips} answers changed, "
                  f"{points[-1]['seconds']:.0f}s", flush=True)
        path.write_text(json.dumps({"direction": d, "calibration": {"scale": c0, "kl": kl0,
                                    "probes": cal}, "n_probes": len(probes), "points": points,
                                    "command": "python bench/retention_noise.py "
                                    + " ".join(sys.argv[1:])}, indent=1))
        peft_model.unload()


def summarize(out: Path) -> None:
    """Random-direction points beside the EL updates of bench/specificity.py in the same KL bins."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("direction*.json"))]
    # the updates that took a step: a declined one (decline_letter_led) changed nothing
    el = [r for r in (json.loads(p.read_text())
                      for p in sorted((DEFAULT_OUT / "records").glob("default__*.json")))
          if r["steps"] > 0]
    bins = [(0.0, 0.0075), (0.0075, 0.03), (0.03, 0.2)]
    rows = ["| update | KL bin | n | mean KL | accuracy change (pts) | P(right letter) change (pts) |",
            "|---|---|---|---|---|---|"]

    def row(name: str, lo: float, hi: float, pts: list[tuple[float, float, float]]) -> None:
        if not pts:
            return
        kls, acc, pc = zip(*pts)
        sem = lambda xs: statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")  # noqa: E731
        rows.append(f"| {name} | {lo:g}-{hi:g} | {len(pts)} | {statistics.mean(kls):.4f} | "
                    f"{statistics.mean(acc) * 100:+.2f} ± {sem(acc) * 100:.2f} | "
                    f"{statistics.mean(pc) * 100:+.2f} ± {sem(pc) * 100:.2f} |")

    rand = [(p["mean_kl"], p["accuracy_change"], p["p_correct_change"])
            for r in runs for p in r["points"]]
    by_kind: dict[str, list] = {}
    for r in el:
        ret = r["retention"]
        by_kind.setdefault(r["kind"], []).append(
            (ret["mean_kl"], ret["accuracy_change"], ret["p_correct_after"] - ret["p_correct_before"]))
    for lo, hi in bins:
        row("random LoRA", lo, hi, [p for p in rand if lo <= p[0] < hi])
        for kind, pts in sorted(by_kind.items()):
            row(f"EL default, {kind}", lo, hi, [p for p in pts if lo <= p[0] < hi])
    text = ("# Retention noise floor: random LoRA directions vs EL updates\n\n"
            f"{len(runs)} random directions (seeds 0..{len(runs) - 1}), "
            f"{len(rand)} points; EL rows from bench/results/specificity/records (setting default; "
            "the updates that took a step, not those the decline rule left out). "
            "± is the standard error over updates.\n\n" + "\n".join(rows) + "\n")
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"random": [dict(direction=r["direction"], **p) for r in runs for p in r["points"]]},
        indent=1))
    print(text)
    plot(out.with_suffix(".png"), rand, by_kind)


def plot(path: Path, rand: list[tuple[float, float, float]], by_kind: dict[str, list]) -> None:
    """Accuracy change against KL on the probes, every update: random directions and EL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, pts), marker in zip([("random LoRA", rand)] + [
            (f"EL default, {k}", v) for k, v in sorted(by_kind.items())], "Xos^D"):
        ax.scatter([p[0] for p in pts], [p[1] * 100 for p in pts], marker=marker, s=40 if
                   name.startswith("random") else 16, alpha=0.75, label=f"{name} (n={len(pts)})")
    ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("mean KL on the 200 unrelated MMLU questions (nats)")
    ax.set_ylabel("accuracy change on them (points)")
    ax.set_title("Retention: EL updates vs random changes of the same size", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
