import pytest

from experiential.feedback.answer import AnswerChecker, extract_final_number, normalize_number
from experiential.feedback.base import Task, review_all
from experiential.tasks.data import load_gsm8k


@pytest.mark.parametrize("text,expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("She pays $1,200.00 in total. The answer is $1,200.", "1200"),
    ("So the final answer is \\boxed{18}.", "18"),
    ("\\boxed{\\$18.50}", "18.5"),
    ("First 3 + 4 = 7, then 7 * 2 = 14 eggs", "14"),
    ("The answer is: 42 apples. (I double-checked 3 times)", "42"),
    ("He lost 5 dollars, ending at -3.", "-3"),
    ("The final answer is 25%.", "25"),
    ("It takes .5 hours", "0.5"),
    ("#### 18\nSome trailing text with 99 in it", "18"),
    ("No numbers here at all.", None),
    ("", None),
])
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_normalize_number():
    assert normalize_number("$1,200.00") == "1200"
    assert normalize_number("3.50") == "3.5"
    assert normalize_number("abc") is None


def test_every_gsm8k_reference_has_a_number_that_matches_the_final_field():
    problems = load_gsm8k("test")
    assert len(problems) == 1319
    for p in problems:
        assert extract_final_number(p.answer) == normalize_number(p.final), p.index


def test_checker_feedback_on_real_gsm8k_problem():
    p = load_gsm8k("test")[0]
    task = Task(prompt=p.question, reference=p.answer, id=f"gsm8k/{p.index}")
    checker = AnswerChecker(include_solution=True)
    right = checker.review(task, f"Let me compute. The answer is {p.final}.")
    assert right.metadata["correct"] is True and "is correct" in right.feedback
    wrong = checker.review(task, "Janet has 16 eggs... so she makes $20 every day. #### 20")
    assert wrong.metadata["correct"] is False
    assert wrong.feedback.startswith("Your final answer 20 is wrong.")
    assert f"The correct answer is {p.final}." in wrong.feedback
    assert "<<" not in wrong.feedback and "####" not in wrong.feedback  # annotations stripped
    hidden = AnswerChecker(reveal_answer=False).review(task, "#### 20")
    assert p.final not in hidden.feedback.split("wrong.")[-1]


def test_bad_input_gives_clear_feedback_never_a_crash():
    task = Task(prompt="2+2?", reference="#### 4")
    checker = AnswerChecker()
    empty = checker.review(task, "")
    assert "empty" in empty.feedback and empty.metadata["correct"] is False
    words = checker.review(task, "I think it is four.")
    assert "does not end in a number" in words.feedback
    # a task without a reference is a source error: the batch keeps going
    out = review_all(checker, [Task(prompt="?"), task], ["1", "4"])
    assert out[0].metadata["feedback_error"] and "no reference" in out[0].feedback
    assert out[1].metadata["correct"] is True
