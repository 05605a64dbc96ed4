"""Feedback from running code: the tests and their traceback, or printed input/output pairs.

The two sources of the published HumanEval experiment. :class:`TestFeedback` runs the attempt with
the task's tests in the sandbox; the feedback is the test source that ran, pass/fail and, on
failure, the traceback trimmed to the frames in the model's code and the test (``solution.py``,
``test.py``). :class:`IOFeedback` rewrites the tests' ``check`` function with the ``ast`` module so
that every call of the function prints its actual arguments and what it returned (or raised, or
that it did not return in time), optionally with the expected value; the feedback is that printed
output. Both put ``passed`` in the metadata, so the same harness computes pass@1.

Bad input (an empty attempt, code that does not parse, a missing function, tests that themselves
fail) gives an experience that says so, never an exception.
"""

from __future__ import annotations

import ast
import json
import os
import re
from typing import Any, Sequence

from ..experience import Experience
from .base import Task, experience, review_all
from .sandbox import SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON = {"", "python", "py", "python3", "py3"}


def _blocks(text: str) -> list[str]:
    """Fenced code blocks, Python-tagged (or untagged) ones first."""
    found = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    return [b for lang, b in found if lang in _PYTHON] + [b for lang, b in found
                                                          if lang not in _PYTHON]


def code_prompt(task: Task) -> str:
    """The task's code (signature + docstring): ``metadata['code_prompt']``, else the code block
    in the prompt, else the prompt text if it is code, else ``""`` (nothing to prepend)."""
    if task.metadata.get("code_prompt"):
        return task.metadata["code_prompt"]
    text = task.prompt if isinstance(task.prompt, str) else \
        next((m["content"] for m in reversed(task.prompt) if m["role"] == "user"),
             task.prompt[-1]["content"])
    blocks = _blocks(text)
    if blocks:
        return blocks[0]
    return text if re.search(r"^\s*(?:async\s+)?def\s+\w+\s*\(", text, re.M) else ""


def answer_code(attempt: str, entry_point: str | None = None) -> str:
    """The code in a model's answer: the fenced block that defines the entry point, else the
    first (Python) fenced block, else the whole text."""
    blocks = _blocks(attempt)
    if not blocks:
        return attempt.strip("\n")
    wanted = [b for b in blocks
              if entry_point and re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)]
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
    imports and helper functions from the prompt exist. A body-only answer (HumanEval's completion
    format, indented or not) is appended under the prompt's signature."""
    code = answer_code(attempt, entry_point)
    if not (prompt_code or "").strip():
        return code + "\n"
    prompt_code = prompt_code.rstrip() + "\n"
    if entry_point and re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(",
                                 code, re.M):
        try:
            ast.parse(prompt_code)
        except SyntaxError:  # a bare signature: keep only its imports
            prompt_code = "".join(line + "\n" for line in prompt_code.splitlines()
                                  if line.startswith(("import ", "from ")))
        return prompt_code + "\n" + code + "\n"
    if code and not code.startswith((" ", "\t")):
        code = "\n".join("    " + line if line.strip() else line for line in code.splitlines())
    return prompt_code + code + "\n"


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def check_program(program: str, entry_point: str | None) -> str | None:
    """Why the program cannot be run (does not parse, does not define the entry point), or None."""
    try:
        tree = ast.parse(program)
    except SyntaxError as e:
        line = (e.text or "").strip()
        return (f"The code does not parse: SyntaxError: {e.msg} (line {e.lineno}"
                + (f": `{line}`" if line else "") + ").")
    if entry_point and entry_point not in _defined_names(tree):
        return f"The code does not define `{entry_point}`."
    return None


def shown_tests(tests: str) -> str:
    """The test source without HumanEval's ``METADATA = {...}`` (noise in every experience)."""
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return tests.strip("\n") + "\n"
    lines = tests.splitlines()
    for node in reversed(tree.body):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] \
                == ["METADATA"]:
            del lines[node.lineno - 1: node.end_lineno]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines).strip("\n")) + "\n"


