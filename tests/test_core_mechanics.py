"""Mechanics of the EL update on a tiny Llama built from a config: token layout, masks, teacher vs
student views, padding invariance, learning direction, save/load, objectives, config."""

import json

import pytest
import torch

from experiential.config import ELConfig
from experiential.context import teacher_messages
from experiential.experience import Experience
from experiential.objectives.base import TeacherModel
from experiential.tokens import Sequence_, collate, response_logits
from experiential.retention import chat_probe_pairs
from experiential.trainer import ExperientialTrainer

EXP = Experience("What is the capital of France?", "The answer is A.",
                 "Wrong: the correct answer is C, Paris.", id="e1")


def cfg(**kw):
    # decline_letter_led off: on a random tiny model a multiple-choice experience may well be
    # "letter-led" and left out, which would hide the mechanics these tests are about
    base = dict(decline_letter_led=False, max_steps=3, batch_size=2, micro_batch_size=1,
                learning_rate=5e-3, progress=False,
                retention=False, anchor_weight=0.0, stop_kl=None, stop_min_epochs=0, lora_r=4,
                lora_alpha=8)
    base.update(kw)
    return ELConfig(**base)


def test_teacher_sees_feedback_student_does_not(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    trainer = ExperientialTrainer(tiny_model, tok, cfg())
    pairs = trainer.objective.prepare(tiny_model, tok, [EXP], trainer.cfg)
    (pair,) = pairs
    student = tok.decode(pair.student.context)
    teacher = tok.decode(pair.teacher.context)
    assert "Paris" not in student and "correct answer is C" not in student
    assert "correct answer is C, Paris" in teacher and EXP.prompt in teacher and EXP.prompt in student
    # the same response token ids follow both contexts, and they are the attempt's tokens
    assert pair.student.response == pair.teacher.response
    assert tok.decode(pair.student.response) == EXP.attempt
    # the default design does not show the failed attempt to the teacher
    assert "The answer is A" not in teacher


def test_designs_place_feedback_and_attempt():
    t = teacher_messages(EXP, "feedback_then_attempt")[-1]["content"]
    assert t.index("correct answer is C") < t.index("The answer is A")
    t = teacher_messages(EXP, "attempt_then_feedback")[-1]["content"]
    assert t.index("The answer is A") < t.index("correct answer is C")
    msgs = teacher_messages(EXP, "system_note")
    assert msgs[0]["role"] == "system" and "Paris" in msgs[0]["content"]
    assert msgs[1]["content"] == EXP.prompt
    custom = teacher_messages(EXP, template="{feedback} || {prompt}")[-1]["content"]
    assert custom == f"{EXP.feedback} || {EXP.prompt}"
    with pytest.raises(ValueError, match="unknown experience-context design"):
        teacher_messages(EXP, "nope")


def test_left_padding_matches_unpadded_forward(tiny_model):
    torch.manual_seed(0)
    a = Sequence_(list(range(5, 25)), [30, 31, 32])
    b = Sequence_(list(range(40, 46)), [50, 51, 52, 53, 54])
    batch = collate([a, b], pad_id=0)
    assert batch.response_mask.sum().item() == 8
    assert batch.response_tokens.tolist() == [30, 31, 32, 50, 51, 52, 53, 54]
    together = response_logits(tiny_model, batch)
    alone = torch.cat([response_logits(tiny_model, collate([s], 0)) for s in (a, b)])
    assert together.shape == (8, tiny_model.config.vocab_size)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    # and those rows are exactly the rows of a plain full forward that predict the response
    full = tiny_model(torch.tensor([a.ids])).logits[0]
    torch.testing.assert_close(together[:3], full[len(a.context) - 1:len(a) - 1], atol=1e-4,
                               rtol=1e-4)


def test_teacher_model_is_the_frozen_original(tiny_model, tiny_tokenizer):
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg(max_steps=2))
    batch = collate([Sequence_([1, 2, 3, 4], [5, 6])], 0)
    before = trainer.teacher.logits(batch)
    trainer.learn([EXP])
    after_teacher = trainer.teacher.logits(batch)
    student = response_logits(trainer.model, batch)
    torch.testing.assert_close(before, after_teacher)
    assert not torch.allclose(student, before, atol=1e-4)  # the adapter did move the student


@pytest.mark.parametrize("divergence, topk", [("forward_kl", None), ("reverse_kl", None),
                                              ("jsd", None), ("forward_kl", 16)])
def test_learning_closes_the_gap(tiny_model, tiny_tokenizer, divergence, topk):
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer,
                                  cfg(max_steps=25, divergence=divergence, topk=topk))
    result = trainer.learn([EXP])
    before = result.gaps_before[0].divergence
    after = result.gaps_after[0].divergence
    assert before > 0.01  # the feedback changes the tiny model's predictions
    assert after < 0.5 * before, (before, after)
    assert result.divergences[-1] < result.divergences[0]


