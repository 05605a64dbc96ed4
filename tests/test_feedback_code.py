"""The sandbox contains what model-written code might do, and code feedback says what happened."""

import ast
import glob
import os
import re
import socket
import tempfile
import threading
import time

import pytest

from experiential.feedback.base import Task, review_all
from experiential.feedback.code import (IOFeedback, TestFeedback, extract_code, io_program,
                                        pass_at_1, run_tests)
from experiential.feedback.sandbox import MAX_OUTPUT, run_many, run_python
from experiential.tasks.data import load_humaneval
from experiential.tasks.humaneval import to_task


def _timed(code, **kw):
    start = time.monotonic()
    r = run_python(code, **kw)
    return r, time.monotonic() - start


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or working directory mentions ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if text in cmd or text in cwd:
            found.append(int(pid))
    return found


# --- the sandbox ------------------------------------------------------------------------------


def test_normal_code_runs_and_its_temp_dir_is_removed():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "experiential-sandbox-*")))
    r = run_python("import os, tempfile\nprint('hello', os.getcwd())\n"
                   "open('scratch.txt', 'w').write('x')\nos.remove('scratch.txt')\n"
                   "with tempfile.TemporaryDirectory() as d:\n    open(d + '/t', 'w').write('t')")
    assert r.ok and r.status == "passed" and r.stdout.startswith("hello "), r
    workdir = r.stdout.split()[1]
    assert "experiential-sandbox-" in workdir
    assert not os.path.exists(workdir) and not os.path.exists(os.path.dirname(workdir))
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "experiential-sandbox-*")))
    assert after <= before


@pytest.mark.parametrize("code,says", [
    ("import os\nwhile True:\n    os.fork()", "os.fork is disabled in the sandbox"),
    ("import posix\nwhile True:\n    posix.fork()", "posix.fork is disabled in the sandbox"),
    ("import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()",
     "importing multiprocessing is disabled in the sandbox"),
    ("import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])",
     "subprocess.Popen is disabled in the sandbox"),
    ("import os\nwhile True:\n    os.posix_spawn('/bin/sleep', ['sleep', '100'], {})",
     "os.posix_spawn is disabled in the sandbox"),
])
def test_fork_bombs_fail_cleanly_and_leave_nothing_running(code, says):
    r, took = _timed("import os\nprint(os.getcwd(), flush=True)\n" + code, timeout=5)
    assert not r.ok and r.status == "failed" and says in r.message, r.message
    assert took < 5
    assert _processes_mentioning(os.path.dirname(r.stdout.split()[0])) == []


def test_infinite_loop_times_out_without_hanging_the_caller():
    r, took = _timed("while True:\n    pass", timeout=2)
    assert r.status == "timeout" and r.message == "timed out after 2.0 s (wall clock)"
    assert took < 2 + 3


@pytest.mark.parametrize("code", ["x = bytearray(10**10)", "x = [0] * (10**10)",
                                  "x = []\nwhile True:\n    x.append(bytearray(10**7))"])
def test_ten_gigabytes_fail_on_the_memory_limit(code):
    r, took = _timed(code, timeout=10)
    assert r.status == "memory" and "exceeded the 512 MB memory limit" in r.message, r.message
    assert took < 10


def test_deleting_files_outside_is_disabled(tmp_path):
    canary = tmp_path / "home"
    canary.mkdir()
    (canary / "precious.txt").write_text("keep me")
    c, f = str(canary), str(canary / "precious.txt")
    for code, says in [
        (f"import os\nos.system('rm -rf ' + {c!r})", "os.system is disabled in the sandbox"),
        (f"import posix\nposix.system('rm -rf ' + {c!r})", "posix.system is disabled"),
        (f"import shutil\nshutil.rmtree({c!r})", "shutil.rmtree outside the sandbox"),
        (f"import os\nos.remove({f!r})", "os.remove outside the sandbox"),
        (f"import os\nos.remove(path={f!r})", "os.remove outside the sandbox"),
        (f"import posix\nposix.unlink({f!r})", "posix.unlink outside the sandbox"),
        (f"import os\nfd = os.open({c!r}, os.O_RDONLY)\nos.unlink('precious.txt', dir_fd=fd)",
         "os.unlink outside the sandbox"),
        (f"import os\nos.rename({f!r}, 'mine.txt')", "os.rename outside the sandbox"),
        (f"import os\nos.chmod({f!r}, 0)", "os.chmod outside the sandbox"),
        (f"import pathlib\npathlib.Path({f!r}).unlink()", "os.unlink outside the sandbox"),
    ]:
        r = run_python(code)
        assert not r.ok and r.status == "failed" and says in r.message, (code, r.message)
    assert (canary / "precious.txt").read_text() == "keep me"
    assert oct((canary / "precious.txt").stat().st_mode & 0o777) != "0o0"


