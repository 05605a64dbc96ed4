"""The EL update loop: experiences in, a LoRA (or full) weight update out.

One readable loop, in the nanoGPT spirit:

1. wrap the model with a LoRA adapter (or keep a frozen copy for full fine-tuning); the frozen
   original is the teacher;
2. turn experiences into student/teacher pairs with the configured objective;
3. measure the in-context gap (what there is to learn) and the retention probes (what to keep);
4. for each step: a batch of experience pairs plus a few replay anchors, gradient accumulation over
   micro-batches, clip, AdamW step; stop early once the student has closed the gap;
5. measure the residual gap and retention again, and report all of it.

Several GPUs: launched with ``torchrun --nproc_per_node N`` or ``accelerate launch`` (``WORLD_SIZE``
> 1), every process runs this same loop on the same pairs in the same seeded order (rank 0's pairs,
broadcast), takes its share of each step's micro-batches and replay anchors (round-robin), and the
gradients and logged numbers are summed over processes before clipping and the AdamW step
(:mod:`experiential.distributed`). So a step on N processes is the single-process step on the same
global batch, up to float rounding, whenever the step's batch has at least N * ``micro_batch_size``
pairs; with fewer, micro-batches shrink to ``ceil(batch / N)`` pairs so that every process gets work
(the same step as a single process with that ``micro_batch_size``). All
processes stop at the same step (the stop rule reads the summed divergence), measure gaps and
retention themselves, and only rank 0 shows progress and writes the adapter. Call ``learn`` and
``save`` on every process. One process: nothing of this runs, and the loop is exactly as above.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .augment import augment, parse_augment, source_id
from .paraphrase import paraphrase
from .reflection import reflect
from .anchors import (build_anchor_pairs, default_anchor_prompts, exam_anchor_prompts,
                      load_anchor_file, neighbour_anchor_pairs)
from .config import ELConfig
from .distributed import from_main, process_state, rank_and_world, sum_step, sync_start
from .experience import Experience
from .gap import Gap, measure_gaps, summarize
from .letter_prior import LetterSplit, experience_splits, letter_splits, student_letter_prior
from .objectives import get_objective
from .objectives.base import Pair, TeacherModel
from .objectives.self_distill import distill_loss
from .retention import (Retention, chat_drift, chat_probe_pairs, compare, load_chat_probes,
                        load_probes, probe_logprobs, with_chat)


@dataclass
class LearnResult:
    """Everything an update measured. ``summary()`` is what the CLI prints."""

    steps: int
    stopped_early: bool
    n_experiences: int
    n_pairs: int
    gaps_before: list[Gap]
    gaps_after: list[Gap]
    retention: Retention | None
    losses: list[float]
    divergences: list[float]
    """Mean per-token divergence on the step's experience pairs, before the step's update."""
    student_tokens: int
    seconds: float
    config: dict[str, Any]
    adapter_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    anchor_divergences: list[float] = field(default_factory=list)
    """Mean per-token KL(original || student) on the step's replay anchors, before the step's
    update: how far the update had pulled unrelated prompts when the anchors pulled back."""
    consolidation_divergences: list[float] = field(default_factory=list)
    """Mean per-token KL(original || student) on the replay anchors at each consolidation step
    (``ELConfig.consolidate_steps``), before the step's update."""
    declined: dict[str, LetterSplit] = field(default_factory=dict)
    """Experiences left out because their teacher's shift was led by a letter, not by an
    option's content (``ELConfig.decline_letter_led``), with that split."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "stopped_early": self.stopped_early,
            "n_experiences": self.n_experiences, "n_pairs": self.n_pairs,
            "gap_before": summarize(self.gaps_before), "gap_after": summarize(self.gaps_after),
            "gaps_before": [g.to_dict() for g in self.gaps_before],
            "gaps_after": [g.to_dict() for g in self.gaps_after],
            "retention": self.retention.to_dict() if self.retention else None,
            "losses": self.losses, "divergences": self.divergences,
            "anchor_divergences": self.anchor_divergences,
            "consolidation_divergences": self.consolidation_divergences,
            "declined": {k: asdict(v) | {"letter_led": v.letter_led}
                         for k, v in self.declined.items()},
            "student_tokens": self.student_tokens, "seconds": self.seconds,
            "tokens_per_second": self.student_tokens / max(self.seconds, 1e-9),
            "config": self.config, "adapter_path": self.adapter_path, **self.extra}

    def summary(self) -> str:
        b, a = summarize(self.gaps_before), summarize(self.gaps_after)
        n = f"{self.n_experiences} experience(s)"
        if self.declined:
            n = f"{max(0, self.n_experiences - len(self.declined))} of " + n
        lines = [f"learned from {n} ({self.n_pairs} response(s)) "
                 f"in {self.steps} step(s), {self.seconds:.1f}s"
                 + (" (stopped early: gap closed)" if self.stopped_early else "")
                 + (f", then {len(self.consolidation_divergences)} consolidation step(s) on "
                    f"the replay anchors" if self.consolidation_divergences else "")]
        for eid, split in self.declined.items():
            lines.append(f"declined {eid}: {split.describe()}: it would teach a letter, not "
                         "the feedback's content")
        if b:
            lines.append(f"in-context gap before: mean {b['mean_gap']:+.3f} "
                         f"(teacher {b['mean_p_teacher']:.3f} vs student {b['mean_p_student']:.3f}), "
                         f"divergence {b['mean_divergence']:.3f}")
        if a:
            lines.append(f"residual gap after:    mean {a['mean_gap']:+.3f} "
                         f"(teacher {a['mean_p_teacher']:.3f} vs student {a['mean_p_student']:.3f}), "
                         f"divergence {a['mean_divergence']:.3f}")
        if b and b["mean_gap"] < 0.05:
            lines.append("warning: the teacher barely differs from the student: this feedback, in "
                         "this context design, gives little to distil (try another "
                         "--context-design, or feedback that states the fix)")
        if self.retention:
            lines.append(self.retention.describe())
        if self.adapter_path:
            lines.append(f"adapter saved to {self.adapter_path}")
        return "\n".join(lines)


@dataclass
class _Prepared:
    """An update's material once augmented, paired and checked (:meth:`ExperientialTrainer._prepare`)."""
    experiences: list[Experience]
    pairs: list[Pair]
    neighbours: list[Pair]
    declined: dict[str, LetterSplit]