def _prepare(task: Task, attempt: str, source: str) -> tuple[str, Experience | None]:
    """The program to run, or the experience that says why there is none."""
    if not task.tests or not task.entry_point:
        raise ValueError(f"task {task.id or ''} has no tests or entry point to run")
    meta = {"source": source, "passed": False}
    if not (attempt or "").strip():
        return "", experience(task, attempt, "The attempt is empty: no code to run.",
                              status="empty", **meta)
    if defines_other_functions_only(answer_code(attempt, task.entry_point), task.entry_point):
        return "", experience(task, attempt, f"The code does not define `{task.entry_point}`.",
                              status="invalid", **meta)
    program = extract_code(attempt, code_prompt(task), task.entry_point)
    problem = check_program(program, task.entry_point)
    if problem:
        return "", experience(task, attempt, problem, status="invalid", **meta)
    return program, None


class TestFeedback:
    """Run the attempt against the task's tests; feedback = test source, verdict, traceback."""

    __test__ = False  # not a pytest class

    def __init__(self, timeout: float = 10.0, memory_mb: int = 512,
                 include_tests: bool = True):
        self.timeout, self.memory_mb, self.include_tests = timeout, memory_mb, include_tests

    def review(self, task: Task, attempt: str) -> Experience:
        program, early = _prepare(task, attempt, "code_tests")
        tests = shown_tests(task.tests or "") + f"\n\ncheck({task.entry_point})\n"
        shown = f"The tests that ran:\n```python\n{tests.strip()}\n```\n" \
            if self.include_tests else ""
        if early is not None:
            early.feedback = shown + early.feedback
            return early
        result = run_python({"solution.py": program, "test.py": tests}, timeout=self.timeout,
                            memory_mb=self.memory_mb)
        return experience(task, attempt, shown + verdict(result), passed=result.ok,
                          status=result.status, source="code_tests")


def verdict(result: SandboxResult) -> str:
    """"All tests passed." or what went wrong, with the trimmed traceback."""
    if result.ok:
        return "All tests passed."
    if result.status == "error":
        return f"The tests could not be run: {result.message}."
    if result.status in ("timeout", "memory", "killed"):
        return f"Tests failed: the code {result.message}."
    tb = result.stderr.strip()
    frames = re.findall(r'File "([^"]+)"', tb)
    last_exc = result.message
    if last_exc.startswith("AssertionError") and frames and frames[-1] == "test.py":
        head = "Tests failed: an assertion in the tests did not hold."
    elif frames and frames[-1] == "test.py":
        head = (f"Tests failed: the test code raised {last_exc.split(':')[0]} (an error, not an "
                "assertion failure: the test's own, or caused by what your function returned).")
    else:
        head = f"Tests failed: your code raised {last_exc.split(':')[0]}."
    return f"{head}\n{tb}" if tb else head


# ---------------------------------------------------------------------------------------------
# Printed input/output pairs

_IO_MARK = "\x1e__experiential_io__ "

