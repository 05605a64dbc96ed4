"""The sandbox contains what model-written code might do, and code feedback says what happened."""

import glob
import os
import socket
import tempfile
import threading
import time

import pytest

from experiential.feedback.base import Task, review_all
from experiential.feedback.code import IOFeedback, TestFeedback, io_program, pass_at_1
from experiential.feedback.sandbox import run_many, run_python
from experiential.tasks.data import load_humaneval
from experiential.tasks.humaneval import to_task


def _timed(code, **kw):
    start = time.monotonic()
    r = run_python(code, **kw)
    return r, time.monotonic() - start


def test_normal_code_runs_and_its_temp_dir_is_removed():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "experiential-sandbox-*")))
    r = run_python("import os\nprint('hello', os.getcwd())\nopen('scratch.txt', 'w').write('x')")
    assert r.ok and r.status == "passed" and r.stdout.startswith("hello ")
    workdir = r.stdout.split()[1]
    assert "experiential-sandbox-" in workdir and not os.path.exists(workdir)
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "experiential-sandbox-*")))
    assert after <= before


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()",
    "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])",
])
def test_fork_bombs_fail_cleanly(code):
    r, took = _timed(code, timeout=5)
    assert not r.ok and r.status == "failed" and took < 5
    assert "disabled in the sandbox" in r.message or "halted" in r.message


def test_infinite_loop_times_out_without_hanging_the_caller():
    r, took = _timed("while True:\n    pass", timeout=2)
    assert r.status == "timeout" and "2.0 s" in r.message and took < 5


@pytest.mark.parametrize("code", ["x = bytearray(10**10)", "x = [0] * (10**10)"])
def test_ten_gigabytes_fail_on_the_memory_limit(code):
    r, took = _timed(code, memory_mb=256)
    assert r.status == "memory" and "256 MB" in r.message and took < 5


def test_deleting_files_is_disabled(tmp_path):
    canary = tmp_path / "home"
    canary.mkdir()
    (canary / "precious.txt").write_text("keep me")
    for code in (f"import os\nos.system('rm -rf {canary}')",
                 f"import shutil\nshutil.rmtree({str(canary)!r})",
                 f"import os\nos.remove({str(canary / 'precious.txt')!r})"):
        r = run_python(code)
        assert not r.ok and "disabled in the sandbox" in r.message, r.message
    assert (canary / "precious.txt").read_text() == "keep me"


def test_sockets_are_disabled_and_nothing_connects():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    for code in (f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
                 f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
                 f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')"):
        r = run_python(code)
        assert not r.ok and "network access" in r.message and "disabled" in r.message, r.message
    t.join()
    server.close()
    assert accepted == []


def test_writing_outside_the_sandbox_is_disabled(tmp_path):
    target = tmp_path / "evil.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)"):
        r = run_python(code)
        assert not r.ok and "outside the sandbox" in r.message, r.message
    assert not target.exists()


def test_exiting_early_is_not_a_pass():
    for code in ("import sys\nsys.exit(0)", "raise SystemExit(0)", "import os\nos._exit(0)"):
        assert not run_python(code).ok


def test_runs_in_parallel():
    codes = ["import time\ntime.sleep(1)"] * 4
    start = time.monotonic()
    serial = [run_python(c) for c in codes[:2]]
    serial_per_run = (time.monotonic() - start) / 2
    start = time.monotonic()
    results = run_many(codes, workers=4)
    parallel = time.monotonic() - start
    assert all(r.ok for r in results + serial)
    assert parallel < 0.8 * serial_per_run * len(codes)


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_canonical_solutions_pass_and_broken_ones_fail(humaneval):
    rows = humaneval[:10]
    tasks = [to_task(r) for r in rows]
    right = review_all(TestFeedback(), tasks, [r["prompt"] + r["canonical_solution"] for r in rows],
                       workers=2)
    assert pass_at_1(right) == 1.0 and all("All tests passed." in e.feedback for e in right)
    wrong = review_all(TestFeedback(), tasks, ["    return None\n"] * len(rows), workers=2)
    assert pass_at_1(wrong) == 0.0


def test_failure_feedback_shows_the_test_and_a_trimmed_traceback(humaneval):
    task = to_task(humaneval[0])
    attempt = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    e = TestFeedback().review(task, attempt)
    assert e.metadata["passed"] is False and e.metadata["source"] == "code_tests"
    assert "def check(candidate):" in e.feedback  # the test source that ran
    assert "an assertion in the tests did not hold" in e.feedback
    assert 'File "test.py"' in e.feedback and "AssertionError" in e.feedback
    assert "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True" in e.feedback
    assert "_runner" not in e.feedback and "disabled" not in e.feedback
    crash = TestFeedback().review(task, "    return numbers[100]\n")
    assert "your code raised IndexError" in crash.feedback and 'File "solution.py"' in crash.feedback


def test_io_feedback_prints_inputs_and_outputs(humaneval):
    task = to_task(humaneval[0])
    attempt = "def has_close_elements(numbers, threshold):\n    return False\n"
    e = IOFeedback().review(task, attempt)
    assert "has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) -> False" in e.feedback
    assert "expected" not in e.feedback and e.metadata["passed"] is False
    shown = IOFeedback(show_expected=True).review(task, attempt)
    assert "-> False  (expected True)" in shown.feedback
    raising = IOFeedback().review(task, "def has_close_elements(numbers, threshold):\n"
                                        "    raise ValueError('nope')\n")
    assert raising.feedback.count("raised ValueError: nope") == 7  # every call, not just the first


def test_every_humaneval_test_converts_and_canonical_io_runs_clean(humaneval):
    for row in humaneval:
        io_program(row["test"], row["entry_point"], show_expected=True)  # parses, rewrites
    rows = humaneval[::8]  # 21 tasks
    out = review_all(IOFeedback(), [to_task(r) for r in rows],
                     [r["prompt"] + r["canonical_solution"] for r in rows], workers=2)
    for row, e in zip(rows, out):
        assert e.metadata["passed"], row["task_id"]
        assert " raised " not in e.feedback and " -> " in e.feedback, (row["task_id"], e.feedback)


def test_bad_input_gives_clear_feedback(humaneval):
    task = to_task(humaneval[0])
    fb = TestFeedback()
    assert "The attempt is empty" in fb.review(task, "").feedback
    syntax = fb.review(task, "def has_close_elements(numbers, threshold)\n    return 1\n")
    assert "does not parse: SyntaxError" in syntax.feedback and syntax.metadata["passed"] is False
    missing = fb.review(task, "```python\ndef other():\n    return 1\n```")
    assert "does not define `has_close_elements`" in missing.feedback
    broken_test = Task(prompt="def f():\n", tests="def check(candidate):\n    assert undefined_x\n",
                       entry_point="f")
    e = fb.review(broken_test, "def f():\n    return 1\n")
    assert "the test code raised NameError" in e.feedback
    # a task without tests is a source error, and the batch survives it
    out = review_all(fb, [Task(prompt="x"), task], ["1", ""])
    assert out[0].metadata["feedback_error"] and "no tests" in out[0].feedback
    assert "empty" in out[1].feedback