def test_anchor_holds_unrelated_prompt(tiny_tokenizer):
    """With an anchor on a prompt, its distribution moves less than without."""
    from experiential.anchors import _pair
    from experiential.gap import measure_gaps

    drift = {}
    for weight in (0.0, 5.0):
        from conftest import build_tiny_model

        model = build_tiny_model(len(tiny_tokenizer), seed=1)
        anchor = _pair(tiny_tokenizer, [{"role": "user", "content": "What is 2+2?"}],
                       "The answer is D.")
        trainer = ExperientialTrainer(model, tiny_tokenizer,
                                      cfg(max_steps=20, anchor_weight=weight, anchor_per_step=1),
                                      anchor_pairs=[anchor])
        trainer.learn([EXP])
        drift[weight] = measure_gaps(trainer.model, tiny_tokenizer, [anchor], trainer.cfg,
                                     trainer.teacher)[0].divergence
    assert drift[5.0] < 0.5 * drift[0.0], drift


def test_early_stop_when_gap_closed(tiny_model, tiny_tokenizer):
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg(max_steps=200, stop_kl=0.05))
    result = trainer.learn([EXP])
    assert result.stopped_early and result.steps < 200
    assert result.divergences[-1] < 0.05


def test_early_stop_waits_for_the_minimum_passes(tiny_model, tiny_tokenizer):
    # The rule would end this update at its first steps (1e6 and a generous fraction); the
    # minimum number of passes holds it off: one experience, one pair per step, 5 passes.
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer,
                                  cfg(max_steps=20, stop_kl=1e6, stop_kl_fraction=0.99,
                                      stop_min_epochs=5, batch_size=1))
    result = trainer.learn([EXP])
    assert result.stopped_early and result.steps == 5


def test_early_stop_averages_over_a_pass():
    # With many experiences a batch of easy ones has a small divergence while the others still
    # have a gap: one such batch must not end the update; a whole pass below the rule does.
    from experiential.trainer import _gap_closed

    rule = ELConfig(stop_kl=0.05, stop_kl_fraction=0.15)
    first_pass = [0.5, 0.3]  # two steps per pass
    assert not _gap_closed(first_pass + [0.5, 0.01], 2, rule)  # last pass averages 0.255
    assert _gap_closed(first_pass + [0.5, 0.055, 0.035], 2, rule)  # last pass averages 0.045
    assert not _gap_closed(first_pass + [0.3, 0.06, 0.045], 2, rule)  # 0.0525
    assert not _gap_closed([0.2, 0.1, 0.04, 0.04], 2, rule)  # < 0.05 but not < 0.15 * 0.15
    assert _gap_closed([0.5, 0.04], 1, rule) and not _gap_closed([0.04], 1, rule)


def test_early_stop_is_relative_to_the_starting_divergence(tiny_model, tiny_tokenizer):
    # An absolute threshold the first step already meets (as a long code response's mean
    # per-token divergence does) must not end the update before the gap has shrunk.
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer,
                                  cfg(max_steps=200, stop_kl=1e6, stop_kl_fraction=0.1))
    result = trainer.learn([EXP])
    assert result.steps > 1 and result.stopped_early
    assert result.divergences[-1] < 0.1 * result.divergences[0] <= min(result.divergences[:-1])


def test_save_and_load_standard_peft_adapter(tiny_model, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    from conftest import build_tiny_model

    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg())
    trainer.learn([EXP])
    out = trainer.save(tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    report = json.loads((out / "learn_report.json").read_text())
    assert report["gap_before"]["mean_divergence"] > 0 and report["config"]["lora_r"] == 4
    batch = collate([Sequence_([1, 2, 3, 4], [5, 6])], 0)
    reloaded = PeftModel.from_pretrained(build_tiny_model(len(tiny_tokenizer)), out).eval()
    torch.testing.assert_close(response_logits(reloaded, batch),
                               response_logits(trainer.model.eval(), batch))


def test_full_finetune_keeps_a_frozen_teacher(tiny_model, tiny_tokenizer, tmp_path):
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg(lora=False, learning_rate=1e-3))
    assert isinstance(trainer.teacher, TeacherModel) and trainer.teacher.frozen_copy is not None
    result = trainer.learn([EXP])
    assert result.gaps_after[0].divergence < result.gaps_before[0].divergence
    out = trainer.save(tmp_path / "full")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("objective", ["revise_then_distill", "sft"])
