"""Data-parallel EL on two CPU processes (torchrun, gloo) against one process on the same batch.

The file is also the worker: ``python tests/test_distributed.py OUT`` runs a few EL steps on the
tiny Llama from conftest and writes this process's LoRA weights, losses, divergences and gradient
norms to ``OUT/rank<R>.pt``. The test starts it once with plain ``python`` and once under
``torchrun --nproc_per_node 2`` (at the same time), then compares. A second test runs
``experiential learn`` itself under torchrun.

Tolerance: the two runs add the same numbers in a different order and pad the anchors' forward
differently (one padded batch of three vs two and one), so they agree to float32 rounding, not
bitwise: losses, divergences and gradient norms to 1e-5 relative (measured: 2e-7), LoRA weights to
1e-5 absolute (measured: 2e-6; the weights are O(0.01) after four AdamW steps at lr 5e-3). The two
ranks must hold bitwise identical weights.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Three pairs per step and micro-batches of one: rank 0 takes two micro-batches and two of the three
# anchors, rank 1 one and one, so the split is uneven and still exact. The relative stop rule ends
# the single-process run at step 4 of 6 (divergence 3.98, 3.64, 3.27, 2.90 < 0.8 * 3.98); two
# consolidation steps on the anchors alone follow (split the same way).
CONFIG = dict(max_steps=6, batch_size=3, micro_batch_size=1, learning_rate=5e-3, lora_r=4,
              lora_alpha=8, anchor_weight=1.0, anchor_per_step=3, augment="none", retention=False,
              stop_kl=1e6, stop_kl_fraction=0.8, stop_min_epochs=0, warmup_steps=0,
              consolidate_steps=2, progress=False)


def worker(out: Path) -> None:
    from conftest import build_tiny_model, build_tiny_tokenizer

    from experiential.anchors import _pair
    from experiential.config import ELConfig
    from experiential.experience import Experience
    from experiential.trainer import ExperientialTrainer

    torch.set_num_threads(1)
    norms: list[float] = []  # each step's gradient norm before clipping: checks the summed gradient
    clip = torch.nn.utils.clip_grad_norm_

    def clip_and_record(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        norms.append(float(norm := clip(params, max_norm)))
        return norm

    torch.nn.utils.clip_grad_norm_ = clip_and_record
    tok = build_tiny_tokenizer()
    exps = [Experience("What is the capital of France?", "The answer is A.",
                       "Wrong: the correct answer is C, Paris.", id="e1"),
            Experience("def add(a, b):", "return a - b",
                       "assert add(1, 2) == 3 fails: it returns -1", id="e2"),
            Experience("What is 18 + 2?", "18",
                       "Feedback: your final answer 18 is wrong; it is 20.", id="e3")]
    anchors = [_pair(tok, [{"role": "user", "content": q}], a) for q, a in
               [("Say hello to the world.", "hello world"), ("What is 2+2?", "The answer is D."),
                ("List the numbers 0123.", "0, 1, 2, 3")]]
    trainer = ExperientialTrainer(build_tiny_model(len(tok)), tok, ELConfig(**CONFIG),
                                  anchor_pairs=anchors)
    result = trainer.learn(exps)
    trainer.save(out / "adapter")
    lora = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
    torch.save({"losses": result.losses, "divergences": result.divergences, "steps": result.steps,
                "consolidation": result.consolidation_divergences,
                "tokens": result.student_tokens, "grad_norms": norms, "lora": lora},
               out / f"rank{os.environ.get('RANK', '0')}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_take_the_single_process_steps(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env.pop("WORLD_SIZE", None)
    me = str(Path(__file__).resolve())
    single = subprocess.Popen([sys.executable, me, str(tmp_path / "single")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dist = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                             me, str(tmp_path / "dist")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for p in (single, dist):
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in (single, dist):
            if p.poll() is None:
                p.kill()

    ref = torch.load(tmp_path / "single" / "rank0.pt")
    r0, r1 = (torch.load(tmp_path / "dist" / f"rank{r}.pt") for r in (0, 1))
    assert ref["steps"] == r0["steps"] == r1["steps"] == 4  # all stop together, on the global value
    for r in (r0, r1):  # the logged numbers are the global ones, on every rank
        assert r["losses"] == pytest.approx(ref["losses"], rel=1e-5)
        assert r["divergences"] == pytest.approx(ref["divergences"], rel=1e-5)
        assert r["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-5)
        assert len(r["grad_norms"]) == 4 + 2  # the update's steps and the consolidation's
        assert r["consolidation"] == pytest.approx(ref["consolidation"], rel=1e-5)
        assert len(ref["consolidation"]) == 2 and min(ref["consolidation"]) > 0
        assert r["tokens"] == ref["tokens"]
    assert ref["lora"].keys() == r0["lora"].keys() and ref["lora"]
    moved = max(float(v.abs().max()) for k, v in ref["lora"].items() if "lora_B" in k)
    assert moved > 1e-3  # the update did something to compare
    for k, v in ref["lora"].items():
        torch.testing.assert_close(r0["lora"][k], v, atol=1e-5, rtol=0)
        torch.testing.assert_close(r1["lora"][k], r0["lora"][k], atol=0, rtol=0)
    assert (tmp_path / "dist" / "adapter" / "adapter_model.safetensors").is_file()


def test_cli_learn_runs_under_torchrun(tmp_path, tiny_tokenizer):
    """``torchrun ... -m experiential.cli learn``: one report printed, one adapter written."""
    from conftest import build_tiny_model

    build_tiny_model(len(tiny_tokenizer)).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "exps.jsonl").write_text(
        '{"prompt": "What is the capital of France?", "attempt": "The answer is A.", '
        '"feedback": "Wrong: the correct answer is C, Paris."}\n')
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
         "127.0.0.1", "--master_port", str(_free_port()), "-m", "experiential.cli", "learn",
         "--model", str(tmp_path / "model"), "--experiences", str(tmp_path / "exps.jsonl"),
         "-o", str(tmp_path / "adapter"), "--max-steps", "2", "--batch-size", "2",
         "--micro-batch-size", "1", "--anchor-weight", "0", "--no-retention", "--lora-r", "4"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stdout.count("learning from 1 experience(s)") == 1, run.stdout
    assert run.stdout.count("in 2 step(s)") == 1, run.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "learn_report.json").is_file()


if __name__ == "__main__":  # the script's directory, tests/, is on sys.path: conftest imports
    worker(Path(sys.argv[1]))
