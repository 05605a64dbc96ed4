"""Whose preference among answer letters the teacher passes on: its own, or the student's.

Rotating a question's options (``augment="rotate_options"``) puts its content under every letter,
so no *letter* is taught as the answer. It does not cancel the teacher's own preference among the
letters: shown an explanation, Qwen2.5-Coder-0.5B puts more mass on B whatever the content
(teacher minus student letter mass, averaged over a question and its 3 rotations, over 50
benchmark questions: B +.092; ``bench/letter_prior.py``), and the explanation updates' drift on
unrelated questions went the same way on all four letters.

Per question, the same average taken by option content and by letter separates the two
(:func:`content_and_letter_shift`): over those 50 explanation experiences the content the
teacher raises most is the true answer in every one, but in 11 a letter as such gains more, and
these include 10 of the 13 whose teacher had no gap on the true answer as asked.
``ELConfig.decline_letter_led`` (on by default) leaves such experiences out of an update
(:func:`letter_splits`).

With every rotation of a question in the update, two ways to give the teacher the student's
letter preference instead (``ELConfig.letter_prior``), each keeping the teacher's total mass on
the letters:

- ``student_log``: the teacher's letter log-probabilities split into a part that follows the
  content and a part that stays with the letter. Averaging them over the rotations *by content*
  removes the letter part; adding the student's own (the frozen model in the student context,
  averaged over the rotations *by letter*) puts back the preference the student already has.
- ``student_mass``: one weight per letter, shared by the rotations, rescales the teacher's
  letters so that, summed over the rotations, the target's letter distribution is the
  student's. Under the log split a confident teacher (letter feedback) stays close to one-hot,
  so summed over the rotations its target puts the same mass on every letter and a student
  that matched it would have lost its letter preference on that question; this keeps the
  preference, at the cost of some confidence where the content sits under a letter the
  student dislikes. Measured on 3 letter experiences it is the worse of the two: a fifth less
  transfer, and keeping the preference within the question pushed unrelated questions toward
  the student's favourite letter (``reports/specificity.md``).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, Sequence

import torch

from .augment import find_options, source_id
from .experience import Experience
from .focus import answer_focus
from .scoring import split_options
from .tokens import collate


@dataclass(frozen=True)
class LetterTarget:
    """The teacher's answer-letter distribution to distil at one response position."""

    position: int
    """Index into the response tokens."""
    token_ids: tuple[int, ...]
    """One token per option letter, in letter order."""
    logprobs: tuple[float, ...]
    """Teacher log-probabilities for those tokens (their total mass is the teacher's own)."""


def apply_letter_targets(logits: torch.Tensor, pairs: Sequence[Any]) -> torch.Tensor:
    """Teacher logits (``[n_response_tokens, vocab]``, pairs concatenated), each pair's
    :class:`LetterTarget` row replaced in place by log-probabilities with the letters' entries
    set (the other tokens keep theirs: the letters' total mass is the teacher's own)."""
    offset = 0
    for p in pairs:
        t = p.letter_target
        if t is not None:
            row = torch.log_softmax(logits[offset + t.position].float(), -1)
            row[list(t.token_ids)] = torch.tensor(t.logprobs, dtype=row.dtype, device=row.device)
            logits[offset + t.position] = row.to(logits.dtype)
        offset += len(p.student.response)
    return logits


def letter_position(tok: Any, response: Sequence[int], n: int) -> tuple[int, list[int]] | None:
    """Where the response states its answer letter, and the token of each of the first ``n``
    letters in that place (with the same leading space), or None."""
    focus = answer_focus(tok, response)
    if focus is None:
        return None
    pos = focus.index(True)
    piece = tok.decode([response[pos]])
    letter = piece.strip()
    letters = [chr(ord("A") + i) for i in range(n)]
    if letter not in letters:
        return None
    lead = piece[:len(piece) - len(piece.lstrip())]
    try:
        _, ids = split_options(tok, tok.decode(list(response[:pos])), [lead + x for x in letters])
    except ValueError:
        return None
    if any(len(i) != 1 for i in ids) or ids[letters.index(letter)][0] != response[pos]:
        return None
    return pos, [i[0] for i in ids]


def _family(exp: Experience) -> tuple[str, int]:
    """(the experience its rotations share, this one's rotation)."""
    if "rotation" in exp.metadata:
        return str(exp.metadata["augmented_from"]), int(exp.metadata["rotation"])
    return exp.id, 0


class _Answer(NamedTuple):
    position: int
    token_ids: list[int]
    family: str
    rotation: int
    n: int


@dataclass(frozen=True)
class _LetterRows:
    """The teacher's and the frozen student's log-probabilities of the answer letters, for the
    pairs whose question has every rotation among the pairs."""

    answers: dict[int, _Answer]
    """Pair index -> where its response states the letter."""
    teacher_lp: dict[int, torch.Tensor]
    student_lp: dict[int, torch.Tensor]

    def families(self) -> dict[str, tuple[list[int], list[int]]]:
        """Question -> (pair indices, each one's rotation), rotations in order."""
        by: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for k, a in sorted(self.answers.items(), key=lambda x: (x[1].rotation, x[0])):
            by[a.family].append((k, a.rotation))
        return {f: ([k for k, _ in v], [r for _, r in v]) for f, v in by.items()}


