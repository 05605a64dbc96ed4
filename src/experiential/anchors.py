"""Replay anchors: unrelated prompts on which the student is held to the original model.

An anchor is a pair whose teacher context equals the student context, so the teacher is simply the
frozen original model; the response is the original model's own answer. Mixed into every step, the
anchors penalise any drift the experiences would cause elsewhere (the "answer A to everything"
failure), while the experiences' own prompts are free to move.

Generic anchors do not cover the *neighbourhood* of an experience. Learning "The Master and
Margarita was written by Bulgakov, not Tolstoy" from one correction moved Qwen2.5-Coder-0.5B to
answer Bulgakov to "Who wrote War and Peace?" too (``bench/paraphrase.py``, the contrast column),
while the generic anchors and probes barely moved. *Neighbour anchors* are questions of the same
kind about other things, written by the frozen model for each experience, with the frozen model's
own answers: they hold the pattern ("who wrote X?") in place so that only the content of the
experience can change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from .experience import Message
from .generation import generate
from .objectives.base import Pair
from .scoring import option_probs
from .tokens import Sequence_, context_ids, response_ids


def default_anchor_prompts() -> tuple[list[list[Message]], list[list[Message]]]:
    """(multiple-choice prompts, open chat prompts) of the built-in anchor set."""
    from .probes import ANCHOR_CHAT, ANCHOR_MC
    from .tasks.mc import format_mc

    mc = [[{"role": "user", "content": format_mc(q)}] for q in ANCHOR_MC]
    chat = [[{"role": "user", "content": p}] for p in ANCHOR_CHAT]
    return mc, chat


def exam_anchor_prompts(n: int | None = None) -> tuple[list[list[Message]], list[list[Message]]]:
    """(multiple-choice prompts, open chat prompts) of the built-in *exam* anchor set: the first
    ``n`` (default all 208) exam-style questions written for the library
    (:func:`experiential.probes.exam_questions`) in place of the everyday ones, and the same chat
    prompts."""
    from .probes import exam_questions
    from .tasks.mc import format_mc

    mc = [[{"role": "user", "content": format_mc(q)}] for q in exam_questions()[:n]]
    return mc, default_anchor_prompts()[1]


MC_ANCHOR_MAX_TOKENS = 192
"""Longest prompt (tokens) of a benchmark question used as a replay anchor."""


def mc_anchor_prompts(tok: Any, questions: Sequence[Any], max_tokens: int = MC_ANCHOR_MAX_TOKENS
                      ) -> list[list[Message]]:
    """Multiple-choice anchors from benchmark questions (e.g. the MMLU *dev* split, disjoint from
    the test split a run learns and is probed on): the four-option ones whose prompt is at most
    ``max_tokens`` tokens, formatted as the probes are. Replay anchors drawn from the probes'
    distribution (251 MMLU dev questions instead of the 24 built-in everyday ones) halved the
    retention KL of explanation updates (``reports/specificity.md``, setting ``dev_anchors``);
    the length cap keeps a step's anchors from costing more than its experiences."""
    from .tasks.mc import format_mc

    out = []
    for q in questions:
        msgs = [{"role": "user", "content": format_mc(q)}]
        if len(q.choices) == 4 and len(context_ids(tok, msgs)) <= max_tokens:
            out.append(msgs)
    return out


def mmlu_dev_anchor_pairs(model: Any, tok: Any, *, data_dir: str | None = None,
                          allow_download: bool = False) -> tuple[list[Pair], int]:
    """The ``mmlu_dev`` anchor set, and how many of its pairs are dev questions:
    :func:`mc_anchor_prompts` of the MMLU dev split plus the built-in chat prompts, answered by
    ``model``. Call it on the base model, before a trainer wraps it: the anchors hold the update
    to what the original model said."""
    from .tasks.data import load_mmlu

    dev = mc_anchor_prompts(tok, load_mmlu("dev", data_dir=data_dir,
                                           allow_download=allow_download))
    if not dev:
        raise ValueError("anchors='mmlu_dev': no four-option MMLU dev question of at most "
                         f"{MC_ANCHOR_MAX_TOKENS} prompt tokens")
    return build_anchor_pairs(model, tok, dev, default_anchor_prompts()[1]), len(dev)


def load_anchor_prompts(path: str | Path) -> list[list[Message]]:
    """Open prompts (``{"prompt": text or messages}`` per line) from a JSONL file."""
    return [_prompt(d, path, i) for i, d in _json_lines(path)]