@dataclass
class StepState:
    """What a step callback sees after each optimizer step (numbers from before the update)."""

    step: int
    n_steps: int
    loss: float
    divergence: float
    anchor_divergence: float | None
    consolidating: bool = False
    """A consolidation step (``ELConfig.consolidate_steps``): anchors alone, after the update's
    own steps (``divergence`` is NaN: the experiences are not scored)."""


StepCallback = Callable[[StepState, Any], "bool | None"]
"""``callback(state, model)`` after every optimizer step, with the model in eval mode; return
True to stop the update there (a custom stop rule), e.g. to score a checkpoint mid-update."""


class ExperientialTrainer:
    """Apply EL updates to a Hugging Face causal LM.

    >>> trainer = ExperientialTrainer(model, tokenizer, ELConfig(max_steps=10))
    >>> result = trainer.learn(experiences)
    >>> trainer.save("adapter/")
    """

    def __init__(self, model: Any, tokenizer: Any, config: ELConfig | None = None, *,
                 anchor_pairs: Sequence[Pair] | None = None, probes: Sequence[Any] | None = None,
                 probe_baseline: torch.Tensor | None = None,
                 chat_probes: Sequence[Pair] | None = None):
        self.cfg = config or ELConfig()
        self.tok = tokenizer
        self.objective = get_objective(self.cfg.objective)
        self._seed()
        state = process_state()
        if state is not None:  # data parallel: this process's device; one progress bar, rank 0's
            model = model.to(state.device)
            if not state.is_main_process:
                self.cfg = self.cfg.replace(progress=False)
        self.model, frozen = self._wrap(model)
        sync_start([p for p in self.model.parameters() if p.requires_grad])
        self.teacher = TeacherModel(self.model, frozen, cache_mb=self.cfg.teacher_cache_mb)
        self._anchor_pairs = list(anchor_pairs) if anchor_pairs is not None else None
        self._probes = list(probes) if probes is not None else None
        # The original model's probe log-probs never change: callers running many updates from
        # the same base (benchmarks, cross-validation) pass them once instead of rescoring.
        self._probe_baseline = probe_baseline
        self._chat_probes = list(chat_probes) if chat_probes is not None else None
        self.result: LearnResult | None = None

    # -- set-up --------------------------------------------------------------------------------
    def _seed(self) -> None:
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def _wrap(self, model: Any) -> tuple[Any, Any | None]:
        if not self.cfg.lora:
            frozen = copy.deepcopy(model).eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
            for p in model.parameters():
                p.requires_grad_(True)
            return model, frozen
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(model, PeftModel):
            return model, None
        lora = LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha,
                          lora_dropout=self.cfg.lora_dropout,
                          target_modules=self.cfg.lora_target_modules, task_type="CAUSAL_LM")
        return get_peft_model(model, lora), None

    def anchor_pairs(self) -> list[Pair]:
        if self._anchor_pairs is None:
            if self.cfg.anchor_weight <= 0:
                self._anchor_pairs = []
            else:
                if self.cfg.anchor_prompts == "exam":
                    mc, chat = exam_anchor_prompts()
                elif self.cfg.anchor_prompts:
                    mc, chat = load_anchor_file(self.cfg.anchor_prompts)
                else:
                    mc, chat = default_anchor_prompts()
                with self.teacher.active() as m:
                    self._anchor_pairs = from_main(build_anchor_pairs(m, self.tok, mc, chat))
        return self._anchor_pairs

    def probes(self) -> list[Any]:
        if self._probes is None:
            self._probes = load_probes(self.cfg.retention_probes) if self.cfg.retention else []
        return self._probes

    def chat_probes(self) -> list[Pair]:
        """The original model's answers to the open chat probes (built once, reused)."""
        if self._chat_probes is None:
            if not (self.cfg.retention and self.cfg.retention_chat):
                self._chat_probes = []
            else:
                with self.teacher.active() as base:
                    self._chat_probes = chat_probe_pairs(
                        base, self.tok, load_chat_probes(self.cfg.retention_chat_prompts))
        return self._chat_probes

    # -- the update ----------------------------------------------------------------------------
    def learn(self, experiences: Sequence[Experience], *,
              callback: StepCallback | None = None) -> LearnResult:
        """One EL update on ``experiences``. ``callback``: see :data:`StepCallback`."""
        cfg, model, tok = self.cfg, self.model, self.tok
        if not experiences:
            raise ValueError("no experiences to learn from")
        n_given = len(experiences)
        self._seed()
        start = time.perf_counter()
        prep = self._prepare(experiences)
        experiences, pairs, neighbours, declined = \
            prep.experiences, prep.pairs, prep.neighbours, prep.declined
        if declined and not pairs:
            return self._nothing_learned(n_given, declined, start)
        pairs = self._letter_prior(pairs, experiences)
        if not pairs:
            raise ValueError("the experiences produced no response tokens to learn from")
        anchors = self.anchor_pairs()
        gaps_before = measure_gaps(model, tok, pairs, cfg, self.teacher)
        probes = self.probes()
        before = None
        if probes and self._probe_baseline is not None:
            before = self._probe_baseline
        elif probes:
            with self.teacher.active() as base:
                before = probe_logprobs(base, tok, probes)
            self._probe_baseline = before
        chat = self.chat_probes()

        n_steps = cfg.max_steps if cfg.max_steps is not None else \
            max(1, _steps(cfg.epochs, len(pairs), cfg.batch_size))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
        stream, anchor_stream = _cycle(pairs, cfg.seed), _cycle(anchors, cfg.seed + 1)
        neighbour_stream = _cycle(neighbours, cfg.seed + 2)
        # Half of each step's anchors are the experiences' neighbours (when there are any).
        n_neighbour = min(len(neighbours), math.ceil(cfg.anchor_per_step / 2))
        n_generic = min(len(anchors), cfg.anchor_per_step - n_neighbour)
        losses, divergences, anchor_divs, tokens = [], [], [], 0
        anchored = bool((anchors or neighbours) and cfg.anchor_weight > 0)
        stopped_early, step = False, 0
        on_policy = cfg.response == "samples" and cfg.objective == "self_distill"
        model.train()
        bar = _progress(n_steps, cfg.progress)
        rank, world = rank_and_world()
        steps_per_pass = _steps(1, len(pairs), cfg.batch_size)
        min_steps = _steps(cfg.stop_min_epochs, len(pairs), cfg.batch_size)
        for step in range(1, n_steps + 1):
            if on_policy and step > 1 and (step - 1) % steps_per_pass == 0:
                # On-policy: after each pass, the student (as it is now) samples fresh responses.
                model.eval()
                pairs = from_main(self.objective.prepare(model, tok, experiences, cfg))
                self.teacher.clear_cache()
                pairs = self._letter_prior(pairs, experiences)
                stream = _cycle(pairs, cfg.seed + step)
                model.train()
            batch = [next(stream) for _ in range(min(cfg.batch_size, len(pairs)))]
            step_loss, step_div, step_tokens, anchor_div = 0.0, 0.0, 0, 0.0
            mb = min(cfg.micro_batch_size, math.ceil(len(batch) / world))  # work for every rank
            micros = [batch[i:i + mb] for i in range(0, len(batch), mb)]
            for micro in micros[rank::world]:  # round-robin; all of them on a single process
                loss, metrics = self.objective.loss(model, micro, cfg, self.teacher,
                                                    tok.pad_token_id)
                (loss * len(micro) / len(batch)).backward()
                step_loss += float(loss.detach()) * len(micro) / len(batch)
                step_div += metrics.get("divergence", float("nan")) * len(micro) / len(batch)
                step_tokens += sum(len(p.student) for p in micro)
            if anchored:
                drawn = [next(neighbour_stream) for _ in range(n_neighbour)] + \
                    [next(anchor_stream) for _ in range(n_generic)]
                anchor_div, n_tok = self._anchor_backward(drawn, cfg.anchor_weight)
                step_loss += cfg.anchor_weight * anchor_div
                step_tokens += n_tok
            # the whole batch's gradient and numbers, on every rank (as they are, on one process)
            step_loss, step_div, step_tokens, anchor_div = sum_step(
                params, step_loss, step_div, step_tokens, anchor_div)
            tokens += int(step_tokens)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            divergences.append(step_div)
            if anchored:
                anchor_divs.append(anchor_div)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", div=f"{step_div:.4f}")
            if callback is not None:
                model.eval()
                stop = callback(StepState(step, n_steps, step_loss, step_div,
                                           anchor_div if anchored else None), model)
                model.train()
                if stop:
                    stopped_early = step < n_steps
                    break
            if cfg.stop_kl is not None and step >= min_steps and \
                    _gap_closed(divergences, steps_per_pass, cfg):
                stopped_early = step < n_steps
                break
        if bar is not None:
            bar.close()
        consolidation: list[float] = []
        if cfg.consolidate_steps and anchored:
            consolidation, n_tok = self._consolidate(
                opt, sched, params, neighbour_stream, anchor_stream, n_neighbour, n_generic,
                first_step=step + 1, callback=callback)
            tokens += n_tok
        model.eval()
        gaps_after = measure_gaps(model, tok, pairs, cfg, self.teacher)
        retention = compare(before, probe_logprobs(model, tok, probes), probes) \
            if before is not None else None
        if retention is not None:
            retention = with_chat(retention, chat_drift(model, tok, chat, self.teacher))
        self.result = LearnResult(
            steps=step, stopped_early=stopped_early, n_experiences=n_given,
            n_pairs=len(pairs), gaps_before=gaps_before, gaps_after=gaps_after,
            retention=retention, losses=losses, divergences=divergences,
            anchor_divergences=anchor_divs, consolidation_divergences=consolidation,
            student_tokens=tokens, declined=declined,
            seconds=time.perf_counter() - start, config=cfg.to_dict(),
            extra=_extra(experiences, cfg) | ({"neighbour_anchors": [
                {"experience_id": p.experience_id, "prompt": p.prompt_text,
                 "answer": p.response_text} for p in neighbours]} if neighbours else {}))
        return self.result

    def _anchor_backward(self, drawn: Sequence[Pair], weight: float) -> tuple[float, int]:
        """Backpropagate ``weight`` x the mean per-token KL(original || student) over the drawn
        replay anchors (this process's share of them); return this process's share of that mean
        and the student tokens it scored."""
        rank, world = rank_and_world()
        mine = drawn[rank::world]
        if not mine:
            return 0.0, 0
        # the mean is over all drawn anchors' tokens; this process has a share of them
        share = _n_response(mine) / _n_response(drawn)
        per_token, _ = distill_loss(self.model, mine, self.cfg, self.teacher,
                                    self.tok.pad_token_id)
        (weight * per_token.mean() * share).backward()
        return float(per_token.mean().detach()) * share, sum(len(p.student) for p in mine)

    def _consolidate(self, opt: Any, sched: Any, params: list[Any], neighbour_stream: Any,
                     anchor_stream: Any, n_neighbour: int, n_generic: int, *, first_step: int,
                     callback: StepCallback | None) -> tuple[list[float], int]:
        """``consolidate_steps`` optimizer steps on the replay anchors alone, after the update
        has learned its experiences: nothing pulls on the experiences any more, so these steps
        pull back only what the update moved on unrelated prompts (the same optimizer and
        learning rate carry on). Returns each step's anchor divergence (before its update)."""
        cfg, divs, tokens = self.cfg, [], 0
        n_steps = first_step + cfg.consolidate_steps - 1
        for step in range(first_step, n_steps + 1):
            drawn = [next(neighbour_stream) for _ in range(n_neighbour)] + \
                [next(anchor_stream) for _ in range(n_generic)]
            div, n_tok = self._anchor_backward(drawn, 1.0)
            div, n_tok = sum_step(params, div, n_tok)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            divs.append(div)
            tokens += int(n_tok)
            if callback is not None:
                self.model.eval()
                stop = callback(StepState(step, n_steps, div, float("nan"), div,
                                          consolidating=True), self.model)
                self.model.train()
                if stop:
                    break
        return divs, tokens

    def declines(self, experiences: Sequence[Experience]) -> dict[str, LetterSplit]:
        """The experiences ``learn`` would leave out (``ELConfig.decline_letter_led``), by their
        ids as given (rotations and rewordings go with their experience), with each one's split
        averaged over its wordings; no step is taken. It prepares the
        update as ``learn`` does (same seed), so for a ``response='samples'`` objective it
        samples."""
        self._seed()
        return self._prepare(list(experiences)).declined

    def _prepare(self, experiences: Sequence[Experience]) -> _Prepared:
        """Augment the experiences, build their student/teacher pairs and their neighbour
        anchors, and leave out the letter-led ones (with ``decline_letter_led``, when the
        update has every rotation of a question and a teacher)."""
        cfg, tok = self.cfg, self.tok
        kinds = parse_augment(cfg.augment)
        experiences = list(experiences)
        with self.teacher.active() as base:
            neighbours = from_main(neighbour_anchor_pairs(
                base, tok, experiences, cfg.anchor_neighbours, seed=cfg.seed)) \
                if cfg.anchor_weight > 0 else []
            if "paraphrase" in kinds:  # first, so each rewording is rotated too
                experiences = paraphrase(base, tok, experiences, cfg.paraphrase_copies,
                                         seed=cfg.seed)
        experiences = augment(experiences, "rotate_options" if "rotate_options" in kinds
                              else "none", cfg.augment_copies)
        with self.teacher.active() as base:
            if cfg.reflect:  # after augmentation: each variant reflects on its own option order
                experiences = reflect(base, tok, experiences,
                                      max_new_tokens=cfg.reflect_max_new_tokens)
            pairs = from_main(self.objective.prepare(base, tok, experiences, cfg))
        declined: dict[str, LetterSplit] = {}
        if cfg.decline_letter_led and "rotate_options" in kinds and cfg.distils_teacher:
            splits = experience_splits(letter_splits(pairs, experiences, tok, self.teacher,
                                                     cfg.micro_batch_size), experiences)
            declined = {f: s for f, s in splits.items() if s.letter_led}
        if declined:  # an experience goes with every rotation and rewording of it
            by_id = {e.id: e for e in experiences}
            pairs = [p for p in pairs if source_id(by_id[p.experience_id], by_id) not in declined]
            experiences = [e for e in experiences if source_id(e, by_id) not in declined]
            neighbours = [p for p in neighbours if p.experience_id not in declined]
        return _Prepared(experiences, pairs, neighbours, declined)

    def _nothing_learned(self, n_given: int, declined: dict[str, LetterSplit],
                         start: float) -> LearnResult:
        """Every experience was declined: no step, the model as it was."""
        self.result = LearnResult(
            steps=0, stopped_early=False, n_experiences=n_given, n_pairs=0, gaps_before=[],
            gaps_after=[], retention=None, losses=[], divergences=[], student_tokens=0,
            seconds=time.perf_counter() - start, config=self.cfg.to_dict(), declined=declined)
        return self.result

    def _letter_prior(self, pairs: list[Pair], experiences: Sequence[Experience]) -> list[Pair]:
        """The pairs with the student's letter preference in the teacher's place, unless
        ``letter_prior='teacher'`` (:mod:`experiential.letter_prior`)."""
        if self.cfg.letter_prior == "teacher":
            return pairs
        return student_letter_prior(pairs, experiences, self.tok, self.teacher,
                                    self.cfg.micro_batch_size,
                                    match=self.cfg.letter_prior.removeprefix("student_"))

    # -- saving --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save the adapter (a standard PEFT adapter directory) or the full model, plus
        ``learn_report.json`` with every measured number and the config."""
        path = Path(path)
        if self.result is not None:
            self.result.adapter_path = str(path)
        state = process_state()
        if state is None or state.is_main_process:  # every process holds the same weights
            path.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(path, safe_serialization=True)
            if not self.cfg.lora:
                self.tok.save_pretrained(path)
            if self.result is not None:
                (path / "learn_report.json").write_text(json.dumps(self.result.to_dict(), indent=2))
        if state is not None:
            state.wait_for_everyone()  # the files exist on return, on every process
        return path


def _extra(experiences: Sequence[Experience], cfg: ELConfig) -> dict[str, Any]:
    """What the model itself wrote for the update (reflections, paraphrases), for the report."""
    extra: dict[str, Any] = {}
    if cfg.reflect:
        extra["reflections"] = {e.id: e.metadata["reflection"] for e in experiences
                                if "reflection" in e.metadata}
    if "paraphrase" in parse_augment(cfg.augment):
        extra["paraphrases"] = {e.id: e.prompt_text for e in experiences
                                if "paraphrase" in e.metadata and "rotation" not in e.metadata}
        extra["paraphrases_kept"] = sum(e.metadata.get("paraphrases_kept", 0)
                                        for e in experiences if "augmented_from" not in e.metadata)
    return extra


def _n_response(pairs: Sequence[Pair]) -> int:
    return sum(len(p.student.response) for p in pairs)


def _cycle(items: Sequence[Pair], seed: int) -> Iterator[Pair]:
    """Endless stream over items, reshuffled on every pass (deterministic given the seed)."""
    rng = random.Random(seed)
    items = list(items)
    while items:
        order = items[:]
        rng.shuffle(order)
        yield from order


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="EL update", unit="step")


def _steps(passes: float, n_pairs: int, batch_size: int) -> int:
    """Optimizer steps for ``passes`` passes over ``n_pairs`` pairs (a step sees at most all)."""
    return math.ceil(passes * n_pairs / min(batch_size, n_pairs))


def _gap_closed(divergences: list[float], steps_per_pass: int, cfg: ELConfig) -> bool:
    """The stop rule: the mean divergence over the last pass over the data is below ``stop_kl``
    and below ``stop_kl_fraction`` of the first pass's. Averaged over a pass, because with many
    experiences one batch of easy ones would otherwise end the update early."""
    if len(divergences) < steps_per_pass:
        return False
    recent = sum(divergences[-steps_per_pass:]) / steps_per_pass
    first = sum(divergences[:steps_per_pass]) / steps_per_pass
    return recent == recent and recent < cfg.stop_kl and recent < cfg.stop_kl_fraction * first


def learn(model: Any, tokenizer: Any, experiences: Sequence[Experience],
          config: ELConfig | None = None, **kwargs: Any) -> tuple[Any, LearnResult]:
    """One-call EL update: returns the updated (adapter-wrapped) model and the result."""
    trainer = ExperientialTrainer(model, tokenizer, config, **kwargs)
    return trainer.model, trainer.learn(experiences)