def test_sockets_are_disabled_and_nothing_connects():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(1.0)
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
        assert not r.ok and "network access is disabled in the sandbox" in r.message, r.message
    if os.geteuid() == 0:
        # Past the Python-level guard (the raw C socket type): as root the child has its own
        # empty network namespace, so this must not connect either.
        raw = run_python(f"import socket\ns = socket.socket.__mro__[-2]()\n"
                         f"s.connect(('127.0.0.1', {port}))")
        assert not raw.ok and "unreachable" in raw.message, raw.message
    t.join()
    server.close()
    assert accepted == []


def test_writing_outside_the_sandbox_is_disabled(tmp_path):
    target = tmp_path / "evil.txt"
    t = str(target)
    for code in (f"open({t!r}, 'w').write('x')",
                 f"open({t!r}, 'a').write('x')",
                 f"import pathlib\npathlib.Path({t!r}).write_text('x')",
                 f"import os\nos.open({t!r}, os.O_WRONLY | os.O_CREAT)",
                 f"import io\nio.FileIO({t!r}, 'w').write(b'x')",
                 f"import _io\n_io.open({t!r}, 'w').write('x')",
                 f"import os\nos.symlink({t!r}, 'link')\nopen('link', 'w').write('x')"):
        r = run_python(code)
        assert not r.ok and "writing outside the sandbox directory is disabled" in r.message, \
            (code, r.message)
    assert not target.exists()


def test_exiting_early_is_not_a_pass():
    for code in ("import sys\nsys.exit(0)", "raise SystemExit(0)", "import os\nos._exit(0)",
                 "exit(0)"):
        assert not run_python(code).ok, code


def test_long_output_keeps_the_head_and_the_traceback():
    r = run_python("import sys\nprint('start')\nsys.stderr.write('noise ' * 50000)\n"
                   "print('x' * 100000)\nraise ValueError('the real error')")
    assert r.status == "failed" and r.message == "ValueError: the real error"
    assert r.stdout.startswith("start") and len(r.stdout) < MAX_OUTPUT + 100
    assert r.stderr.rstrip().endswith("ValueError: the real error")


def test_runs_in_parallel_and_keeps_input_order():
    sleeps = [1.2, 1.0, 0.8, 1.2, 1.0, 0.8]
    codes = [f"import time\ntime.sleep({s})\nprint({i})" for i, s in enumerate(sleeps)]
    start = time.monotonic()
    serial = [run_python(c) for c in codes[:3]]
    serial_time = (time.monotonic() - start) * 2  # the first half is half the total sleep
    start = time.monotonic()
    results = run_many(codes, workers=2)
    parallel = time.monotonic() - start
    assert all(r.ok for r in results + serial)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(len(codes))]
    assert parallel < 0.8 * serial_time, (parallel, serial_time)


# --- code feedback on HumanEval ---------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_canonical_solutions_pass_and_broken_ones_fail(humaneval):
    rows = humaneval[:10]
    tasks = [to_task(r) for r in rows]
    right = run_tests(tasks, [r["prompt"] + r["canonical_solution"] for r in rows], workers=2)
    assert pass_at_1(right) == 1.0 and all("All tests passed." in e.feedback for e in right)
    assert all(e.metadata["passed"] is True and e.metadata["source"] == "code_tests"
               for e in right)
    body_only = run_tests(tasks, [r["canonical_solution"] for r in rows], workers=2)
    assert pass_at_1(body_only) == 1.0
    wrong = run_tests(tasks, ["    return None\n"] * len(rows), workers=2)
    assert pass_at_1(wrong) == 0.0


