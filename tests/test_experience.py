import json

import pytest

from experiential.experience import Experience, ExperienceError, load_jsonl, save_jsonl


def _write(path, lines):
    path.write_bytes(b"".join(l if isinstance(l, bytes) else (l + "\n").encode() for l in lines))


def good(i=0, **kw):
    d = {"prompt": f"q{i}", "attempt": "a", "feedback": "wrong, it is B", "id": f"e{i}"}
    d.update(kw)
    return json.dumps(d)


def test_roundtrip_keeps_every_field(tmp_path):
    exps = [Experience("What?", "A", "No, B.", {"k": [1, 2]}, id="x1"),
            Experience([{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "¿Qué? 日本"}], "", "say ñ")]
    save_jsonl(exps, tmp_path / "e.jsonl")
    back, errs = load_jsonl(tmp_path / "e.jsonl")
    assert errs == []
    assert [e.to_dict() for e in back] == [e.to_dict() for e in exps]


@pytest.mark.parametrize("line, field, words", [
    (good(feedback="   "), "feedback", "empty"),
    (json.dumps({"attempt": "a", "feedback": "f"}), "prompt", "missing"),
    (good(prompt=3), "prompt", "string or a list"),
    (good(prompt=[{"role": "robot", "content": "x"}]), "prompt", "role"),
    (good(attempt=["x"]), "attempt", "string"),
    (good(metadata=[1]), "metadata", "object"),
    (good(extra=1), "extra", "unknown"),
])
def test_bad_field_is_named_with_line(tmp_path, line, field, words):
    _write(tmp_path / "e.jsonl", [good(1), line])
    with pytest.raises(ExperienceError) as err:
        load_jsonl(tmp_path / "e.jsonl")
    assert err.value.line == 2 and err.value.field == field
    assert "line 2" in str(err.value) and words in str(err.value)


def test_invalid_json_and_non_utf8_are_reported_and_good_lines_kept(tmp_path):
    _write(tmp_path / "e.jsonl", [good(1), "{not json", b"\xff\xfe bad bytes\n", "", good(2),
                                  good(2)])
    exps, errs = load_jsonl(tmp_path / "e.jsonl", errors="collect")
    assert [e.id for e in exps] == ["e1", "e2"]
    assert [e.line for e in errs] == [2, 3, 6]
    assert "invalid JSON" in str(errs[0]) and "UTF-8" in str(errs[1]) and "duplicate" in str(errs[2])


def test_over_length_after_tokenization_is_an_error(tmp_path):
    _write(tmp_path / "e.jsonl", [good(1), good(2, prompt="word " * 50)])
    count = lambda e: len((e.prompt_text + e.attempt + e.feedback).split())  # noqa: E731
    exps, errs = load_jsonl(tmp_path / "e.jsonl", errors="collect", max_tokens=20,
                            count_tokens=count)
    assert [e.id for e in exps] == ["e1"]
    assert errs[0].line == 2 and "over the limit of 20" in str(errs[0])


def test_constructor_validates():
    with pytest.raises(ExperienceError, match="feedback"):
        Experience("q", "a", "")
    assert Experience("q", "a", "f").messages == [{"role": "user", "content": "q"}]