def test_revision_objectives_train_on_the_revision(tiny_model, tiny_tokenizer, objective):
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer,
                                  cfg(objective=objective, max_new_tokens=8, max_steps=15))
    pairs = trainer.objective.prepare(tiny_model, tiny_tokenizer, [EXP], trainer.cfg)
    assert len(pairs) == 1 and 0 < len(pairs[0].student.response) <= 8
    result = trainer.learn([EXP])
    assert result.losses[-1] < result.losses[0]


def test_samples_response_uses_fresh_student_samples(tiny_model, tiny_tokenizer):
    c = cfg(response="samples", num_samples=3, max_new_tokens=6, temperature=1.0, max_steps=2)
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, c)
    pairs = trainer.objective.prepare(tiny_model, tiny_tokenizer, [EXP], c)
    assert 1 <= len(pairs) <= 3
    assert all(p.response_text != EXP.attempt for p in pairs)
    assert trainer.learn([EXP]).steps == 2


def test_over_length_experience_is_an_error(tiny_model, tiny_tokenizer):
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg(max_length=16))
    with pytest.raises(ValueError, match="max_length=16"):
        trainer.learn([EXP])


def test_config_from_yaml_and_json(tmp_path):
    (tmp_path / "c.yaml").write_text("learning_rate: 0.001\ndivergence: jsd\nmax_steps: 7\n")
    c = ELConfig.from_file(tmp_path / "c.yaml")
    assert (c.learning_rate, c.divergence, c.max_steps, c.divergence_alpha) == (0.001, "jsd", 7, 0.5)
    (tmp_path / "c.json").write_text(json.dumps({"objective": "sft", "lora": False}))
    assert ELConfig.from_file(tmp_path / "c.json").objective == "sft"
    (tmp_path / "bad.json").write_text(json.dumps({"learnin_rate": 1}))
    with pytest.raises(ValueError, match="unknown config key"):
        ELConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError):
        ELConfig(divergence="kl")


def test_seed_makes_updates_reproducible(tiny_tokenizer):
    from conftest import build_tiny_model

    runs = []
    for _ in range(2):
        t = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, cfg(seed=3))
        runs.append(t.learn([EXP]).losses)
    assert runs[0] == runs[1]


def test_teacher_cache_gives_identical_losses(tiny_tokenizer):
    from conftest import build_tiny_model

    losses = {}
    for mb in (0, 64):
        t = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer,
                                cfg(teacher_cache_mb=mb, max_steps=4))
        losses[mb] = t.learn([EXP]).losses
        assert (t.teacher._used > 0) == (mb > 0)
    assert losses[0] == pytest.approx(losses[64], rel=1e-5)


def test_reflection_is_the_frozen_models_and_only_the_teacher_sees_it(tiny_model, tiny_tokenizer):
    from experiential.reflection import REFLECTION_LABEL, reflect

    tok = tiny_tokenizer
    (reflected,) = reflect(tiny_model, tok, [EXP], max_new_tokens=6)
    text = reflected.metadata["reflection"]
    assert text and reflected.feedback.startswith(EXP.feedback)
    assert reflected.feedback.index(REFLECTION_LABEL) > len(EXP.feedback) - 1
    c = cfg(reflect=True, reflect_max_new_tokens=6, max_steps=2)
    trainer = ExperientialTrainer(tiny_model, tok, c)
    (pair,) = trainer.objective.prepare(tiny_model, tok, [reflected], c)
    assert text.strip() in tok.decode(pair.teacher.context)
    assert REFLECTION_LABEL not in tok.decode(pair.student.context)
    result = trainer.learn([EXP])
    # learn() reflected with the frozen original model: the same greedy text as before training
    assert list(result.extra["reflections"].values()) == [text]