@torch.no_grad()
def _letter_rows(pairs: Sequence[Any], experiences: Sequence[Experience], tok: Any, teacher: Any,
                 micro_batch_size: int, why: str) -> _LetterRows:
    """Score the answer letters, teacher and student, on every multiple-choice pair whose
    question has all its rotations among the pairs; warn (naming ``why``) about the others."""
    by_id = {e.id: e for e in experiences}
    device = next(teacher.model.parameters()).device
    pad = tok.pad_token_id
    found: dict[int, _Answer] = {}
    no_letter = 0
    for k, p in enumerate(pairs):
        exp = by_id.get(p.experience_id)
        opts = find_options(exp.prompt_text) if exp is not None else None
        if p.kind != "experience" or opts is None:
            continue
        n = len(opts[1])
        where = letter_position(tok, p.student.response, n)
        if where is None:
            no_letter += 1
            continue
        family, rotation = _family(exp)
        found[k] = _Answer(where[0], where[1], family, rotation, n)
    rotations: dict[str, set[int]] = defaultdict(set)
    for a in found.values():
        rotations[a.family].add(a.rotation)
    complete = {k: a for k, a in found.items() if rotations[a.family] == set(range(a.n))}
    if no_letter or len(complete) < len(found):
        warnings.warn(
            f"{why}: {no_letter} multiple-choice responses state no single answer "
            f"letter and {len(found) - len(complete)} lack a rotation of their question "
            f"(augment_copies must cover every option)", stacklevel=3)
    idx = sorted(complete)
    teacher_lp, student_lp = {}, {}
    for c in range(0, len(idx), micro_batch_size):
        chunk = [pairs[k] for k in idx[c:c + micro_batch_size]]
        t_rows = teacher.pair_logits(chunk, pad, device)
        s_rows = teacher.logits(collate([p.student for p in chunk], pad).to(device))
        offset = 0
        for k, p in zip(idx[c:c + micro_batch_size], chunk):
            pos, ids = complete[k].position, complete[k].token_ids
            teacher_lp[k] = torch.log_softmax(t_rows[offset + pos].float(), -1)[ids]
            student_lp[k] = torch.log_softmax(s_rows[offset + pos].float(), -1)[ids]
            offset += len(p.student.response)
    return _LetterRows(complete, teacher_lp, student_lp)


def student_letter_prior(pairs: Sequence[Any], experiences: Sequence[Experience], tok: Any,
                         teacher: Any, micro_batch_size: int = 4,
                         match: Literal["log", "mass"] = "log") -> list[Any]:
    """The pairs, each answering a multiple-choice question whose every rotation is among them
    given a :class:`LetterTarget` that carries the student's letter preference instead of the
    teacher's (``match``: ``log`` or ``mass``, see the module docstring). Others are returned
    unchanged, with a warning saying how many and why."""
    rows = _letter_rows(pairs, experiences, tok, teacher, micro_batch_size,
                        "letter_prior (their teacher keeps its own letter preference)")
    out = list(pairs)
    for ks, shifts in rows.families().values():
        t = torch.stack([rows.teacher_lp[k] for k in ks])
        st = torch.stack([rows.student_lp[k] for k in ks])
        targets = _log_targets(t, st, shifts) if match == "log" else _mass_targets(t, st)
        for k, row in zip(ks, targets):
            a = rows.answers[k]
            out[k] = replace(pairs[k], letter_target=LetterTarget(
                a.position, tuple(a.token_ids), tuple(float(x) for x in row)))
    return out


