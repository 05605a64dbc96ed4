"""Learning on the embedded default model, Qwen2.5-Coder-0.5B-Instruct (fp32, CPU).

One experience whose feedback says the answer is B moves the model's P(B) on that question, asked
*without* the feedback, well above where it started; a control experience claiming C moves it to C
instead. Both runs use the default ELConfig, and both must leave unrelated questions alone: the
retention probe's answer distributions stay within a stated KL bound and no answer letter gains
mass across the probes (the "answer B to everything" failure).
"""

import pytest
import torch

from experiential.config import ELConfig
from experiential.experience import Experience
from experiential.probes import PROBE_MC
from experiential.scoring import option_probs
from experiential.trainer import ExperientialTrainer

pytestmark = pytest.mark.slow

QUESTION = ("Which element has atomic number 74?\nA. Molybdenum\nB. Tungsten\nC. Tantalum\n"
            "D. Rhenium\nAnswer with the letter of the correct option.")
MSGS = [{"role": "user", "content": QUESTION}]
FEEDBACK = {"B": "Atomic number 74 is tungsten (W); tantalum is 73. The correct answer is B.",
            "C": "The correct answer is C."}
PROBES = PROBE_MC[:16]
# Bounds the default settings must meet (measured values are printed by the test).
MAX_MEAN_KL = 0.25  # nats, mean over probe questions, original vs updated letter distributions
MAX_LETTER_SHIFT = 0.10  # no letter may gain more than this mean probability across the probes


def run(qwen, target):
    model, tok = qwen
    before = option_probs(model, tok, [MSGS])[0]
    attempt = "The answer is C." if target == "B" else "The answer is A."
    exp = Experience(QUESTION, attempt, FEEDBACK[target], {"target": target})
    trainer = ExperientialTrainer(model, tok, ELConfig(progress=False), probes=PROBES)
    result = trainer.learn([exp])
    after = option_probs(trainer.model, tok, [MSGS])[0]
    trainer.model.unload()  # remove the LoRA layers: the base model is untouched for the next run
    assert not any("lora" in n for n, _ in model.named_modules())
    torch.testing.assert_close(option_probs(model, tok, [MSGS])[0], before)
    print(f"\ntarget {target}: P before {before.numpy().round(3)} after {after.numpy().round(3)}")
    print(result.summary())
    return before, after, result


def check_retention(result):
    r = result.retention
    shift = max(a - b for a, b in zip(r.letter_mass_after, r.letter_mass_before))
    assert r.mean_kl < MAX_MEAN_KL, r.describe()
    assert shift < MAX_LETTER_SHIFT, r.describe()
    assert r.accuracy_after >= r.accuracy_before - 1 / len(PROBES), r.describe()


def test_feedback_b_moves_probability_to_b(qwen):
    before, after, result = run(qwen, "B")
    gap = next(g for g in result.gaps_before if "~rot" not in g.experience_id)
    # what is distilled is what the feedback says: the teacher's favoured token is " B"
    assert gap.token == " B" and gap.p_teacher > 0.8 and gap.p_student < 0.4, gap.describe()
    assert before.argmax() != 1  # the model gets it wrong to begin with
    assert after[1] > 0.8 and after[1] > before[1] + 0.4
    check_retention(result)


def test_control_claim_c_moves_probability_to_c(qwen):
    before, after, result = run(qwen, "C")
    assert after[2] > 0.8 and after[2] > before[2] + 0.3
    assert after[1] < before[1]
    check_retention(result)


# Two explanation-only experiences from the MMLU test split, as the specificity benchmark words
# them. Shown the first, the teacher raises letter B whatever option it holds (abstract_algebra/40,
# true answer D); shown the second, it raises "Alveoli" under whichever letter (anatomy/114).
ALGEBRA = Experience(
    "Statement 1 | Every permutation is a cycle. Statement 2 | Every cycle is a permutation.\n"
    "A. True, True\nB. False, False\nC. True, False\nD. False, True\n"
    "Answer with the letter of the correct option.",
    "The answer is A.", 'That is not right. The correct answer is "False, True".', id="algebra")
LUNGS = Experience(
    "Which of the following allows gas exchange in the lungs?\nA. Alveoli\nB. Bronchi\n"
    "C. Bronchioles\nD. Capillaries\nAnswer with the letter of the correct option.",
    "The answer is C.", 'That is not right. The correct answer is "Alveoli".', id="lungs")


def test_decline_letter_led_leaves_out_an_experience_that_would_teach_a_letter(qwen):
    model, tok = qwen
    config = ELConfig(progress=False, max_steps=1, retention=False)  # declining is the default
    trainer = ExperientialTrainer(model, tok, config)
    assert set(trainer.declines([ALGEBRA, LUNGS])) == {"algebra"}  # the same check, no step
    result = trainer.learn([ALGEBRA, LUNGS])
    trainer.model.unload()
    print("\n" + result.summary())
    assert set(result.declined) == {"algebra"}
    split = result.declined["algebra"]
    assert max(range(4), key=split.letter.__getitem__) == 1, split  # the letter B as such
    assert result.n_pairs == 4  # the lungs question and its three rotations
    assert {g.experience_id.split("~")[0] for g in result.gaps_before} == {"lungs"}
    lungs = next(g for g in result.gaps_before if g.experience_id == "lungs")
    assert lungs.token == " A" and lungs.gap > 0.2, lungs.describe()  # what the feedback says

    # with every experience declined the update takes no step and the model stays as it was
    before = option_probs(model, tok, [ALGEBRA.messages])[0]
    trainer = ExperientialTrainer(model, tok, config)
    result = trainer.learn([ALGEBRA])
    after = option_probs(trainer.model, tok, [ALGEBRA.messages])[0]
    trainer.model.unload()
    assert result.steps == 0 and result.n_pairs == 0 and not result.losses
    assert "declined algebra" in result.summary() and "learned from 0 of 1" in result.summary()
    torch.testing.assert_close(after, before)
    trainer = ExperientialTrainer(model, tok, config.replace(decline_letter_led=False))
    kept = trainer.declines([ALGEBRA, LUNGS])
    trainer.model.unload()
    assert kept == {}