def test_option_scores_do_not_depend_on_batching(tiny_model, tiny_tokenizer):
    from experiential.scoring import option_logprobs

    prompts = [[{"role": "user", "content": "Q" + " word" * n + "?"}] for n in (9, 1, 5, 14, 3)]
    together = option_logprobs(tiny_model, tiny_tokenizer, prompts, batch_size=3)
    alone = torch.cat([option_logprobs(tiny_model, tiny_tokenizer, [p], batch_size=1)
                       for p in prompts])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_chat_retention_measures_drift_on_open_prompts(tiny_tokenizer):
    """The chat part of retention is zero for an unchanged model and grows with the update; an
    anchor on the same prompts keeps it smaller than no anchor does."""
    from conftest import build_tiny_model

    from experiential.probes import PROBE_MC
    from experiential.retention import chat_drift, chat_probe_pairs

    prompts = ["Say hello to the world.", "List the numbers 0123."]
    drift = {}
    for weight in (0.0, 5.0):
        model = build_tiny_model(len(tiny_tokenizer), seed=2)
        trainer = ExperientialTrainer(model, tiny_tokenizer, cfg(max_steps=15))
        with trainer.teacher.active() as base:
            probes = chat_probe_pairs(base, tiny_tokenizer, prompts, max_new_tokens=8)
        assert len(probes) == 2 and all(p.kind == "probe" for p in probes)
        untouched = chat_drift(trainer.model, tiny_tokenizer, probes, trainer.teacher)
        assert max(untouched) < 1e-6  # a fresh LoRA adapter is the identity
        trainer = ExperientialTrainer(
            build_tiny_model(len(tiny_tokenizer), seed=2), tiny_tokenizer,
            cfg(max_steps=15, retention=True, anchor_weight=weight, anchor_per_step=2),
            probes=PROBE_MC[:2], chat_probes=probes, anchor_pairs=probes)
        result = trainer.learn([EXP])
        drift[weight] = sum(chat_drift(trainer.model, tiny_tokenizer, probes, trainer.teacher))
        assert result.retention.chat_n == 2  # learn reports it beside the multiple-choice probes
        assert result.retention.chat_mean_kl == pytest.approx(drift[weight] / 2)
    assert drift[0.0] > 1e-3, drift
    assert drift[5.0] < 0.5 * drift[0.0], drift


def test_built_in_question_sets_are_balanced_and_disjoint():
    """Each built-in set has four distinct options per question and every letter right equally
    often (a drift towards one letter then shows up as lost accuracy), and the probes share no
    question with any anchor set (retention is measured on prompts the update never saw)."""
    from experiential.probes import ANCHOR_MC, PROBE_MC, exam_questions

    exam = exam_questions()
    for qs in (ANCHOR_MC, exam[:24], exam, PROBE_MC):
        assert all(len(set(q.choices)) == 4 for q in qs)
        assert [sum(q.answer == k for q in qs) for k in range(4)] == [len(qs) // 4] * 4
    every = [*ANCHOR_MC, *exam, *PROBE_MC]
    assert len({q.question for q in every}) == len({q.id for q in every}) == len(every)


def test_neighbour_questions_are_parsed_one_per_line():
    from experiential.anchors import neighbour_questions

    reply = "1. Who wrote War and Peace?\n- Who painted the Mona Lisa?\n\nWho wrote Hamlet?\nok"
    assert neighbour_questions(reply, "Who wrote Hamlet?", 5) == [
        "Who wrote War and Peace?", "Who painted the Mona Lisa?"]
    assert neighbour_questions(reply, "x", 1) == ["Who wrote War and Peace?"]
    # a restatement of the original is not a neighbour (it would anchor the corrected answer)
    assert neighbour_questions("Who painted the painting 'The Garden of Earthly Delights'?\n"
                               "Who painted the Mona Lisa?",
                               "Who painted 'The Garden of Earthly Delights'?", 4) == [
        "Who painted the Mona Lisa?"]


def test_neighbour_anchors_hold_the_neighbourhood(tiny_tokenizer):
    """A prompt in metadata["neighbours"] is replayed with the frozen model's own answer, so it
    drifts less than when it is not a neighbour (no other anchors in either run)."""
    from conftest import build_tiny_model

    from experiential.gap import measure_gaps

    neighbour = "Feedback: what is the capital of France?"
    drift = {}
    for listed in (False, True):
        exp = Experience(EXP.prompt, EXP.attempt, EXP.feedback, id="e1",
                         metadata={"neighbours": [neighbour]} if listed else {})
        trainer = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer), seed=3), tiny_tokenizer,
                                      cfg(max_steps=20, anchor_weight=5.0, anchor_per_step=2),
                                      anchor_pairs=[])
        result = trainer.learn([exp])
        with trainer.teacher.active() as base:
            probe = chat_probe_pairs(base, tiny_tokenizer, [neighbour], max_new_tokens=8)
        drift[listed] = measure_gaps(trainer.model, tiny_tokenizer, probe, trainer.cfg,
                                     trainer.teacher)[0].divergence
        if listed:  # the frozen model's answer, and the experience's attempt, on the neighbour
            own, attempt = result.extra["neighbour_anchors"]
            assert own["prompt"] == attempt["prompt"] == neighbour
            assert attempt["answer"] == EXP.attempt and own["experience_id"] == "e1"
    assert drift[True] < 0.5 * drift[False], drift


def test_neighbours_must_be_prompt_strings():
    from experiential.experience import ExperienceError

    with pytest.raises(ExperienceError, match="neighbours"):
        Experience("q", "a", "f", metadata={"neighbours": "Who wrote Hamlet?"})


