"""Feedback from running code: the tests and their traceback, or printed input/output pairs.

The two sources of the published HumanEval experiment. :class:`TestFeedback` runs the attempt with
the task's tests in the sandbox; the feedback is the test source that ran, pass/fail and, on
failure, the traceback trimmed to the frames in the model's code and the test (``solution.py``,
``test.py``). :class:`IOFeedback` rewrites each ``assert`` of the tests, with the ``ast`` module,
into a statement that prints the input and what the attempted function returned (and optionally
what was expected); the feedback is that printed output. Both put ``passed`` in the metadata, so the
same harness computes pass@1.
"""

from __future__ import annotations

import ast
import re
from typing import Sequence

from ..experience import Experience
from .base import Task, experience
from .sandbox import SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def code_prompt(task: Task) -> str:
    """The task's code (signature + docstring): ``metadata['code_prompt']``, else the prompt."""
    if task.metadata.get("code_prompt"):
        return task.metadata["code_prompt"]
    if isinstance(task.prompt, str):
        return task.prompt
    return task.prompt[-1]["content"]


def answer_code(attempt: str, entry_point: str | None = None) -> str:
    """The code in a model's answer: the fenced block that defines the entry point, else the
    first fenced block, else the whole text."""
    blocks = _FENCE.findall(attempt)
    if not blocks:
        return attempt.strip("\n")
    wanted = [b for b in blocks if entry_point and re.search(rf"def\s+{entry_point}\s*\(", b)]
    return (wanted or blocks)[0].strip("\n")


def defines_other_functions_only(code: str, entry_point: str) -> bool:
    """The answer is whole functions, none of them the one asked for."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return bool(names) and entry_point not in names


def extract_code(attempt: str, prompt_code: str | None, entry_point: str | None = None) -> str:
    """A program from a model's answer (:func:`answer_code`), after the task's own code so
    imports and helper functions from the prompt exist. A body-only answer is appended under the
    prompt's signature."""
    code = answer_code(attempt, entry_point)
    prompt_code = (prompt_code or "").rstrip() + "\n"
    if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        try:
            ast.parse(prompt_code)
        except SyntaxError:  # a bare signature: keep only its imports
            prompt_code = "".join(line + "\n" for line in prompt_code.splitlines()
                                  if line.startswith(("import ", "from ")))
        return prompt_code + "\n" + code + "\n"
    if code and not code.startswith((" ", "\t")):
        code = "\n".join("    " + line if line.strip() else line for line in code.splitlines())
    return prompt_code + code + "\n"


def check_program(program: str, entry_point: str | None) -> str | None:
    """Why the program cannot be run (does not parse, does not define the entry point), or None."""
    try:
        tree = ast.parse(program)
    except SyntaxError as e:
        line = (e.text or "").strip()
        return (f"The code does not parse: SyntaxError: {e.msg} (line {e.lineno}"
                + (f": `{line}`" if line else "") + ").")
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if entry_point and entry_point not in defined:
        return f"The code does not define `{entry_point}`."
    return None


class TestFeedback:
    """Run the attempt against the task's tests; feedback = test source, verdict, traceback."""

    __test__ = False  # not a pytest class

    def __init__(self, timeout: float = 10.0, memory_mb: int = 512,
                 include_tests: bool = True):
        self.timeout, self.memory_mb, self.include_tests = timeout, memory_mb, include_tests

    def review(self, task: Task, attempt: str) -> Experience:
        if not task.tests or not task.entry_point:
            raise ValueError(f"task {task.id or ''} has no tests or entry point to run")
        tests = task.tests.rstrip() + f"\n\n\ncheck({task.entry_point})\n"
        shown = f"The tests that ran:\n```python\n{tests.strip()}\n```\n" \
            if self.include_tests else ""
        meta = {"source": "code_tests"}
        if not (attempt or "").strip():
            return experience(task, attempt, shown + "The attempt is empty: no code to run.",
                              passed=False, status="empty", **meta)
        if defines_other_functions_only(answer_code(attempt, task.entry_point), task.entry_point):
            return experience(task, attempt, shown + f"The code does not define "
                              f"`{task.entry_point}`.", passed=False, status="invalid", **meta)
        program = extract_code(attempt, code_prompt(task), task.entry_point)
        problem = check_program(program, task.entry_point)
        if problem:
            return experience(task, attempt, shown + problem, passed=False, status="invalid",
                              **meta)
        result = run_python({"solution.py": program, "test.py": tests}, timeout=self.timeout,
                            memory_mb=self.memory_mb)
        return experience(task, attempt, shown + verdict(result), passed=result.ok,
                          status=result.status, **meta)


def verdict(result: SandboxResult) -> str:
    """"All tests passed." or what went wrong, with the trimmed traceback."""
    if result.ok:
        return "All tests passed."
    if result.status in ("timeout", "memory", "killed"):
        return f"Tests failed: the code {result.message}."
    tb = result.stderr.strip()
    frames = re.findall(r'File "([^"]+)"', tb)
    last_exc = result.message
    if last_exc.startswith("AssertionError") and frames and frames[-1] == "test.py":
        head = "Tests failed: an assertion in the tests did not hold."
    elif frames and frames[-1] == "test.py":
        head = (f"Tests failed: the test code raised {last_exc.split(':')[0]} (it may be the "
                "test's own error, or caused by what your function returned).")
    else:
        head = f"Tests failed: your code raised {last_exc.split(':')[0]}."
    return f"{head}\n{tb}" if tb else head


