"""The MMLU probability-shift pipeline on a tiny model: question selection, the four experience
kinds, report files, and resume from finished stages."""

import json

import pytest

from experiential.config import ELConfig
from experiential.tasks.mc import MCQuestion
from experiential.tasks.mmlu_shift import ShiftConfig, feedback_for, run

QS = [MCQuestion(f"Question {i}: pick {c}?", ["w", "x", "y", "z"], i % 4, "s", f"q{i}")
      for i, c in enumerate("wxyzwxyz")]


def test_feedback_kinds_point_at_the_right_target():
    q = QS[1]  # answer index 1 = B
    assert feedback_for("letter", q, 3, "E.") == ("The correct answer is B.", 1)
    assert feedback_for("letter_explanation", q, 3, "E.") == ("E. The correct answer is B.", 1)
    assert feedback_for("explanation", q, 3, "E.") == ("E.", 1)
    assert feedback_for("control", q, 3, "E.") == ("The correct answer is D.", 3)


def test_pipeline_writes_report_and_resumes(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    # decline_letter_led off: on the random tiny model the rule leaves these questions out
    el = ELConfig(max_steps=1, anchor_weight=0.0, progress=False, lora_r=2,
                  decline_letter_led=False)
    cfg = ShiftConfig(n_questions=3, retention_n=4, kinds=("letter", "control"))
    load = lambda _: (tiny_model, tiny_tokenizer)  # noqa: E731
    report = run("tiny", tmp_path, cfg, el, questions=QS, probes=QS[:4], load=load)
    assert report["n_questions"] == 3 and set(report["results"]) == {"letter", "control"}
    for r in report["results"].values():
        assert len(r["per_question"]) == 3 and r["retention"]["n"] == 4
    md = (tmp_path / "report.md").read_text()
    assert "| letter |" in md and "10.8% -> 50.4%" in md
    # resume: a finished stage is read back, not recomputed
    stage = tmp_path / "stages" / "letter.json"
    data = json.loads(stage.read_text())
    data["mean_p_target_after"] = 0.123
    stage.write_text(json.dumps(data))
    # ... and so is the question selection: the pool is not rescored
    import experiential.tasks.mmlu_shift as shift

    def rescored(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("a resumed run rescored the question pool")

    monkeypatch.setattr(shift, "questions_it_gets_wrong", rescored)
    again = run("tiny", tmp_path, cfg, el, questions=QS, probes=QS[:4], load=load)
    assert again["results"]["letter"]["mean_p_target_after"] == 0.123
    assert again["questions"] == report["questions"]


def test_control_claims_neither_the_answer_nor_the_attempt():
    from experiential.tasks.mmlu_shift import control_letter

    picks = {control_letter(f"q{i}", 1, 2) for i in range(40)}
    assert picks == {0, 3}


def test_critic_explanations_never_carry_the_letter():
    from experiential.tasks.mc import MCQuestion
    from experiential.tasks.mmlu_shift import redact_letters

    q = MCQuestion("Total cost?", ["$100", "$200", "$300", "$405"], 3)
    text = redact_letters("The correct option is D. Answer (B) double counts. A student errs.", q)
    assert text == 'The correct option is "$405". Answer "$200" double counts. A student errs.'


def test_report_has_full_distributions_explanation_source_and_sem(tiny_model, tiny_tokenizer,
                                                                  tmp_path):
    import statistics

    from experiential.tasks.mmlu_shift import STAND_IN, explanations_from_file

    el = ELConfig(max_steps=1, anchor_weight=0.0, progress=False, lora_r=2, retention=False)
    cfg = ShiftConfig(n_questions=3, kinds=("letter", "explanation"))
    explanations = tmp_path / "ex.jsonl"
    explanations.write_text("".join(json.dumps({"question_id": q.id,
                                                "explanation": f"It is {q.id}."}) + "\n"
                                    for q in QS))
    report = run("tiny", tmp_path / "a", cfg, el, questions=QS, probes=QS[:4],
                 load=lambda _: (tiny_model, tiny_tokenizer),
                 explainer=explanations_from_file(explanations))
    assert report["explanation_source"] == f"file {explanations}"
    md = (tmp_path / "a" / "report.md").read_text()
    assert f"Explanations (kinds letter_explanation, explanation): file {explanations}." in md
    for kind, r in report["results"].items():
        for x in r["per_question"]:
            for key in ("p_before", "p_teacher", "p_after"):
                assert list(x[key]) == ["A", "B", "C", "D"]
                assert abs(sum(x[key].values()) - 1) < 1e-4
            letter = "ABCD"[x["target"]]
            assert abs(x["p_before"][letter] - x["before"]) < 1e-5
            assert abs(x["p_teacher"][letter] - x["teacher"]) < 1e-5
            assert abs(x["p_after"][letter] - x["after"]) < 1e-5
        befores = [x["before"] for x in r["per_question"]]
        assert r["sem_p_target_before"] == pytest.approx(statistics.stdev(befores) / 3 ** 0.5)
        assert f"{r['mean_p_target_before']:.1%} ± {100 * r['sem_p_target_before']:.1f} -> " in md
    # the teacher saw different feedback per kind, so its distributions differ
    letter_t = [x["p_teacher"] for x in report["results"]["letter"]["per_question"]]
    expl_t = [x["p_teacher"] for x in report["results"]["explanation"]["per_question"]]
    assert letter_t != expl_t
    # stage files are whole JSON with no temporary file left beside them
    stages = tmp_path / "a" / "stages"
    assert not list(stages.glob("*.tmp"))
    assert json.loads((stages / "explanations.json").read_text())["q1"] == "It is q1."

    # the default stand-in says what it is; a different explanation source is a different run
    with pytest.raises(ValueError, match="explanations"):
        run("tiny", tmp_path / "a", cfg, el, questions=QS, probes=QS[:4],
            load=lambda _: (tiny_model, tiny_tokenizer))
    only_letters = run("tiny", tmp_path / "b", ShiftConfig(n_questions=2, kinds=("letter",)), el,
                       questions=QS, probes=QS[:4], load=lambda _: (tiny_model, tiny_tokenizer))
    assert only_letters["explanation_source"] is None and STAND_IN.startswith("built-in")


def test_critic_explanation_source_names_the_backend():
    from experiential.feedback.critic import Critic, LocalBackend, OpenAIBackend
    from experiential.tasks.mmlu_shift import critic_explainer, explainer_source

    remote = critic_explainer(Critic(OpenAIBackend("http://127.0.0.1:9", "gpt-4o-mini"),
                                     cache_dir=None))
    assert explainer_source(remote) == ("critic: OpenAI-compatible endpoint "
                                        "http://127.0.0.1:9/v1, model gpt-4o-mini")
    local = critic_explainer(Critic(LocalBackend("critic"), cache_dir=None))  # not loaded
    assert explainer_source(local) == "critic: local model critic (Qwen2.5-Coder-1.5B-Instruct)"


def test_exam_anchors_are_the_trainers(tiny_model, tiny_tokenizer, tmp_path):
    """``anchors="exam"`` hands the built-in exam set to the trainer (the config records it) and
    the report says which anchors held the update."""
    el = ELConfig(max_steps=1, progress=False, lora_r=2, decline_letter_led=False,
                  anchor_per_step=2)
    cfg = ShiftConfig(n_questions=2, retention_n=4, kinds=("letter",), anchors="exam")
    report = run("tiny", tmp_path, cfg, el, questions=QS, probes=QS[:4],
                 load=lambda _: (tiny_model, tiny_tokenizer))
    assert report["config"]["anchor_prompts"] == "exam" and report["anchors"] == "exam"
    assert "the built-in exam set" in (tmp_path / "report.md").read_text()


def test_mmlu_dev_anchors_replay_short_four_option_dev_questions(tiny_model, tiny_tokenizer,
                                                                 tmp_path, monkeypatch):
    import experiential.tasks.data as data

    long_q = MCQuestion("Why? " * 300, ["w", "x", "y", "z"], 0, "s", "long")
    three = MCQuestion("Pick one?", ["w", "x", "y"], 0, "s", "three")
    dev = [QS[0], QS[1], long_q, three]
    seen = []

    def load_mmlu(split, *a, **k):  # noqa: ANN001, ANN002, ANN003
        seen.append(split)
        return dev

    monkeypatch.setattr(data, "load_mmlu", load_mmlu)
    import experiential.trainer as trainer_mod

    given = []

    class Spy(trainer_mod.ExperientialTrainer):
        def __init__(self, *a, anchor_pairs=None, **k):  # noqa: ANN001, ANN002, ANN003
            given.append(anchor_pairs)
            super().__init__(*a, anchor_pairs=anchor_pairs, **k)

    monkeypatch.setattr(trainer_mod, "ExperientialTrainer", Spy)
    el = ELConfig(max_steps=1, progress=False, lora_r=2, decline_letter_led=False,
                  anchor_per_step=2)
    cfg = ShiftConfig(n_questions=2, retention_n=4, kinds=("letter",), anchors="mmlu_dev")
    report = run("tiny", tmp_path, cfg, el, questions=QS, probes=QS[:4],
                 load=lambda _: (tiny_model, tiny_tokenizer))
    # the two short four-option questions, from the dev split (not the test questions given)
    assert seen == ["dev"] and report["anchor_questions"] == 2
    assert "2 MMLU dev questions" in (tmp_path / "report.md").read_text()
    # ... and the trainer replays exactly those (plus the built-in chat prompts)
    from experiential.tasks.mc import format_mc

    (pairs,) = given
    replayed = {tiny_tokenizer.decode(p.student.context) for p in pairs}
    for q in (QS[0], QS[1]):
        assert any(format_mc(q) in text for text in replayed)
    assert not any(format_mc(q) in text for q in (long_q, three) for text in replayed)
    with pytest.raises(ValueError, match="both choose the replay anchors"):
        run("tiny", tmp_path / "x", cfg, el.replace(anchor_prompts="a.jsonl"), questions=QS,
            probes=QS[:4], load=lambda _: (tiny_model, tiny_tokenizer))
    with pytest.raises(ValueError, match="choose one of builtin, exam, mmlu_dev"):
        ShiftConfig(anchors="dev")