def test_step_callback_sees_every_step_and_can_stop_the_update(tiny_tokenizer):
    from experiential.anchors import _pair
    from conftest import build_tiny_model

    anchor = _pair(tiny_tokenizer, [{"role": "user", "content": "What is 2+2?"}], "The answer is D.")
    trainer = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer), seed=1), tiny_tokenizer,
                                  cfg(max_steps=6, anchor_weight=1.0, anchor_per_step=1),
                                  anchor_pairs=[anchor])
    seen = []

    def on_step(state, model):
        seen.append((state.step, state.n_steps, state.anchor_divergence, model.training))
        return state.step == 4

    result = trainer.learn([EXP], callback=on_step)
    assert [s[0] for s in seen] == [1, 2, 3, 4] and all(s[1] == 6 for s in seen)
    assert result.steps == 4 and result.stopped_early
    assert not any(s[3] for s in seen)  # scored in eval mode
    # the anchors start at the original model (no drift) and the update then pulls them away
    assert result.anchor_divergences == [s[2] for s in seen]
    assert abs(result.anchor_divergences[0]) < 1e-6 and max(result.anchor_divergences) > 1e-4


def test_consolidation_steps_pull_the_anchors_back_and_keep_the_experience(tiny_tokenizer):
    """After the update, steps on the replay anchors alone: the anchors' drift falls, and the
    experience, which no step pulls on any more, keeps most of what it learned."""
    from experiential.anchors import _pair
    from experiential.gap import measure_gaps
    from conftest import build_tiny_model

    anchor = _pair(tiny_tokenizer, [{"role": "user", "content": "What is 2+2?"}], "The answer is D.")
    drift, learned = {}, {}
    for consolidate in (0, 6):
        model = build_tiny_model(len(tiny_tokenizer), seed=1)
        trainer = ExperientialTrainer(
            model, tiny_tokenizer, cfg(max_steps=12, anchor_weight=0.2, anchor_per_step=1,
                                       consolidate_steps=consolidate), anchor_pairs=[anchor])
        seen = []
        result = trainer.learn([EXP], callback=lambda state, m: seen.append(state) and None)
        drift[consolidate] = measure_gaps(trainer.model, tiny_tokenizer, [anchor], trainer.cfg,
                                          trainer.teacher)[0].divergence
        learned[consolidate] = result.gaps_after[0].divergence, result.gaps_before[0].divergence
        assert len(result.consolidation_divergences) == consolidate
        assert result.steps == 12  # the update's own steps; consolidation is reported apart
        assert [s.step for s in seen] == list(range(1, 13 + consolidate))
        assert [s.consolidating for s in seen] == [False] * 12 + [True] * consolidate
    assert drift[6] < 0.5 * drift[0], drift
    (after0, start), (after6, _) = learned[0], learned[6]
    assert after0 < 0.5 * start and after6 < 0.5 * start, learned  # the gap stays mostly closed
    with pytest.raises(ValueError, match="anchor_weight"):
        cfg(consolidate_steps=2, anchor_weight=0.0)


def test_retention_reports_expected_accuracy_and_per_question_kl():
    from experiential.retention import compare
    from experiential.tasks.mc import MCQuestion

    qs = [MCQuestion("q1", ["a", "b"], 0), MCQuestion("q2", ["a", "b"], 1)]
    before = torch.tensor([[0.6, 0.4], [0.45, 0.55]]).log()
    after = torch.tensor([[0.6, 0.4], [0.55, 0.45]]).log()  # only q2 moves, and its argmax flips
    r = compare(before, after, qs)
    assert r.accuracy_before == 1.0 and r.accuracy_after == 0.5
    assert r.p_correct_before == pytest.approx((0.6 + 0.55) / 2)
    assert r.p_correct_after == pytest.approx((0.6 + 0.45) / 2)
    assert r.per_probe_kl[0] == pytest.approx(0.0, abs=1e-6) and r.per_probe_kl[1] > 0.01
    assert r.mean_kl == pytest.approx(sum(r.per_probe_kl) / 2, abs=1e-4)


def test_anchor_file_takes_multiple_choice_and_open_anchors(tiny_tokenizer, tmp_path):
    from conftest import build_tiny_model

    path = tmp_path / "anchors.jsonl"
    path.write_text(json.dumps({"question": "Which is a fruit?", "choices": ["Apple", "Rock",
                                                                            "Car", "Shoe"]}) + "\n"
                    + json.dumps({"prompt": "Say hello."}) + "\n")
    trainer = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer), seed=1), tiny_tokenizer,
                                  cfg(anchor_weight=1.0, anchor_prompts=str(path)))
    mc, open_ = trainer.anchor_pairs()
    # the multiple-choice anchor is formatted with its options and answered with a letter
    assert "A. Apple" in tiny_tokenizer.decode(mc.student.context)
    assert mc.response_text in {f"The answer is {x}." for x in "ABCD"}
    assert "Say hello." in tiny_tokenizer.decode(open_.student.context)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "No choices"}) + "\n")
    with pytest.raises(ValueError, match="line 1: a multiple-choice anchor needs"):
        ExperientialTrainer(build_tiny_model(len(tiny_tokenizer), seed=1), tiny_tokenizer,
                            cfg(anchor_weight=1.0, anchor_prompts=str(bad))).anchor_pairs()