# Defined in the I/O program before the rewritten tests (same namespace as the solution, hence
# the _io_ prefix). _io_call runs one call with a per-call alarm, capturing what the function
# printed; inside an assert (_io_check) the lines wait so the expected value can be appended.
_IO_RUNTIME = r'''
import contextlib as _io_contextlib, io as _io_io, json as _io_json, signal as _io_signal

class _IOCallFailed(Exception):
    """A call raised or did not return; it is already reported."""

class _IOTimeout(BaseException):
    pass

def _io_alarm(signum, frame):
    raise _IOTimeout()

_IO = {"shown": 0, "hidden": 0, "calls": 0, "failed": 0, "pending": None, "stopped": None,
       "done": False}

def _io_clip(text, limit=200):
    return text if len(text) <= limit else text[: limit - 3] + "..."

def _io_short(value, limit=300):
    try:
        return _io_clip(repr(value), limit)
    except Exception as e:
        return f"<repr raised {type(e).__name__}>"

def _io_emit(line):
    if _IO["pending"] is not None:
        _IO["pending"].append(line)
    elif _IO["shown"] < _IO_MAX_LINES:
        _IO["shown"] += 1
        print(line, flush=True)
    else:
        _IO["hidden"] += 1

def _io_call(fn, args, kwargs):
    _IO["calls"] += 1
    shown = [_io_short(a, 200) for a in args]
    shown += [f"{k}={_io_short(v, 200)}" for k, v in kwargs.items()]
    label = _IO_NAME + "(" + ", ".join(shown) + ")"
    printed = _io_io.StringIO()
    failed = True
    old = _io_signal.signal(_io_signal.SIGALRM, _io_alarm)
    _io_signal.setitimer(_io_signal.ITIMER_REAL, _IO_CALL_TIMEOUT)
    try:
        with _io_contextlib.redirect_stdout(printed):
            result = fn(*args, **kwargs)
        failed = False
        line = f"{label} -> {_io_short(result)}"
    except _IOTimeout:
        line = f"{label} did not return within {_IO_CALL_TIMEOUT:g} s"
    except (Exception, SystemExit) as e:
        line = f"{label} raised {type(e).__name__}: {_io_clip(str(e))}"
    finally:
        _io_signal.setitimer(_io_signal.ITIMER_REAL, 0)
        _io_signal.signal(_io_signal.SIGALRM, old)
    if printed.getvalue().strip():
        line += f"  [printed {_io_short(printed.getvalue(), 200)}]"
    _io_emit(line)
    if failed:
        _IO["failed"] += 1
        raise _IOCallFailed()
    return result

def _io_check(test, kind, expected, prefix, src):
    outer, _IO["pending"] = _IO["pending"], []
    ok, problem = False, None
    try:
        ok = bool(test())
    except _IOCallFailed:
        pass
    except _IOTimeout:
        problem = f"checking `{src}` did not finish within {_IO_CALL_TIMEOUT:g} s"
    except Exception as e:
        problem = f"checking `{src}` raised {type(e).__name__}: {_io_clip(str(e))}"
    lines, _IO["pending"] = _IO["pending"], outer
    if lines and _IO_SHOW_EXPECTED:
        lines[-1] += "  (expected " + _io_expected(kind, expected, prefix, src) + ")"
    for line in lines:
        _io_emit(line)
    if problem:  # an error, not a verdict: always said
        _io_emit(problem)
    elif not ok and not lines and _IO_SHOW_EXPECTED:
        _io_emit(f"check failed: `{src}`")
    if not ok:
        _IO["failed"] += 1

def _io_expected(kind, expected, prefix, src):
    if kind == "const":
        return prefix
    if kind == "other":
        return f"`{src}` to hold"
    try:
        value = expected()
    except Exception as e:
        return f"a value that could not be computed: {type(e).__name__}"
    if kind == "approx":
        return f"{_io_short(value[0])} within {_io_short(value[1])}"
    return prefix + _io_short(value)

def _io_finish():
    if _IO["hidden"]:
        print(f"... ({_IO['hidden']} more lines not shown)", flush=True)
    summary = {k: _IO[k] for k in ("calls", "failed", "stopped", "done")}
    print("\n" + _IO_MARK + _io_json.dumps(summary), flush=True)
'''

_IO_MAIN = r'''
try:
    check(__ENTRY__)
    _IO["done"] = True
except _IOCallFailed:
    _IO["stopped"] = "a call above failed, so the remaining checks did not run"
except _IOTimeout:
    _IO["stopped"] = f"the test code did not finish within {_IO_CALL_TIMEOUT:g} s"
except BaseException as _io_error:
    _IO["stopped"] = (f"the test code raised {type(_io_error).__name__}: "
                      f"{_io_clip(str(_io_error))}; the remaining checks did not run")
_io_finish()
'''