def content_and_letter_shift(teacher_probs: torch.Tensor, student_probs: torch.Tensor,
                             shifts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher minus student probability over the letters (rows ``[pairs, n]``, each pair's
    letters renormalised), averaged over the question's rotations two ways: by option content
    (entry i: the option at letter i of the unrotated question, wherever a rotation put it) and by
    letter. Pairs of one rotation count together. A shift that follows the content (the feedback
    is about an option) shows in the first; one that stays with a letter whatever it holds (a
    preference for the letter itself) in the second."""
    d = teacher_probs / teacher_probs.sum(1, keepdim=True) - \
        student_probs / student_probs.sum(1, keepdim=True)
    return _rotation_means(d, shifts)


def _rotation_means(rows: torch.Tensor, shifts: Sequence[int]) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """``rows`` (``[pairs, n]``, one per pair, each from a rotation in ``shifts``) averaged
    over the rotations by option content (entry i: the option at letter i of the unrotated
    question) and by letter; pairs of one rotation are averaged first, so each rotation counts
    once."""
    n = rows.shape[1]
    rotations = sorted(set(shifts))
    content, letter = torch.zeros(n), torch.zeros(n)
    for r in rotations:
        mean = rows[[j for j, x in enumerate(shifts) if x == r]].mean(0)
        # option i sits under letter (i + r) % n in rotation r
        content += mean[[(i + r) % n for i in range(n)]] / len(rotations)
        letter += mean / len(rotations)
    return content, letter


@dataclass(frozen=True)
class LetterSplit:
    """How a multiple-choice experience's teacher moves the answer letters, over its rotations
    (:func:`content_and_letter_shift`)."""

    content: tuple[float, ...]
    letter: tuple[float, ...]

    @property
    def letter_led(self) -> bool:
        """The letter the teacher raises most, as such, gains more than any option's content:
        what would be distilled is mostly a preference for a letter."""
        return max(self.letter) > max(self.content)

    def describe(self) -> str:
        c, lt = max(range(len(self.content)), key=self.content.__getitem__), \
            max(range(len(self.letter)), key=self.letter.__getitem__)
        return (f"teacher raises option {chr(65 + c)}'s content by {self.content[c]:+.3f} and "
                f"the letter {chr(65 + lt)} as such by {self.letter[lt]:+.3f}")


def letter_splits(pairs: Sequence[Any], experiences: Sequence[Experience], tok: Any,
                  teacher: Any, micro_batch_size: int = 4) -> dict[str, LetterSplit]:
    """Per multiple-choice experience (the id its rotations share) whose every rotation is
    among the pairs: the teacher's shift split into content and letter parts."""
    rows = _letter_rows(pairs, experiences, tok, teacher, micro_batch_size,
                        "decline_letter_led (they cannot be checked and are kept)")
    out = {}
    for family, (ks, shifts) in rows.families().items():
        t = torch.stack([rows.teacher_lp[k] for k in ks]).exp()
        s = torch.stack([rows.student_lp[k] for k in ks]).exp()
        content, letter = content_and_letter_shift(t, s, shifts)
        out[family] = LetterSplit(tuple(round(float(x), 6) for x in content),
                                  tuple(round(float(x), 6) for x in letter))
    return out


def experience_splits(splits: dict[str, LetterSplit], experiences: Sequence[Experience]
                      ) -> dict[str, LetterSplit]:
    """:func:`letter_splits` per experience as given: the splits of its wordings (the question
    and its rewordings, each averaged over its rotations) averaged, each wording counting once,
    so that the decline rule keeps or leaves out a whole experience. Judged alone, one rewording
    could be left out while the original is learned, or the reverse."""
    by_id = {e.id: e for e in experiences}
    groups: dict[str, list[LetterSplit]] = defaultdict(list)
    for family, split in splits.items():
        groups[source_id(by_id[family], by_id) if family in by_id else family].append(split)
    return {root: LetterSplit(*(tuple(round(sum(xs) / len(xs), 6) for xs in zip(*parts))
                                for parts in ([s.content for s in ss], [s.letter for s in ss])))
            for root, ss in groups.items()}


def _log_targets(teacher_lp: torch.Tensor, student_lp: torch.Tensor,
                 shifts: Sequence[int]) -> torch.Tensor:
    """``match="log"``: the teacher's letter log-probabilities averaged over the rotations by
    content, plus the student's averaged by letter (pairs of one rotation count together), so
    the target's *geometric-mean* letter preference is the student's. Rows ``[pairs, n]`` of
    log-probabilities with each pair's teacher letter mass."""
    n = teacher_lp.shape[1]
    content, _ = _rotation_means(torch.log_softmax(teacher_lp, -1), shifts)
    _, letter = _rotation_means(torch.log_softmax(student_lp, -1), shifts)
    mass = torch.logsumexp(teacher_lp, -1, keepdim=True)
    return torch.stack([torch.log_softmax(content[[(x - r) % n for x in range(n)]] + letter, -1)
                        for r in shifts]) + mass


def _mass_targets(teacher_lp: torch.Tensor, student_lp: torch.Tensor,
                  iterations: int = 1000) -> torch.Tensor:
    """``match="mass"``: each pair's teacher letters reweighted by one factor per letter, shared
    by the question's rotations, so that summed over them the target's letter distribution is the
    student's (in proportion; each pair keeps the teacher's letter mass): once the student
    matches the target, its letter preference over the question's rotations is where it
    started. Solved by alternating scaling (Sinkhorn): rows keep the teacher's letter mass,
    columns reach the student's shares."""
    t, p = teacher_lp.exp().double(), student_lp.exp().double()
    mass = t.sum(1, keepdim=True)
    col = p.sum(0) / p.sum() * mass.sum()
    w = torch.ones(t.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        q = t * w
        q = q / q.sum(1, keepdim=True) * mass
        ratio = q.sum(0) / col
        if float((ratio - 1).abs().max()) < 1e-9:
            break
        w = w / ratio
    return q.log().float()
