"""Greedy generation throughput by batch size (the cost that dominates every reproduction on CPU).

Same prompts (the first GSM8K test questions in the experiment's chat format), same token budget,
each batch size measured in the same process after a warm-up; speeds are useful generated tokens
per second (a batch runs until its longest answer stops, as in the experiments), reported as a
ratio to the first batch size.

    python bench/generation_speed.py --model default --prompts 16 --new-tokens 64 --batches 1,4,8,16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_speed"))
    args = ap.parse_args()

    import torch

    from experiential.generation import generate_ids
    from experiential.models import load_model
    from experiential.tasks.data import load_gsm8k
    from experiential.tasks.gsm8k import messages

    model, tok = load_model(args.model, dtype="fp32", device="cpu")
    prompts = [messages(p) for p in load_gsm8k("test")[: args.prompts]]
    generate_ids(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up
    rows = []
    for bs in [int(b) for b in args.batches.split(",")]:
        start = time.perf_counter()
        out = generate_ids(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=bs)
        seconds = time.perf_counter() - start
        n = sum(len(o[0]) for o in out)
        rows.append({"batch_size": bs, "seconds": seconds, "tokens": n, "tokens_per_s": n / seconds})
        print(rows[-1], flush=True)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["ratio_vs_first"] = r["tokens_per_s"] / base
    command = (f"python bench/generation_speed.py --model {args.model} --prompts {args.prompts} "
               f"--new-tokens {args.new_tokens} --batches {args.batches}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"model": args.model, "command": command, "threads": torch.get_num_threads(),
         "rows": rows}, indent=1))
    lines = ["# Greedy generation throughput by batch size\n",
             f"Model `{args.model}`, fp32, CPU ({torch.get_num_threads()} threads), "
             f"{args.prompts} GSM8K prompts, up to {args.new_tokens} new tokens each, KV cache on. "
             f"Command: `{command}`.\n",
             "| batch size | tokens | seconds | tokens/s | ratio vs batch "
             f"{rows[0]['batch_size']} |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['tokens']} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:.1f} | {r['ratio_vs_first']:.2f}x |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