def test_failure_feedback_shows_the_test_and_a_trimmed_traceback(humaneval):
    task = to_task(humaneval[0])
    attempt = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    e = TestFeedback().review(task, attempt)
    assert e.metadata["passed"] is False and e.metadata["status"] == "failed"
    assert "def check(candidate):" in e.feedback and "check(has_close_elements)" in e.feedback
    assert "METADATA" not in e.feedback
    assert "Tests failed: an assertion in the tests did not hold." in e.feedback
    assert 'File "test.py", line 2, in check' in e.feedback and "AssertionError" in e.feedback
    assert "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True" in e.feedback
    for prelude in ("runner", "experiential-sandbox", "_namespace", "exec(", "disabled"):
        assert prelude not in e.feedback
    crash = TestFeedback().review(task, "    return numbers[100]\n")
    assert "your code raised IndexError" in crash.feedback
    assert 'File "solution.py"' in crash.feedback
    slow = TestFeedback(timeout=1).review(task, "    while True:\n        pass\n")
    assert slow.metadata["status"] == "timeout" and "timed out after 1.0 s" in slow.feedback


def test_a_demo_under_main_in_the_attempt_does_not_run_under_the_tests(humaneval):
    row = humaneval[0]
    attempt = (f"```python\n{row['prompt']}{row['canonical_solution']}\n"
               "if __name__ == '__main__':\n"
               "    print(has_close_elements([float(input())], 1))\n```")
    assert TestFeedback().review(to_task(row), attempt).metadata["passed"] is True


def test_io_feedback_prints_inputs_and_outputs(humaneval):
    task = to_task(humaneval[0])
    attempt = "def has_close_elements(numbers, threshold):\n    return False\n"
    e = IOFeedback().review(task, attempt)
    assert "has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) -> False" in e.feedback
    assert "expected" not in e.feedback and "assert" not in e.feedback
    assert e.metadata["passed"] is False and e.metadata["source"] == "code_io"
    shown = IOFeedback(show_expected=True).review(task, attempt)
    assert "has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) -> False  (expected True)" \
        in shown.feedback
    assert "0.05) -> False  (expected False)" in shown.feedback
    raising = IOFeedback().review(task, "def has_close_elements(numbers, threshold):\n"
                                        "    raise ValueError('nope')\n")
    assert raising.feedback.count("raised ValueError: nope") == 7  # every call, not just the first
    hanging = IOFeedback(call_timeout=0.5).review(
        task, "    if threshold < 0.1:\n        while True:\n            pass\n    return True\n")
    assert "0.05) did not return within 0.5 s" in hanging.feedback
    assert "has_close_elements([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) -> True" in hanging.feedback
    assert hanging.metadata["passed"] is False


def test_io_feedback_shows_the_values_a_loop_passed(humaneval):
    add = to_task(humaneval[53])
    e = IOFeedback(show_expected=True, max_lines=10).review(add, "    return x - y\n")
    assert "add(x, y)" not in e.feedback
    looped = re.findall(r"^add\((\d+), (\d+)\) -> (-?\d+)  \(expected (\d+)\)$", e.feedback, re.M)
    assert len(looped) == 10 and all(int(a) - int(b) == int(r) and int(a) + int(b) == int(x)
                                     for a, b, r, x in looped)
    assert "more lines not shown" in e.feedback
    approx = IOFeedback(show_expected=True).review(to_task(humaneval[2]), "    return number\n")
    assert "truncate_number(1.33) -> 1.33  (expected 0.33 within 1e-06)" in approx.feedback
    truthy = IOFeedback(show_expected=True).review(to_task(humaneval[52]), "    return True\n")
    assert "below_threshold([1, 20, 4, 10], 5) -> True  (expected a false value)" \
        in truthy.feedback


