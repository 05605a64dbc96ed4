"""HumanEval cross-validation mechanics on a tiny model: splits, sandboxed checks, one EL update
per split and feedback type, the report beside the published gains, and resume."""

import json

from conftest import build_tiny_model, build_tiny_tokenizer

from experiential.config import ELConfig
from experiential.tasks import humaneval
from experiential.tasks.data import load_humaneval


def test_splits_are_halves_fixed_by_seed_and_repeat():
    a_train, a_test = humaneval.split(164, 0, 0)
    assert len(a_train) == 82 and not set(a_train) & set(a_test)
    assert humaneval.split(164, 0, 0) == (a_train, a_test)
    assert humaneval.split(164, 0, 1)[0] != a_train


def test_check_runs_the_real_tests():
    rows = load_humaneval()[:4]
    right = [r["prompt"] + r["canonical_solution"] for r in rows]
    wrong = [r["prompt"] + "    return None\n" for r in rows]
    cfg = humaneval.HumanEvalConfig()
    assert humaneval.check(rows, right, cfg) == [True] * 4
    assert humaneval.check(rows, wrong, cfg) == [False] * 4


def test_pipeline_runs_and_resumes(tmp_path):
    tok = build_tiny_tokenizer()
    loads = []

    def load(_name):
        loads.append(1)
        return build_tiny_model(len(tok)), tok

    cfg = humaneval.HumanEvalConfig(limit=4, repeats=2, max_new_tokens=8, batch_size=4)
    el = ELConfig(max_steps=1, batch_size=2, micro_batch_size=2, anchor_weight=0,
                  retention=False, progress=False, max_length=2048)
    report = humaneval.run("tiny", tmp_path, cfg, el, load=load)
    assert loads == [1]
    assert set(report["results"]) == {"tests", "io"}
    for kind in ("tests", "io"):
        r = report["results"][kind]
        assert len(r["per_repeat"]) == 2
        stage = json.loads((tmp_path / "stages" / f"{kind}_repeat0.json").read_text())
        assert len(stage["experiences"]) == 2 and len(stage["after_passed"]) == 2
        assert all(e["metadata"]["source"] == f"code_{kind}" for e in stage["experiences"])
    md = (tmp_path / "report.md").read_text()
    assert "+15.37" in md and "+17.60" in md
    assert (tmp_path / "report.png").stat().st_size > 1000
    loads.clear()
    assert humaneval.run("tiny", tmp_path, cfg, el, load=load)["results"] == report["results"]
    assert loads == []