def _is_call_of(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _calls(node: ast.AST, name: str) -> bool:
    return any(_is_call_of(n, name) for n in ast.walk(node))


class _PrintCalls(ast.NodeTransformer):
    """Rewrite ``check(candidate)``: each ``candidate(...)`` call becomes ``_io_call(...)`` (prints
    the evaluated arguments and the result), each ``assert`` a ``_io_check(...)`` that records
    pass/fail and carries the expected value, and a statement whose call fails is skipped (in a
    loop: the rest of that iteration) instead of ending the run."""

    def __init__(self, param: str, name: str):
        self.param, self.name, self.loops = param, name, 0

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if not (isinstance(node.func, ast.Name) and node.func.id == self.param):
            return node
        args = ast.Tuple(elts=node.args, ctx=ast.Load())
        kwargs = ast.Dict(keys=[k.arg and ast.Constant(k.arg) for k in node.keywords],
                          values=[k.value for k in node.keywords])
        return ast.Call(func=ast.Name("_io_call", ast.Load()),
                        args=[ast.Name(self.param, ast.Load()), args, kwargs], keywords=[])

    def _loop(self, node: ast.AST) -> ast.AST:
        self.loops += 1
        try:
            return self.generic_visit(node)
        finally:
            self.loops -= 1

    visit_For = visit_While = visit_AsyncFor = _loop

    def _scope(self, node: ast.AST) -> ast.AST:  # `continue` does not cross a function boundary
        outer, self.loops = self.loops, 0
        try:
            return self.generic_visit(node)
        finally:
            self.loops = outer

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scope

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return)) \
                and _calls(node, self.param):
            new = super().generic_visit(node)
            skip: ast.stmt = ast.Continue() if self.loops else ast.Raise()
            return ast.Try(body=[new], handlers=[ast.ExceptHandler(
                type=ast.Name("_IOCallFailed", ast.Load()), name=None, body=[skip])],
                orelse=[], finalbody=[])
        return super().generic_visit(node)

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        kind, expected, prefix = self._expectation(node.test)
        src = _shorten(ast.unparse(_Renamer(self.param, self.name).visit(
            _copy(node.test))), 200)
        test = self.visit(node.test)
        thunk = (lambda e: ast.Lambda(args=ast.arguments(
            posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]), body=e))
        return ast.Expr(ast.Call(func=ast.Name("_io_check", ast.Load()), args=[
            thunk(test), ast.Constant(kind), thunk(expected) if expected else ast.Constant(None),
            ast.Constant(prefix), ast.Constant(src)], keywords=[]))

    def _expectation(self, test: ast.expr) -> tuple[str, ast.expr | None, str]:
        """(kind, expected-value expression, prefix) for the shapes HumanEval uses."""
        p = self.param
        if _is_call_of(test, p):
            return "const", None, "a true value"
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) \
                and _is_call_of(test.operand, p):
            return "const", None, "a false value"
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, right, op = test.left, test.comparators[0], test.ops[0]
            if isinstance(op, (ast.Eq, ast.Is)):
                for mine, other in ((left, right), (right, left)):
                    if _calls(mine, p) and not _calls(other, p):
                        if isinstance(op, ast.Is) and isinstance(other, ast.Constant):
                            return "const", None, repr(other.value)
                        prefix = "" if _is_call_of(mine, p) else _shorten(ast.unparse(
                            _Renamer(p, self.name, "...").visit(_copy(mine))), 100) + " == "
                        return "eq", _copy(other), prefix
            func = left.func if isinstance(left, ast.Call) else None
            if isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) \
                    and getattr(func, "id", getattr(func, "attr", "")) in ("abs", "fabs") \
                    and len(left.args) == 1 and isinstance(left.args[0], ast.BinOp) \
                    and isinstance(left.args[0].op, ast.Sub) and not _calls(right, p):
                a, b = left.args[0].left, left.args[0].right
                for mine, other in ((a, b), (b, a)):
                    if _is_call_of(mine, p) and not _calls(other, p):
                        return "approx", ast.Tuple([_copy(other), _copy(right)], ast.Load()), ""
        return "other", None, ""


class _Renamer(ast.NodeTransformer):
    """``candidate(x)`` -> ``has_close_elements(x)`` (or ``has_close_elements(...)``), to show."""

    def __init__(self, param: str, name: str, args: str | None = None):
        self.param, self.name, self.args = param, name, args

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if _is_call_of(node, self.param):
            node.func = ast.Name(self.name, ast.Load())
            if self.args is not None:
                node.args, node.keywords = [ast.Constant(...)], []
        return node