def test_exam_anchors_replay_every_built_in_exam_question(tiny_tokenizer):
    from conftest import build_tiny_model
    from experiential.probes import exam_questions
    from experiential.tasks.mc import format_mc

    trainer = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer), seed=1), tiny_tokenizer,
                                  cfg(anchor_weight=1.0, anchor_prompts="exam"))
    replayed = [tiny_tokenizer.decode(p.student.context) for p in trainer.anchor_pairs()]
    assert all(any(format_mc(q) in text for text in replayed) for q in exam_questions())
    assert not any("What is the largest ocean on Earth?" in t for t in replayed)  # not everyday


def test_answer_span_is_the_final_answer():
    from experiential.focus import answer_span

    cases = {"The answer is D.": "D", "Let me think.\nThe answer is (B).": "B",
             "3 + 4 = 7.\n#### 7": "7", "So we get \\boxed{18}.": "18",
             "The answer: Paris\nThanks for asking": "Paris",
             "An answer is B. No wait, the final answer is C.": "C"}
    for text, want in cases.items():
        span = answer_span(text)
        assert span is not None and text[span[0]:span[1]] == want, (text, span)
    assert answer_span("I don't know.") is None
    assert answer_span("I hope that helps answer it.") is None


def _token_divergences(trainer, pair):
    from experiential.objectives.self_distill import distill_loss

    with torch.no_grad():
        per_token, _ = distill_loss(trainer.model, [pair], trainer.cfg, trainer.teacher,
                                    trainer.tok.pad_token_id)
    return per_token


def test_answer_span_distils_the_answer_and_leaves_the_words_before_it(tiny_tokenizer):
    """With ``distill_span="answer"`` the loss sees only the answer token: it closes the
    divergence there, and the words before it keep more of theirs than when the whole response
    is distilled."""
    from conftest import build_tiny_model
    from experiential.objectives.base import Pair

    others_after = {}
    for span in ("answer", "response"):
        trainer = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer), seed=3),
                                      tiny_tokenizer, cfg(max_steps=25, distill_span=span))
        pair = trainer.objective.prepare(trainer.model, tiny_tokenizer, [EXP], trainer.cfg)[0]
        if span == "answer":
            focus = torch.tensor(pair.focus)
            assert tiny_tokenizer.decode([t for t, f in zip(pair.student.response, pair.focus)
                                          if f]).strip() == "A"
        whole = Pair(pair.student, pair.teacher, pair.experience_id)  # every token
        before = _token_divergences(trainer, whole)
        result = trainer.learn([EXP])
        after = _token_divergences(trainer, whole)
        if span == "answer":
            assert after[focus].sum() < 0.3 * before[focus].sum(), (before, after)
            # the gap report is about the distilled token too
            assert result.gaps_before[0].response_token.strip() == "A"
            assert result.gaps_before[0].divergence == pytest.approx(float(before[focus].mean()),
                                                                     rel=1e-4)
        others_after[span] = float(after[~focus].mean())
        others_before = float(before[~focus].mean())
    assert others_before > 0.01
    assert others_after["answer"] > 2 * others_after["response"], (others_before, others_after)


def test_answer_hold_keeps_the_words_around_the_answer_where_they_were(tiny_tokenizer):
    """``distill_span="answer_hold"`` closes the answer's divergence as ``"answer"`` does, while
    the student's own distributions on the words before the answer stay nearer the original
    model's than when they are left free."""
    from conftest import build_tiny_model
    from experiential.objectives.base import Pair

    drift = {}
    for span in ("answer", "answer_hold"):
        trainer = ExperientialTrainer(build_tiny_model(len(tiny_tokenizer), seed=3),
                                      tiny_tokenizer, cfg(max_steps=25, distill_span=span))
        pair = trainer.objective.prepare(trainer.model, tiny_tokenizer, [EXP], trainer.cfg)[0]
        focus = torch.tensor(pair.focus)
        whole = Pair(pair.student, pair.teacher, pair.experience_id)
        # the teacher in the student's own context: the frozen original model
        own = Pair(pair.student, pair.student, pair.experience_id, kind="anchor")
        before = _token_divergences(trainer, whole)
        assert float(_token_divergences(trainer, own).abs().max()) < 1e-5
        trainer.learn([EXP])
        after = _token_divergences(trainer, whole)
        assert after[focus].sum() < 0.3 * before[focus].sum(), (span, before, after)
        drift[span] = float(_token_divergences(trainer, own)[~focus].mean())
    assert drift["answer_hold"] < 0.5 * drift["answer"], drift


