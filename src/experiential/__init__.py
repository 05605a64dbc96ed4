"""experiential: Experiential Learning for Hugging Face causal LMs.

A model learns from token-space experience (its attempt at a task plus whatever came back: a
critique, a traceback, printed I/O, a user's correction) by distilling what it believes with the
experience in context into what it believes without it.
"""

from .config import ELConfig
from .experience import Experience, ExperienceError, load_jsonl, save_jsonl
from .store import ExperienceStore

__version__ = "0.1.0"

__all__ = ["ELConfig", "Experience", "ExperienceError", "ExperienceStore", "ExperientialTrainer",
           "LearnResult", "learn", "load_jsonl", "load_model", "save_jsonl"]


def __getattr__(name: str):  # torch-heavy parts load on first use, so `import experiential` is fast
    if name in ("ExperientialTrainer", "LearnResult", "learn"):
        from . import trainer

        return getattr(trainer, name)
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(name)
