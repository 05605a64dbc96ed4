"""The command line, end to end on a tiny model saved to a local directory."""

import json
from pathlib import Path

import pytest

from experiential.cli import build_parser, main
from experiential.experience import Experience, save_jsonl
from experiential.store import ExperienceStore

FAST = ["--max-steps", "2", "--no-retention", "--anchor-weight", "0", "--lora-r", "2",
        "--dtype", "fp32", "--device", "cpu"]


@pytest.fixture()
def exps_file(tmp_path):
    p = tmp_path / "e.jsonl"
    save_jsonl([Experience("What is 2+2?", "The answer is 5.", "Wrong, it is 4.", id="a"),
                Experience("Capital of France?", "Rome", "No: Paris.", id="b")], p)
    return p


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = ["learn", "generate", "score", "experiences", "feedback", "review", "demo", "serve",
                "chat"]
    for cmd in commands + ["experiences add", "experiences list", "experiences export",
                           "repro mmlu", "repro gsm8k", "repro humaneval"]:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(cmd.split() + ["--help"])
        assert e.value.code == 0
        assert "usage: experiential" in capsys.readouterr().out


def test_learn_from_jsonl_writes_adapter_and_reports_gap(model_dir, exps_file, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert main(["learn", "--experiences", str(exps_file), "--model", model_dir, "-o", str(out)]
                + FAST) == 0
    text = capsys.readouterr().out
    assert "in-context gap" in text and "learned from 2 experience(s)" in text
    report = json.loads((out / "learn_report.json").read_text())
    assert report["steps"] == 2 and len(report["gaps_before"]) == 2
    assert (out / "adapter_config.json").is_file()
    # score before/after with the adapter: both rows present, each a distribution
    capsys.readouterr()
    assert main(["score", "What is 2+2?", "--options", "4/5", "--model", model_dir, "--adapter",
                 str(out), "--json", "--dtype", "fp32"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"base", "adapter", "options"} and scores["options"] == [" 4", " 5"]
    assert abs(sum(scores["base"][0]) - 1) < 1e-5 and scores["base"] != scores["adapter"]


def test_learn_refuses_invalid_lines_unless_told(model_dir, exps_file, tmp_path, capsys):
    with open(exps_file, "a") as f:
        f.write('{"prompt": "x", "feedback": ""}\n')
    args = ["learn", "--experiences", str(exps_file), "--model", model_dir, "-o",
            str(tmp_path / "a")] + FAST
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "feedback" in err and "--skip-invalid" in err
    assert main(args + ["--skip-invalid"]) == 0


def test_store_commands_and_learn_marks_consumption(model_dir, exps_file, tmp_path, capsys):
    db = str(tmp_path / "s.db")
    assert main(["experiences", "add", "--store", db, "--file", str(exps_file)]) == 0
    assert main(["experiences", "add", "--store", db, "--prompt", "Hi", "--attempt", "Yo",
                 "--feedback", "Say hello politely."]) == 0
    assert main(["experiences", "add", "--store", db, "--prompt", "Hi", "--feedback", " "]) == 2
    assert len(ExperienceStore(db)) == 3
    assert main(["learn", "--store", db, "--model", model_dir, "-o", str(tmp_path / "v1"),
                 "--version", "v1"] + FAST) == 0
    store = ExperienceStore(db)
    assert len(store.consumed_by("v1")) == 3 and store.adapters()[0]["version"] == "v1"
    capsys.readouterr()
    assert main(["experiences", "list", "--store", db]) == 0
    assert capsys.readouterr().out.count("[v1]") == 3
    assert main(["experiences", "export", "--store", db, "-o", str(tmp_path / "x.jsonl")]) == 0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 3


def test_generate_prints_the_greedy_answer(model_dir, capsys):
    from experiential.generation import generate
    from experiential.models import load_model

    assert main(["generate", "Hello", "--model", model_dir, "--max-new-tokens", "5",
                 "--dtype", "fp32"]) == 0
    model, tok = load_model(model_dir, dtype="fp32", device="cpu")
    expected = generate(model, tok, [[{"role": "user", "content": "Hello"}]], max_new_tokens=5)
    assert capsys.readouterr().out == expected[0][0] + "\n"


def test_config_file_and_flag_override(model_dir, exps_file, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_steps: 3\nlearning_rate: 0.01\n")
    out = tmp_path / "a"
    assert main(["learn", "--experiences", str(exps_file), "--model", model_dir, "-o", str(out),
                 "--config", str(cfg), "--max-steps", "1", "--no-retention", "--anchor-weight",
                 "0", "--dtype", "fp32"]) == 0
    report = json.loads((out / "learn_report.json").read_text())
    assert report["steps"] == 1 and report["config"]["learning_rate"] == 0.01


def test_missing_file_is_a_clear_error(model_dir, tmp_path, capsys):
    assert main(["learn", "--experiences", str(tmp_path / "nope.jsonl"), "--model", model_dir,
                 "-o", str(tmp_path / "a")] + FAST) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_review_runs_a_feedback_source_over_attempts(tmp_path, capsys):
    from experiential.tasks.data import load_humaneval

    rows = load_humaneval()[:2]
    attempts = tmp_path / "attempts.jsonl"
    with open(attempts, "w") as f:
        for r, code in zip(rows, [rows[0]["canonical_solution"], "    return None\n"]):
            f.write(json.dumps({"id": r["task_id"], "prompt": r["prompt"], "attempt": code,
                                "tests": r["test"], "entry_point": r["entry_point"]}) + "\n")
        f.write(json.dumps({"id": "no-tests", "prompt": "x", "attempt": "y"}) + "\n")
    out, store = tmp_path / "exps.jsonl", tmp_path / "s.db"
    assert main(["review", "--source", "tests", "-i", str(attempts), "-o", str(out),
                 "--store", str(store)]) == 0
    said = capsys.readouterr().out
    assert "3 experiences from tests; 1/2 passed or correct; 1 without feedback" in said
    exps = [json.loads(line) for line in open(out)]
    assert [e["metadata"].get("passed") for e in exps] == [True, False, None]
    assert ExperienceStore(store).count() == 3
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"prompt": "2+2?", "attempt": "It is 5.", "reference": "#### 4"}))
    assert main(["review", "--source", "answer", "-i", str(gsm)]) == 0
    assert "Your final answer 5 is wrong." in capsys.readouterr().out
    assert main(["review", "--source", "critic", "-i", str(gsm)]) == 2  # no critic given


@pytest.mark.parametrize("experiment", ["mmlu", "gsm8k", "humaneval"])
def test_repro_smoke_runs_end_to_end_and_writes_reports(experiment, model_dir, tmp_path):
    out = tmp_path / experiment
    assert main(["repro", experiment, "--smoke", "--model", model_dir, "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == model_dir
    assert report["model_resolved"]["path"] == str(Path(model_dir).resolve())
    assert report["command"] == f"experiential repro {experiment} --smoke --model {model_dir} " \
                                f"-o {out}"
    assert json.loads((out / "stages" / "args.json").read_text())["model"] == model_dir
    assert (out / "report.md").read_text().count("|") > 10
    assert (out / "report.png").stat().st_size > 1000