class _PrintCalls(ast.NodeTransformer):
    """Turn ``assert <expr involving candidate(...)>`` into a try/print of that call."""

    def __init__(self, name: str, show_expected: bool):
        self.name, self.show_expected = name, show_expected

    def visit_Assert(self, node: ast.Assert) -> list[ast.stmt] | None:
        call = next((n for n in ast.walk(node.test) if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name) and n.func.id == "candidate"), None)
        if call is None:
            return None  # an assert that does not exercise the function: nothing to show
        label = repr(self._shown(call))
        expected = ""
        if self.show_expected:
            exp = _expected(node.test, call)
            expected = (f" + '  (expected ' + repr({exp}) + ')'" if exp else
                        f" + {'  (expected: ' + ast.unparse(node.test) + ')'!r}")
        src = (f"try:\n    __r = {ast.unparse(call)}\n"
               f"    print({label} + ' -> ' + repr(__r){expected})\n"
               f"except Exception as __e:\n"
               f"    print({label} + ' raised ' + type(__e).__name__ + ': ' + str(__e))\n")
        return ast.parse(src).body


    def visit_Assign(self, node: ast.Assign) -> list[ast.stmt] | ast.Assign:
        """``x = candidate(...)`` (the tests then check ``x`` indirectly): show the call too."""
        call = node.value
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "candidate"):
            return node
        label = repr(self._shown(call))
        src = (f"try:\n    {ast.unparse(node)}\n"
               f"    print({label} + ' -> ' + repr({ast.unparse(node.targets[0])}))\n"
               f"except Exception as __e:\n"
               f"    print({label} + ' raised ' + type(__e).__name__ + ': ' + str(__e))\n"
               f"    raise\n")
        return ast.parse(src).body

    def _shown(self, call: ast.Call) -> str:
        shown = f"{self.name}({', '.join(ast.unparse(a) for a in call.args + call.keywords)})"
        return shown if len(shown) <= 300 else shown[:297] + "..."


def _expected(test: ast.expr, call: ast.Call) -> str | None:
    """Source of the expected value when the assert is ``call == X`` / ``X == call`` /
    ``abs(call - X) < tol`` / ``call`` / ``not call``; None otherwise."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, right = test.left, test.comparators[0]
        if isinstance(test.ops[0], (ast.Eq, ast.Is)):
            if left is call:
                return ast.unparse(right)
            if right is call:
                return ast.unparse(left)
        if isinstance(left, ast.Call) and isinstance(left.func, (ast.Name, ast.Attribute)) \
                and left.args and isinstance(left.args[0], ast.BinOp) \
                and isinstance(left.args[0].op, ast.Sub) and left.args[0].left is call:
            return ast.unparse(left.args[0].right)
    if test is call:
        return "True"
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and test.operand is call:
        return "False"
    return None


def io_program(tests: str, entry_point: str, show_expected: bool = False) -> str:
    """The tests rewritten to print each input and the function's output (ast, not regexes)."""
    tree = ast.parse(tests)
    tree = _PrintCalls(entry_point, show_expected).visit(tree)
    for node in ast.walk(tree):  # a block left empty by dropped asserts still needs a body
        if isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]
    ast.fix_missing_locations(tree)
    return ast.unparse(tree) + f"\n\n\ncheck({entry_point})\n"


class IOFeedback:
    """Printed input/output pairs from the tests' own inputs; ``passed`` from the real tests."""

    def __init__(self, show_expected: bool = False, timeout: float = 10.0,
                 memory_mb: int = 512, max_lines: int = 40):
        self.show_expected, self.timeout, self.memory_mb = show_expected, timeout, memory_mb
        self.max_lines = max_lines
        self.tests = TestFeedback(timeout=timeout, memory_mb=memory_mb, include_tests=False)

    def review(self, task: Task, attempt: str) -> Experience:
        if not task.tests or not task.entry_point:
            raise ValueError(f"task {task.id or ''} has no tests or entry point to run")
        meta = {"source": "code_io"}
        checked = self.tests.review(task, attempt)
        status = checked.metadata["status"]
        if status in ("empty", "invalid"):
            return experience(task, attempt, checked.feedback, passed=False, status=status, **meta)
        program = extract_code(attempt, code_prompt(task), task.entry_point)
        try:
            io = io_program(task.tests, task.entry_point, self.show_expected)
        except SyntaxError as e:
            raise ValueError(f"the tests of {task.id} do not parse: {e}") from None
        result = run_python({"solution.py": program, "io.py": io}, timeout=self.timeout,
                            memory_mb=self.memory_mb)
        lines = result.stdout.strip().splitlines()
        shown = lines[: self.max_lines] + ([f"... ({len(lines) - self.max_lines} more)"]
                                           if len(lines) > self.max_lines else [])
        text = "Your function on the test inputs:\n" + "\n".join(shown) if shown else \
            "Your function produced no output on the test inputs."
        if not result.ok:
            text += f"\n(The run stopped: {result.message}.)"
        return experience(task, attempt, text, passed=checked.metadata["passed"], status=status,
                          **meta)


def pass_at_1(experiences: Sequence[Experience]) -> float:
    """Fraction of experiences whose code passed its tests (greedy pass@1)."""
    return sum(bool(e.metadata.get("passed")) for e in experiences) / max(1, len(experiences))
