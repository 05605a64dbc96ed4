"""Data parallelism over the processes that ``torchrun`` or ``accelerate launch`` start.

accelerate sets up the process group (NCCL on GPUs, gloo on CPU), tells each process its rank and
device, and does the collectives. Everything here is a no-op for a single process (``WORLD_SIZE``
unset or 1), so a plain ``python`` run behaves exactly as it did before data parallelism existed.

Why not DDP (``Accelerator.prepare``): DDP syncs gradients inside ``backward`` and needs every
process to run the same number of backward passes through its wrapper. An EL step is several
micro-batches plus an anchor pass, the teacher is the same module with its adapter disabled, and a
process can get no micro-batch at all (three pairs on four GPUs); so the step's gradients are summed
once, after its last backward. For a LoRA adapter that is a few MB per step.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from accelerate import PartialState


def process_state() -> PartialState | None:
    """accelerate's ``PartialState`` when this is one of several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    # accelerate only picks gloo (CPU processes) when asked for the CPU explicitly.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state if state.use_distributed else None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes: ``(0, 1)`` for a single process."""
    state = process_state()
    return (state.process_index, state.num_processes) if state else (0, 1)


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes files."""
    state = process_state()
    return state is None or state.is_main_process


def from_main(obj: Any) -> Any:
    """Rank 0's copy of a picklable object on every process.

    Pairs come from generation (samples, paraphrases, reflections, anchor answers), which need not
    be bitwise reproducible across GPUs; taking rank 0's makes every process shard the same list.
    """
    if process_state() is None:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def sync_start(params: Sequence[torch.Tensor]) -> None:
    """Give every process rank 0's trainable weights (as DDP does when it wraps a model)."""
    if process_state() is not None:
        from accelerate.utils import broadcast

        broadcast([p.data for p in params])


def sum_step(params: Sequence[torch.nn.Parameter], *numbers: float) -> list[float]:
    """Sum the gradients and the given numbers over all processes.

    Each process has already weighted its loss by its share of the global batch (a micro-batch of
    ``m`` pairs counts ``m / batch``), so the sum is the single-process gradient of the whole batch:
    the same average DDP takes, without DDP's division by the number of processes.
    """
    state = process_state()
    if state is None:
        return list(numbers)
    from accelerate.utils import reduce

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, g in zip(params, reduce(grads, reduction="sum")):
        p.grad = g
    totals = torch.tensor(numbers, dtype=torch.float64, device=state.device)
    return reduce(totals, reduction="sum").tolist()
