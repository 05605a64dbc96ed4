"""What the reproductions promise beyond running: where data comes from, which config wins, that
stale stages are refused, that the critic transcript survives a resume, and that a report names its
model and command. Tiny models from a config in code; critics are stdlib HTTP servers on
127.0.0.1; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiential.cli import _repro_el_config, _save_transcript, build_parser, main
from experiential.feedback.critic import Critic
from experiential.tasks.data import load_gsm8k
from experiential.tasks.humaneval import CodeCritic, to_task
from experiential.tasks.stages import Stages, StaleStagesError, provenance_markdown
from test_feedback_critic import TASK, fast, ok, stub


# -- 1. data: a clear error, the hub only when asked -----------------------------------------------
@pytest.mark.parametrize("experiment,missing", [("gsm8k", "gsm8k/test.jsonl"),
                                                ("humaneval", "humaneval/HumanEval.jsonl.gz"),
                                                ("mmlu", "mmlu/test")])
def test_missing_data_says_where_it_looked_and_what_fixes_it(experiment, missing, tmp_path,
                                                             capsys):
    empty = tmp_path / "data"
    (empty / experiment).mkdir(parents=True)  # the directory is there, its files are not
    out = tmp_path / "out"
    assert main(["repro", experiment, "--smoke", "--model", str(tmp_path / "never-loaded"),
                 "--data-dir", str(empty), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} not found (looked in: {empty / missing})" in err
    assert "--allow-download" in err and "--data-dir" in err and "$EXPERIENTIAL_DATA" in err
    assert not (out / "stages").exists()  # stopped before any stage or model load


def test_allow_download_falls_back_to_the_hub_when_the_files_are_missing(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    asked = []

    def load_dataset(name, config=None, split=None):  # stands in for the network
        asked.append((name, config, split))
        return [{"question": "1+1?", "answer": "1+1=2\n#### 2"}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(FileNotFoundError, match="--allow-download"):
        load_gsm8k("test", str(tmp_path))
    [p] = load_gsm8k("test", str(tmp_path), allow_download=True)
    assert asked == [("openai/gsm8k", "main", "test")] and p.final == "2"


# -- 2. config precedence --------------------------------------------------------------------------
def test_config_file_keeps_the_experiments_defaults_and_flags_win(tmp_path):
    def el(*argv: str):
        return _repro_el_config(build_parser().parse_args(["repro", *argv]))

    lr_only = tmp_path / "lr.yaml"
    lr_only.write_text("learning_rate: 0.0007\n")
    cfg = el("gsm8k", "--config", str(lr_only))
    assert cfg.learning_rate == 0.0007  # from the file
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.max_length, cfg.epochs) == (128, 4, 2048, 4)
    assert el("gsm8k", "--config", str(lr_only), "--train-n", "16").batch_size == 16

    with_epochs = tmp_path / "e.json"
    with_epochs.write_text(json.dumps({"epochs": 2, "batch_size": 32}))
    assert el("gsm8k", "--config", str(with_epochs)).epochs == 2  # the file beats the default
    assert el("gsm8k", "--config", str(with_epochs)).batch_size == 32
    flagged = el("gsm8k", "--config", str(with_epochs), "--epochs", "3", "--steps", "5",
                 "--seed", "7")
    assert (flagged.epochs, flagged.max_steps, flagged.seed) == (3, 5, 7)  # flags beat the file
    assert el("humaneval", "--config", str(lr_only)).max_length == 2048
    smoke = el("mmlu", "--config", str(with_epochs), "--smoke")
    assert smoke.batch_size == 4 and smoke.epochs == 2  # --smoke's sizes beat the file

    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        el("gsm8k", "--config", str(bad))


# -- 3. stale stages -------------------------------------------------------------------------------
def test_stages_refuse_other_arguments_and_name_them(tmp_path, capsys):
    args = {"model": "m", "limit": 4, "el": {"learning_rate": 1e-4, "epochs": 4}}
    Stages(tmp_path, args).run("a", lambda: 1)
    Stages(tmp_path, args)  # the same arguments: fine
    with pytest.raises(StaleStagesError) as e:
        Stages(tmp_path, {**args, "limit": 8, "el": {"learning_rate": 1e-4, "epochs": 2}})
    msg = str(e.value)
    assert "limit: 4 -> 8" in msg and "el.epochs: 4 -> 2" in msg and "learning_rate" not in msg
    assert "-o" in msg and "--restart" in msg
    assert Stages(tmp_path, {**args, "limit": 8}, restart=True).done("a") is False
    assert json.loads((tmp_path / "stages" / "args.json").read_text())["limit"] == 8

    legacy = tmp_path / "legacy"
    (legacy / "stages").mkdir(parents=True)
    (legacy / "stages" / "a.json").write_text("2")  # made before arguments were recorded
    assert Stages(legacy, args).run("a", lambda: 3) == 2
    assert "did not record its arguments" in capsys.readouterr().err


def test_rerun_with_other_arguments_errors_and_restart_runs(model_dir, tmp_path, capsys):
    out = tmp_path / "g"
    base = ["repro", "gsm8k", "--smoke", "--no-grpo", "--model", model_dir, "-o", str(out)]
    assert main(base) == 0
    first = json.loads((out / "stages" / "eval_base.json").read_text())
    capsys.readouterr()
    assert main(base + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "config.seed: 0 -> 1" in err and "--restart" in err
    assert json.loads((out / "stages" / "eval_base.json").read_text()) == first  # untouched
    assert main(base + ["--seed", "1", "--restart"]) == 0
    assert json.loads((out / "stages" / "args.json").read_text())["config"]["seed"] == 1
    assert json.loads((out / "report.json").read_text())["config"]["seed"] == 1


# -- 6 + 7. HumanEval critic feedback through the CLI; the transcript beside the report ------------
def test_humaneval_critic_feedback_end_to_end(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERIENTIAL_CACHE", str(tmp_path / "cache"))
    from experiential.tasks.data import load_humaneval

    rows = {r["task_id"]: r for r in load_humaneval()[:4]}
    out = tmp_path / "he"
    reply = "Your function never returns the value; compare each pair and return True early."
    with stub(ok(reply)) as (url, seen):
        assert main(["repro", "humaneval", "--smoke", "--model", model_dir, "--feedback",
                     "critic", "--critic-url", url, "--critic-model", "stub-model",
                     "-o", str(out)]) == 0
    assert seen, "the critic was never asked"
    for request in seen:
        asked = request["body"]["messages"][-1]["content"]
        task = next(r for r in rows.values() if r["prompt"].strip() in asked)
        assert task["canonical_solution"].strip() in asked  # the reference solution
        assert "Test results of the student's code:" in asked and "check(" in asked
        assert "fails the tests" in asked and "how to fix it" in asked
    stage = json.loads((out / "stages" / "critic_repeat0.json").read_text())
    asked_for = [e for e in stage["experiences"] if e["metadata"].get("template")]
    assert asked_for and all(e["feedback"] == reply and e["metadata"]["source"] == "code_critic"
                             and e["metadata"]["passed"] is False for e in asked_for)
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"critic"} and report["critic"].startswith("openai:")
    transcript = [json.loads(x) for x in (out / "critic_transcript.jsonl").read_text().splitlines()]
    assert len(transcript) == len({json.dumps(r["body"], sort_keys=True) for r in seen})
    assert all(t["response"] == reply for t in transcript)

    # a missing critic is a clear error before anything runs
    assert main(["repro", "humaneval", "--smoke", "--model", model_dir, "--feedback", "critic",
                 "-o", str(tmp_path / "none")]) == 2


def test_code_critic_says_so_when_the_code_passes(tmp_path):
    from experiential.tasks.data import load_humaneval

    row = load_humaneval()[0]
    with stub(ok("Right.")) as (url, seen):
        source = CodeCritic(Critic(fast(url), cache_dir=None))
        good = source.review(to_task(row), row["prompt"] + row["canonical_solution"])
        bad = source.review(to_task(row), row["prompt"] + "    return None\n")
        empty = source.review(to_task(row), "")
    assert good.metadata["passed"] and good.metadata["template"] == "code_passed"
    assert not bad.metadata["passed"] and bad.metadata["template"] == "code_failed"
    said_good, said_bad = (s["body"]["messages"][-1]["content"] for s in seen)
    assert "All tests passed." in said_good and "passes every test. Say so" in said_good
    assert "Tests failed" in said_bad and "how to fix it" in said_bad
    assert len(seen) == 2 and empty.feedback.endswith("The attempt is empty: no code to run.")


def test_transcript_merges_across_resumed_runs(tmp_path, capsys):
    other = type(TASK)(prompt=[{"role": "user", "content": "What is 4 + 4?"}],
                       reference="#### 8", id="t2", metadata={"correct": False})
    out = tmp_path / "report"
    path = out / "critic_transcript.jsonl"
    with stub(ok()) as (url, seen):
        first = Critic(fast(url), cache_dir=tmp_path / "cache")
        first.review(TASK, "6")
        _save_transcript(first, str(out))  # the run is killed after this stage
        resumed = Critic(fast(url), cache_dir=tmp_path / "cache")
        resumed.review(TASK, "6")  # from the cache
        resumed.review(other, "9")
        resumed.review(other, "9")
        _save_transcript(resumed, str(out))
        _save_transcript(Critic(fast(url), cache_dir=tmp_path / "cache"), str(out))  # asks nothing
    assert len(seen) == 2
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["cached"] for x in lines] == [False, False]  # one entry per request, first kept
    assert "2 + 3" in json.dumps(lines[0]["request"]) and "4 + 4" in json.dumps(lines[1]["request"])
    assert "critic transcript (2 requests)" in capsys.readouterr().out


# -- 8. which model, which command -----------------------------------------------------------------
def test_reports_name_the_resolved_model_and_the_command(model_dir, tmp_path):
    out = tmp_path / "m"
    argv = ["repro", "mmlu", "--smoke", "--model", model_dir, "--kinds", "letter", "-o", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == model_dir
    assert report["model_resolved"]["path"] == str(Path(model_dir).resolve())
    assert report["command"] == "experiential " + " ".join(argv)
    md = (out / "report.md").read_text()
    assert md.index(f"Command: `experiential repro mmlu --smoke") < md.index("| experience kind")
    assert f"Model: `{Path(model_dir).resolve()}`" in md

    from experiential.models import describe_model

    default = describe_model("default")  # nothing is loaded or hashed
    assert default["name"] == "Qwen2.5-Coder-0.5B-Instruct" and len(default["gguf_sha256"]) == 64
    assert describe_model("critic")["name"] == "Qwen2.5-Coder-1.5B-Instruct"
    assert describe_model("org/some-model")["hub_id"] == "org/some-model"
    top = provenance_markdown({"command": "experiential repro gsm8k", "model_resolved": default})
    assert f"Model: Qwen2.5-Coder-0.5B-Instruct (embedded `default`, GGUF sha256 " \
           f"`{default['gguf_sha256']}`)\n" in top
