"""Paraphrase augmentation: the frozen model rewrites the task; each rewrite is a variant of the
experience with the same attempt and feedback. Mechanics on a tiny model built from a config."""

import pytest

from experiential.config import ELConfig
from experiential.experience import Experience
from experiential.paraphrase import clean, paraphrase, split_stem
from experiential.trainer import ExperientialTrainer

MC = Experience("Which planet is the largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\n"
                "Answer with the letter of the correct option.", "The answer is A.",
                "The correct answer is B.", id="mc")
OPEN = Experience([{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Who wrote Hamlet?"}],
                  "Charles Dickens.", "Wrong: it was William Shakespeare.", id="open")


def test_split_stem_keeps_options_and_instruction():
    stem, kept = split_stem(MC.prompt_text)
    assert stem == "Which planet is the largest?"
    assert kept.startswith("\nA. Mars") and kept.endswith("correct option.")
    assert split_stem("Who wrote Hamlet?") == ("Who wrote Hamlet?", "")


def test_clean_rejects_copies_empties_and_answers():
    assert clean("Rewritten text: \"Who is the author of Hamlet?\"", "Who wrote Hamlet?") == \
        "Who is the author of Hamlet?"
    assert clean("  who wrote hamlet?  ", "Who wrote Hamlet?") is None
    assert clean("", "Who wrote Hamlet?") is None
    assert clean("x" * 200, "Who wrote Hamlet?") is None


def test_paraphrase_variants_keep_attempt_feedback_and_options(tiny_model, tiny_tokenizer):
    out = paraphrase(tiny_model, tiny_tokenizer, [MC, OPEN], copies=3, seed=0)
    again = paraphrase(tiny_model, tiny_tokenizer, [MC, OPEN], copies=3, seed=0)
    assert [e.prompt for e in out] == [e.prompt for e in again]  # seeded: reproducible
    originals = [e for e in out if "augmented_from" not in e.metadata]
    assert [e.id for e in originals] == ["mc", "open"]
    variants = [e for e in out if "augmented_from" in e.metadata]
    assert variants  # the tiny model's rewrites of the MC stem are short enough to keep
    assert len(variants) == sum(e.metadata["paraphrases_kept"] for e in originals)
    for v in variants:
        src = MC if v.metadata["augmented_from"] == "mc" else OPEN
        assert v.id.startswith(src.id + "~para")
        assert (v.attempt, v.feedback) == (src.attempt, src.feedback)
        assert v.prompt_text != src.prompt_text
        if src is MC:  # only the stem is reworded
            assert v.prompt_text.endswith(split_stem(MC.prompt_text)[1])
        else:  # the system message stays; the user turn is the rewrite
            assert v.messages[0] == OPEN.messages[0] and len(v.messages) == 2


def test_trainer_learns_every_rewording_rotated(tiny_model, tiny_tokenizer):
    # decline_letter_led off: on the random tiny model it may leave a wording out
    cfg = ELConfig(augment="rotate_options+paraphrase", paraphrase_copies=2, max_steps=1,
                   decline_letter_led=False, progress=False, retention=False, anchor_weight=0.0,
                   lora_r=4, lora_alpha=8)
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg)
    result = trainer.learn([MC])
    kept = result.extra["paraphrases_kept"]
    assert result.n_pairs == 4 * (1 + kept)  # each wording under all four rotations
    assert len(result.extra["paraphrases"]) == kept


def test_unknown_augmentation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown augmentation"):
        ELConfig(augment="rotate_options+shuffle")


@pytest.mark.parametrize("original_led", [True, False])
def test_decline_rule_keeps_or_leaves_out_an_experience_with_all_its_rewordings(
        tiny_model, tiny_tokenizer, monkeypatch, original_led):
    """The decline rule judges an experience over its wordings together: a rewording is never
    learned while its original is left out, nor the reverse. The splits are given (the random
    tiny model's own are arbitrary) so that each wording alone would be judged the other way
    from the average over the wordings, which decides."""
    import experiential.trainer as trainer_module
    from experiential.letter_prior import LetterSplit

    b = lambda x: (0.0, x, 0.0, 0.0)  # noqa: E731  a shift of x on B
    if original_led:  # the original strongly letter-led, each rewording weakly content-led
        original, rewording = LetterSplit(b(0.0), b(0.3)), LetterSplit(b(0.05), b(0.0))
    else:  # the original weakly letter-led, each rewording strongly content-led
        original, rewording = LetterSplit(b(0.0), b(0.05)), LetterSplit(b(0.3), b(0.0))
    assert original.letter_led and not rewording.letter_led
    wordings = []

    def given_splits(pairs, experiences, *a, **k):
        wordings.extend(e.id for e in experiences if "rotation" not in e.metadata)
        return {w: original if w == "mc" else rewording for w in wordings}

    monkeypatch.setattr(trainer_module, "letter_splits", given_splits)
    cfg = ELConfig(augment="rotate_options+paraphrase", paraphrase_copies=2, max_steps=1,
                   progress=False, retention=False, anchor_weight=0.0, lora_r=4, lora_alpha=8)
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg)
    result = trainer.learn([MC])
    trainer.model.unload()
    n = len(wordings)  # the original and its kept rewordings, each judged
    assert n in (2, 3) and wordings[0] == "mc", wordings
    if original_led:  # the mean letter part (.3 / n) beats the mean content part (.05 (n-1) / n)
        assert set(result.declined) == {"mc"} and result.declined["mc"].letter_led
        assert result.n_pairs == 0 and result.steps == 0 and "learned from 0 of 1" in \
            result.summary()
    else:
        assert result.declined == {} and result.n_pairs == 4 * n and result.steps == 1