def test_answer_hold_needs_a_teacher():
    with pytest.raises(ValueError, match="sft objective has no teacher"):
        ELConfig(objective="sft", distill_span="answer_hold")
    assert ELConfig(objective="sft", distill_span="answer").distill_span == "answer"


def test_answer_span_warns_when_a_response_states_no_answer(tiny_model, tiny_tokenizer):
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg(distill_span="answer"))
    exp = Experience("What is the capital of France?", "Paris is the capital.", "Correct.")
    with pytest.warns(UserWarning, match="1 of 1 responses state no answer"):
        pairs = trainer.objective.prepare(tiny_model, tiny_tokenizer, [exp], trainer.cfg)
    assert pairs[0].focus is None


MC = Experience("What is the capital of France?\nA. Lyon\nB. Nice\nC. Paris\nD. Lille",
                "The answer is A.", "Wrong: the correct answer is C, Paris.", id="mc")


def _letter_logprobs(model, seq, pos, ids):
    """Log-probs of ``ids`` at response position ``pos``, from a plain forward of ``seq``."""
    with torch.no_grad():
        row = model(torch.tensor([seq.ids])).logits[0, len(seq.context) - 1 + pos]
    return torch.log_softmax(row.float(), -1)[ids]


@pytest.mark.parametrize("match", ["log", "mass"])
def test_student_letter_prior_gives_the_teacher_the_students_letter_preference(
        tiny_model, tiny_tokenizer, match):
    """Over the question's rotations the new target's preference among letters is the student's
    (``log``: geometric means by letter, with the teacher's preference among contents;
    ``mass``: summed probabilities, with the teacher's rows rescaled by one factor per letter),
    and each pair keeps the teacher's total letter mass; the loss and the gap report distil
    that target."""
    from experiential.augment import augment
    from experiential.letter_prior import student_letter_prior
    from experiential.objectives.self_distill import distill_loss

    tok = tiny_tokenizer
    trainer = ExperientialTrainer(tiny_model, tok,
                                  cfg(max_steps=30, letter_prior=f"student_{match}"))
    exps = augment([MC], "rotate_options", 3)
    pairs = trainer.objective.prepare(tiny_model, tok, exps, trainer.cfg)
    targeted = student_letter_prior(pairs, exps, tok, trainer.teacher, match=match)
    ids = [tok.encode(f"The answer is {x}")[-1] for x in "ABCD"]
    n = 4
    teacher, student, new = [], [], []
    for exp, p, q in zip(exps, pairs, targeted):
        t = q.letter_target
        assert t is not None and list(t.token_ids) == ids
        assert tok.decode(p.student.response[t.position]).strip() == exp.attempt[-2]
        teacher.append(_letter_logprobs(tiny_model, p.teacher, t.position, ids))
        student.append(_letter_logprobs(tiny_model, p.student, t.position, ids))
        new.append(torch.tensor(t.logprobs))
    teacher, student, new = torch.stack(teacher), torch.stack(student), torch.stack(new)
    torch.testing.assert_close(torch.logsumexp(new, 1), torch.logsumexp(teacher, 1))
    shifts = [exp.metadata.get("rotation", 0) for exp in exps]
    assert sorted(shifts) == [0, 1, 2, 3]

    def by_content(rows):  # option i sits under letter (i + s) % n in rotation s
        return torch.stack([r[[(i + s) % n for i in range(n)]]
                            for r, s in zip(rows, shifts)]).mean(0)

    def same_up_to_a_constant(a, b):
        d = a - b
        return float(d.max() - d.min()) < 1e-4

    norm = lambda x: torch.log_softmax(x, 1)  # noqa: E731
    if match == "log":
        assert same_up_to_a_constant(norm(new).mean(0), norm(student).mean(0))
        assert same_up_to_a_constant(by_content(norm(new)), by_content(norm(teacher)))
        assert not same_up_to_a_constant(norm(new).mean(0), norm(teacher).mean(0))  # it changed
    else:
        share = lambda x: x.exp().sum(0) / x.exp().sum()  # noqa: E731
        torch.testing.assert_close(share(new), share(student))
        assert not torch.allclose(share(teacher), share(student), atol=1e-3)  # it changed
        # one factor per letter: log(new / teacher) = row constant + letter constant
        d = new - teacher
        interaction = d - d.mean(1, keepdim=True) - d.mean(0, keepdim=True) + d.mean()
        assert float(interaction.abs().max()) < 1e-4

    # the teacher row the loss sees carries the new letter log-probs
    p = targeted[1]
    row = trainer.teacher.pair_logits([p], tok.pad_token_id, "cpu")[p.letter_target.position]
    torch.testing.assert_close(torch.log_softmax(row, -1)[ids],
                               torch.tensor(p.letter_target.logprobs))

    # and learning moves the student's letters to it
    def divergences():
        with torch.no_grad():
            return distill_loss(trainer.model, targeted, trainer.cfg, trainer.teacher,
                                tok.pad_token_id)[0]

    before = divergences()
    result = trainer.learn([MC])
    after = divergences()
    assert after.mean() < 0.3 * before.mean()
    first = len(targeted[0].student.response)  # the gap report sees the same target
    assert result.gaps_before[0].divergence == pytest.approx(float(before[:first].mean()), rel=1e-4)