def _json_lines(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, parsed object) for every non-blank line."""
    with open(path, encoding="utf-8") as f:
        return [(i, json.loads(line)) for i, line in enumerate(f, 1) if line.strip()]


def _prompt(d: dict, path: str | Path, line: int) -> list[Message]:
    p = d.get("prompt")
    if isinstance(p, str):
        p = [{"role": "user", "content": p}]
    if not isinstance(p, list):
        raise ValueError(f"{path}, line {line}: expected a 'prompt' string or messages")
    return p


def load_anchor_file(path: str | Path) -> tuple[list[list[Message]], list[list[Message]]]:
    """(multiple-choice prompts, open prompts) from a JSONL of anchors. A line with ``question``
    and ``choices`` is a multiple-choice anchor (formatted as the probes and the benchmarks are,
    answered with the frozen model's most likely letter); a line with ``prompt`` (text or chat
    messages) is an open one."""
    from .tasks.mc import MCQuestion, format_mc

    mc: list[list[Message]] = []
    chat: list[list[Message]] = []
    for i, d in _json_lines(path):
        if "question" in d or "choices" in d:
            try:
                q = MCQuestion(question=d["question"], choices=list(d["choices"]),
                               answer=int(d.get("answer", 0)))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}, line {i}: a multiple-choice anchor needs question and "
                                 f"choices ({e})") from None
            mc.append([{"role": "user", "content": format_mc(q)}])
        if "prompt" in d:
            chat.append(_prompt(d, path, i))
    if not mc and not chat:
        raise ValueError(f"{path}: no anchors (lines need 'prompt', or 'question' and 'choices')")
    return mc, chat


def build_anchor_pairs(model: Any, tok: Any, mc_prompts: Sequence[list[Message]],
                       chat_prompts: Sequence[list[Message]], *, max_new_tokens: int = 24,
                       progress: bool = False) -> list[Pair]:
    """Anchor pairs with the original model's own responses: ``"The answer is X"`` with X its most
    likely letter for multiple-choice prompts, a short greedy answer for chat prompts."""
    pairs: list[Pair] = []
    if mc_prompts:
        from .tasks.mc import LETTERS

        probs = option_probs(model, tok, mc_prompts)
        for msgs, p in zip(mc_prompts, probs):
            pairs.append(_pair(tok, msgs, f"The answer is {LETTERS[int(p.argmax())]}."))
    if chat_prompts:
        outs = generate(model, tok, chat_prompts, max_new_tokens=max_new_tokens, progress=progress)
        for msgs, o in zip(chat_prompts, outs):
            if o[0].strip():
                pairs.append(_pair(tok, msgs, o[0]))
    return pairs


NEIGHBOUR_TEMPLATE = (
    "Here is a question:\n{text}\n\nWrite {k} different questions of the same kind and format "
    "about other, unrelated things. Write one question per line, with no numbering and no "
    "answers.")
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022]|Q\d*[:.])\s*")


# Function words, plus the genre nouns a restatement often drops ("Who wrote the novel X?" ->
# "Who wrote X?"); chosen on the open-facts benchmark's questions, so a heuristic, not a parser.
_STOP = {"a", "an", "the", "of", "in", "on", "is", "was", "what", "who", "which", "by", "to",
         "did", "does", "do", "and", "or", "for", "painting", "novel", "book"}


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP}


def neighbour_questions(text: str, original: str, k: int) -> list[str]:
    """Up to ``k`` distinct questions parsed from a model's reply, one per line. A line that
    restates the original (it has every content word of it) is not a neighbour: anchoring it
    would hold the very answer the experience corrects."""
    out: list[str] = []
    own = _content_words(original)
    for line in text.split("\n"):
        q = _NUMBERING.sub("", line).strip().strip('"').strip()
        if len(q) >= 8 and not own <= _content_words(q) and q not in out:
            out.append(q)
    return out[:k]


def neighbour_anchor_pairs(model: Any, tok: Any, experiences: Sequence[Any], k: int, *,
                           max_new_tokens: int = 32, seed: int = 0) -> list[Pair]:
    """For each experience, its own ``metadata["neighbours"]`` (prompts the user knows to be
    neighbours) plus ``k`` questions of the same kind about other things written by ``model`` (for
    a multiple-choice prompt, about its stem). Each neighbour gives two anchors: ``model``'s own
    greedy answer, and the experience's attempt as the response. Call with the frozen model."""
    from .paraphrase import split_stem

    owners = [(e.id, q) for e in experiences for q in e.metadata.get("neighbours", [])]
    if k > 0 and experiences:
        stems = [split_stem(e.prompt_text)[0] for e in experiences]
        longest = max(len(tok(s, add_special_tokens=False)["input_ids"]) for s in stems)
        asks = [[{"role": "user", "content": NEIGHBOUR_TEMPLATE.format(text=s, k=k)}]
                for s in stems]
        replies = generate(model, tok, asks, max_new_tokens=min(512, (k + 1) * (longest + 8)),
                           seed=seed)
        owners += [(e.id, q) for e, stem, (reply,) in zip(experiences, stems, replies)
                   for q in neighbour_questions(reply, stem, k)]
    if not owners:
        return []
    answers = generate(model, tok, [[{"role": "user", "content": q}] for _, q in owners],
                       max_new_tokens=max_new_tokens)
    attempts = {e.id: e.attempt.strip() for e in experiences}
    pairs = []
    for (eid, q), (a,) in zip(owners, answers):
        # The neighbour's own answer, and the experience's attempt read in the neighbour's
        # context: the second holds the very positions the update pushes on ("The answer is" ->
        # " Mikhail" vs " Leo") at the frozen model's distribution there.
        for response in (a, attempts[eid]):
            if response.strip():
                pair = _pair(tok, [{"role": "user", "content": q}], response)
                pair.experience_id, pair.kind, pair.prompt_text = eid, "neighbour", q
                pairs.append(pair)
    return pairs


def _pair(tok: Any, msgs: list[Message], response: str) -> Pair:
    ctx = context_ids(tok, msgs)
    resp = response_ids(tok, response)
    return Pair(Sequence_(ctx, resp), Sequence_(ctx, resp), experience_id="anchor", kind="anchor",
                response_text=response)