def test_every_humaneval_test_converts_and_canonical_io_runs_clean(humaneval):
    for row in humaneval:
        for show in (False, True):
            program = io_program(row["test"], row["entry_point"], show_expected=show)
            compile(program, row["task_id"], "exec")
            assert "assert " not in ast.unparse(ast.parse(program)), row["task_id"]
    rows = humaneval[::8]  # 21 tasks
    out = review_all(IOFeedback(), [to_task(r) for r in rows],
                     [r["prompt"] + r["canonical_solution"] for r in rows], workers=2)
    for row, e in zip(rows, out):
        assert e.metadata["passed"], (row["task_id"], e.feedback)
        assert " raised " not in e.feedback and " -> " in e.feedback, (row["task_id"], e.feedback)


def test_io_verdict_agrees_with_the_real_tests(humaneval):
    rows = [humaneval[i] for i in (3, 19, 32, 33, 38, 44, 50, 53, 72, 147)]  # loops, helpers
    attempts = [r["prompt"] + r["canonical_solution"] for r in rows] + \
               ["    return None\n"] * len(rows) + \
               [r["prompt"] + r["canonical_solution"].replace("return", "return 0 or", 1)
                for r in rows]
    tasks = [to_task(r) for r in rows] * 3
    io = review_all(IOFeedback(), tasks, attempts, workers=2)
    real = review_all(TestFeedback(), tasks, attempts, workers=2)
    assert [e.metadata["passed"] for e in io] == [e.metadata["passed"] for e in real]
    assert any(e.metadata["passed"] for e in real) and not all(e.metadata["passed"] for e in real)


@pytest.mark.parametrize("source", [TestFeedback(), IOFeedback()], ids=["tests", "io"])
def test_bad_input_gives_clear_feedback(humaneval, source):
    task = to_task(humaneval[0])
    empty = source.review(task, "")
    assert "The attempt is empty: no code to run." in empty.feedback
    assert empty.metadata["passed"] is False and empty.metadata["status"] == "empty"
    syntax = source.review(task, "```python\ndef has_close_elements(numbers, threshold)\n"
                                 "    return 1\n```")
    assert re.search(r"does not parse: SyntaxError: .* \(line \d+: `def has_close_elements",
                     syntax.feedback), syntax.feedback
    assert syntax.metadata["passed"] is False
    missing = source.review(task, "```python\ndef other():\n    return 1\n```")
    assert "The code does not define `has_close_elements`." in missing.feedback
    no_code = Task(prompt="Write f.", tests="def check(candidate):\n    assert candidate() == 1\n",
                   entry_point="f")
    assert "does not define `f`" in source.review(no_code, "x = 1\n").feedback
    errs = Task(prompt="def f():\n", entry_point="f",
                tests="def check(candidate):\n    assert candidate() == undefined_x\n")
    e = source.review(errs, "def f():\n    return 1\n")
    assert e.metadata["passed"] is False
    assert "raised NameError" in e.feedback and "undefined_x" in e.feedback, e.feedback
    if isinstance(source, TestFeedback):
        assert "the test code raised NameError (an error, not an assertion failure" in e.feedback
        loading = Task(prompt="def f():\n", entry_point="f",
                       tests="import no_such_module_xyz\ndef check(candidate):\n    pass\n")
        e = source.review(loading, "def f():\n    return 1\n")
        assert "the test code raised ModuleNotFoundError" in e.feedback
    # a task without tests is a source error, and the batch survives it
    out = review_all(source, [Task(prompt="x"), task], ["1", ""])
    assert out[0].metadata["feedback_error"] and "no tests" in out[0].feedback
    assert "empty" in out[1].feedback


def test_extract_code_handles_the_shapes_models_answer_in(humaneval):
    prompt = humaneval[0]["prompt"]  # imports List, defines has_close_elements (docstring only)
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n" \
           "               for b in numbers[i + 1:])\n"
    full = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + body
    for attempt in (body, body.replace("\n    ", "\n").lstrip(),  # body only, indented or not
                    full,  # the signature repeated, the import of List missing
                    f"Here you go:\n```python3\n{full}```\nIt compares all pairs.",
                    f"```\n{full}```", f"```python\n{full}"):  # untagged; unterminated fence
        program = extract_code(attempt, prompt, "has_close_elements")
        ns: dict = {}
        exec(compile(program, "solution.py", "exec"), ns)
        assert ns["has_close_elements"]([1.0, 1.05], 0.1) is True, attempt