def test_student_letter_prior_needs_every_rotation(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="needs every rotation"):
        cfg(letter_prior="student_log", augment="none")
    with pytest.raises(ValueError, match="no teacher"):
        cfg(letter_prior="student_mass", objective="sft")
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer,
                                  cfg(max_steps=1, letter_prior="student_log", augment_copies=1))
    with pytest.warns(UserWarning, match="2 lack a rotation"):
        trainer.learn([MC])


def test_content_and_letter_shift_tell_a_content_from_a_letter_preference():
    """A teacher that raises one option's text wherever the rotations put it shows a content
    shift; one that raises letter B whatever it holds shows a letter shift, and is letter-led."""
    from experiential.letter_prior import LetterSplit, content_and_letter_shift

    shifts = [0, 1, 2, 3]
    student = torch.full((4, 4), 0.25)
    # rotation r puts the original option C (index 2) under letter (2 + r) % 4
    about_c = torch.stack([torch.tensor([0.1, 0.1, 0.1, 0.1]).index_fill(0, torch.tensor(
        [(2 + r) % 4]), 0.7) for r in shifts])
    content, letter = content_and_letter_shift(about_c, student, shifts)
    torch.testing.assert_close(content, torch.tensor([-0.15, -0.15, 0.45, -0.15]))
    torch.testing.assert_close(letter, torch.zeros(4))
    assert not LetterSplit(tuple(content.tolist()), tuple(letter.tolist())).letter_led
    # a weaker pull to option C's text plus a stronger pull to letter B in every rotation
    likes_b = torch.stack([torch.full((4,), 0.1).index_add(0, torch.tensor([(2 + r) % 4, 1]),
                                                           torch.tensor([0.15, 0.45]))
                           for r in shifts])
    likes_b = likes_b / likes_b.sum(1, keepdim=True)
    content, letter = content_and_letter_shift(likes_b, student, shifts)
    torch.testing.assert_close(content, torch.tensor([-0.0375, -0.0375, 0.1125, -0.0375]))
    torch.testing.assert_close(letter, torch.tensor([-0.1125, 0.3375, -0.1125, -0.1125]))
    split = LetterSplit(tuple(content.tolist()), tuple(letter.tolist()))
    assert split.letter_led and "letter B" in split.describe()
    # a different number of responses per rotation: each rotation counts once
    content2, letter2 = content_and_letter_shift(
        torch.cat([likes_b, likes_b[:1]]), torch.cat([student, student[:1]]), shifts + [0])
    torch.testing.assert_close(content2, content)
    torch.testing.assert_close(letter2, letter)


def test_decline_letter_led_checks_only_updates_with_rotations_and_a_teacher(
        tiny_model, tiny_tokenizer, monkeypatch):
    """On by default; it needs every rotation of a question and a teacher's distribution, so
    without either it checks nothing (and declines nothing) instead of refusing the config."""
    import experiential.trainer as trainer_module

    assert ELConfig().decline_letter_led
    checked = []
    real = trainer_module.letter_splits
    monkeypatch.setattr(trainer_module, "letter_splits",
                        lambda pairs, *a, **k: checked.append(len(pairs)) or real(pairs, *a, **k))
    for over in ({"decline_letter_led": True, "augment": "none"},
                 {"decline_letter_led": True, "objective": "sft"},
                 {"decline_letter_led": False}):
        trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg(**over))
        assert trainer.declines([MC]) == {} and checked == [], over
        tiny_model = trainer.model.unload()
    trainer = ExperientialTrainer(tiny_model, tiny_tokenizer, cfg(decline_letter_led=True))
    declined = trainer.declines([MC])
    assert checked == [4]  # the question and its three rotations
    assert set(declined) <= {"mc"}
