import io

from experiential.feedback.human import ask_feedback


def test_typed_feedback_becomes_an_experience():
    typed = iter(["The answer is wrong:", "it is B.", ""])
    out = io.StringIO()
    exp = ask_feedback("Q?", "A", input_fn=lambda _: next(typed), output=out)
    assert exp.feedback == "The answer is wrong:\nit is B." and exp.attempt == "A"
    assert "--- answer ---\nA" in out.getvalue()


def test_empty_feedback_is_skipped_and_eof_ends_input():
    assert ask_feedback("Q?", "A", input_fn=lambda _: "", output=io.StringIO()) is None

    def eof(_):
        raise EOFError

    assert ask_feedback("Q?", "A", input_fn=eof, output=io.StringIO()) is None
