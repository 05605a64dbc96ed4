"""The MMLU probability-shift pipeline on a tiny model: question selection, the four experience
kinds, report files, and resume from finished stages."""

import json

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


def test_pipeline_writes_report_and_resumes(tiny_model, tiny_tokenizer, tmp_path):
    el = ELConfig(max_steps=1, anchor_weight=0.0, progress=False, lora_r=2)
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
    again = run("tiny", tmp_path, cfg, el, questions=QS, probes=QS[:4], load=load)
    assert again["results"]["letter"]["mean_p_target_after"] == 0.123


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
