"""Surface-form augmentation, so an update attaches to the content of an experience, not its form.

Distilling "the correct answer is B" on one multiple-choice question teaches a small model "answer B"
everywhere (measured: an unrelated Paris question went from C to B). Showing the same experience
with its options rotated, so the right *content* sits under every letter in turn, leaves no letter
to learn: only the content that stays fixed can explain the teacher's distribution. The letters in
the feedback and the attempt are rewritten to follow their options.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .experience import Experience

_OPTION_LINE = re.compile(r"^([A-H])[.)]\s+(.*)$")
# Letters that refer to an option: "answer is B", "option (B)", "choice B", "(B)", "B." at the end.
_LETTER_REF = re.compile(
    r"(?P<pre>\b(?:answer(?: is)?|option|choice|letter|pick|select|chose|choose)\s*[:\-]?\s*\(?)"
    r"(?P<l>[A-H])(?P<post>\)?)(?![A-Za-z])"
    r"|(?P<pre2>\()(?P<l2>[A-H])(?P<post2>\))")


def find_options(text: str) -> tuple[list[int], list[str]] | None:
    """Line indices and letters of a consecutive A., B., C., ... option block, or None."""
    lines = text.split("\n")
    for start, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == "A":
            idx, letters = [], []
            for j in range(start, len(lines)):
                mm = _OPTION_LINE.match(lines[j])
                if not mm or mm.group(1) != chr(ord("A") + len(letters)):
                    break
                idx.append(j)
                letters.append(mm.group(1))
            if len(letters) >= 2:
                return idx, letters
    return None


def _remap_letters(text: str, mapping: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group("l"):
            return m.group("pre") + mapping.get(m.group("l"), m.group("l")) + m.group("post")
        return m.group("pre2") + mapping.get(m.group("l2"), m.group("l2")) + m.group("post2")

    return _LETTER_REF.sub(sub, text)


def rotate_options(exp: Experience, shift: int) -> Experience | None:
    """The experience with its options rotated by ``shift`` and letters in the feedback and the
    attempt rewritten to match; None when the prompt has no option block."""
    prompt = exp.prompt_text
    found = find_options(prompt)
    if found is None:
        return None
    idx, letters = found
    n = len(letters)
    lines = prompt.split("\n")
    texts = [_OPTION_LINE.match(lines[i]).group(2) for i in idx]  # type: ignore[union-attr]
    # option i moves to position (i + shift) % n
    mapping = {letters[i]: letters[(i + shift) % n] for i in range(n)}
    new_texts = [""] * n
    for i in range(n):
        new_texts[(i + shift) % n] = texts[i]
    for k, i in enumerate(idx):
        lines[i] = f"{letters[k]}. {new_texts[k]}"
    new_prompt = "\n".join(lines)
    if isinstance(exp.prompt, str):
        prompt_field: str | list = new_prompt
    else:
        msgs = exp.messages
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[last] = {"role": "user", "content": new_prompt}
        prompt_field = msgs
    return replace(exp, prompt=prompt_field, attempt=_remap_letters(exp.attempt, mapping),
                   feedback=_remap_letters(exp.feedback, mapping),
                   metadata=exp.metadata | {"augmented_from": exp.id, "rotation": shift},
                   id=f"{exp.id}~rot{shift}")


def source_id(exp: Experience, by_id: dict[str, Experience]) -> str:
    """The id of the experience ``exp`` was made from, through its rotations and rewordings
    (``metadata["augmented_from"]``, followed while the source is in ``by_id``): ``exp.id`` for
    an experience as given. The variants of one experience are one thing to keep or leave out."""
    seen = {exp.id}
    while (src := exp.metadata.get("augmented_from")) in by_id and src not in seen:
        exp = by_id[src]
        seen.add(exp.id)
    return exp.id


AUGMENTATIONS = ("rotate_options", "paraphrase")


def parse_augment(spec: str) -> set[str]:
    """``"none"``, one augmentation, or several joined by ``+`` (``"rotate_options+paraphrase"``)."""
    if spec in ("none", ""):
        return set()
    kinds = set(spec.split("+"))
    unknown = kinds - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)}; choose 'none' or any of "
                         f"{list(AUGMENTATIONS)} joined by '+'")
    return kinds


def augment(experiences: list[Experience], kind: str, copies: int) -> list[Experience]:
    """The experiences plus their augmented variants (``kind='rotate_options'``)."""
    if kind == "none" or copies <= 0:
        return list(experiences)
    if kind != "rotate_options":
        raise ValueError(f"unknown augmentation {kind!r}; choose 'none' or 'rotate_options'")
    out: list[Experience] = []
    for exp in experiences:
        out.append(exp)
        found = find_options(exp.prompt_text)
        if found is None:
            continue
        n = len(found[1])
        for shift in range(1, min(copies, n - 1) + 1):
            variant = rotate_options(exp, shift)
            if variant is not None:
                out.append(variant)
    return out