def _copy(node: ast.expr) -> ast.expr:
    return ast.parse(ast.unparse(node), mode="eval").body


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def io_program(tests: str, entry_point: str, show_expected: bool = False, *,
               max_lines: int = 40, call_timeout: float = 2.0) -> str:
    """The tests rewritten (with ``ast``, not regexes) to print each call's actual arguments and
    what the function returned, raised, or that it did not return within ``call_timeout``; a
    failing call does not stop the others. Raises SyntaxError/ValueError for tests that do not
    parse or have no ``check`` function."""
    tree = ast.parse(tests)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"),
                 None)
    if check is None or not check.args.args:
        raise ValueError("the tests have no `check(candidate)` function to rewrite")
    param = check.args.args[0].arg
    _PrintCalls(param, entry_point).visit(check)
    ast.fix_missing_locations(tree)
    settings = (f"_IO_NAME = {entry_point!r}\n_IO_SHOW_EXPECTED = {bool(show_expected)!r}\n"
                f"_IO_MAX_LINES = {int(max_lines)!r}\n_IO_CALL_TIMEOUT = {float(call_timeout)!r}\n"
                f"_IO_MARK = {_IO_MARK!r}\n")
    return (settings + _IO_RUNTIME + "\n\n" + ast.unparse(tree) + "\n\n"
            + _IO_MAIN.replace("__ENTRY__", entry_point))


class IOFeedback:
    """Printed input/output pairs from the tests' own inputs; ``passed`` from the same run (every
    ``assert`` of the tests is still evaluated, on the same values)."""

    def __init__(self, show_expected: bool = False, timeout: float = 10.0,
                 memory_mb: int = 512, max_lines: int = 40, call_timeout: float = 2.0):
        self.show_expected, self.timeout, self.memory_mb = show_expected, timeout, memory_mb
        self.max_lines, self.call_timeout = max_lines, call_timeout

    def review(self, task: Task, attempt: str) -> Experience:
        program, early = _prepare(task, attempt, "code_io")
        if early is not None:
            return early
        try:
            io = io_program(task.tests or "", task.entry_point or "", self.show_expected,
                            max_lines=self.max_lines,
                            call_timeout=min(self.call_timeout, self.timeout / 2))
        except (SyntaxError, ValueError) as e:
            return experience(task, attempt, f"The tests cannot be run to show input/output "
                              f"pairs: {type(e).__name__}: {e}", passed=False, status="test_error",
                              source="code_io")
        result = run_python({"solution.py": program, "test.py": io}, timeout=self.timeout,
                            memory_mb=self.memory_mb)
        printed, summary = _split_summary(result.stdout)
        lines = printed.strip("\n").splitlines()
        text = ("Your function on the test inputs:\n" + "\n".join(lines)) if lines else \
            "Your function produced no output on the test inputs."
        if summary is None:  # the run ended before the tests finished
            if result.status in ("timeout", "memory", "killed", "error"):
                text += f"\n(The run stopped: {result.message}.)"
            else:
                text = (text + "\n" if lines else "") + verdict(result)
            passed, status = False, result.status if result.status != "passed" else "failed"
        else:
            if summary.get("stopped"):
                text += f"\n(The run stopped: {summary['stopped']}.)"
            passed = bool(summary.get("done")) and not summary.get("failed")
            status = "passed" if passed else "failed"
        return experience(task, attempt, text, passed=passed, status=status, source="code_io",
                          calls=(summary or {}).get("calls"))


def _split_summary(stdout: str) -> tuple[str, dict[str, Any] | None]:
    head, mark, tail = stdout.rpartition(_IO_MARK)
    if not mark:
        return stdout, None
    try:
        return head, json.loads(tail.splitlines()[0])
    except (ValueError, IndexError):
        return head, None


def run_tests(tasks: Sequence[Task], attempts: Sequence[str], *, workers: int | None = None,
              **options: Any) -> list[Experience]:
    """:class:`TestFeedback` over many attempts, ``workers`` sandboxes at a time (default: all
    cores)."""
    return review_all(TestFeedback(**options), tasks, attempts,
                      workers=workers or os.cpu_count() or 1)


def pass_at_1(experiences: Sequence[Experience]) -> float:
    """Fraction of experiences whose code passed its tests (greedy pass@1)."""
    return sum(bool(e.metadata.get("passed")) for e in experiences) / max(1, len(experiences))
