"""Signal extractors: how a batch of experiences becomes a loss. Chosen by ``ELConfig.objective``."""

from __future__ import annotations

from .base import Objective, Pair, TeacherModel
from .revise_then_distill import SFT, ReviseThenDistill
from .self_distill import SelfDistill

OBJECTIVES: dict[str, type] = {"self_distill": SelfDistill,
                               "revise_then_distill": ReviseThenDistill, "sft": SFT}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]()
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}") from None


__all__ = ["OBJECTIVES", "Objective", "Pair", "ReviseThenDistill", "SFT", "SelfDistill",
           "TeacherModel", "get_objective"]
